"""Preference pairs (PERSONA, arXiv 2407.17387, section 3.3 and appendix): for every assigned
(persona, prompt) pair

1. rejected: the "responder" answers the bare question, without the persona. The answer does not
   depend on the persona, so there is one request per distinct prompt (key `rejected/<prompt_id>`),
   shared by every persona that got the prompt: ~80x fewer responder calls at paper scale (317,200
   pairs, 3,868 prompts). The paper also generated this answer without the persona.
2. critique: the "critic" reads the persona, the question and that answer, says how the answer does
   and does not resonate with the persona and suggests changes (`EVALUATION: ... SUGGESTIONS: ...`).
3. chosen: the "reviser" rewrites the answer following the critique, subtly, without naming the
   persona's attributes (`REVISED PREFERENCE: ...`).

Critic and reviser requests carry the persona first in the system message followed by a fixed
instruction, so all requests of one persona share a prefix (vLLM prefix cache); asks are ordered by
persona. A pair whose step fails is a reject (step, reason, raw text kept), never silently dropped.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from typing import NamedTuple

import pandas as pd

from .errors import PersonaError
from .flow import Ask, Flow, Need, Outcome
from .names import SPLITS
from .results import StageResult


class PairsError(PersonaError, ValueError):
    pass


# ------------------------------------------------------------------------------------------- templates

CRITIC_INSTRUCTION = (
    "You know the person described above well. Someone showed them a question and an AI assistant's "
    "answer to it. Evaluate the answer from this person's point of view: how it does and does not "
    "resonate with their background, values, circumstances and preferences (content, tone, level of "
    "detail, what it takes for granted). Then suggest specific changes that would make it an answer "
    "this person would prefer.\n\n"
    "Reply in exactly this format:\n"
    "EVALUATION: <how the answer does and does not resonate with the person>\n"
    "SUGGESTIONS: <the specific changes to make>"
)

REVISER_INSTRUCTION = (
    "You will be given a question, an AI assistant's answer to it, and a critique of how well the answer "
    "suits the person described above. Rewrite the answer following the critique's suggestions so that "
    "this person would prefer it. Change it subtly: keep what already works, stay helpful and accurate, "
    "and never mention or allude to the person's attributes (no \"as a ...\", nothing about their age, "
    "job, family, location or beliefs). Address the answer to the person who asked, as the assistant.\n\n"
    "Reply in exactly this format:\n"
    "REVISED PREFERENCE: <the rewritten answer>"
)


# Structured variants (recipe option pairs.structured): the same two parts as JSON, so a small model
# cannot lose a header; the table stores the same canonical text either way.
CRITIQUE_SCHEMA = {
    "type": "object",
    "properties": {"evaluation": {"type": "string", "minLength": 1, "maxLength": 2000},
                   "suggestions": {"type": "string", "minLength": 1, "maxLength": 1500}},
    "required": ["evaluation", "suggestions"], "additionalProperties": False,
}
REVISION_SCHEMA = {
    "type": "object",
    "properties": {"revised_preference": {"type": "string", "minLength": 1, "maxLength": 6000}},
    "required": ["revised_preference"], "additionalProperties": False,
}
JSON_FORMAT = {
    "critic": 'Reply as JSON: {"evaluation": "<how the answer does and does not resonate with the person>", '
              '"suggestions": "<the specific changes to make>"}',
    "reviser": 'Reply as JSON: {"revised_preference": "<the rewritten answer>"}',
}


def _instruction(text_instruction: str, role: str, structured: bool) -> str:
    if not structured:
        return text_instruction
    return text_instruction.split("Reply in exactly this format:")[0] + JSON_FORMAT[role]


def persona_system(persona: str, instruction: str) -> str:
    # persona first: every request of one persona (and role) starts with the same tokens
    return f"PERSONA:\n{persona.strip()}\n\n{instruction}"


def rejected_ask(prompt_id: str, question: str) -> Ask:
    return Ask(key=f"rejected/{prompt_id}", messages=[{"role": "user", "content": question}])


def critique_ask(pair_id: str, persona: str, question: str, rejected: str, structured: bool = False) -> Ask:
    return Ask(key=f"critique/{pair_id}", messages=[
        {"role": "system", "content": persona_system(persona, _instruction(CRITIC_INSTRUCTION, "critic", structured))},
        {"role": "user", "content": f"QUESTION:\n{question}\n\nANSWER:\n{rejected}"},
    ], schema=CRITIQUE_SCHEMA if structured else None)


def word_bounds(rejected: str, fraction: float) -> tuple[int, int, int]:
    """(target, low, high) word counts for a revision within +-fraction of the rejected answer."""
    n = len(rejected.split())
    return n, math.floor(n * (1 - fraction)), math.ceil(n * (1 + fraction))


HEADER_TOKENS = 16       # room for "REVISED PREFERENCE:" (or the JSON wrapper) on top of the rewritten answer
REVISION_MARGIN = 1.0    # without length control a rewrite may run up to twice as long as the answer it rewrites
MIN_REVISION_TOKENS = 256  # a short answer may well be rewritten longer than that


class RevisionLimits(NamedTuple):
    """What bounds the reviser's budget: the recipe's reviser max_tokens and the model's max_model_len."""
    max_tokens: int
    max_model_len: int


