"""What manifest.json must be: `load_manifest` reads one (a local file or bytes from the Hub) and
checks every key the builder, verify, publish and eval rely on, so a malformed or hostile manifest is one
error naming the file and the key, never a traceback further on."""
from __future__ import annotations

import json
import re
from pathlib import Path

from generation.errors import PersonaError

FORMAT = "persona-manifest/1"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
PLOT = "fidelity.png"
CARD = "README.md"
# `<config>/<split>-00000-of-00003.parquet`, as written by builder.shards.write_config
SHARD = re.compile(r"(?P<config>[^/]+)/(?P<split>[^/]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet")
MAX_MANIFEST_BYTES = 64 << 20  # a real manifest is well under 1 MB; refuse to parse a runaway file
HEX64 = re.compile(r"[0-9a-f]{64}")
ECHO = 200  # at most this many characters of a manifest's value go into a message


class ManifestError(PersonaError):
    """manifest.json (or the folder it describes) is unreadable, malformed or unsafe; the message names
    the file and the key, e.g. `persona/manifest.json: files[3].sha256: expected a 64-hex string`."""


def load_manifest(source, where: str | None = None) -> dict:
    """Parse and check a manifest.json: `source` is its Path, or its text / bytes (e.g. from the Hub).

    Everything publish and verify rely on is checked here (types, keys, safe relative paths), so
    they can index the result freely. Any fault raises ONE ManifestError `<where>: <key>: <what>`.
    """
    if isinstance(source, Path):
        where = where or str(source)
        try:
            if source.stat().st_size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{where}: {source.stat().st_size:,} bytes, more than a manifest can be")
            source = source.read_bytes()
        except OSError as e:
            raise ManifestError(f"{where}: cannot be read ({e.strerror or type(e).__name__})") from None
    where = where or MANIFEST
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(f"{where}: not UTF-8 (byte {e.start})") from None
    try:
        manifest = json.loads(source, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ManifestError(f"{where}: nested too deeply to be a manifest") from None
    except ValueError as e:
        raise ManifestError(f"{where}: not valid JSON ({clip(str(e))})") from None
    try:
        _check_manifest(manifest)
    except _Bad as e:
        key, what = e.args
        raise ManifestError(f"{where}: {key}: {what}" if key else f"{where}: {what}") from None
    return manifest


class _Bad(Exception):
    """(key, what) of the first fault found by _check_manifest."""


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def clip(text: str) -> str:
    return text if len(text) <= ECHO else f"{text[:ECHO]}... ({len(text):,} characters)"


def key_path(parent: str, key) -> str:
    name = key if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) else json.dumps(clip(key))
    return f"{parent}.{name}" if parent else name


def _get(obj: dict, parent: str, key: str, kind, what: str):
    if key not in obj:
        raise _Bad(key_path(parent, key), "missing")
    return _want(obj[key], key_path(parent, key), kind, what)


def _want(value, key: str, kind, what: str):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is int and ok and value < 0:
        ok = False
    if not ok:
        raise _Bad(key, f"expected {what}, got {clip(json.dumps(value))}")
    return value


def path_problem(path) -> str | None:
    """Why `path` is not a safe relative POSIX path inside a folder (or a repo); None when it is.
    Checked here for every manifest path: the Hub client and the OS are not trusted to refuse them."""
    if not isinstance(path, str):
        return "expected a relative POSIX path"
    if not path:
        return "is empty"
    if "\\" in path:
        return "has a backslash"
    if path.startswith("/"):
        return "is absolute"
    if re.match(r"[A-Za-z]:", path):
        return "starts with a drive letter"
    if any(ord(c) < 32 for c in path):
        return "has a control character"
    parts = path.split("/")
    if "" in parts:
        return "has an empty part"
    if ".." in parts or "." in parts:
        return "has a '.' or '..' part"
    return None


def _want_path(value, key: str) -> str:
    why = path_problem(value)
    if why:
        raise _Bad(key, f"{clip(json.dumps(value))} {why}" if isinstance(value, str) else why)
    return value


def _check_manifest(m) -> None:
    if not isinstance(m, dict):
        raise _Bad("", "expected a JSON object")
    if m.get("format") != FORMAT:
        raise _Bad("format", f"expected {FORMAT!r}, got {clip(json.dumps(m.get('format')))}")
    fingerprint = _get(m, "", "fingerprint", str, "a 64-hex string")
    if not HEX64.fullmatch(fingerprint):
        raise _Bad("fingerprint", f"expected a 64-hex string, got {clip(json.dumps(fingerprint))}")
    seen = set()
    for i, f in enumerate(_get(m, "", "files", list, "a list")):
        key = f"files[{i}]"
        _want(f, key, dict, "an object")
        path = _want_path(_get(f, key, "path", str, "a relative POSIX path"), f"{key}.path")
        if path in seen:
            raise _Bad(f"{key}.path", f"{clip(json.dumps(path))} is listed twice")
        seen.add(path)
        _get(f, key, "bytes", int, "a byte count")
        if not HEX64.fullmatch(_get(f, key, "sha256", str, "a 64-hex string")):
            raise _Bad(f"{key}.sha256", f"expected a 64-hex string, got {clip(json.dumps(f['sha256']))}")
        if path.endswith(".parquet"):
            _get(f, key, "rows", int, "a row count")
        elif f.get("rows") is not None:
            _want(f["rows"], f"{key}.rows", int, "a row count or null")
    for config, splits in _get(m, "", "splits", dict, "an object").items():
        ckey = key_path("splits", config)
        for split, info in _want(splits, ckey, dict, "an object").items():
            key = key_path(ckey, split)
            _want(info, key, dict, "an object")
            _get(info, key, "rows", int, "a row count")
            for j, path in enumerate(_get(info, key, "files", list, "a list")):
                _want_path(path, f"{key}.files[{j}]")
                shard = SHARD.fullmatch(path)
                if not shard or (shard["config"], shard["split"]) != (config, split):
                    raise _Bad(f"{key}.files[{j}]", f"{clip(json.dumps(path))} is not a shard of this split")
    counts = _get(m, "", "counts", dict, "an object")
    for split, n in _get(counts, "counts", "pairs", dict, "an object {split: pairs}").items():
        _want(n, key_path("counts.pairs", split), int, "a pair count")
    if "personas" in counts:
        _get(counts, "counts", "personas", int, "a persona count")
    _check_requests_and_models(m, counts)


REQUEST_COUNTS = ("requests", "prompt_tokens", "output_tokens", "retries", "retry_output_tokens")


def _check_requests_and_models(m: dict, counts: dict) -> None:
    """counts.requests (per role: requests and tokens, what `persona plan` and the card read) and models (per
    role: id and revision). Optional, since older manifests lack parts; typed when present."""
    for role, r in _want(counts.get("requests", {}), "counts.requests", dict, "an object {role: counts}").items():
        key = key_path("counts.requests", role)
        _want(r, key, dict, "an object")
        for name in REQUEST_COUNTS:
            if name in r or name in REQUEST_COUNTS[:3]:  # retries were recorded later: optional
                _get(r, key, name, int, "a count")
    for role, info in _want(m.get("models", {}), "models", dict, "an object {role: model}").items():
        key = key_path("models", role)
        _want(info, key, dict, "an object")
        _get(info, key, "id", str, "a model id")
        if info.get("revision") is not None:
            _want(info["revision"], key_path(key, "revision"), str, "a revision or null")
