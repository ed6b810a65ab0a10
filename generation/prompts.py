"""The prompts side of PERSONA (arXiv 2407.17387, section 3.2): PRISM opening prompts (read by
prompt_sources.py) -> rule filter -> dedup -> LLM "controversial?" classifier -> topic-stratified
train / held-out split -> per-persona assignment of prompts to the train / test_seen / test_unseen splits.
"""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd

from .flow import Ask
from .ids import rng, stable_id
from .names import SPLITS
from .prompt_sources import PromptsError, read_prompts
from .results import StageResult

# ------------------------------------------------------------------------------------- rules and dedup

def normalise(text: str) -> str:
    """Whitespace-collapsed, case-folded text: the identity of a prompt for dedup and ids."""
    return " ".join(text.split()).casefold()


def prompt_id(text: str) -> str:
    return stable_id("prompt", normalise(text))


# Not a paper rule: a guard against a damaged or hostile source (one 50 MB "prompt" would be sent to
# every model role). PRISM opening prompts are short: the longest of the 8,011 has 1,195 characters.
MAX_PROMPT_CHARS = 4000


def passes_rules(text: str) -> bool:
    """Paper section 3.2: a question mark and at least 5 whitespace-separated words; and at most
    MAX_PROMPT_CHARS characters."""
    return "?" in text and len(text.split()) >= 5 and len(text) <= MAX_PROMPT_CHARS


def filter_prompts(prompts: list[str]) -> tuple[pd.DataFrame, dict]:
    """Rule filter then dedup (exact, then normalised; first occurrence kept).

    Returns DataFrame[prompt_id, text] in source order and stats with the count after every step.
    """
    no_q = sum("?" not in p for p in prompts)
    too_short = sum("?" in p and len(p.split()) < 5 for p in prompts)
    passed = [p for p in prompts if passes_rules(p)]
    exact, seen_exact = [], set()
    for p in passed:
        if p not in seen_exact:
            seen_exact.add(p)
            exact.append(p)
    kept, seen_norm = [], set()
    for p in exact:
        n = normalise(p)
        if n not in seen_norm:
            seen_norm.add(n)
            kept.append(p)
    stats = {
        "input": len(prompts),
        "no_question_mark": no_q,
        "too_short": too_short,  # have "?" but fewer than 5 words
        "too_long": len(prompts) - no_q - too_short - len(passed),  # pass the paper's rules, > MAX_PROMPT_CHARS
        "passed_rules": len(passed),
        "duplicates_exact": len(passed) - len(exact),
        "duplicates_normalised": len(exact) - len(kept),
        "after_dedup": len(kept),
    }
    table = pd.DataFrame({"prompt_id": [prompt_id(p) for p in kept], "text": [p.strip() for p in kept]})
    return table, stats


# ------------------------------------------------------------------------------------------ classifier

# Fixed topic list, modelled on the topic clusters PRISM reports for its opening prompts (Kirk et al.
# 2024) with the long tail folded into "Other"; the enum keeps the classifier's answer closed.
TOPICS = (
    "Abortion",
    "Artificial Intelligence",
    "Climate Change & Environment",
    "Economic Policy & Inequality",
    "Education",
    "Elections & Political Parties",
    "Food & Diet",
    "Gender & LGBTQ+",
    "Health & Medicine",
    "Immigration",
    "Israel-Palestine",
    "Job Search & Careers",
    "Law & Crime",
    "Managing Relationships",
    "Parenting & Family",
    "Personal Finance",
    "Popular Culture",
    "Race & Racism",
    "Religion & Spirituality",
    "Technology",
    "Travel",
    "War & International Affairs",
    "Work",
    "Other",
)

# Topic first: naming what the question is about before judging it grounds the controversy call.
CLASSIFY_SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "enum": list(TOPICS)},
        "controversial": {"type": "boolean"},
    },
    "required": ["topic", "controversial"],
    "additionalProperties": False,
}

# One fixed system message for every prompt, so all classifier requests share a cached prefix.
CLASSIFY_SYSTEM = (
    "You label questions that people asked an AI assistant at the start of a conversation.\n"
    "For the question you are given, decide:\n"
    "- topic: the one topic from the list below that fits best (\"Other\" if none fits).\n"
    "- controversial: true if people with different backgrounds, values, beliefs or life "
    "circumstances would want meaningfully different answers to it, for example because it touches "
    "on politics, religion, morality, identity or lifestyle, or because the best answer depends on "
    "personal values; false if essentially one answer suits everyone (facts, definitions, "
    "calculations, technical how-to).\n"
    "Topics: " + "; ".join(TOPICS) + ".\n"
    'Answer with a JSON object only: {"topic": "<topic>", "controversial": true or false}.'
)


def classify_ask(pid: str, text: str) -> Ask:
    return Ask(key=f"classify/{pid}", messages=[
        {"role": "system", "content": CLASSIFY_SYSTEM},
        {"role": "user", "content": f"Question: {text}"},
    ], schema=CLASSIFY_SCHEMA)