def revision_budget(rejected_tokens: int, length_control: float | None, limits: RevisionLimits | None,
                    prompt_tokens: int = 0) -> int | None:
    """The reviser's max_tokens: a revision rewrites the whole answer, so its budget follows the length of
    the answer it rewrites instead of being one number for every answer (a flat budget cut off the rewrites of
    every long answer, each then decoded again from token zero; it also let a looping rewrite of a short answer
    run on).

    - length control f: ceil(rejected_tokens x (1 + f)) + HEADER_TOKENS (a longer rewrite fails the length
      rule anyway);
    - otherwise: max(MIN_REVISION_TOKENS, ceil(rejected_tokens x (1 + REVISION_MARGIN)) + HEADER_TOKENS);
    - never more than the recipe's reviser max_tokens (set it to 2 x the responder's + 16 so that a rewrite
      of the longest answer fits, as configs/paper.toml does) nor than the context leaves after the prompt
      (`prompt_tokens`, estimated by the caller).
    None (the role's max_tokens) when neither length control nor limits are given."""
    if length_control is not None and rejected_tokens:
        budget = math.ceil(rejected_tokens * (1 + length_control)) + HEADER_TOKENS
    elif limits is not None:
        budget = max(MIN_REVISION_TOKENS, math.ceil(rejected_tokens * (1 + REVISION_MARGIN)) + HEADER_TOKENS)
    else:
        return None
    if limits is not None:
        budget = min(budget, limits.max_tokens, max(limits.max_model_len - prompt_tokens, 1))
    return budget


def revise_ask(pair_id: str, persona: str, question: str, rejected: str, critique: str,
               length_control: float | None = None, max_tokens: int | None = None,
               attempt: int = 0, feedback: str | None = None, structured: bool = False) -> Ask:
    """The reviser's request (`max_tokens` from `revision_budget`). Per-pair parts (length target, feedback
    on a failed attempt) go at the end of the user message so the system message, and so the cached
    prefix, stays the same."""
    user = f"QUESTION:\n{question}\n\nANSWER:\n{rejected}\n\nCRITIQUE:\n{critique}"
    if length_control is not None:
        target, low, high = word_bounds(rejected, length_control)
        user += f"\n\nLENGTH: about {target} words (between {low} and {high})."
    if feedback:
        user += f"\n\nNOTE: {feedback}"
    key = f"revise/{pair_id}" if attempt == 0 else f"revise/{pair_id}/retry{attempt}"
    return Ask(key=key, messages=[
        {"role": "system", "content": persona_system(persona, _instruction(REVISER_INSTRUCTION, "reviser", structured))},
        {"role": "user", "content": user},
    ], max_tokens=max_tokens, schema=REVISION_SCHEMA if structured else None)


# --------------------------------------------------------------------------------------------- parsers

_MD = r"(?:\*\*|__|\*|_)?"  # optional markdown emphasis around a header


def _header(name: str) -> re.Pattern:
    """A header at the start of a line: `NAME:`, `**Name:**`, `**Name**:`, `## Name` (own line), ..."""
    return re.compile(rf"^[ \t>]*(?:#{{1,6}}[ \t]*)?{_MD}[ \t]*{name}[ \t]*{_MD}[ \t]*(?::|$){_MD}[ \t]*",
                      re.IGNORECASE | re.MULTILINE)


