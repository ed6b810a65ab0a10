"""The PERSONA testbed (arXiv 2407.17387, section 4): how well a model personalises for a persona.

Three evaluations, each a list of model asks and a scoring of the answers. The model under test is
the role "subject", the grader the role "judge"; both go through the same `run(role, asks, parse)`
as the dataset build (stored, resumable, one seed per request derived from its key).

1. Pairwise preference prediction: the subject reads the persona, a question and the pair's two
   answers in a seeded order and names the one this persona prefers. Accuracy is computed on the
   persona's preferred (chosen) answer, never on a position; the no-persona condition asks the same
   without the persona.
2. Generative personalisation: the subject answers a question in four modes (the paper's
   comparison) and the judge decides whether the answer still needs revision to be subtly
   personalised for the persona. Score = share needing no revision.
3. Leave-one-out attribute probe (paper's 4.1): the judge re-grades some of those answers with one
   attribute removed from the persona; agreement with the full-persona verdicts per attribute.
"""
from __future__ import annotations

import json

import pandas as pd

from .flow import Ask, Outcome
from .ids import derive_seed, rng
from .personas import ATTRIBUTES
from .schema import parse_json
from .stats import bootstrap_ci, cohen_kappa

SUBJECT, JUDGE = "subject", "judge"
MODES = ("baseline", "output_only", "chain_of_thought", "demographic_summary")
NEEDS_REVISION, NO_REVISION = "needs_revision", "no_revision_needed"
REVISION_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 300}, "verdict": {"enum": [NEEDS_REVISION, NO_REVISION]}},
    "required": ["reason", "verdict"], "additionalProperties": False,
}
PREFERENCE_SCHEMA = {"type": "object", "properties": {"preferred": {"enum": ["A", "B"]}},
                     "required": ["preferred"], "additionalProperties": False}
STEP_CHARS = 600  # reasoning / summary before the answer (~150 tokens)


# ------------------------------------------------------------------------------ 1. pairwise

def _with_persona(persona: str | None, instruction: str) -> list[dict]:
    # the persona leads the system message so that all asks about one persona share a cached prefix
    lead = f"The person:\n{persona}\n" if persona else ""
    return [{"role": "system", "content": lead + instruction}]


PAIRWISE_PERSONA = ("You know the person described above well. You will see a question they asked and two "
                    "answers to it. Decide which answer this person would prefer.")
PAIRWISE_PLAIN = "You will see a question a user asked and two answers to it. Decide which answer the user would prefer."


def pairwise_asks(pairs: pd.DataFrame, seed: int, with_persona: bool, both_orders: bool = False) -> list[tuple[Ask, dict]]:
    """One ask per pair (or two with `both_orders`): (ask, what the scoring needs to know)."""
    cond = "persona" if with_persona else "no_persona"
    out = []
    for p in pairs.itertuples(index=False):
        first = int(rng(seed, "eval-order", p.pair_id).integers(2))  # 0: chosen shown as A
        orders = (0, 1) if both_orders else (first,)
        for order in orders:
            a, b = (p.chosen, p.rejected) if order == 0 else (p.rejected, p.chosen)
            user = (f"Question: {p.instruction}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
                    f"Which answer would {'this person' if with_persona else 'the user'} prefer? "
                    'Reply with JSON: {"preferred": "A"} or {"preferred": "B"}.')
            messages = _with_persona(p.persona if with_persona else None,
                                     PAIRWISE_PERSONA if with_persona else PAIRWISE_PLAIN)
            ask = Ask(key=f"pairwise/{cond}/{p.pair_id}/{'AB'[order]}", schema=PREFERENCE_SCHEMA,
                      messages=messages + [{"role": "user", "content": user}])
            out.append((ask, {"pair_id": p.pair_id, "persona_id": p.persona_id, "split": p.split,
                              "condition": cond, "chosen_position": "AB"[order]}))
    return out


def score_pairwise(asks: list[tuple[Ask, dict]], outcomes: dict[str, Outcome]) -> pd.DataFrame:
    """One row per ask: the raw choice (a position) and whether it names the chosen answer."""
    rows = []
    for ask, meta in asks:
        o = outcomes[ask.key]
        choice = o.value["preferred"] if o.ok else None
        rows.append({**meta, "choice": choice, "correct": None if choice is None else choice == meta["chosen_position"],
                     "reason": o.reason})
    return pd.DataFrame(rows, columns=["pair_id", "persona_id", "split", "condition", "chosen_position", "choice",
                                       "correct", "reason"])


