"""The prompts side of PERSONA (arXiv 2407.17387, section 3.2): PRISM opening prompts -> rule filter
-> dedup -> LLM "controversial?" classifier -> topic-stratified train / held-out split -> per-persona
assignment of prompts to the train / test_seen / test_unseen splits.

Sources (`read_prompts`):
- a file: `.json` (a list of strings, or a list of objects with a text field), `.jsonl` (one string or
  object per line) or `.parquet` (a text column); the provenance records path, sha256 and rows, and an
  optional pinned sha256 must match; it must be UTF-8 without a byte-order mark;
- the Hugging Face dataset, pinned by revision, as `hf://<repo>@<revision>:<config>/<field>`, e.g.
  `hf://HannahRoseKirk/prism-alignment@<commit>:conversations/opening_prompt` (`<repo>` may also be a
  local folder with the Hub layout); a branch or tag is resolved to its commit first, the dataset read
  at that commit and the commit recorded in the provenance.
Rows are counted from 1 in error messages ("line N" for JSONL).
"""
from __future__ import annotations

import codecs
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .engine import Ask
from .ids import rng, sha256_file, stable_id
from .errors import PersonaError
from .names import SPLITS


class PromptsError(PersonaError, ValueError):
    pass


# ---------------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class HubSource:
    repo: str
    revision: str
    config: str
    field: str


_HF = re.compile(r"^hf://(?P<repo>[^@:]+)@(?P<revision>[^:@]+):(?P<config>[^/]+)/(?P<field>[^/]+)$")


def parse_hf_source(source: str) -> HubSource:
    """`hf://<repo>@<revision>:<config>/<field>` -> HubSource. The revision is required: without it a
    rebuild could silently read different prompts (git refs cannot contain ':' or '@{', so the
    separators are unambiguous)."""
    m = _HF.match(source.strip())
    if not m:
        raise PromptsError(
            f"{source!r}: a Hub source must look like hf://<repo>@<revision>:<config>/<field>, e.g. "
            "hf://HannahRoseKirk/prism-alignment@<commit>:conversations/opening_prompt")
    return HubSource(**m.groupdict())


def _text_of(row, where: str, text_field: str) -> str:
    """One row (a string, or an object holding `text_field`) -> its text, or a PromptsError at `where`."""
    if isinstance(row, dict):
        if text_field not in row:
            raise PromptsError(f"{where}: no field {text_field!r} (fields: {', '.join(sorted(row)) or 'none'})")
        row = row[text_field]
        if not isinstance(row, str):
            raise PromptsError(f"{where}: field {text_field!r} is {type(row).__name__}, not a string")
    elif not isinstance(row, str):
        raise PromptsError(f"{where}: expected a string or an object with {text_field!r}, got {type(row).__name__}")
    try:
        row.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON escape such as "\ud800": no UTF-8 text can hold it (ids hash UTF-8)
        raise PromptsError(f"{where}: a lone surrogate {row[e.start]!r} at character {e.start + 1} (not valid Unicode)") from None
    return row


def _decode(path: Path, raw: bytes) -> str:
    if raw.startswith(codecs.BOM_UTF8):
        raise PromptsError(f"{path}: starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without a BOM")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptsError(f"{path}: not UTF-8 text: byte offset {e.start}: {e.reason}") from None