_EVALUATION = _header("EVALUATION")
_SUGGESTIONS = _header("SUGGESTIONS?")
_REVISED = _header(r"REVISED[ \t]+PREFERENCE")


_RULE_LINES = re.compile(r"(?:\n[ \t]*[-*_#=]+[ \t]*)+$")


def _clean(part: str) -> str:
    # a markdown rule ("---", "***") or lone emphasis marks closing a section are not content
    part = part.strip()
    if part[-1:] in "-*_#=":  # the only way _RULE_LINES can match; its scan costs ~0.1 ms per 2 kB answer
        part = _RULE_LINES.sub("", "\n" + part).strip()
    if part.count("**") % 2:  # "**EVALUATION: text**" leaves an unpaired closing "**"
        part = (part[:-2] if part.endswith("**") else part.removeprefix("**")).strip()
    return part


def parse_critique(text: str) -> dict:
    """`EVALUATION: ... SUGGESTIONS: ...` -> {"evaluation", "suggestions"} (headers case-insensitive,
    markdown bold/headings tolerated, either order, text before the first header ignored), or the
    structured variant's JSON object."""
    if text.lstrip().startswith("{"):
        obj = _json_object(text, ("evaluation", "suggestions"))
        for part in (obj["evaluation"], obj["suggestions"]):
            check_debris(part, "critique")
        return {"evaluation": obj["evaluation"], "suggestions": obj["suggestions"]}
    ev, su = _EVALUATION.search(text), _SUGGESTIONS.search(text)
    if ev is None:
        raise ValueError("missing EVALUATION")
    if su is None:
        raise ValueError("missing SUGGESTIONS")
    if ev.start() < su.start():
        evaluation, suggestions = text[ev.end():su.start()], text[su.end():]
    else:
        suggestions, evaluation = text[su.end():ev.start()], text[ev.end():]
    evaluation, suggestions = _clean(evaluation), _clean(suggestions)
    if not evaluation:
        raise ValueError("empty EVALUATION")
    if not suggestions:
        raise ValueError("empty SUGGESTIONS")
    for part in (evaluation, suggestions):
        check_debris(part, "critique")
    return {"evaluation": evaluation, "suggestions": suggestions}


def format_critique(c: dict) -> str:
    """The canonical text of a parsed critique (what the reviser sees and the table stores)."""
    return f"EVALUATION: {c['evaluation']}\nSUGGESTIONS: {c['suggestions']}"


def parse_revision(text: str) -> str:
    """`REVISED PREFERENCE: ...` -> the revised answer (header case-insensitive, markdown tolerated),
    or the structured variant's JSON object."""
    if text.lstrip().startswith("{"):
        answer = _json_object(text, ("revised_preference",))["revised_preference"]
    else:
        m = _REVISED.search(text)
        if m is None:
            raise ValueError("missing REVISED PREFERENCE")
        answer = _clean(text[m.end():])
        if not _words(answer):
            raise ValueError("empty REVISED PREFERENCE")
    check_debris(answer, "revision")
    return answer


def _json_object(text: str, keys: tuple[str, ...]) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError("invalid JSON: not an object")
    out = {}
    for k in keys:
        v = obj.get(k)
        if not isinstance(v, str) or not _words(v):
            raise ValueError(f"empty {k.upper()}")
        out[k] = v.strip()
    return out


# Text that is the prompt's scaffolding, not an answer: unfilled template fields, chat-template tokens,
# and our own distinctive section headers echoed back. Kept narrow: "{{", "Note:" or "Answer:" occur in
# real answers (code, FAQs), so they are not debris.
_DEBRIS = re.compile(r"\{\{\{|\}\}\}|\{(?:content|persona|question|answer|critique|rejected|chosen)\}"
                     r"|<\|[a-z_]+\|>|\[/?INST\]")
_LEAKED = {"critique": _header(r"(?:PERSONA|CRITIQUE|REVISED[ \t]+PREFERENCE)"),
           "revision": _header(r"(?:PERSONA|CRITIQUE|EVALUATION|SUGGESTIONS?|REVISED[ \t]+PREFERENCE)")}
# words one of which an ASCII text must hold for _LEAKED (case-insensitive) to match
_LEAKED_WORDS = {"critique": ("persona", "critique", "revised"),
                 "revision": ("persona", "critique", "evaluation", "suggestion", "revised")}


