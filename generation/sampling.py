"""Draw people from a CensusFrame with probability proportional to their person weight (PWGTP),
fill the attributes narrow files lack (CA/TX) by hot-deck imputation, and measure fidelity.

Every random choice comes from generation.ids.rng(seed, purpose, ...), so a sample depends only on
the frame, the options and the seed.

- sample_people(method="systematic"): systematic PPS with implicit stratification. The frame is
  sorted by region, state, age band, income band, sex, race/Hispanic origin, education band (ties
  broken by a seeded random permutation); n points spaced W/n apart from a seeded random start then
  pick the people whose cumulative-weight interval holds a point. Inclusion probability is exactly
  n*w/W, and every group that is contiguous in the sort order (a region, a state, an age band within
  a state, ...) gets its expected number of people to within one.
  A person heavier than the step W/n would be hit twice: such people are taken with certainty and
  the step recomputed over the rest (repeat until none is heavier).
- method="es": Efraimidis-Spirakis weighted sampling without replacement (top-n of log(u)/w).
- draw_more: fresh replacement draws (Efraimidis-Spirakis) excluding people already drawn.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from generation.census import REGIONS, STATES, WIDE, CensusError, CensusFrame, person_id, resolve_states
from generation.ids import rng, stable_id
from generation.names import PAPER_SEED

PAPER_N = 1586
METHODS = ("systematic", "es")

# ----------------------------------------------------------------------------- bands
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


# ----------------------------------------------------------------------------- sampling

def _eligible(frame: CensusFrame, min_age: int, states) -> np.ndarray:
    c = _frame_codes(frame, ["AGEP", "STATE"])
    mask = c["AGEP"] >= min_age
    fips = resolve_states(states)
    if fips is not None:
        mask &= np.isin(c["STATE"], fips)
    return np.flatnonzero(mask)


def _check_n(n: int, available: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what}: n must be a positive integer, got {n!r}")
    if n > available:
        raise CensusError(f"{what}: cannot draw {n} distinct people from {available} eligible records "
                          "(see census.personas, min_age and states in the recipe)")


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


# ----------------------------------------------------------------------------- hot-deck imputation

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


# ----------------------------------------------------------------------------- fidelity

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
