"""Hot-deck imputation of the WIDE columns narrow-file people (CA/TX) lack, one donor per person."""
from __future__ import annotations

import numpy as np
import pandas as pd

from generation.census import WIDE, CensusError, CensusFrame, person_id
from generation.ids import rng

from .bands import _DIVISION_OF, _bands, _codes, _frame_codes, race_band, school_band

# Age cut points at every PUMS universe boundary (5: language/cognition, 15: income/marital/fertility,
# 16: employment, 17: military, 51: fertility) so a donor's N/A pattern always fits the recipient's age;
# 62/65 for retirement and Medicare.
IMPUTE_AGE_EDGES = [5, 15, 16, 17, 18, 25, 35, 45, 51, 55, 62, 65, 75]
# Match keys, strictest first; relaxed one step at a time when a recipient has no donor. Age band, sex
# (fertility universe) and DIS (whose yes/no is the OR of DEAR/DEYE/DREM/...) are never relaxed, so the
# donor's values stay consistent with the recipient's own.
MATCH_LEVELS = [
    ("division", "age", "sex", "DIS", "RAC1P", "hispanic", "school", "CIT"),
    ("division", "age", "sex", "DIS", "race", "school", "citizen"),
    ("division", "age", "sex", "DIS", "race", "citizen"),
    ("division", "age", "sex", "DIS"),
    ("age", "sex", "DIS"),
]
IMPUTED = [c for c in WIDE if c != "NATIVITY"]
_IMPUTE_AGE = _bands(IMPUTE_AGE_EDGES)   # NATIVITY follows from CIT exactly: derived, not imputed


def _match_parts(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "division": _DIVISION_OF[c["STATE"]], "age": _IMPUTE_AGE[c["AGEP"] + 128],
        "sex": c["SEX"], "DIS": c["DIS"], "RAC1P": c["RAC1P"], "hispanic": (c["HISP"] > 1).astype(int),
        "school": school_band(c["SCHL"]), "CIT": c["CIT"], "race": race_band(c["RAC1P"], c["HISP"]),
        "citizen": (c["CIT"] == 5).astype(int),
    }


def _level_key(parts: dict[str, np.ndarray], level: int) -> np.ndarray:
    key = np.zeros(len(parts["age"]), np.int64)
    for name in MATCH_LEVELS[level]:       # every part is < 64: 6 bits each, 8 parts fit in int64
        key = (key << 6) | parts[name].astype(np.int64)
    return key


MATCH_COLUMNS = ["STATE", "AGEP", "SEX", "DIS", "RAC1P", "HISP", "SCHL", "CIT"]


def _donor_level(frame: CensusFrame, divisions: tuple, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted match keys of the donors at `level` and their frame rows (sorted alongside). Donors are
    full-file people: of the recipients' divisions for all but the last level, anywhere for the last.
    Cached on the frame; the nationwide level is built only when some recipient needs it."""
    cache = frame.cache.setdefault("donor_levels", {})
    if (divisions, level) not in cache:
        c = _frame_codes(frame, MATCH_COLUMNS)
        if "donor_rows" not in frame.cache:
            frame.cache["donor_rows"] = np.flatnonzero(~frame.data["narrow"].to_numpy())
        donors = frame.cache["donor_rows"]
        if len(donors) == 0:
            raise CensusError("hot-deck imputation needs donor records from full (non-narrow) files; "
                              "read the wide states too")
        if level < len(MATCH_LEVELS) - 1:
            donors = donors[np.isin(_DIVISION_OF[c["STATE"][donors]], divisions)]
        key = _level_key(_match_parts({k: c[k][donors] for k in MATCH_COLUMNS}), level)
        order = np.argsort(key, kind="stable")   # stable: donors of a cell stay in frame order
        cache[divisions, level] = (key[order], donors[order])
    return cache[divisions, level]


def _match(frame: CensusFrame, rec_parts: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """For each recipient: the strictest level with at least one donor, and that donor cell's range
    [lo, hi) in the level's sorted donor arrays."""
    divisions = tuple(sorted(set(rec_parts["division"].tolist())))
    n = len(rec_parts["age"])
    found, lo, hi = np.full(n, -1, np.int8), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for level in range(len(MATCH_LEVELS)):
        todo = np.flatnonzero(found < 0)
        if len(todo) == 0:
            break
        keys, _ = _donor_level(frame, divisions, level)
        rkey = _level_key({k: v[todo] for k, v in rec_parts.items()}, level)
        a, b = np.searchsorted(keys, rkey, "left"), np.searchsorted(keys, rkey, "right")
        hit = b > a
        found[todo[hit]], lo[todo[hit]], hi[todo[hit]] = level, a[hit], b[hit]
    if (found < 0).any():
        raise CensusError(f"hot-deck imputation: {int((found < 0).sum())} narrow-file people have no donor "
                          f"of the same age band, sex and disability status in any full file")
    return found, lo, hi, divisions


def impute(frame: CensusFrame, sample: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Fill the WIDE columns of narrow-file people in `sample` from one donor each (so the donor's
    answers stay consistent with each other): the donor is drawn with probability proportional to
    PWGTP among full-file people of the same census division matching on MATCH_LEVELS, relaxed step by
    step; the draw is seeded by (seed, person id). NATIVITY is derived from CIT.
    Adds `imputed_columns` (list of PUMS columns) and `donor_id` (None for people not imputed);
    returns a new table (fresh 0..n-1 index), the input is not changed."""
    sample = sample.reset_index(drop=True)
    seed = int(seed)
    sample["imputed_columns"] = [[] for _ in range(len(sample))]
    sample["donor_id"] = pd.Series([None] * len(sample), dtype=object)
    recipients = np.flatnonzero(sample["narrow"].to_numpy())
    if len(recipients) == 0:
        return sample
    rec = sample.iloc[recipients]
    found, lo, hi, divisions = _match(frame, _match_parts(_codes(rec, MATCH_COLUMNS)))
    weights = frame.data["PWGTP"].to_numpy()
    picks = []
    for pid, level, a, b in zip(rec["person_id"], found, lo, hi):
        rows = _donor_level(frame, divisions, level)[1][a:b]
        cum = np.cumsum(weights[rows], dtype=np.float64)
        u = rng(seed, "impute", pid).random() * cum[-1]
        picks.append(rows[int(np.searchsorted(cum, u, side="right"))])
    donors = frame.data.iloc[picks]
    for col in IMPUTED:
        sample.loc[recipients, col] = donors[col].to_numpy()
    sample.loc[recipients, "NATIVITY"] = np.where(rec["CIT"].to_numpy() <= 3, 1, 2)
    donor_ids = [person_id(s, o) for s, o in zip(donors["SERIALNO"], donors["SPORDER"])]
    for r, donor in zip(recipients, donor_ids):
        sample.at[r, "imputed_columns"] = list(IMPUTED)
        sample.at[r, "donor_id"] = donor
    return sample
