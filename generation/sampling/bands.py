"""Bands (small category indices) of PUMS codes, and the int code arrays sampling, imputation and
fidelity compute them from (cached on the frame)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from generation.census import REGIONS, STATES, CensusFrame

# Each band function maps int code arrays (<NA> read as -1) to small ints indexing its category list.

AGE_BANDS = ["0-17", "18-29", "30-44", "45-64", "65+"]
RACE_BANDS = ["Hispanic", "Non-Hispanic White", "Non-Hispanic Black", "Non-Hispanic Asian",
              "Non-Hispanic other or multiracial"]
EDUCATION_BANDS = ["Under 25", "Less than high school", "High school or GED",
                   "Some college or associate degree", "Bachelor's degree", "Graduate or professional degree"]
INCOME_BANDS = ["Not applicable (under 15)", "None or loss", "$1-24,999", "$25,000-49,999",
                "$50,000-99,999", "$100,000 or more"]
EMPLOYMENT_BANDS = ["Employed", "Unemployed", "Not in labor force", "Under 16"]
CITIZENSHIP_BANDS = ["U.S. citizen", "Not a U.S. citizen"]
SEX_BANDS = ["Male", "Female"]
DISABILITY_BANDS = ["With a disability", "Without a disability"]
REGION_BANDS = [REGIONS[r] for r in sorted(REGIONS)]

_REGION_OF = np.zeros(128, np.int8)
_DIVISION_OF = np.zeros(128, np.int8)
for _fips, (_, _, _region, _division) in STATES.items():
    _REGION_OF[_fips], _DIVISION_OF[_fips] = _region, _division


def _lut(fn) -> np.ndarray:
    """Band of every int8 code value, looked up as table[code + 128]: one gather over 3.4 M rows
    instead of comparisons (codes are int8 in the frame; N/A reads as -1)."""
    return np.asarray(fn(np.arange(-128, 128)), dtype=np.int64)


def _bands(edges):
    return _lut(lambda v: np.digitize(v, edges))


_AGE_BAND = _bands([18, 30, 45, 65])
_SCHOOL_BAND = _bands([16, 18, 21, 22])
_RACE = _lut(lambda v: np.select([v == 1, v == 2, v == 6], [1, 2, 3], 4))
_EMPLOYMENT = _lut(lambda v: np.select([np.isin(v, [1, 2, 4, 5]), v == 3, v == 6], [0, 1, 2], 3))


def age_band(age):
    return _AGE_BAND[age + 128]


def race_band(rac1p, hisp):
    return np.where(hisp > 1, 0, _RACE[rac1p + 128])


def school_band(schl):
    """SCHL -> 0 less than high school (incl. N/A under 3), 1 HS/GED, 2 some college/associate, 3 BA, 4 graduate."""
    return _SCHOOL_BAND[schl + 128]


def education_band(schl, age):
    return np.where(age < 25, 0, school_band(schl) + 1)


def income_band(pincp, na):
    band = np.searchsorted(np.array([1, 25_000, 50_000, 100_000], pincp.dtype), pincp, side="right") + 1
    return np.where(na, 0, band)


def employment_band(esr):
    return _EMPLOYMENT[esr + 128]


def _codes(df: pd.DataFrame, columns) -> dict[str, np.ndarray]:
    """Plain int arrays of code columns (<NA> -> -1; PINCP also gets a PINCP_na mask: it can be negative)."""
    out = {}
    for c in columns:
        out[c] = df[c].to_numpy(dtype=np.int32, na_value=-1)
        if c == "PINCP":
            out["PINCP_na"] = df[c].isna().to_numpy()
    return out


def _frame_codes(frame: CensusFrame, columns) -> dict[str, np.ndarray]:
    """_codes over the whole frame, cached on it (3.4 M rows: computed once per frame)."""
    cache = frame.cache.setdefault("codes", {})
    for c in columns:
        if c not in cache:
            cache.update(_codes(frame.data, [c]))
    wanted = list(columns) + (["PINCP_na"] if "PINCP" in columns else [])
    return {c: cache[c] for c in wanted}
