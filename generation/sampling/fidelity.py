"""Fidelity: population (weighted) vs sample shares per attribute and per pair of attributes (TVD)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from generation.census import STATES, WIDE, CensusFrame, resolve_states

from .bands import (
    _REGION_OF,
    AGE_BANDS,
    CITIZENSHIP_BANDS,
    DISABILITY_BANDS,
    EDUCATION_BANDS,
    EMPLOYMENT_BANDS,
    INCOME_BANDS,
    RACE_BANDS,
    REGION_BANDS,
    SEX_BANDS,
    _codes,
    _frame_codes,
    age_band,
    education_band,
    employment_band,
    income_band,
    race_band,
)
from .draw import _eligible
from .impute import MATCH_COLUMNS, _donor_level, _level_key, _match, _match_parts

FIDELITY = {   # attribute -> (categories, columns used, band function of those columns)
    "sex": (SEX_BANDS, ["SEX"], lambda c: c["SEX"] - 1),
    "age_band": (AGE_BANDS, ["AGEP"], lambda c: age_band(c["AGEP"])),
    "race_ethnicity": (RACE_BANDS, ["RAC1P", "HISP"], lambda c: race_band(c["RAC1P"], c["HISP"])),
    "education": (EDUCATION_BANDS, ["SCHL", "AGEP"], lambda c: education_band(c["SCHL"], c["AGEP"])),
    "region": (REGION_BANDS, ["STATE"], lambda c: _REGION_OF[c["STATE"]] - 1),
    "income_band": (INCOME_BANDS, ["PINCP"], lambda c: income_band(c["PINCP"], c["PINCP_na"])),
    "employment_status": (EMPLOYMENT_BANDS, ["ESR"], lambda c: employment_band(c["ESR"])),
    "citizenship": (CITIZENSHIP_BANDS, ["CIT"], lambda c: (c["CIT"] == 5).astype(int)),
    "disability": (DISABILITY_BANDS, ["DIS"], lambda c: c["DIS"] - 1),
}


def _expected_imputed_counts(frame: CensusFrame, narrow_rows: np.ndarray, k: int, cols, band,
                             given: np.ndarray | None = None, k_given: int = 1) -> np.ndarray:
    """Weighted (given category x category) totals of narrow-file people for a band of columns they lack:
    each person spreads their weight over the PWGTP-weighted category shares of the donors they would be
    matched to (the expected outcome of the hot-deck). `given` is each person's own category of an
    attribute they have (k_given categories; None: one row), for joint two-way tables."""
    c = _frame_codes(frame, MATCH_COLUMNS + list(cols))
    found, _, _, divisions = _match(frame, _match_parts({k_: c[k_][narrow_rows] for k_ in MATCH_COLUMNS}))
    weights = frame.data["PWGTP"].to_numpy(dtype=np.float64)
    given = np.zeros(len(narrow_rows), np.int64) if given is None else np.asarray(given, np.int64)
    totals = np.zeros((k_given, k))
    for level in np.unique(found):
        keys, rows = _donor_level(frame, divisions, level)
        mine = found == level
        # donor weight per (cell, category) -> category shares per cell (keys are sorted)
        cells, cell_of = np.unique(keys, return_inverse=True)
        cat = band({name: c[name][rows] for name in c})
        table = np.bincount(cell_of * k + cat, weights[rows], len(cells) * k).reshape(-1, k)
        shares = table / table.sum(axis=1, keepdims=True)
        # recipients' weight per (given category, cell); each has donors at this level, so its cell is in `cells`
        rparts = _match_parts({name: c[name][narrow_rows[mine]] for name in MATCH_COLUMNS})
        rcell = np.searchsorted(cells, _level_key(rparts, level))
        per_cell = np.bincount(given[mine] * len(cells) + rcell, weights[narrow_rows[mine]],
                               k_given * len(cells)).reshape(k_given, len(cells))
        totals += per_cell @ shares
    return totals


def _population_counts(frame: CensusFrame, rows: np.ndarray, attributes: list[str]) -> tuple[np.ndarray, bool]:
    """Weighted population counts over the joint categories of one or two FIDELITY attributes (flat,
    first attribute major), and whether narrow-file people entered as their expected hot-deck outcome."""
    specs = [FIDELITY[a] for a in attributes]
    sizes = [len(cats) for cats, _, _ in specs]
    k = int(np.prod(sizes))
    c = _frame_codes(frame, sorted({col for _, cols, _ in specs for col in cols}))
    weights = frame.data["PWGTP"].to_numpy(dtype=np.float64)

    def joint(codes, which):  # joint category of the attributes in `which` (indices into specs)
        out = 0
        for i in which:
            out = out * sizes[i] + np.asarray(specs[i][2](codes), np.int64)  # band codes may be int8
        return out

    everyone = list(range(len(specs)))
    narrow = frame.data["narrow"].to_numpy()[rows]
    lacking = [i for i, (_, cols, _) in enumerate(specs) if any(col in WIDE for col in cols)]
    if not lacking or not narrow.any():
        return np.bincount(joint({n: v[rows] for n, v in c.items()}, everyone), weights[rows], k), False
    full, part = rows[~narrow], rows[narrow]
    pop = np.bincount(joint({n: v[full] for n, v in c.items()}, everyone), weights[full], k)
    kept = [i for i in everyone if i not in lacking]      # at most one: the attribute they do have
    given = joint({n: v[part] for n, v in c.items()}, kept) if kept else None
    k_given = int(np.prod([sizes[i] for i in kept]))
    cols = sorted({col for i in lacking for col in specs[i][1]})
    table = _expected_imputed_counts(frame, part, int(np.prod([sizes[i] for i in lacking])), cols,
                                     lambda codes: joint(codes, lacking), given, k_given)
    if kept and kept[0] > lacking[0]:  # the table is (kept x lacking); the flat order wants lacking major
        table = table.T
    return pop + table.reshape(-1), True


def tvd(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two distributions given as (unnormalised) counts."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    return float(0.5 * np.abs(p / p.sum() - q / max(q.sum(), 1e-300)).sum())


def fidelity_report(frame: CensusFrame, sample: pd.DataFrame, *, min_age: int = 0, states=None) -> dict:
    """Population (PWGTP-weighted, all eligible records incl. narrow-file people) vs sample shares and
    the total variation distance per attribute. JSON-serialisable:
    {"n_sample", "population_records", "population_weight", "min_age", "states",
     "tvd": {attribute: float}, "basis": {attribute: str},
     "rows": [{"attribute", "category", "population_share", "sample_share"}, ...],
     "tvd_2way": [{"attributes": [a, b], "tvd": float}, ...] (every pair of attributes, joint categories)}

    Attributes that narrow files lack (income, employment) use, for narrow-file people, the expected
    hot-deck distribution over their donor cells; the sample uses its imputed values."""
    rows = _eligible(frame, min_age, states)
    weights = frame.data["PWGTP"].to_numpy(dtype=np.float64)
    sc = _codes(sample, sorted({c for _, cols, _ in FIDELITY.values() for c in cols}))
    report = {"n_sample": int(len(sample)), "population_records": int(len(rows)),
              "population_weight": int(weights[rows].sum()), "min_age": int(min_age),
              "states": resolve_states(states), "tvd": {}, "basis": {}, "rows": [], "tvd_2way": []}
    for attribute, (cats, _, band) in FIDELITY.items():
        pop, expected = _population_counts(frame, rows, [attribute])
        report["basis"][attribute] = ("full-file records observed; narrow-file records (CA/TX): expected "
                                      "hot-deck distribution of their donor cells" if expected else "all records observed")
        pop = pop / pop.sum()
        got = np.bincount(band(sc), minlength=len(cats)) / max(len(sample), 1)
        report["tvd"][attribute] = round(tvd(pop, got), 6)
        for cat, p, s in zip(cats, pop, got):
            report["rows"].append({"attribute": attribute, "category": cat,
                                   "population_share": round(float(p), 6), "sample_share": round(float(s), 6)})
    # two-way: a sample can match every marginal and still pair them wrongly (e.g. old and under 16)
    names = list(FIDELITY)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pop, _ = _population_counts(frame, rows, [a, b])
            kb = len(FIDELITY[b][0])
            got = np.bincount(np.asarray(FIDELITY[a][2](sc), np.int64) * kb + FIDELITY[b][2](sc), minlength=len(pop))
            report["tvd_2way"].append({"attributes": [a, b], "tvd": round(tvd(pop, got), 6)})
    return report


def state_shares(sample: pd.DataFrame) -> dict[str, float]:
    """Share of the sample per state (postal code), for the card."""
    counts = sample["STATE"].astype(int).map(lambda s: STATES[s][0]).value_counts(normalize=True)
    return {k: round(float(v), 6) for k, v in counts.sort_index().items()}