# --------------------------------------------------------------------- 2. generative modes

PERSONALISE = ("Answer the question below for the person described above. Tailor the answer subtly to who they "
               "are, without listing their attributes back to them, and keep it helpful.")
MODE_INSTRUCTIONS = {
    "output_only": PERSONALISE + " Output only the answer.",
    "chain_of_thought": PERSONALISE + " First think step by step about what in their background matters for this "
                                      "question, then give the answer.",
    "demographic_summary": PERSONALISE + " First summarise in a sentence or two the attributes of this person "
                                         "that matter for this question, then give the answer.",
}
STEP_FIELD = {"chain_of_thought": "reasoning", "demographic_summary": "summary"}


def answer_schema(mode: str, max_answer_chars: int) -> dict:
    # property order is generation order: the reasoning / summary is written before the answer
    step = STEP_FIELD[mode]
    return {"type": "object",
            "properties": {step: {"type": "string", "maxLength": STEP_CHARS},
                           "answer": {"type": "string", "minLength": 1, "maxLength": max_answer_chars}},
            "required": [step, "answer"], "additionalProperties": False}


def answer_asks(items: pd.DataFrame, modes: tuple[str, ...], max_tokens: int) -> tuple[list[Ask], list[dict]]:
    """The distinct asks for every (persona, question) item in every mode, and one row per (mode,
    item) naming its ask's key. The baseline answer does not see the persona, so there is one ask per
    question, judged once per persona that got it."""
    asks: dict[str, Ask] = {}
    rows = []
    for it in items.itertuples(index=False):
        question = {"role": "user", "content": it.instruction}
        for mode in modes:
            if mode == "baseline":
                key, messages = f"answer/baseline/{it.prompt_id}", [question]
            else:
                key = f"answer/{mode}/{it.persona_id}/{it.prompt_id}"
                messages = _with_persona(it.persona, MODE_INSTRUCTIONS[mode]) + [question]
            if mode in STEP_FIELD:
                asks[key] = Ask(key=key, messages=messages, schema=answer_schema(mode, 4 * max_tokens),
                                max_tokens=max_tokens + STEP_CHARS // 3)
            else:
                asks.setdefault(key, Ask(key=key, messages=messages))
            rows.append({"mode": mode, "persona_id": it.persona_id, "prompt_id": it.prompt_id, "key": key})
    return list(asks.values()), rows


def parse_plain(text: str) -> dict:
    if not text.strip():
        raise ValueError("empty: no answer text")
    return {"answer": text.strip()}


def parse_structured(text: str) -> dict:
    """{"reasoning"|"summary": ..., "answer": ...}; one cut off by max_tokens fails here and is retried."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at {e.pos}") from None
    if not isinstance(value, dict) or not str(value.get("answer", "")).strip():
        raise ValueError("schema: no answer")
    return value


JUDGE_INSTRUCTION = (
    "You know the person described above well. An AI assistant answered a question this person asked. "
    "Decide whether the answer still needs revision to be subtly personalised for this person (their "
    "background, values, circumstances and preferences) while staying helpful. An answer that ignores who "
    "they are, or that recites their attributes back to them, needs revision. Give a short reason, then "
    "the verdict.")


def judge_ask(key: str, persona: str, instruction: str, answer: str, labels_swapped: bool = False) -> Ask:
    labels = (NO_REVISION, NEEDS_REVISION) if labels_swapped else (NEEDS_REVISION, NO_REVISION)
    user = (f"Question: {instruction}\n\nThe assistant's answer:\n{answer}\n\n"
            f'Reply with JSON: {{"reason": "...", "verdict": "{labels[0]}" or "{labels[1]}"}}.')
    return Ask(key=key, schema=REVISION_SCHEMA,
               messages=_with_persona(persona, JUDGE_INSTRUCTION) + [{"role": "user", "content": user}])


def judge_answers(items: pd.DataFrame, answers: dict[tuple, Outcome], run, label_control: bool = False) -> pd.DataFrame:
    """Judge every (mode, persona, question) answer; one row each with the verdict.

    An answer the subject never produced (a reject after all attempts) counts as needing revision:
    the mode failed for that persona. A verdict the judge never produced is left out and counted.
    With `label_control` every answer is judged a second time with the two verdict labels named in
    the other order (`verdict_swapped`): a judge whose verdict follows that order is not reading the
    answer (measured: SmolLM2-135M picks whichever label comes first, every time).
    """
    rows, asks = [], []
    item = {(it.persona_id, it.prompt_id): it for it in items.itertuples(index=False)}
    for (mode, persona_id, prompt_id), o in answers.items():
        it = item[(persona_id, prompt_id)]
        row = {"mode": mode, "persona_id": persona_id, "prompt_id": prompt_id, "answer_ok": o.ok,
               "answer": o.value["answer"] if o.ok else None, "answer_reason": o.reason}
        if o.ok:
            for swapped in (False, True) if label_control else (False,):
                key = f"judge{'-swapped' if swapped else ''}/{mode}/{persona_id}/{prompt_id}"
                asks.append(judge_ask(key, it.persona, it.instruction, row["answer"], swapped))
        rows.append(row)
    verdicts = run(JUDGE, asks, lambda t: parse_json(t, REVISION_SCHEMA))
    for row in rows:
        where = f"{row['mode']}/{row['persona_id']}/{row['prompt_id']}"
        v = verdicts.get(f"judge/{where}")
        if v is None:
            row.update(verdict=NEEDS_REVISION, judge_ok=True, reason="no usable answer")
        else:
            row.update(verdict=v.value["verdict"] if v.ok else None, judge_ok=v.ok,
                       reason=v.value["reason"] if v.ok else v.reason)
        w = verdicts.get(f"judge-swapped/{where}")
        row["verdict_swapped"] = w.value["verdict"] if w is not None and w.ok else None
    return pd.DataFrame(rows, columns=["mode", "persona_id", "prompt_id", "answer_ok", "answer", "answer_reason",
                                       "verdict", "judge_ok", "reason", "verdict_swapped"])


# ------------------------------------------------------------------ 3. leave-one-out probe

def split_persona(text: str) -> dict[str, str]:
    """Persona text ("key: value" lines in ATTRIBUTES order) -> {attribute: line(s)}; a value that
    spans lines keeps its continuation lines."""
    starts = {a.replace("_", " ") + ": ": a for a in ATTRIBUTES}
    parts: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        attr = next((a for prefix, a in starts.items() if line.startswith(prefix)), None)
        if attr is not None and attr not in parts:
            current = attr
            parts[attr] = line
        elif current is not None:
            parts[current] += line
        else:
            raise ValueError(f"persona text does not start with an attribute line: {line[:60]!r}")
    return parts


def without(text: str, attribute: str) -> str:
    parts = split_persona(text)
    if attribute not in parts:
        raise ValueError(f"persona has no attribute {attribute!r}")
    return "".join(v for a, v in parts.items() if a != attribute)


def probe_asks(judged: pd.DataFrame, items: pd.DataFrame, attributes: list[str]) -> list[tuple[Ask, dict]]:
    """One judge ask per (judged answer, attribute), with that attribute left out of the persona."""
    item = {(it.persona_id, it.prompt_id): it for it in items.itertuples(index=False)}
    out = []
    for row in judged.itertuples(index=False):
        it = item[(row.persona_id, row.prompt_id)]
        for attribute in attributes:
            key = f"probe/{attribute}/{row.mode}/{row.persona_id}/{row.prompt_id}"
            out.append((judge_ask(key, without(it.persona, attribute), it.instruction, row.answer),
                        {"attribute": attribute, "mode": row.mode, "persona_id": row.persona_id,
                         "prompt_id": row.prompt_id, "full_verdict": row.verdict}))
    return out


# ----------------------------------------------------------------------------- sampling

def _pick(n: int, k: int, *purpose) -> list[int]:
    """Sorted positions of a seeded sample of min(k, n) out of n, without replacement."""
    return sorted(rng(*purpose).choice(n, size=min(k, n), replace=False)) if n else []


def sample_items(pairs: pd.DataFrame, seed: int, personas: int, questions: int) -> pd.DataFrame:
    """Seeded (persona, question) items for the generative evaluation, from the given pairs."""
    cols = ["persona_id", "prompt_id", "persona", "instruction"]
    ids = sorted(pairs.persona_id.unique())
    rows = []
    for pid in sorted(ids[i] for i in _pick(len(ids), personas, seed, "eval-personas")):
        own = pairs[pairs.persona_id == pid].drop_duplicates("prompt_id").sort_values("prompt_id")
        rows.append(own.iloc[_pick(len(own), questions, seed, "eval-questions", pid)][cols])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


def sample_pairs(pairs: pd.DataFrame, seed: int, split: str, limit: int | None) -> pd.DataFrame:
    part = pairs[pairs.split == split].sort_values("pair_id").reset_index(drop=True)
    if limit is None:
        return part
    return part.iloc[_pick(len(part), limit, seed, "eval-pairs", split)].reset_index(drop=True)


# ----------------------------------------------------------------------------- summaries

def _rate(flags, groups, seed: int, *where, resamples: int) -> dict:
    flags = [bool(f) for f in flags]
    ci = bootstrap_ci(flags, derive_seed(seed, "bootstrap", *where), groups=list(groups), resamples=resamples)
    return {"value": round(sum(flags) / len(flags), 4) if flags else None,
            "ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None, "n": len(flags)}


def summarize_pairwise(rows: pd.DataFrame, seed: int, splits: tuple[str, ...], resamples: int = 2000) -> dict:
    """Accuracy on the chosen answer per condition, overall and per split, with 95% intervals
    (personas resampled), and how the raw choice depends on the position."""
    out = {}
    for cond in ("persona", "no_persona"):
        part = rows[rows.condition == cond]
        if part.empty:
            continue
        scored = part[part.correct.notna()]
        entry = {"overall": {**_rate(scored.correct, scored.persona_id, seed, cond, "all", resamples=resamples),
                             "rejects": int(len(part) - len(scored))}}
        for split in splits:
            s, sc = part[part.split == split], scored[scored.split == split]
            if len(s):
                entry[split] = {**_rate(sc.correct, sc.persona_id, seed, cond, split, resamples=resamples),
                                "rejects": int(len(s) - len(sc))}
        at = {pos: scored[scored.chosen_position == pos] for pos in "AB"}
        entry["position"] = {
            "share_choosing_A": round(float((scored.choice == "A").mean()), 4) if len(scored) else None,
            "accuracy_when_chosen_is_A": round(float(at["A"].correct.mean()), 4) if len(at["A"]) else None,
            "accuracy_when_chosen_is_B": round(float(at["B"].correct.mean()), 4) if len(at["B"]) else None,
            "n_chosen_A": int(len(at["A"])), "n_chosen_B": int(len(at["B"])),
        }
        both = scored.groupby("pair_id").filter(lambda g: len(g) == 2)
        if len(both):  # asked in both orders: a consistent judge flips its raw letter with the order
            same_answer = both.groupby("pair_id").correct.nunique() == 1
            entry["position"]["order_consistency"] = round(float(same_answer.mean()), 4)
            entry["position"]["pairs_in_both_orders"] = int(len(same_answer))
        out[cond] = entry
    return out


def summarize_generative(judged: pd.DataFrame, seed: int, resamples: int = 2000) -> dict:
    """Share of answers needing no revision per mode (personas resampled for the interval)."""
    modes = {}
    for mode in MODES:
        part = judged[judged["mode"] == mode]
        if part.empty:
            continue
        graded = part[part.verdict.notna()]
        modes[mode] = {**_rate(graded.verdict == NO_REVISION, graded.persona_id, seed, "generative", mode,
                               resamples=resamples),
                       "answer_rejects": int((~part.answer_ok).sum()), "judge_rejects": int(part.verdict.isna().sum())}
    scored = {m: v["value"] for m, v in modes.items() if v["value"] is not None}
    best = max(scored.values(), default=None)
    out = {"modes": modes, "best_mode": sorted(m for m, v in scored.items() if v == best) if scored else []}
    both = judged[judged.verdict.notna() & judged.verdict_swapped.notna()]
    if len(both):
        out["label_order_consistency"] = round(float((both.verdict == both.verdict_swapped).mean()), 4)
        out["label_order_checked"] = int(len(both))
    return out


def summarize_probe(rows: pd.DataFrame) -> dict:
    """Per attribute: Cohen's kappa between the full-persona and the attribute-left-out verdicts
    (None when undefined: every verdict the same on both sides), raw agreement and share changed."""
    out = {}
    for attribute, part in rows.groupby("attribute", sort=False):
        part = part[part.full_verdict.notna() & part.verdict.notna()]
        agree = (part.full_verdict == part.verdict)
        k = cohen_kappa(part.full_verdict.tolist(), part.verdict.tolist())
        out[attribute] = {"kappa": None if k is None else round(k, 4),
                          "agreement": round(float(agree.mean()), 4) if len(part) else None,
                          "changed": int((~agree).sum()), "n": int(len(part))}
    return out