def parse_classification(text: str) -> dict:
    """The classifier's JSON -> {"topic", "controversial"}; ValueError with a short reason otherwise."""
    s = text.strip()
    if s.startswith("```"):  # tolerate a fenced block from models run without structured output
        s = s.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        raise ValueError("not json") from None
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    if obj.get("topic") not in TOPICS:
        raise ValueError("unknown topic")
    if not isinstance(obj.get("controversial"), bool):
        raise ValueError("controversial not a boolean")
    return {"topic": obj["topic"], "controversial": obj["controversial"]}


def classify(table: pd.DataFrame, run, seed: int, classify_limit: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Ask the "prompt_classifier" role about each prompt of `table` [prompt_id, text]; keep the
    controversial ones as [prompt_id, text, topic].

    `classify_limit`: classify only a seeded sample of that many prompts (source order kept), for small
    builds. Classifier rejects are excluded and listed in stats["rejects"] (id, step, reasons, raw).
    """
    if classify_limit is not None:
        if classify_limit < 1:
            raise PromptsError(f"classify_limit must be >= 1 or None, got {classify_limit}")
        if classify_limit < len(table):
            pick = np.sort(rng(seed, "classify_sample").choice(len(table), classify_limit, replace=False))
            table = table.iloc[pick]
    asks = [classify_ask(pid, text) for pid, text in zip(table.prompt_id, table.text)]
    outcomes = run("prompt_classifier", asks, parse_classification)
    rows, rejects = [], []
    for pid, text, ask in zip(table.prompt_id, table.text, asks):
        o = outcomes[ask.key]
        if not o.ok:
            rejects.append({"id": pid, "step": "classify", "reasons": [o.reason], "raw": o.text})
        elif o.value["controversial"]:
            rows.append((pid, text, o.value["topic"]))
    kept = pd.DataFrame(rows, columns=["prompt_id", "text", "topic"])
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reasons"][0]] = reasons.get(r["reasons"][0], 0) + 1
    stats = {
        "classify_limit": classify_limit,
        "classified": len(asks),
        "classifier_rejects": len(rejects),
        "classifier_rejects_by_reason": reasons,
        "controversial": len(kept),
        "not_controversial": len(asks) - len(rejects) - len(kept),
        "topics": {k: int(v) for k, v in kept.topic.value_counts().sort_index().items()},
        "rejects": rejects,
    }
    return kept, stats


# ---------------------------------------------------------------------------------------------- split

PAPER_HELDOUT_FRACTION = 868 / 3868  # the paper's 3,000 train / 868 held-out prompts


def split_prompts(table: pd.DataFrame, seed: int, heldout_fraction: float = PAPER_HELDOUT_FRACTION) -> pd.DataFrame:
    """Add `pool` ("train" / "heldout") to `table` [prompt_id, topic, ...], stratified by topic.

    The held-out total is round(n * fraction); each topic gets floor(n_t * fraction) and the leftover
    places go to the topics with the largest remainders (ties by topic name), so every topic's held-out
    count is within one prompt of its exact share. Which prompts of a topic are held out is a seeded
    shuffle within the topic. Row order is unchanged.
    """
    if not 0 <= heldout_fraction < 1:
        raise PromptsError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if table.prompt_id.duplicated().any():
        raise PromptsError("split_prompts: duplicate prompt_id")
    sizes = table.topic.value_counts().sort_index()
    exact = sizes * heldout_fraction
    quota = np.floor(exact).astype(int)
    leftover = int(round(len(table) * heldout_fraction)) - int(quota.sum())
    # largest remainder first; a stable sort on the name-sorted index breaks ties by topic name
    order = (exact - quota).sort_values(ascending=False, kind="stable").index[:leftover]
    quota[order] += 1
    heldout = set()
    for topic, group in table.groupby("topic", sort=True):
        ids = np.sort(group.prompt_id.to_numpy())  # independent of input row order
        heldout.update(rng(seed, "split", topic).permutation(ids)[: quota[topic]])
    return table.assign(pool=np.where(table.prompt_id.isin(heldout), "heldout", "train"))


# ----------------------------------------------------------------------------------------- assignment

_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def pair_ids(persona_ids, prompt_ids) -> list[str]:
    """stable_id(persona_id, prompt_id) for many pairs, ~3x faster: for string ids that JSON writes
    verbatim (no quotes, backslashes or control characters) the canonical text is just '["a","b"]'."""
    plain = {s for s in {*persona_ids, *prompt_ids} if isinstance(s, str) and not _NEEDS_ESCAPE.search(s)}
    return [hashlib.sha256(f'["{a}","{b}"]'.encode()).hexdigest()[:16] if a in plain and b in plain
            else stable_id(a, b) for a, b in zip(persona_ids, prompt_ids)]


def assign(persona_ids, train_ids, heldout_ids, seed: int, train_per_persona: int = 150,
           n_train: int = 100, n_unseen: int = 50, cap: bool = False) -> StageResult:
    """Give every persona `train_per_persona` distinct train-pool prompts (the first `n_train` drawn ->
    split "train", the rest -> "test_seen") and `n_unseen` distinct held-out prompts ("test_unseen").

    Each persona's draw uses its own generator rng(seed, "assign", persona_id), so it does not depend on
    the other personas or their order. Pools smaller than asked for: an error by default; with
    `cap=True` the counts shrink to the pool (train/test_seen keep their ratio) and stats say so.
    Returns DataFrame[pair_id, persona_id, prompt_id, split] (persona order as given, then split,
    then draw order) and stats.
    """
    persona_ids, train_ids, heldout_ids = (np.asarray(list(x), dtype=object)
                                           for x in (persona_ids, train_ids, heldout_ids))
    for name, ids in (("persona", persona_ids), ("train prompt", train_ids), ("held-out prompt", heldout_ids)):
        if len(set(ids)) != len(ids):
            raise PromptsError(f"assign: duplicate {name} ids")
    if set(train_ids) & set(heldout_ids):
        raise PromptsError("assign: a prompt is in both the train and the held-out pool")
    if not 0 <= n_train <= train_per_persona or n_unseen < 0:
        raise PromptsError("assign: need 0 <= n_train <= train_per_persona and n_unseen >= 0")
    want = (train_per_persona, n_train, n_unseen)
    if train_per_persona > len(train_ids) or n_unseen > len(heldout_ids):
        if not cap:
            raise PromptsError(
                f"assign: each persona needs {train_per_persona} train-pool and {n_unseen} held-out prompts, "
                f"but the pools have {len(train_ids)} and {len(heldout_ids)} (classify more prompts, or "
                "lower pairs.train_per_persona / pairs.n_unseen)")
        if train_per_persona > len(train_ids):
            n_train = round(n_train * len(train_ids) / train_per_persona)
            train_per_persona = len(train_ids)
        n_unseen = min(n_unseen, len(heldout_ids))
    per = train_per_persona + n_unseen
    prompt_block = np.empty((len(persona_ids), per), dtype=object)
    for i, pid in enumerate(persona_ids):
        g = rng(seed, "assign", pid)
        # a permutation's prefix is a uniform draw without replacement
        prompt_block[i, :train_per_persona] = train_ids[g.permutation(len(train_ids))[:train_per_persona]]
        prompt_block[i, train_per_persona:] = heldout_ids[g.permutation(len(heldout_ids))[:n_unseen]]
    split_row = np.array(["train"] * n_train + ["test_seen"] * (train_per_persona - n_train)
                         + ["test_unseen"] * n_unseen)
    persona_col = np.repeat(persona_ids, per)
    prompt_col = prompt_block.reshape(-1)
    table = pd.DataFrame({
        "pair_id": pair_ids(persona_col, prompt_col),
        "persona_id": persona_col,
        "prompt_id": prompt_col,
        "split": np.tile(split_row, len(persona_ids)),
    })
    stats = {
        "personas": len(persona_ids),
        "train_pool": len(train_ids),
        "heldout_pool": len(heldout_ids),
        "requested": dict(zip(("train_per_persona", "n_train", "n_unseen"), want)),
        "effective": {"train_per_persona": train_per_persona, "n_train": n_train, "n_unseen": n_unseen},
        "capped": (train_per_persona, n_train, n_unseen) != want,
        "pairs": len(table),
        "per_split": {s: int((table.split == s).sum()) for s in SPLITS},
    }
    return StageResult(table, stats)


# ---------------------------------------------------------------------------------------- whole stage

def read_pool(source: str, text_field: str = "text", sha256: str | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Read -> rule filter -> dedup, no model involved: (the prompts to classify, filter counts, provenance).
    A build calls it before any model request, so a bad source costs nothing; a source where no prompt
    passes the rules is a PromptsError saying so."""
    prompts, provenance = read_prompts(source, text_field, sha256)
    filtered, stats = filter_prompts(prompts)
    if filtered.empty:
        raise PromptsError(f"{source}: none of its {stats['input']:,} prompts passes the rules (a '?', at least 5 "
                           f"words, at most {MAX_PROMPT_CHARS:,} characters): {stats['no_question_mark']:,} without "
                           f"'?', {stats['too_short']:,} too short, {stats['too_long']:,} too long")
    return filtered, stats, provenance


def select_prompts(source: str, run, seed: int, text_field: str = "text", sha256: str | None = None,
                   classify_limit: int | None = None, heldout_fraction: float = PAPER_HELDOUT_FRACTION,
                   pool: tuple[pd.DataFrame, dict, dict] | None = None) -> StageResult:
    """Read -> rule filter -> dedup -> classify -> split: the prompts table [prompt_id, text, topic, pool],
    counts {filter, classify, split}, the classifier's rejects and the source's provenance. `pool`:
    what `read_pool` returned for this source, when it was read already."""
    filtered, filter_stats, provenance = pool or read_pool(source, text_field, sha256)
    kept, classify_stats = classify(filtered, run, seed, classify_limit)
    table = split_prompts(kept, seed, heldout_fraction)
    split_stats = {
        "heldout_fraction": heldout_fraction,
        "train": int((table.pool == "train").sum()),
        "heldout": int((table.pool == "heldout").sum()),
    }
    rejects = classify_stats.pop("rejects")
    return StageResult(table, {"filter": filter_stats, "classify": classify_stats, "split": split_stats}, rejects,
                       provenance)
