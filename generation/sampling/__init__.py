"""Draw people from a census, fill what narrow files lack, and measure fidelity; cut along its seams:
`bands` (category bands of PUMS codes), `draw` (who is drawn), `impute` (hot-deck for CA/TX narrow
files), `fidelity` (population vs sample shares and TVD), `equal` (the same for equal-weight samples
such as the UK census teaching files).

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
from .bands import (
    AGE_BANDS,
    CITIZENSHIP_BANDS,
    DISABILITY_BANDS,
    EDUCATION_BANDS,
    EMPLOYMENT_BANDS,
    INCOME_BANDS,
    RACE_BANDS,
    REGION_BANDS,
    SEX_BANDS,
    age_band,
    education_band,
    employment_band,
    income_band,
    race_band,
    school_band,
)
from .draw import METHODS, PAPER_N, PAPER_SEED, _eligible, draw_more, sample_people, systematic_pps
from .equal import draw_more_equal, fidelity_equal, sample_equal, serpentine_key
from .fidelity import FIDELITY, _population_counts, fidelity_report, state_shares, tvd
from .impute import IMPUTE_AGE_EDGES, IMPUTED, MATCH_LEVELS, impute

__all__ = [
    "AGE_BANDS", "CITIZENSHIP_BANDS", "DISABILITY_BANDS", "EDUCATION_BANDS", "EMPLOYMENT_BANDS", "FIDELITY",
    "IMPUTED", "IMPUTE_AGE_EDGES", "INCOME_BANDS", "MATCH_LEVELS", "METHODS", "PAPER_N", "PAPER_SEED",
    "RACE_BANDS", "REGION_BANDS", "SEX_BANDS", "_eligible", "_population_counts", "age_band", "draw_more", "draw_more_equal",
    "education_band", "employment_band", "fidelity_equal", "fidelity_report", "impute", "income_band", "race_band",
    "sample_equal", "sample_people", "school_band", "serpentine_key", "state_shares", "systematic_pps", "tvd",
]