def check_debris(text: str, kind: str) -> None:
    """ValueError("template_debris: ...") when `text` holds template debris (a counted, retried reject)."""
    # quick tests first: a 70B-sized answer takes each regex ~0.1 ms, most answers have none of their characters
    m = None
    if any(c in text for c in "{}<["):
        m = _DEBRIS.search(text)
    if m is None and (not text.isascii() or any(w in text.lower() for w in _LEAKED_WORDS[kind])):
        m = _LEAKED[kind].search(text)
    if m:
        raise ValueError(f"template_debris: {m.group(0).strip()[:40]!r}")


def _words(text: str) -> bool:
    """Whether `text` holds a letter or a digit: "{{" or "..." alone is no answer (a small model's JSON
    field held "{{" and became a chosen answer), and no text of a real one lacks both."""
    return any(c.isalnum() for c in text)


def parse_answer(text: str) -> str:
    answer = text.strip()
    if not _words(answer):
        raise ValueError("empty answer")
    return answer


def check_revision(chosen: str, rejected: str, length_control: float | None) -> None:
    """Pair-specific checks `parse` cannot do (it sees only the text): raise ValueError("identical")
    or ValueError("length")."""
    if " ".join(chosen.split()) == " ".join(rejected.split()):
        raise ValueError("identical")
    if length_control is not None:
        _, low, high = word_bounds(rejected, length_control)
        if not low <= len(chosen.split()) <= high:
            raise ValueError("length")


FEEDBACK = {
    "identical": "Your previous rewrite repeated the answer unchanged. Make the changes the critique suggests.",
    "length": "Your previous rewrite had {words} words; keep it between {low} and {high} words.",
}


# ---------------------------------------------------------------------------------------------- build

COLUMNS = ["pair_id", "persona_id", "prompt_id", "split", "persona", "instruction", "rejected",
           "critique", "chosen", "rejected_tokens", "chosen_tokens", "rejected_model", "chosen_model"]
MODEL_COLUMNS = {"rejected_model": "responder", "chosen_model": "reviser"}  # column -> the role that wrote it
SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


