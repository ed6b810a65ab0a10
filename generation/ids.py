"""Stable ids and seeds: every random choice and every row id flows from the recipe seed and inputs."""
from __future__ import annotations

import hashlib
import json

import numpy as np


def canonical(obj) -> str:
    """JSON with sorted keys and no whitespace: the one serialisation we hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stable_id(*parts, n: int = 16) -> str:
    """Hex id of length `n` from any JSON-serialisable parts (order matters)."""
    return hashlib.sha256(canonical(list(parts)).encode()).hexdigest()[:n]


def derive_seed(*parts) -> int:
    """A 63-bit seed from the recipe seed and a record's identity (fits vLLM's int seed and numpy)."""
    return int(stable_id(*parts, n=16), 16) & 0x7FFF_FFFF_FFFF_FFFF


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in blocks (sources, model files and shards are pinned by it)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(recipe_text: str) -> str:
    """The recipe fingerprint: sha256 of its verbatim text (names a build; not what keys its answers)."""
    return hashlib.sha256(recipe_text.encode()).hexdigest()


def rng(*parts) -> np.random.Generator:
    """A numpy generator owned by one (seed, purpose, record) tuple, independent of call order."""
    return np.random.default_rng(derive_seed(*parts))