def _loads(text: str, where: str):
    """json.loads, with nesting too deep for Python's parser as a PromptsError (it raises RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise PromptsError(f"{where}: JSON nested too deeply to read") from None


def _read_json(path: Path, raw: str, text_field: str) -> list[str]:
    try:
        data = _loads(raw, str(path))
    except json.JSONDecodeError as e:
        raise PromptsError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, list):
        raise PromptsError(f"{path}: expected a JSON list of prompts, got {type(data).__name__}")
    return [_text_of(row, f"{path}: row {i}", text_field) for i, row in enumerate(data, 1)]


def _read_jsonl(path: Path, raw: str, text_field: str) -> list[str]:
    out = []
    # "\n" only: str.splitlines() also splits at U+2028 and other characters JSON strings may hold raw
    for i, line in enumerate(raw.split("\n"), 1):
        if not line.strip():
            continue  # blank lines (often a trailing one) are not rows
        try:
            row = _loads(line, f"{path}: line {i}")
        except json.JSONDecodeError as e:
            raise PromptsError(f"{path}: line {i}: not valid JSON (column {e.colno}: {e.msg})") from None
        out.append(_text_of(row, f"{path}: line {i}", text_field))
    return out


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise PromptsError(f"{path}: not a readable Parquet file ({e})") from None
    if text_field not in table.column_names:
        raise PromptsError(f"{path}: no column {text_field!r} (columns: {', '.join(table.column_names)})")
    values = table.column(text_field).to_pylist()
    for i, v in enumerate(values, 1):
        if not isinstance(v, str):
            raise PromptsError(f"{path}: row {i}: column {text_field!r} is {type(v).__name__}, not a string")
    return values


def read_file(path: str | Path, text_field: str = "text", sha256: str | None = None) -> tuple[list[str], dict]:
    """Prompts from a JSON / JSONL / Parquet file, and provenance {path, sha256, rows}."""
    path = Path(path)
    if not path.is_file():
        raise PromptsError(f"{path}: prompts file not found")
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise PromptsError(f"{path}: sha256 {digest} does not match the pinned {sha256}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        prompts = _read_parquet(path, text_field)
    elif suffix in (".json", ".jsonl"):
        raw = _decode(path, path.read_bytes())
        if not raw.strip():
            raise PromptsError(f"{path}: empty file")
        prompts = (_read_json if suffix == ".json" else _read_jsonl)(path, raw, text_field)
    else:
        raise PromptsError(f"{path}: unknown prompts file type {suffix!r} (use .json, .jsonl or .parquet)")
    if not prompts:
        raise PromptsError(f"{path}: no prompts")
    return prompts, {"file": path.name, "sha256": digest, "rows": len(prompts)}


def resolve_commit(src: HubSource) -> str | None:
    """The Hub commit that `src.revision` (a branch, tag or commit) names now; None for a local folder.
    The dataset is then read at that commit, so the provenance names exactly what was read."""
    if Path(src.repo).is_dir():
        return None
    if re.fullmatch(r"[0-9a-f]{40}", src.revision):
        return src.revision
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(src.repo, revision=src.revision).sha
    except Exception as e:  # offline, unknown repo or revision, network: several types
        raise PromptsError(f"hf://{src.repo}@{src.revision}: cannot resolve the revision to a commit "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None


def read_hub(src: HubSource, split: str = "train", cache_dir: str | None = None) -> tuple[list[str], dict]:
    """Prompts from a Hugging Face dataset at a pinned revision, and provenance
    {repo, config, revision, commit, rows} (commit: what the revision resolved to; None for a local folder)."""
    import datasets

    where = f"hf://{src.repo}@{src.revision}:{src.config}/{src.field}"
    commit = resolve_commit(src)
    ds = datasets.load_dataset(src.repo, src.config, revision=commit or src.revision, split=split, cache_dir=cache_dir)
    if src.field not in ds.column_names:
        raise PromptsError(f"{where}: no field {src.field!r} (fields: {', '.join(ds.column_names)})")
    prompts = list(ds[src.field])
    for i, v in enumerate(prompts, 1):
        if not isinstance(v, str):
            raise PromptsError(f"{where}: row {i}: field {src.field!r} is {type(v).__name__}, not a string")
    if not prompts:
        raise PromptsError(f"{where}: no prompts")
    return prompts, {"repo": src.repo, "config": src.config, "revision": src.revision, "commit": commit,
                     "rows": len(prompts)}


def read_prompts(source: str, text_field: str = "text", sha256: str | None = None) -> tuple[list[str], dict]:
    """Prompts and provenance from a file path or an `hf://` source (see the module docstring)."""
    if source.startswith("hf://"):
        if sha256 is not None:
            raise PromptsError(f"{source}: sha256 pins a file; a Hub source is pinned by its @revision")
        return read_hub(parse_hf_source(source))
    return read_file(source, text_field, sha256)


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
    builds. Classifier rejects are excluded and listed in stats["rejects"] (prompt_id, step, reason, raw).
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
            rejects.append({"prompt_id": pid, "step": "classify", "reason": o.reason, "raw": o.text})
        elif o.value["controversial"]:
            rows.append((pid, text, o.value["topic"]))
    kept = pd.DataFrame(rows, columns=["prompt_id", "text", "topic"])
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
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
           n_train: int = 100, n_unseen: int = 50, cap: bool = False) -> tuple[pd.DataFrame, dict]:
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
    return table, stats


# ---------------------------------------------------------------------------------------- whole stage

def select_prompts(source: str, run, seed: int, text_field: str = "text", sha256: str | None = None,
                   classify_limit: int | None = None,
                   heldout_fraction: float = PAPER_HELDOUT_FRACTION) -> tuple[pd.DataFrame, dict]:
    """Read -> rule filter -> dedup -> classify -> split. Returns the prompts table
    [prompt_id, text, topic, pool] and stats {source, filter, classify, split}."""
    prompts, provenance = read_prompts(source, text_field, sha256)
    filtered, filter_stats = filter_prompts(prompts)
    kept, classify_stats = classify(filtered, run, seed, classify_limit)
    table = split_prompts(kept, seed, heldout_fraction)
    split_stats = {
        "heldout_fraction": heldout_fraction,
        "train": int((table.pool == "train").sum()),
        "heldout": int((table.pool == "heldout").sum()),
    }
    return table, {"source": provenance, "filter": filter_stats, "classify": classify_stats, "split": split_stats}
