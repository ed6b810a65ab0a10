"""Drawing people: systematic PPS with implicit stratification, Efraimidis-Spirakis, replacement draws."""
from __future__ import annotations

import numpy as np
import pandas as pd

from generation.census import CensusError, CensusFrame, person_id, resolve_states
from generation.ids import rng, stable_id
from generation.names import PAPER_SEED

from .bands import _REGION_OF, _frame_codes, age_band, education_band, income_band, race_band
from .impute import impute

PAPER_N = 1586
METHODS = ("systematic", "es")

def _eligible(frame: CensusFrame, min_age: int, states) -> np.ndarray:
    c = _frame_codes(frame, ["AGEP", "STATE"])
    mask = c["AGEP"] >= min_age
    fips = resolve_states(states)
    if fips is not None:
        mask &= np.isin(c["STATE"], fips)
    return np.flatnonzero(mask)


def _check_n(n: int, available: int, what: str, limits: str = "census.personas, min_age and states") -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what}: n must be a positive integer, got {n!r}")
    if n > available:
        raise CensusError(f"{what}: cannot draw {n} distinct people from {available} eligible records "
                          f"(see {limits} in the recipe)")


def _stratification_key(frame: CensusFrame, rows: np.ndarray, seed: int) -> np.ndarray:
    """Sort key for implicit stratification: region, state, age band, income band, sex, race/Hispanic,
    education band, then a seeded random tie-break. Income sits right after age because, having six
    bands and not otherwise controlled, it was the noisiest attribute (narrow-file people all share the
    N/A band here: it only orders people within full-file states)."""
    if "strata" not in frame.cache:   # the seed-free part, once per frame
        c = _frame_codes(frame, ["STATE", "AGEP", "PINCP", "SEX", "RAC1P", "HISP", "SCHL"])
        key = _REGION_OF[c["STATE"]].astype(np.int64)
        for part, size in [(c["STATE"], 128), (age_band(c["AGEP"]), 8),
                           (income_band(c["PINCP"], c["PINCP_na"]), 8), (c["SEX"], 4),
                           (race_band(c["RAC1P"], c["HISP"]), 8), (education_band(c["SCHL"], c["AGEP"]), 8)]:
            key = key * size + part
        frame.cache["strata"] = key
    # Ties within a stratum are broken by a seeded random permutation: keys are unique, so the order
    # does not depend on the sort algorithm.
    n = len(frame)
    tie = rng(seed, "systematic", "tie-break").permutation(n)
    return ((frame.cache["strata"] << n.bit_length()) | tie)[rows]


def systematic_pps(weights: np.ndarray, n: int, start: float) -> np.ndarray:
    """Positions (into `weights`, in its order) of a systematic PPS sample of n; start in [0, 1).

    Units heavier than the step are certainties; the step is recomputed over the rest until none is.
    """
    w = weights.astype(np.float64)
    certain = np.zeros(len(w), bool)
    while True:
        rest = n - int(certain.sum())
        if rest <= 0:
            break
        step = w[~certain].sum() / rest
        heavy = ~certain & (w >= step)
        if not heavy.any():
            break
        certain |= heavy
    if certain.sum() >= n:        # more certainties than draws: the heaviest n (stable on ties)
        return np.sort(np.argsort(-w, kind="stable")[:n])
    others = np.flatnonzero(~certain)
    cum = np.cumsum(w[others])
    points = (start + np.arange(rest)) * (cum[-1] / rest)
    hits = others[np.searchsorted(cum, points, side="right")]
    return np.sort(np.concatenate([np.flatnonzero(certain), hits]))


def _es_top(frame: CensusFrame, rows: np.ndarray, n: int, *purpose) -> np.ndarray:
    """Efraimidis-Spirakis: the n rows with the largest log(u)/w; u drawn for every frame row so a
    person's key does not depend on which other rows are eligible."""
    u = rng(*purpose).random(len(frame))[rows]
    w = frame.data["PWGTP"].to_numpy(dtype=np.float64)[rows]
    keys = np.log(u) / w
    top = np.argpartition(-keys, n - 1)[:n]
    return rows[top[np.argsort(-keys[top], kind="stable")]]


def sample_people(frame: CensusFrame, n: int = PAPER_N, seed: int = PAPER_SEED, *,
                  method: str = "systematic", min_age: int = 0, states=None) -> pd.DataFrame:
    """Draw n distinct people with probability proportional to PWGTP, impute narrow-file people,
    and return one row per person: `person_id`, the PUMS code columns, `narrow`, `imputed_columns`
    (PUMS columns filled by hot-deck), `donor_id`, `draw_round` (0), in a seeded random order (so any
    prefix is itself a fair subsample)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    seed = int(seed)    # a numpy int would hash differently in generation.ids
    rows = _eligible(frame, min_age, states)
    _check_n(n, len(rows), "sample_people")
    if method == "systematic":
        rows = rows[np.argsort(_stratification_key(frame, rows, seed))]
        weights = frame.data["PWGTP"].to_numpy(dtype=np.int64)[rows]
        start = rng(seed, "systematic", "start").random()
        chosen = rows[systematic_pps(weights, n, start)]
    else:
        chosen = _es_top(frame, rows, n, seed, "es")
    return _finish(frame, chosen, seed, 0)


def _parse_ids(exclude) -> set[tuple[str, int]]:
    out = set()
    for x in (() if exclude is None else exclude):
        if isinstance(x, str):
            serial, _, order = x.rpartition("-")
            if not serial or not order.isdigit():
                raise ValueError(f"exclude: {x!r} is not a person id like '2024HU0000123-01'")
            out.add((serial, int(order)))
        else:
            serial, order = x
            out.add((str(serial), int(order)))
    return out


def draw_more(frame: CensusFrame, k: int, seed: int, round: int, exclude=(), *,
              min_age: int = 0, states=None) -> pd.DataFrame:
    """k fresh people for replacement round `round` (1, 2, ...), none of them in `exclude` (person ids
    'SERIALNO-SPORDER' or (SERIALNO, SPORDER) pairs). Deterministic in (frame, k, seed, round, exclude).
    Use the same min_age/states as the original sample."""
    if not isinstance(round, (int, np.integer)) or round < 1:
        raise ValueError(f"draw_more: round must be 1, 2, ..., got {round!r}")
    seed = int(seed)
    rows = _eligible(frame, min_age, states)
    pairs = _parse_ids(exclude)
    if pairs:
        serials = frame.data["SERIALNO"].iloc[rows]
        maybe = np.flatnonzero(serials.isin({s for s, _ in pairs}).to_numpy())
        orders = frame.data["SPORDER"].to_numpy(dtype=np.int64)[rows[maybe]]
        drop = [m for m, s, o in zip(maybe, serials.iloc[maybe], orders) if (s, int(o)) in pairs]
        rows = np.delete(rows, drop)
    _check_n(k, len(rows), "draw_more")
    return _finish(frame, _es_top(frame, rows, k, seed, "draw_more", int(round)), seed, int(round))


def _finish(frame: CensusFrame, chosen: np.ndarray, seed: int, draw_round: int) -> pd.DataFrame:
    sample = frame.data.iloc[chosen].reset_index(drop=True)
    ids = [person_id(s, o) for s, o in zip(sample["SERIALNO"], sample["SPORDER"])]
    sample.insert(0, "person_id", ids)
    sample = impute(frame, sample, seed)
    sample["draw_round"] = draw_round
    order = np.argsort([stable_id(seed, "order", draw_round, i) for i in ids], kind="stable")
    return sample.iloc[order].reset_index(drop=True)
