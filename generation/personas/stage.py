"""Pipeline for one draw of people (`build_personas`):
  1. `persona_id` from (source_serialno, source_sporder, recipe seed); procedural traits (Big Five levels,
     defining quirk, mannerism, core values) from (seed, persona_id) only.
  2. Rule checks on the census fields (`check_rules`): failures are replaced before any LLM call.
  3. One "persona_filler" Ask per person: job description, personal time, lifestyle, ideology, political
     views, religion and every field the census source lacks (`generated_fields`), as JSON under a
     per-person schema whose enums already exclude values the rules would reject.
  4. Rule checks again (now with generated fields), then one "consistency_judge" Ask per person.
  5. Anyone failing 2-4 (or whose model output never parsed) is replaced by `draw_more`, up to
     `max_rounds` replacement rounds; rejections are counted by reason.

Output order: draw order (replacement round, then row position within that draw); the first n accepted
people are kept.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..flow import Flow, Need
from ..results import StageResult
from .attributes import OUTPUT_COLUMNS, PROCEDURAL_ATTRIBUTES
from .enrich import FILLER_ROLE, enrich_one, enrichment_ask, enrichment_parser
from .judge import JUDGE_ROLE, judge_ask, judge_one, parse_judge
from .row import _missing
from .rules import check_rules
from .traits import persona_id, procedural_traits

_SEQUENCE = (list, tuple, np.ndarray)  # list columns come back from Parquet as numpy arrays


def _as_list(v) -> list[str]:
    return [str(x) for x in v] if isinstance(v, _SEQUENCE) else []


def prepare_rows(people: pd.DataFrame, seed: int, replacement_round: int, n_quirks: int = 1,
                 n_mannerisms: int = 1, n_core_values: int = 3) -> list[dict]:
    """Census rows -> dicts with persona_id, procedural traits and clean values (missing -> None)."""
    rows = []
    for rec in people.to_dict("records"):
        row = {k: (v if isinstance(v, _SEQUENCE) else (None if _missing(v) else v)) for k, v in rec.items()}
        row["source_serialno"], row["source_sporder"] = str(row["source_serialno"]), int(row["source_sporder"])
        row["imputed_fields"] = _as_list(rec.get("imputed_fields"))
        row["generated_fields"] = _as_list(rec.get("generated_fields"))
        if row.get("age") is not None:
            row["age"] = int(row["age"])
        row["persona_id"] = persona_id(row["source_serialno"], row["source_sporder"], seed)
        traits = procedural_traits(row["persona_id"], seed, n_quirks, n_mannerisms, n_core_values)
        row.update({k: traits[k] for k in PROCEDURAL_ATTRIBUTES + ["core_values"]})
        row["replacement_round"] = replacement_round
        rows.append(row)
    return rows


def _persona_flow(row: dict, ask, parse, reject) -> Flow:
    """Enrich one person, then judge the result; True when the person is kept."""
    out = yield Need(FILLER_ROLE, ask, parse)
    if not enrich_one(row, ask, out, reject):
        return False
    verdict = yield Need(JUDGE_ROLE, judge_ask(row), parse_judge)
    return judge_one(row, verdict, reject)


def build_personas(people: pd.DataFrame, draw_more: Callable[[int, int, set], pd.DataFrame], run, n: int,
                   seed: int, max_rounds: int = 5, n_quirks: int = 1, n_mannerisms: int = 1,
                   n_core_values: int = 3, source: dict | None = None) -> StageResult:
    """Turn sampled census people into n consistent personas, replacing rejects with fresh draws.

    Round 0 processes every row of `people`; round r = 1..max_rounds asks `draw_more(k, r, exclude)` for the
    k personas still missing (exclude = every (serialno, sporder) seen so far). Returns (personas in draw
    order, at most n rows), its counts and rejects. Counts: "drawn" people processed; "rejected" {reason: count}, a persona
    breaking several rules counting under each; "rejected_personas"; "enrichment_rejects" (filler outcome
    not ok, or an answer outside the person's own schema: reason "enrichment_failed"); "judge_rejects"
    (judged inconsistent: "judge_inconsistent"); "judge_failures" (judge outcome not ok: "judge_failed");
    "duplicates_skipped"; "rounds" (replacement rounds run); "accepted"; "shortfall". Rejects: one per
    rejected persona, step "consistency", every rule it broke in `reasons`, the judge's or filler's detail
    (or None) in `raw`. `source`: the provenance of the census read, recorded as the result's source.
    """
    rejected, rejections, accepted = Counter(), [], []
    seen: set[tuple[str, int]] = set()
    drawn = duplicates = rounds = 0

    def reject(row, reasons: list[str], detail: str | None = None):
        rejected.update(reasons)
        rejections.append({"id": row["persona_id"], "step": "consistency", "reasons": list(reasons), "raw": detail})

    batch = people
    while True:
        rows = []
        for row in prepare_rows(batch, seed, rounds, n_quirks, n_mannerisms, n_core_values):
            key = (row["source_serialno"], row["source_sporder"])
            if key in seen:  # draw_more should exclude these; never process a person twice
                duplicates += 1
                continue
            seen.add(key)
            rows.append(row)
        drawn += len(rows)

        # census-only rule checks first: no LLM calls for people who are already inconsistent
        fine = []
        for row in rows:
            reasons = check_rules(row)
            if reasons:
                reject(row, reasons)
            else:
                fine.append(row)
        asks = [enrichment_ask(row) for row in fine]
        parse = enrichment_parser(asks)
        done = run.flows([_persona_flow(row, ask, parse, reject) for row, ask in zip(fine, asks)], "personas")
        accepted += [row for row, ok in zip(fine, done) if ok]

        need = n - len(accepted)
        if need <= 0 or rounds >= max_rounds:
            break
        batch = draw_more(need, rounds + 1, set(seen))
        if batch is None or len(batch) == 0:
            break
        rounds += 1

    out = pd.DataFrame([{c: row.get(c) for c in OUTPUT_COLUMNS} for row in accepted[:n]], columns=OUTPUT_COLUMNS)
    stats = {"drawn": drawn, "rejected": dict(sorted(rejected.items())), "rejected_personas": len(rejections),
             "enrichment_rejects": rejected["enrichment_failed"], "judge_rejects": rejected["judge_inconsistent"],
             "judge_failures": rejected["judge_failed"], "duplicates_skipped": duplicates, "rounds": rounds,
             "accepted": len(out), "shortfall": max(0, n - len(out))}
    return StageResult(out, stats, rejections, source)
