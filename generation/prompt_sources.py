"""Where PRISM prompts come from (`read_prompts`):
- a file: `.json` (a list of strings, or a list of objects with a text field), `.jsonl` (one string or
  object per line) or `.parquet` (a text column); the provenance records the file name, sha256 and rows,
  and an optional pinned sha256 must match; it must be UTF-8 without a byte-order mark;
- the Hugging Face dataset, pinned by revision, as `hf://<repo>@<revision>:<config>/<field>`, e.g.
  `hf://HannahRoseKirk/prism-alignment@<commit>:conversations/opening_prompt` (`<repo>` may also be a
  local folder with the Hub layout); a branch or tag is resolved to its commit first, the dataset read
  at that commit and the commit recorded in the provenance.
Rows are counted from 1 in error messages ("line N" for JSONL).
"""
from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PersonaError
from .ids import sha256_file


class PromptsError(PersonaError, ValueError):
    pass


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
