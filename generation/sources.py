"""A census source is a plug-in: the records (`rows`), their `weights`, draws of people (`sample`,
`draw_more`), `label`led values ready for the personas stage, which PERSONA attributes the census
`provides`, the `fidelity` of a sample against the file, and its provenance (`info`: name, publisher, year,
licence, sha256, attribution). Two kinds implement it:

- `AcsSource`: the US ACS PUMS (generation.census readers, PPS by person weight, CA/TX hot-deck);
- `UkSource`: the UK census teaching files (generation.census.uk: NI 2021, Scotland 2011, England and
  Wales 2021 through the NI crosswalk), equal weights.

A PERSONA attribute the census lacks is left empty, so the persona_filler LLM writes it (listed in
`generated_fields`); each persona's `provenance` says per attribute where it came from: "census",
"census, imputed" (US hot-deck), "census band, seeded year" (UK ages), "llm" or "seeded".
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from generation import census, sampling
from generation.census import uk
from generation.ids import rng, stable_id
from generation.personas.attributes import ATTRIBUTES, LLM_ATTRIBUTES, PROCEDURAL_ATTRIBUTES

US = "United States"
UK = "United Kingdom"


@dataclass(frozen=True)
class SourceInfo:
    key: str              # the recipe's census.format
    name: str
    publisher: str
    year: int | None
    country: str
    licence: str
    url: str
    sha256: str | None    # of the file read (None: a folder of files, digested by the pipeline)
    attribution: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def provenance(row, provides, imputed=(), seeded=()) -> dict[str, str]:
    """attribute -> where its value came from, in ATTRIBUTES order."""
    generated = set(row.get("generated_fields") or [])
    out = {}
    for a in ATTRIBUTES:
        if a in PROCEDURAL_ATTRIBUTES:
            out[a] = "seeded"
        elif a in generated or a not in provides:
            out[a] = "llm"
        elif a in seeded:
            out[a] = "census band, seeded year"
        elif a in imputed:
            out[a] = "census, imputed"
        else:
            out[a] = "census"
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ US

class AcsSource:
    """The ACS PUMS person records (a CensusFrame), drawn with probability proportional to PWGTP."""
    country = US
    # what the PUMS gives of the paper's attributes (the rest: LLM or seeded; ancestry, place of birth and
    # household fields are LLM-written when the source lacks their columns, per person in generated_fields)
    provides = tuple(a for a in ATTRIBUTES if a in census.ATTRIBUTE_SOURCES)

    def __init__(self, frame: census.CensusFrame, info: SourceInfo, *, method="systematic", min_age=0, states=None):
        self.frame, self.info = frame, info
        self.method, self.min_age, self.states = method, min_age, states

    def __len__(self) -> int:
        return len(self.frame)

    def rows(self) -> pd.DataFrame:
        return self.frame.data

    def weights(self) -> np.ndarray:
        return self.frame.data["PWGTP"].to_numpy()

    def sample(self, n: int, seed: int) -> pd.DataFrame:
        return sampling.sample_people(self.frame, n, seed, method=self.method, min_age=self.min_age,
                                      states=self.states)

    def draw_more(self, k: int, seed: int, round: int, exclude) -> pd.DataFrame:
        return sampling.draw_more(self.frame, k, seed, round, exclude, min_age=self.min_age, states=self.states)

    def label(self, people: pd.DataFrame) -> pd.DataFrame:
        return census.label_people(people, self.frame.dictionary)

    @staticmethod
    def keys(people: pd.DataFrame) -> list[tuple[str, int]]:
        return [(str(s), int(o)) for s, o in zip(people.SERIALNO, people.SPORDER)]

    def fidelity(self, people: pd.DataFrame) -> dict:
        report = sampling.fidelity_report(self.frame, people, min_age=self.min_age, states=self.states)
        return {"report": report, "state_shares": sampling.state_shares(people)}

    def provenance(self, row) -> dict[str, str]:
        return provenance(row, self.provides, imputed=set(row.get("imputed_fields") or []))


# ------------------------------------------------------------------------------------------------ UK

# The paper's attributes a UK teaching file gives (the rest are LLM-written, in the country's terms).
UK_PROVIDES = ("age", "sex", "race", "employment_status", "class_of_worker", "industry_category",
               "occupation_category", "marital_status", "household_type", "place_of_birth", "religion")
# Census facts that are not among the paper's 33 attributes: extra persona lines, in the file's words.
UK_EXTRA = (("general health", "health"), ("approximate social grade (household reference person)", "grade"),
            ("hours worked per week", "hours"), ("in full-time education", "student"))
# Fidelity attributes: canonical variables compared with the file (every code a category).
UK_FIDELITY = ("sex", "age", "ethnic", "religion", "religion_brought_up", "econ", "grade", "health", "birth",
               "marital", "family")
# Sort order of the implicit stratification, coarse to fine.
UK_STRATA = ("age", "sex", "religion", "grade", "econ", "ethnic", "health", "birth")


class UkSource:
    """A UK census teaching file: equal-weight records, sampled systematically with implicit strata."""
    country = UK
    provides = UK_PROVIDES

    def __init__(self, path, spec: uk.UkSpec, *, min_age: int = 0):
        self.path, self.spec, self.min_age = Path(path), spec, min_age
        self.data = uk.read_uk(self.path, spec)
        self.vars = [v for v in spec.columns if v in self.data.columns]
        self.info = SourceInfo(key=spec.key, name=spec.title, publisher=spec.publisher, year=spec.year, country=UK,
                               licence=uk.OGL, url=spec.url, sha256=_sha256(self.path), attribution=spec.attribution)
        self._index = {v: {c: i for i, c in enumerate(spec.labels[v])} for v in self.vars}
        self._pos = {k: i for i, k in enumerate(self.data["id"])}
        oldest = np.array([uk.AGE_BANDS[a][1] for a in self.data["age"]])
        self.eligible = np.flatnonzero(oldest >= min_age)

    def __len__(self) -> int:
        return len(self.data)

    def rows(self) -> pd.DataFrame:
        return self.data

    def weights(self) -> np.ndarray:
        return np.ones(len(self.data))   # a 1% teaching sample: every record stands for as many people

    def codes(self, var: str, rows=None) -> np.ndarray:
        """Category index (position in the spec's code list) of `var` per record."""
        values = self.data[var] if rows is None else self.data[var].iloc[rows]
        return np.array([self._index[var][v] for v in values], np.int64)

    def _serial(self, record_id: str) -> str:
        return f"{self.spec.key}:{record_id}"

    def _finish(self, rows: np.ndarray, seed: int, round: int) -> pd.DataFrame:
        people = self.data.iloc[rows].reset_index(drop=True)
        people.insert(0, "person_id", [self._serial(i) for i in people["id"]])
        # the file gives a 10-year band; the year within it is seeded by (seed, person) only
        years = []
        for pid, band in zip(people["person_id"], people["age"]):
            lo, hi = uk.AGE_BANDS[band]
            years.append(int(rng(seed, "uk_age", pid).integers(max(lo, self.min_age), hi + 1)))
        people["age_year"] = years
        people["draw_round"] = round
        order = np.argsort([stable_id(seed, "order", round, i) for i in people["person_id"]], kind="stable")
        return people.iloc[order].reset_index(drop=True)

    def sample(self, n: int, seed: int) -> pd.DataFrame:
        seed = int(seed)
        key = sampling.serpentine_key([self.codes(v) for v in UK_STRATA if v in self.vars], 16)
        return self._finish(sampling.sample_equal(key, self.eligible, n, seed, self.spec.key), seed, 0)

    def draw_more(self, k: int, seed: int, round: int, exclude) -> pd.DataFrame:
        seen = np.zeros(len(self.data), bool)
        prefix = self.spec.key + ":"
        for s, _ in exclude:
            if str(s).startswith(prefix) and str(s)[len(prefix):] in self._pos:
                seen[self._pos[str(s)[len(prefix):]]] = True
        rows = sampling.draw_more_equal(self.eligible, seen, k, int(seed), int(round), self.spec.key)
        return self._finish(rows, int(seed), int(round))

    @staticmethod
    def keys(people: pd.DataFrame) -> list[tuple[str, int]]:
        return [(str(p), 1) for p in people.person_id]

    def label(self, people: pd.DataFrame) -> pd.DataFrame:
        """One row per person for the personas stage: the paper's attributes the file gives, in its
        publisher's words; the others None (the persona_filler writes them), with a census hint where the
        file has a related variable (education: full-time education; income: social grade)."""
        lab = self.spec.labels
        rows = []
        for r in people.to_dict("records"):
            text = {v: lab[v][r[v]] for v in self.vars}
            na = r["econ"] in uk.NA_CODES
            row = {a: None for a in ATTRIBUTES if a not in PROCEDURAL_ATTRIBUTES}
            row.update({
                "source_serialno": r["person_id"], "source_sporder": 1, "state": self.spec.nation,
                "age": int(r["age_year"]), "sex": text["sex"], "race": text["ethnic"],
                "employment_status": text["econ"],
                "class_of_worker": {"1": "Employee", "2": "Self-employed"}.get(
                    r["econ"], "Not applicable (under 16)" if na else "Not working as an employee or self-employed"),
                "industry_category": _job(text["industry"], r), "occupation_category": _job(text["occupation"], r),
                "marital_status": text["marital"], "household_type": text["family"],
                "place_of_birth": text["birth"],
                "religion": _religion(text, r),
                "education": f"In full-time education: {text['student']}",
                "income": f"Approximate social grade: {text['grade']}",
                "imputed_fields": [], "country": UK, "census_source": self.spec.key, "census_name": self.spec.title,
                "census_provided": list(UK_PROVIDES),
                "census_extra": [f"{k}: {text[v]}" for k, v in UK_EXTRA if v in text],
            })
            row["generated_fields"] = [a for a in ATTRIBUTES if a not in PROCEDURAL_ATTRIBUTES + LLM_ATTRIBUTES
                                       and a not in UK_PROVIDES]
            rows.append(row)
        return pd.DataFrame(rows)

    def fidelity(self, people: pd.DataFrame) -> dict:
        attrs = [v for v in UK_FIDELITY if v in self.vars]
        pos = np.array([self._pos[i] for i in people["id"]], np.int64)
        population = {v: self.codes(v, self.eligible) for v in attrs}
        sample = {v: self.codes(v, pos) for v in attrs}
        cats = {v: list(self.spec.labels[v].values()) for v in attrs}
        report = sampling.fidelity_equal(population, sample, cats)
        report = {"n_sample": int(len(people)), "population_records": int(len(self.eligible)),
                  "population_weight": int(len(self.eligible)), "min_age": int(self.min_age), "states": None,
                  "tvd": report["tvd"],
                  "basis": {v: "all records observed (equal weights: a 1% teaching sample)" for v in attrs},
                  "rows": report["rows"], "tvd_2way": report["tvd_2way"]}
        return {"report": report, "state_shares": {self.spec.nation: 1.0}}

    def provenance(self, row) -> dict[str, str]:
        return provenance(row, self.provides, seeded={"age"})


def _job(label: str, r: dict) -> str:
    """Scotland 2011 codes the industry and occupation of the last job of people not in work now."""
    working = r["econ"] in ("1", "2") or r["hours"] not in uk.NA_CODES
    return label if working or label.startswith("Not applicable") else f"{label} (most recent job)"


def _religion(text: dict, r: dict) -> str:
    """NI asks the religion brought up in of those with no current religion: say both."""
    up = r.get("religion_brought_up")
    if up is not None and up not in uk.NA_CODES:
        return f"{text['religion']} (brought up: {text['religion_brought_up']})"
    return text["religion"]


def open_source(fmt: str, path, *, dictionary=None, states=None, min_age: int = 0, method: str = "systematic",
                info: SourceInfo | None = None):
    """The source plug-in for a recipe's census.format."""
    if fmt in uk.SPECS:
        return UkSource(path, uk.SPECS[fmt], min_age=min_age)
    if fmt != "acs-pums":
        raise census.CensusError(f"unknown census format {fmt!r} (known: acs-pums, {', '.join(uk.SPECS)})")
    frame = census.read_census(path, states=states, dictionary=dictionary)
    info = info or SourceInfo(key="acs-pums", name="American Community Survey Public Use Microdata Sample",
                              publisher="U.S. Census Bureau", year=None, country=US, licence="public domain",
                              url="https://www.census.gov/programs-surveys/acs/microdata.html", sha256=None)
    return AcsSource(frame, info, method=method, min_age=min_age, states=states)


def with_origins(src, personas: pd.DataFrame, labelled: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The personas of a non-US source with `country`, `census_source`, `census_extra` and `provenance`
    (attribute -> origin) columns, and the manifest's `census_provenance` {source: {attribute: {origin: n}}}.
    labelled: every labelled row the source gave the personas stage (all draws)."""
    by_serial = labelled.drop_duplicates("source_serialno").set_index("source_serialno")
    out = personas.copy()
    mine = by_serial.loc[out["source_serialno"]]
    n = len(out)
    # a US (ACS) source's labelled rows carry none of these: its country, its key, no extra lines
    out["country"] = mine["country"].to_numpy() if "country" in mine else [src.country] * n
    out["census_source"] = mine["census_source"].to_numpy() if "census_source" in mine else [src.info.key] * n
    out["census_extra"] = [list(x) for x in mine["census_extra"]] if "census_extra" in mine else [[] for _ in range(n)]
    origins = [src.provenance(row) for row in out.to_dict("records")]
    out["provenance"] = origins
    counts: dict[str, dict[str, int]] = {a: {} for a in ATTRIBUTES}
    for o in origins:
        for a, where in o.items():
            counts[a][where] = counts[a].get(where, 0) + 1
    return out, {"census_provenance": {src.info.key: counts}}
