"""Sampling and fidelity for equal-weight census samples (the UK teaching files: every record stands for
the same number of people, so there are no person weights).

- sample_equal: systematic sampling with implicit stratification, as the PPS sampler with all weights 1:
  the records are sorted by the caller's strata key (ties broken by a seeded random permutation) and
  every (N/n)-th is taken from a seeded random start. Each record's inclusion probability is n/N, and
  every group contiguous in the sort order gets its expected count to within one.
- draw_more_equal: k fresh records, uniformly at random, excluding those already drawn.
- fidelity_equal: per attribute and per pair of attributes, the file's shares vs the sample's (TVD).
"""
from __future__ import annotations

import itertools

import numpy as np

from generation.ids import rng

from .draw import _check_n, systematic_pps
from .fidelity import tvd


def serpentine_key(parts: list[np.ndarray], size: int) -> np.ndarray:
    """One sort key from per-record category indexes (coarse to fine, each < size) in serpentine order: a
    level runs backwards within every other category of the level above it. In plain nested order every
    coarse block lists the finer categories in the same order, and a systematic sample whose step is about
    one coarse block lands at the same place in each: 8 of 8 Northern Ireland personas were women (age
    band, then sex). Reversing every other block alternates them. Groups stay contiguous."""
    key = np.zeros(len(parts[0]) if parts else 0, np.int64)
    flip = np.zeros(len(key), bool)
    for part in parts:
        p = np.where(flip, size - 1 - part, part).astype(np.int64)
        key = key * size + p
        flip = p % 2 == 1
    return key


def sample_equal(strata: np.ndarray, eligible: np.ndarray, n: int, seed: int, purpose: str) -> np.ndarray:
    """Rows (into the frame) of a systematic equal-probability sample of n of the `eligible` rows.
    strata: one int64 sort key per frame row (coarse to fine)."""
    _check_n(n, len(eligible), purpose, "census.personas and min_age")
    tie = rng(seed, purpose, "tie-break").permutation(len(strata))
    key = (strata.astype(np.int64) << len(strata).bit_length()) | tie
    rows = eligible[np.argsort(key[eligible], kind="stable")]
    start = rng(seed, purpose, "start").random()
    return rows[systematic_pps(np.ones(len(rows)), n, start)]


def draw_more_equal(eligible: np.ndarray, exclude: np.ndarray, k: int, seed: int, round: int,
                    purpose: str) -> np.ndarray:
    """k rows drawn uniformly without replacement from `eligible` minus `exclude` (a boolean mask over
    the frame); a row's draw key depends on (seed, round, row) only, not on which rows are excluded."""
    if not isinstance(round, (int, np.integer)) or round < 1:
        raise ValueError(f"draw_more: round must be 1, 2, ..., got {round!r}")
    rows = eligible[~exclude[eligible]]
    _check_n(k, len(rows), purpose, "census.personas and min_age")
    u = rng(seed, purpose, "draw_more", int(round)).random(len(exclude))[rows]
    return rows[np.argsort(u, kind="stable")[:k]]


def fidelity_equal(population: dict[str, np.ndarray], sample: dict[str, np.ndarray],
                   categories: dict[str, list[str]]) -> dict:
    """The file's (equal-weight) shares vs the sample's, per attribute and per pair of attributes.
    population / sample: attribute -> category index per record; categories: attribute -> category names.
    Returns the `fidelity_report` keys tvd, rows and tvd_2way."""
    n_pop = len(next(iter(population.values())))
    n_sample = len(next(iter(sample.values())))
    out = {"tvd": {}, "rows": [], "tvd_2way": []}
    for a, cats in categories.items():
        pop = np.bincount(population[a], minlength=len(cats)) / n_pop
        got = np.bincount(sample[a], minlength=len(cats)) / max(n_sample, 1)
        out["tvd"][a] = round(tvd(pop, got), 6)
        out["rows"] += [{"attribute": a, "category": c, "population_share": round(float(p), 6),
                         "sample_share": round(float(s), 6)} for c, p, s in zip(cats, pop, got)]
    for a, b in itertools.combinations(categories, 2):
        kb = len(categories[b])
        size = len(categories[a]) * kb
        pop = np.bincount(population[a] * kb + population[b], minlength=size)
        got = np.bincount(sample[a] * kb + sample[b], minlength=size)
        out["tvd_2way"].append({"attributes": [a, b], "tvd": round(tvd(pop, got), 6)})
    return out