def _check_inputs(personas: pd.DataFrame, prompts: pd.DataFrame, assignment: pd.DataFrame) -> None:
    for name, df, cols in (("personas", personas, ["persona_id", "persona"]),
                           ("prompts", prompts, ["prompt_id", "text"]),
                           ("assignment", assignment, ["pair_id", "persona_id", "prompt_id", "split"])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise PairsError(f"build_pairs: {name} lacks column(s) {', '.join(missing)}")
    if assignment.pair_id.duplicated().any():
        raise PairsError("build_pairs: duplicate pair_id in the assignment")
    for name, ids, known in (("persona_id", assignment.persona_id, personas.persona_id),
                             ("prompt_id", assignment.prompt_id, prompts.prompt_id)):
        unknown = sorted(set(ids) - set(known))
        if unknown:
            raise PairsError(f"build_pairs: assignment names unknown {name} {unknown[0]!r} ({len(unknown)} unknown)")


class _Pair(NamedTuple):
    """What one pair's flow ends with: its row or its reject, and how far it got (for the counts)."""
    row: dict | None
    reject: dict | None
    critiqued: bool
    revisions: int


def _pair_flow(p: dict, persona: str, question: str, length_control, max_attempts: int, structured: bool,
               limits: RevisionLimits | None = None, answers: dict[str, str] | None = None) -> Flow:
    """responder -> critic -> reviser for one pair, each request sent as soon as the one before is
    answered. Revisions failing "identical" or "length" are asked again (new key, a note on what was
    wrong) up to max_attempts in all; format failures are retried by the runner itself. `answers`
    (prompt_id -> rejected text) makes the rows of one prompt share one text object."""
    def reject(step: str, o: Outcome, reason: str | None = None, critiqued=False, revisions=0) -> _Pair:
        return _Pair(None, {"id": p["pair_id"], "step": step, "reasons": [reason or o.reason or "rejected"],
                            "raw": o.text}, critiqued, revisions)

    a = yield Need("responder", rejected_ask(p["prompt_id"], question), parse_answer)
    if not a.ok:
        return reject("rejected", a)
    c = yield Need("critic", critique_ask(p["pair_id"], persona, question, a.value, structured), parse_critique)
    if not c.ok:
        return reject("critique", c, critiqued=True)
    critique, feedback = format_critique(c.value), None
    # the reviser's prompt is about the critic's (same persona, question and answer) plus the critique
    budget = revision_budget(a.output_tokens, length_control, limits, c.prompt_tokens + c.output_tokens)
    for attempt in range(max_attempts):
        o = yield Need("reviser", revise_ask(p["pair_id"], persona, question, a.value, critique, length_control,
                                             budget, attempt, feedback, structured), parse_revision)
        if not o.ok:
            return reject("chosen", o, critiqued=True, revisions=attempt + 1)
        try:
            check_revision(o.value, a.value, length_control)
        except ValueError as e:
            reason = str(e)
            if attempt + 1 == max_attempts:
                return reject("chosen", o, reason, critiqued=True, revisions=attempt + 1)
            feedback = FEEDBACK[reason]
            if reason == "length":
                _, low, high = word_bounds(a.value, length_control)
                feedback = feedback.format(words=len(o.value.split()), low=low, high=high)
            continue
        # the runner reads a stored answer afresh for each batch of pairs asking for it: the rows of one prompt
        # share one text object instead of holding a copy each (~0.6 GB of a paper-size build's rows)
        rejected = a.value if answers is None else answers.setdefault(p["prompt_id"], a.value)
        rejected = rejected if rejected == a.value else a.value
        row = {**{k: p[k] for k in ("pair_id", "persona_id", "prompt_id", "split")}, "persona": persona,
               "instruction": question, "rejected": rejected, "critique": critique, "chosen": o.value,
               "rejected_tokens": a.output_tokens, "chosen_tokens": o.output_tokens}
        return _Pair(row, None, True, attempt + 1)


def build_pairs(personas: pd.DataFrame, prompts: pd.DataFrame, assignment: pd.DataFrame, run,
                length_control: float | None = None, max_attempts: int = 3,
                structured: bool = False, limits: RevisionLimits | None = None,
                models: dict[str, str] | None = None) -> StageResult:
    """Run responder -> critic -> reviser over `assignment` [pair_id, persona_id, prompt_id, split],
    one flow per pair (`_pair_flow`), all streamed through `run` at once.

    `length_control` (None or e.g. 0.15): the reviser is told a target length in words and a revision
    outside +-fraction in words is a "length" failure. The reviser's max_tokens follows the rejected
    answer's length (`revision_budget`, bounded by `limits`: the recipe's reviser max_tokens and the
    model's max_model_len). Returns the preferences table (COLUMNS, ordered by split [train, test_seen,
    test_unseen], persona_id, prompt_id), its counts, and every excluded pair as a reject
    {id: pair_id, step, reasons: [reason], raw}, so rows + rejects == assigned pairs. `models`: role ->
    "model id@revision", recorded in rejected_model (the responder's) and chosen_model (the reviser's);
    None where not given.
    """
    if length_control is not None and not 0 < length_control < 1:
        raise PairsError(f"length_control must be None or in (0, 1), got {length_control}")
    if max_attempts < 1:
        raise PairsError(f"max_attempts must be >= 1, got {max_attempts}")
    _check_inputs(personas, prompts, assignment)
    persona_text = dict(zip(personas.persona_id, personas.persona))
    question = dict(zip(prompts.prompt_id, prompts.text))
    # persona-major order: the requests of one persona are in flight together and share their prefix
    pairs = assignment.sort_values(["persona_id", "split", "prompt_id"], kind="stable").to_dict("records")
    answers: dict[str, str] = {}
    done = run.flows([_pair_flow(p, persona_text[p["persona_id"]], question[p["prompt_id"]], length_control,
                                 max_attempts, structured, limits, answers) for p in pairs], "pairs")
    del answers
    rejects = [d.reject for d in done if d.reject is not None]
    revisable, critiqued = sum(d.revisions > 0 for d in done), sum(d.critiqued for d in done)
    retries = sum(max(d.revisions - 1, 0) for d in done)
    # rows sorted before the frame is made: sorting the frame would copy every text (a paper-size build
    # holds ~1.6 GB of text per copy). (persona_id, prompt_id) is unique per pair, so the order is the one
    # the frame's sort gave.
    rows = sorted((d.row for d in done if d.row is not None),
                  key=lambda r: (SPLIT_ORDER[r["split"]], r["persona_id"], r["prompt_id"]))
    del done
    table = _frame(rows)
    for column, role in MODEL_COLUMNS.items():
        table[column] = (models or {}).get(role)
    stats = _pair_counts(assignment, table, rejects, len({p["prompt_id"] for p in pairs}),
                         critiqued, revisable, retries, length_control, max_attempts)
    return StageResult(table, stats, rejects)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a frame of COLUMNS but the model ones, emptying `rows` as it goes. The long texts
    (question, critique, chosen answer) stay the Python strings the flows made (object columns): pandas'
    default string dtype would copy them all into Arrow while the strings are still held (measured: +0.48 GB
    at 80,000 pairs, the build's peak); the shard writer converts them piece by piece. A persona's text
    repeats in each of its ~200 rows and an answer in each of its prompt's ~80: kept once each (categorical,
    written as plain strings) instead of ~1.1 GB of copies."""
    filled = [c for c in COLUMNS if c not in MODEL_COLUMNS]
    cols = {}
    for c in filled:
        values = [r.pop(c) for r in rows]
        cols[c] = (pd.Categorical(values) if c in ("persona", "rejected") else
                   pd.Series(values, dtype=object if c in ("instruction", "critique", "chosen") else None))
        del values
    rows.clear()
    return pd.DataFrame(cols, columns=filled, copy=False).astype({"rejected_tokens": "int64", "chosen_tokens": "int64"})


def _pair_counts(assignment, table, rejects, answers: int, critiques: int, revisable: int, retries: int,
                 length_control, max_attempts: int) -> dict:
    by_reason: dict[str, int] = {}
    by_step: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reasons"][0]] = by_reason.get(r["reasons"][0], 0) + 1
        by_step[r["step"]] = by_step.get(r["step"], 0) + 1
    stats = {
        "assigned": len(assignment),
        "pairs": len(table),
        "rejected_pairs": len(rejects),
        "rejects_by_step": by_step,
        "rejects_by_reason": by_reason,
        "requests": {"responder": answers, "critic": critiques, "reviser": revisable + retries},
        "revise_retries": retries,
        "length_control": length_control,
        "max_attempts": max_attempts,
        "per_split": {s: int((table.split == s).sum()) for s in SPLIT_ORDER},
    }
    return stats

def length_report(table: pd.DataFrame, length_control: float | None) -> dict:
    """How long chosen answers are vs rejected ones (the length confound a reader should know about).
    chosen_tokens include the few tokens of the "REVISED PREFERENCE:" header."""
    if table.empty:
        return {"pairs": 0, "length_control": length_control}
    ratio = (table.chosen_tokens / table.rejected_tokens.clip(lower=1)).tolist()
    return {
        "pairs": int(len(table)),
        "length_control": length_control,
        "median_chosen_tokens": float(statistics.median(table.chosen_tokens)),
        "median_rejected_tokens": float(statistics.median(table.rejected_tokens)),
        "median_chosen_over_rejected": round(float(statistics.median(ratio)), 4),
        "share_chosen_shorter": round(float((table.chosen_tokens < table.rejected_tokens).mean()), 4),
    }


# ------------------------------------------------------------------------------------------------ DPO

DPO_SYSTEM = "About the user you are talking to:\n{persona}"


def to_dpo(preferences: pd.DataFrame) -> pd.DataFrame:
    """TRL-style conversational preference rows. The persona goes into the prompt as a system message:
    the preference is conditional on who asks, so a pluralistically aligned model must see it."""
    return pd.DataFrame({
        "pair_id": preferences.pair_id,
        "persona_id": preferences.persona_id,
        "prompt_id": preferences.prompt_id,
        "split": preferences.split,
        "prompt": [[{"role": "system", "content": DPO_SYSTEM.format(persona=persona)},
                    {"role": "user", "content": q}]
                   for persona, q in zip(preferences.persona, preferences.instruction)],
        "chosen": [[{"role": "assistant", "content": c}] for c in preferences.chosen],
        "rejected": [[{"role": "assistant", "content": r}] for r in preferences.rejected],
    }).reset_index(drop=True)
