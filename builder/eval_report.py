"""`persona eval`'s output: the report folder (`report.json`, `report.md`, `report.png`, `items.jsonl`),
rendered from the report dict alone with nothing volatile in it, and `--compare`, which reads reports
back through one schema (REPORT)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd

from generation import evaluation as ev
from generation.ids import canonical

from . import manifest as mf
from .eval_source import EvalError

FORMAT = "persona-eval/1"


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.replace("/", "--"))


def model_label(model: dict) -> str:
    """`<model>@<revision>` of a report's model entry, a folder name: two local folders both called
    `final` differ by the digest of their weights, a Hub model by its commit."""
    rev = (model.get("revision") or "unpinned").split(":")[-1]
    rev = rev[:12] if re.fullmatch(r"[0-9a-f]{13,}", rev) else re.sub(r"[^A-Za-z0-9._-]+", "_", rev)
    return f"{model_slug(model['id'])}@{rev}"


def report_folder(out: Path, report: dict, data_label: str) -> Path:
    return Path(out) / model_label(report["models"]["subject"]) / data_label


def write_report(report: dict, rows: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (folder / "report.md").write_text(markdown(report))
    (folder / "report.png").write_bytes(chart(report))
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    # the three evaluations share one table: keep only the fields a row has
    (folder / "items.jsonl").write_text("".join(canonical({k: v for k, v in r.items() if v is not None}) + "\n"
                                               for r in records))
    return folder


# ------------------------------------------------------------------------------- render

def _fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}] (n={entry['n']})"


def markdown(report: dict) -> str:
    d, m, pw, gen, probe = (report["dataset"], report["models"], report["pairwise"], report["generative"],
                            report["attribute_probe"])
    where = f"{d['repo']}@{d['revision']} (commit {d['commit'][:12]})" if "repo" in d else f"{d['path']} ({d['sha256sums'][:12]})"
    lines = [f"# PERSONA evaluation: {m['subject']['id']}", "",
             f"- dataset: {where}{' — demonstration build' if d.get('demo') else ''}",
             f"- model under test: {m['subject']['id']} @ {m['subject']['revision']}",
             f"- judge: {m['judge']['id']} @ {m['judge']['revision']}",
             f"- seed: {report['settings']['seed']}; intervals: 95% percentile bootstrap, personas resampled", "",
             "## Pairwise preference prediction", "",
             "Accuracy = share of pairs where the model names the persona's preferred (chosen) answer; "
             "the order of the two answers is seeded. Without the persona it should sit near 0.5 if the "
             "pairs are persona-specific.", "",
             "| condition | overall | " + " | ".join(report["settings"]["splits"]) + " | chooses A | order consistency |",
             "|---" * (4 + len(report["settings"]["splits"])) + "|"]
    for cond in ("persona", "no_persona"):
        if cond not in pw:
            continue
        e, pos = pw[cond], pw[cond]["position"]
        lines.append(f"| {cond.replace('_', ' ')} | {_fmt(e['overall'])} | "
                     + " | ".join(_fmt(e.get(s)) for s in report["settings"]["splits"])
                     + f" | {pos['share_choosing_A']} | {pos.get('order_consistency', '–')} |")
    lines += ["", "## Generative personalisation", "",
              "Score = share of answers the judge says need no revision to be subtly personalised for the persona "
              "(the paper reports ~5% for the no-persona baseline and the summary-first mode best).", "",
              "| mode | score | answer rejects | judge rejects |", "|---|---|---|---|"]
    for mode in [m for m in ev.MODES if m in gen["modes"]]:
        e = gen["modes"][mode]
        lines.append(f"| {mode} | {_fmt(e)} | {e['answer_rejects']} | {e['judge_rejects']} |")
    lines += ["", f"Best: {', '.join(gen['best_mode']) or '–'}"]
    if "label_order_consistency" in gen:
        lines += ["", f"Judge label-order control: asked again with the two verdicts named in the other order, the "
                      f"judge kept its verdict for {gen['label_order_consistency']:.1%} of {gen['label_order_checked']} "
                      "answers (a judge that reads the answer keeps it; one that copies the first label does not)."]
    lines += ["",
              "## Leave-one-out attribute probe", "",
              f"Judge verdicts on {probe['items']} `{probe['mode']}` answers with each attribute left out of the "
              "persona, against the full-persona verdicts. Low kappa = the attribute moves the judge.", "",
              "| attribute | Cohen's kappa | agreement | changed | n |", "|---|---|---|---|---|"]
    order = sorted(probe["attributes"].items(), key=lambda kv: (kv[1]["kappa"] is None, kv[1]["kappa"] or 0, kv[0]))
    for a, e in order:
        kappa = "undefined" if e["kappa"] is None else f"{e['kappa']:.3f}"
        lines.append(f"| {a} | {kappa} | {e['agreement']} | {e['changed']} | {e['n']} |")
    return "\n".join(lines) + "\n"


def chart(report: dict) -> bytes:
    """Bar chart PNG: pairwise accuracy per condition and split, generative score per mode, with
    95% intervals. Deterministic bytes (default style, no PNG metadata)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def bars(ax, entries: list[tuple[str, dict | None, str]], title: str, chance: float | None = None):
        entries = [(name, e, color) for name, e, color in entries if e and e.get("value") is not None]
        for i, (_, e, color) in enumerate(entries):
            v, (lo, hi) = e["value"], e["ci95"]
            ax.bar(i, v, yerr=[[v - lo], [hi - v]], capsize=4, color=color)
            ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize="small")  # a score of 0 stays visible
        ax.set_xticks(range(len(entries)), [name for name, _, _ in entries], rotation=30, ha="right", fontsize="small")
        ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize="medium")
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1)

    colors = {"persona": "#4C72B0", "no_persona": "#AAAAAA"}
    pw = [(f"{c.replace('_', ' ')}: {s}", report["pairwise"][c].get(s), colors[c])
          for c in colors if c in report["pairwise"] for s in ("overall", *report["settings"]["splits"])]
    gen = [(m, report["generative"]["modes"].get(m), "#AAAAAA" if m == "baseline" else "#55A868") for m in ev.MODES]
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(10, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        bars(left, pw, "pairwise accuracy (chance 0.5)", chance=0.5)
        bars(right, gen, "generative: share needing no revision")
        fig.suptitle(report["models"]["subject"]["id"], fontsize="medium")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ------------------------------------------------------------------------------ compare

def _pos(key: str):
    return lambda r: r["pairwise"].get("persona", {}).get("position", {}).get(key)


COMPARE_ROWS = [  # (label, report -> interval entry or plain number)
    ("pairwise, persona, overall", lambda r: r["pairwise"].get("persona", {}).get("overall")),
    ("pairwise, persona, test_seen", lambda r: r["pairwise"].get("persona", {}).get("test_seen")),
    ("pairwise, persona, test_unseen", lambda r: r["pairwise"].get("persona", {}).get("test_unseen")),
    ("pairwise, no persona, overall", lambda r: r["pairwise"].get("no_persona", {}).get("overall")),
    ("pairwise, share choosing A", _pos("share_choosing_A")),
    ("pairwise, order consistency", _pos("order_consistency")),
    *[(f"generative, {mode}", (lambda m: lambda r: r["generative"]["modes"].get(m))(mode)) for mode in ev.MODES],
    ("judge, label-order consistency", lambda r: r["generative"].get("label_order_consistency")),
]


def _kind(kinds, what: str):
    """A leaf of a report schema: a value of one of KINDS (a bool is not a number)."""
    def check(value, key: str):
        if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
            return None
        return key, f"expected {what}", value
    return check


TEXT, MAYBE_TEXT = _kind(str, "a string"), _kind((str, type(None)), "a string or null")
NUMBER, MAYBE_NUMBER = _kind((int, float), "a number"), _kind((int, float, type(None)), "a number or null")


def _interval(entry, key: str):
    """{"value": x, "ci95": [low, high]}, or a value of null (nothing was scored)."""
    bad = _fits(entry, {"value": MAYBE_NUMBER}, key)
    if bad or entry["value"] is None:
        return bad
    ci = entry.get("ci95")
    if isinstance(ci, list) and len(ci) == 2 and not any(NUMBER(c, key) for c in ci):
        return None
    return mf.key_path(key, "ci95"), "expected [low, high]", ci


def _dataset(d, key: str):
    bad = _fits(d, {"revision?": MAYBE_TEXT, "sha256sums?": TEXT}, key)
    if bad or d.get("revision") or "sha256sums" in d:
        return bad
    return mf.key_path(key, "sha256sums"), "missing (a report names a revision or a local build's SHA256SUMS)"


# Every key `compare` reads, and what it must be ('name?': optional; '*': every other key)
REPORT = {
    "dataset": _dataset,
    "models": {"subject": {"id": TEXT, "revision?": MAYBE_TEXT}, "judge": {"id": TEXT}},
    "pairwise": {"*": {"position?": {"*": MAYBE_NUMBER}, "*": _interval}},
    "generative": {"modes": {"*": _interval}, "label_order_consistency?": NUMBER},
    "attribute_probe": {"attributes": {"*": {"kappa": MAYBE_NUMBER}}},
}


def _fits(value, spec, key: str = ""):
    """(key, what was expected, the value found) or (key, "missing") of the first part of VALUE that does
    not fit SPEC (a dict of specs, or a check), else None."""
    if not isinstance(spec, dict):
        return spec(value, key)
    if not isinstance(value, dict):
        return key, "expected an object", value
    named = {name.rstrip("?") for name in spec}
    for name, sub in spec.items():
        bare = name.rstrip("?")
        if name == "*" or (bare not in value and name.endswith("?")):
            continue
        bad = _fits(value[bare], sub, mf.key_path(key, bare)) if bare in value else (mf.key_path(key, bare), "missing")
        if bad:
            return bad
    others = [(name, item) for name, item in value.items() if name not in named] if "*" in spec else []
    return next(filter(None, (_fits(item, spec["*"], mf.key_path(key, name)) for name, item in others)), None)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_report(path: str) -> dict:
    """A report.json, checked against REPORT: a malformed one is one error naming the file and the key."""
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    try:
        report = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as e:
        raise EvalError(f"{p}: cannot read an evaluation report ({type(e).__name__}: {mf.clip(str(e))})") from None
    if not isinstance(report, dict):
        raise EvalError(f"{p}: not a persona evaluation report (expected a JSON object)")
    if report.get("format") != FORMAT:
        raise EvalError(f"{p}: not a persona evaluation report (format {mf.clip(json.dumps(report.get('format')))})")
    bad = _fits(report, REPORT)
    if bad:
        got = f", got {mf.clip(json.dumps(bad[2]))}" if len(bad) == 3 else ""
        raise EvalError(f"{p}: {bad[0]}: {bad[1]}{got}")
    return report


def compare(paths: list[str]) -> str:
    """A side-by-side text table of several reports (one column per report)."""
    reports = [read_report(p) for p in paths]

    def head(r):
        d = r["dataset"]
        return f"{model_label(r['models']['subject'])} ({d.get('revision') or 'local ' + d['sha256sums'][:8]})"

    def cell(entry):
        if isinstance(entry, (int, float)):
            return f"{entry:.3f}"
        if not entry or entry.get("value") is None:
            return "–"
        return f"{entry['value']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"

    def kappa(r):
        ks = [e["kappa"] for e in r["attribute_probe"]["attributes"].values() if e["kappa"] is not None]
        return f"{sum(ks) / len(ks):.3f} ({len(ks)} attrs)" if ks else "–"

    table = [["metric", *map(head, reports)]]
    table += [[name, *(cell(get(r)) for r in reports)] for name, get in COMPARE_ROWS]
    table.append(["probe, mean kappa", *map(kappa, reports)])
    table.append(["judge", *(r["models"]["judge"]["id"] for r in reports)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)

