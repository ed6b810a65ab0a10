"""Census people -> complete PERSONA personas (the paper's 33 attributes), plus the consistency filter.

Pipeline for one draw of people (`build_personas`):
  1. `persona_id` from (source_serialno, source_sporder, recipe seed); procedural traits (Big Five levels,
     defining quirk, mannerism, core values) from (seed, persona_id) only.
  2. Rule checks on the census fields (`check_rules`): failures are replaced before any LLM call.
  3. One "persona_filler" Ask per person: job description, personal time, lifestyle, ideology, political
     views, religion and every field the census source lacks (`generated_fields`), as JSON under a
     per-person schema whose enums already exclude values the rules would reject.
  4. Rule checks again (now with generated fields), then one "consistency_judge" Ask per person.
  5. Anyone failing 2-4 (or whose model output never parsed) is replaced by `draw_more`, up to
     `max_rounds` replacement rounds; rejections are counted by reason.

Rendering (`render_persona`), same format as the released PERSONA data: one "key: value" line per
attribute in ATTRIBUTES order, key = column name with "_" -> " " (e.g. `big five scores: Openness: High,
...`, `ability to speak english: Very well`), text ends with a newline. State of residence and core values
are kept as columns (and shown to the models) but are not persona lines, as in the release.

Output order: draw order (replacement round, then row position within that draw); the first n accepted
people are kept.
"""
from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from generation.census import STATES
from generation.engine import Ask
from generation.ids import rng, stable_id

# ---------------------------------------------------------------- attributes

# The paper's 33 attributes (Appendix A), in the paper's order.
ATTRIBUTES = [
    "age", "sex", "race", "ancestry", "household_language", "education", "employment_status",
    "class_of_worker", "industry_category", "occupation_category", "detailed_job_description", "income",
    "marital_status", "household_type", "family_presence_and_age", "place_of_birth", "citizenship",
    "veteran_status", "disability", "health_insurance", "big_five_scores", "defining_quirks", "mannerisms",
    "personal_time", "lifestyle", "ideology", "political_views", "religion", "cognitive_difficulty",
    "ability_to_speak_english", "vision_difficulty", "fertility", "hearing_difficulty",
]
PROCEDURAL_ATTRIBUTES = ["big_five_scores", "defining_quirks", "mannerisms"]
LLM_ATTRIBUTES = ["detailed_job_description", "personal_time", "lifestyle", "ideology", "political_views", "religion"]
CENSUS_ATTRIBUTES = [a for a in ATTRIBUTES if a not in PROCEDURAL_ATTRIBUTES + LLM_ATTRIBUTES]
OUTPUT_COLUMNS = (["persona_id", "source_serialno", "source_sporder"] + ATTRIBUTES
                  + ["state", "core_values", "imputed_fields", "generated_fields", "persona", "replacement_round"])

FILLER_ROLE = "persona_filler"
JUDGE_ROLE = "consistency_judge"

# ---------------------------------------------------------------- closed vocabularies

NOT_APPLICABLE_MINOR = "Not applicable (minor)"
IDEOLOGIES = ["Progressive", "Liberal", "Moderate", "Conservative", "Libertarian", "Socialist", "Populist",
              "Apolitical"]
POLITICAL_VIEWS = ["Democrat", "Republican", "Independent", "Libertarian Party", "Green Party", "Other party",
                   "No party preference"]
RELIGIONS = ["Protestant", "Catholic", "Mormon", "Orthodox Christian", "Jehovah's Witness", "Other Christian",
             "Jewish", "Muslim", "Buddhist", "Hindu", "Sikh", "Other religion", "Atheist", "Agnostic",
             "Nothing in particular"]
# PUMS HHT2 labels (household/family type incl. cohabiting), plus group quarters, which HHT2 leaves N/A
# (same wording as generation.census uses for the household fields of people in group quarters).
GROUP_QUARTERS = "Not applicable (lives in group quarters)"
HOUSEHOLD_TYPES = [
    "Married couple household with children of the householder less than 18",
    "Married couple household, no children of the householder less than 18",
    "Cohabiting couple household with children of the householder less than 18",
    "Cohabiting couple household, no children of the householder less than 18",
    "Female householder, no spouse/partner present, living alone",
    "Female householder, no spouse/partner present, with children of the householder less than 18",
    "Female householder, no spouse/partner present, with relatives, no children of the householder less than 18",
    "Female householder, no spouse/partner present, only nonrelatives present",
    "Male householder, no spouse/partner present, living alone",
    "Male householder, no spouse/partner present, with children of the householder less than 18",
    "Male householder, no spouse/partner present, with relatives, no children of the householder less than 18",
    "Male householder, no spouse/partner present, only nonrelatives present",
    GROUP_QUARTERS,
]
# PUMS FPARC labels ("family presence and age of related children"), plus its N/A cases: no family in a
# housing unit (alone or only with non-relatives), and group quarters.
NOT_IN_FAMILY = "Not in a family"
FAMILY_PRESENCE = ["With related children under 5 years only", "With related children 5 to 17 years only",
                   "With related children under 5 years and 5 to 17 years", "No related children", NOT_IN_FAMILY,
                   GROUP_QUARTERS]
# PUMS POBP labels for the 50 states + DC without the "/XX" suffix (as generation.census writes them),
# and for the territories.
_STATES_AB = [(name, postal) for postal, name, _, _ in STATES.values()]   # FIPS order = name order
US_STATES = [name for name, _ in _STATES_AB]
US_TERRITORIES = ["Puerto Rico", "Guam", "US Virgin Islands", "American Samoa",
                  "Commonwealth of the Northern Mariana Islands"]

# ---------------------------------------------------------------- procedural traits

BIG_FIVE = ["Openness", "Conscientiousness", "Extraversion", "Agreeableness", "Neuroticism"]
# T-score T ~ N(50, 10) per trait, bucketed by upper bounds: T < 30 Extremely Low (p=.0228),
# 30 <= T < 40 Low (.1359), 40 <= T < 60 Average (.6827), 60 <= T < 70 High (.1359), T >= 70 Extremely High (.0228).
BIG_FIVE_CUTS = [(30.0, "Extremely Low"), (40.0, "Low"), (60.0, "Average"), (70.0, "High"),
                 (math.inf, "Extremely High")]


def big_five_level(t: float) -> str:
    return next(label for upper, label in BIG_FIVE_CUTS if t < upper)


def big_five_probabilities() -> dict[str, float]:
    """Probability of each level under T ~ N(50, 10): what the bucketing should produce."""
    cdf = lambda t: 0.5 * (1 + math.erf((t - 50) / (10 * math.sqrt(2))))  # noqa: E731
    probs, lower = {}, -math.inf
    for upper, label in BIG_FIVE_CUTS:
        probs[label] = cdf(upper) - cdf(lower)
        lower = upper
    return probs


DATA_DIR = Path(__file__).with_name("data")


@functools.cache
def load_list(name: str) -> tuple[str, ...]:
    """A curated list from generation/data/<name>.txt: one entry per line, blank lines ignored."""
    lines = (DATA_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return tuple(s for s in (line.strip() for line in lines) if s)


def persona_id(source_serialno: str, source_sporder: int, seed: int) -> str:
    return stable_id("persona", seed, str(source_serialno), int(source_sporder))


def big_five(pid: str, seed: int) -> dict[str, str]:
    """Level per trait (BIG_FIVE order) from T-scores drawn with the persona's own generator."""
    t_scores = rng(seed, "big_five", pid).normal(50.0, 10.0, size=len(BIG_FIVE))
    return {trait: big_five_level(float(t)) for trait, t in zip(BIG_FIVE, t_scores)}


def procedural_traits(pid: str, seed: int, n_quirks: int = 1, n_mannerisms: int = 1,
                      n_core_values: int = 3) -> dict:
    """Big Five levels, quirks, mannerisms and core values from (seed, persona id) only.

    Each trait family has its own generator, so changing e.g. the number of core values leaves the Big Five
    and quirks of every persona unchanged.
    """
    levels = big_five(pid, seed)

    def pick(name: str, k: int) -> list[str]:
        items = load_list(name)
        idx = rng(seed, name, pid).choice(len(items), size=k, replace=False)
        return [items[i] for i in idx]

    return {
        "big_five": levels,
        "big_five_scores": ", ".join(f"{trait}: {level}" for trait, level in levels.items()),
        "defining_quirks": "; ".join(pick("quirks", n_quirks)),
        "mannerisms": "; ".join(pick("mannerisms", n_mannerisms)),
        "core_values": ", ".join(pick("core_values", n_core_values)),
    }

# ---------------------------------------------------------------- row helpers


def _missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _get(row: Mapping, key: str):
    v = row.get(key)
    return None if _missing(v) else v


def _code(row: Mapping, name: str) -> int | None:
    v = _get(row, f"code_{name}")
    return None if v is None else int(v)


def _age(row: Mapping) -> int | None:
    v = _code(row, "AGEP")
    if v is None and _get(row, "age") is not None:
        v = int(row["age"])
    return v


def _text(row: Mapping, key: str) -> str:
    v = _get(row, key)
    return "" if v is None else str(v).strip().lower()


def _housing(row: Mapping) -> str | None:
    """'GQ' (group quarters) or 'HU' (housing unit) from a PUMS SERIALNO like 2024GQ0000081, else None."""
    s = str(row.get("source_serialno") or "")
    return s[4:6] if s[4:6] in ("GQ", "HU") else None


def _sporder(row: Mapping) -> int | None:
    v = _get(row, "source_sporder")
    return None if v is None else int(v)

# ---------------------------------------------------------------- rule checks
# Each rule returns True when the row is INCONSISTENT; a rule whose fields are missing passes (it cannot
# judge yet), so the same rules run before enrichment (census fields) and after (generated fields too).

# Youngest age at which a PUMS SCHL level is plausible; every real 2024 PUMS record passes these.
_MIN_AGE_FOR_SCHL = {16: 14, 17: 14, 18: 14, 19: 15, 20: 16, 21: 18, 22: 19, 23: 19, 24: 20}
_US_NAMES = {n.lower() for n, _ in _STATES_AB} | {ab.lower() for _, ab in _STATES_AB} | {
    "united states", "usa", "us", "u.s.", "u.s.a.", "america", "united states of america"}
_TERRITORY_NAMES = {t.lower() for t in US_TERRITORIES} | {"u.s. virgin islands", "northern mariana islands"}


def _education_exceeds_age(row) -> bool:
    age, schl = _age(row), _code(row, "SCHL")
    if age is None or schl is None:
        return False
    if 4 <= schl <= 15:  # Grade 1 .. 12th grade: completing grade g (= schl - 3) before age g + 3 is impossible
        return age < schl
    return age < _MIN_AGE_FOR_SCHL.get(schl, 0)


def _married_under_15(row) -> bool:
    age, mar = _age(row), _code(row, "MAR")
    return age is not None and mar is not None and mar != 5 and age < 15


def _sex(row) -> str | None:
    code = _code(row, "SEX")
    if code is not None:
        return {1: "male", 2: "female"}.get(code)
    return _text(row, "sex") or None


def _fertility_out_of_universe(row) -> bool:
    # PUMS asks FER only of women aged 15-50
    age, fer = _age(row), _code(row, "FER")
    return fer is not None and (_sex(row) == "male" or (age is not None and not 15 <= age <= 50))


def _employed_under_16(row) -> bool:
    age, esr = _age(row), _code(row, "ESR")
    return age is not None and esr is not None and age < 16


def _military_under_17(row) -> bool:
    age, mil = _age(row), _code(row, "MIL")
    return age is not None and mil is not None and age < 17


def _minor_party_politics(row) -> bool:
    age, pv = _age(row), _get(row, "political_views")
    return age is not None and pv is not None and age < 18 and pv != NOT_APPLICABLE_MINOR


def _child_ideology(row) -> bool:
    age, ideo = _age(row), _get(row, "ideology")
    return age is not None and ideo is not None and age < 13 and ideo != NOT_APPLICABLE_MINOR


def _adult_marked_minor(row) -> bool:
    age = _age(row)
    return age is not None and age >= 18 and NOT_APPLICABLE_MINOR in (_get(row, "political_views"),
                                                                      _get(row, "ideology"))


def _birth_class(row) -> str | None:
    """From PUMS CIT (code, else label): 'us' (born in a state or DC), 'territory', 'abroad' or None."""
    cit = _code(row, "CIT")
    if cit is None:
        label = _text(row, "citizenship")
        cit = 1 if label.startswith("born in the united states") else 2 if label.startswith("born in puerto rico") \
            else 4 if label else None
    return None if cit is None else "us" if cit == 1 else "territory" if cit == 2 else "abroad"


def _birthplace_vs_citizenship(row) -> bool:
    born, pob = _birth_class(row), _text(row, "place_of_birth")
    if born is None or not pob:
        return False
    in_states = pob.split("/")[0].strip() in _US_NAMES  # also accepts the released "Texas/TX" form
    in_territories = pob in _TERRITORY_NAMES
    if born == "us":
        return not in_states
    if born == "territory":
        return not in_territories
    return in_states or in_territories  # born abroad, naturalized or not a citizen: a foreign birthplace


def _household_language_conflict(row) -> bool:
    # "English only" at home contradicts speaking another language at home (LANX 1) or speaking English
    # not well / not at all (ENG 3, 4)
    if not _text(row, "household_language").startswith("english only"):
        return False
    eng = _code(row, "ENG")
    limited = eng in (3, 4) if eng is not None else _text(row, "ability_to_speak_english") in ("not well", "not at all")
    return limited or _code(row, "LANX") == 1


def _living_alone_conflict(row) -> bool:
    if "living alone" not in _text(row, "household_type"):
        return False
    age, sporder = _age(row), _sporder(row)
    return (sporder is not None and sporder != 1) or (age is not None and age < 15)


def _householder_sex_mismatch(row) -> bool:
    # HHT/HHT2 name the householder's sex; person 1 of a housing unit is the householder
    ht, sex = _text(row, "household_type"), _sex(row)
    if _sporder(row) != 1 or _housing(row) == "GQ" or sex is None:
        return False
    named = "female" if "female householder" in ht else "male" if re.search(r"\bmale householder", ht) else None
    return named is not None and named != sex


def _householder_marriage_mismatch(row) -> bool:
    mar = _code(row, "MAR")
    return (_sporder(row) == 1 and _housing(row) != "GQ" and mar is not None and mar != 1
            and _text(row, "household_type").startswith("married couple"))


def _group_quarters_mismatch(row) -> bool:
    # people in group quarters have no household type and no family (PUMS N/A), everyone else has them
    fields, housing = (_get(row, "household_type"), _get(row, "family_presence_and_age")), _housing(row)
    if housing == "GQ":
        return any(v is not None and v != GROUP_QUARTERS for v in fields)
    return housing == "HU" and GROUP_QUARTERS in fields


def _householder_family_mismatch(row) -> bool:
    # the householder's family follows from the household type: a married couple, own children or other
    # relatives make a family; living alone or only with non-relatives does not
    ht, fam = _text(row, "household_type"), _get(row, "family_presence_and_age")
    if _sporder(row) != 1 or _housing(row) == "GQ" or not ht or fam is None:
        return False
    nonfamily = "living alone" in ht or "only nonrelatives" in ht or ht.startswith("nonfamily")
    family = not nonfamily and (ht.startswith("married couple") or "with children" in ht or "with relatives" in ht
                                or "family household" in ht)
    own_children = "with children of the householder" in ht
    return ((family and fam == NOT_IN_FAMILY) or (nonfamily and fam != NOT_IN_FAMILY)
            or (own_children and fam in ("No related children", NOT_IN_FAMILY)))


def _child_family_mismatch(row) -> bool:
    # FPARC counts the person's own family; a never-married child in a family is one of its related children
    age, fam, mar = _age(row), _get(row, "family_presence_and_age"), _code(row, "MAR")
    if age is None or fam is None or age >= 18 or mar not in (None, 5) or _housing(row) == "GQ":
        return False
    return ((age < 5 and fam == "With related children 5 to 17 years only")
            or (age >= 5 and fam == "With related children under 5 years only")
            or (age < 15 and fam == "No related children"))


def _young_retiree(row) -> bool:
    age = _age(row)
    return age is not None and age < 35 and re.search(r"\bretire", _text(row, "detailed_job_description")) is not None


RULES: dict[str, Callable[[Mapping], bool]] = {
    "education_exceeds_age": _education_exceeds_age,
    "married_under_15": _married_under_15,
    "fertility_out_of_universe": _fertility_out_of_universe,
    "employed_under_16": _employed_under_16,
    "military_under_17": _military_under_17,
    "minor_party_politics": _minor_party_politics,
    "child_ideology": _child_ideology,
    "adult_marked_minor": _adult_marked_minor,
    "birthplace_vs_citizenship": _birthplace_vs_citizenship,
    "household_language_conflict": _household_language_conflict,
    "living_alone_conflict": _living_alone_conflict,
    "householder_sex_mismatch": _householder_sex_mismatch,
    "householder_marriage_mismatch": _householder_marriage_mismatch,
    "group_quarters_mismatch": _group_quarters_mismatch,
    "householder_family_mismatch": _householder_family_mismatch,
    "child_family_mismatch": _child_family_mismatch,
    "young_retiree": _young_retiree,
}


def check_rules(row: Mapping) -> list[str]:
    """Reason codes of every rule the row breaks (empty = consistent as far as the rules can tell)."""
    return [code for code, broken in RULES.items() if broken(row)]

# ---------------------------------------------------------------- JSON schema subset


def validate(value: Any, schema: Mapping, path: str = "$") -> None:
    """Raise ValueError unless `value` fits `schema`. Subset: type object/string/boolean/integer/number,
    enum, properties, required, additionalProperties: false, minLength (non-blank characters), maxLength,
    minimum, maximum."""
    if "enum" in schema:
        if value not in schema["enum"]:
            raise ValueError(f"{path}: {str(value)[:40]!r} not an allowed value")
        return
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object")
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        extra = [k for k in value if k not in props]
        if extra and schema.get("additionalProperties") is False:
            raise ValueError(f"{path}: unexpected {', '.join(extra)}")
        for k, v in value.items():
            if k in props:
                validate(v, props[k], f"{path}.{k}")
    elif kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string")
        if len(value.strip()) < schema.get("minLength", 0):
            raise ValueError(f"{path}: too short")
        if len(value) > schema.get("maxLength", math.inf):
            raise ValueError(f"{path}: longer than {schema['maxLength']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true or false")
    elif kind in ("integer", "number"):
        ok = isinstance(value, int) if kind == "integer" else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            raise ValueError(f"{path}: expected a {kind}")
        if not schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf):
            raise ValueError(f"{path}: out of range")
    else:
        raise ValueError(f"{path}: unsupported schema type {kind!r}")


def parse_json(text: str, schema: Mapping) -> Any:
    """Decode the model's answer and validate it; ValueError with a short reason otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at {e.pos}") from None
    validate(value, schema)
    return value


def _max_len(prop: Mapping) -> int:
    return prop["maxLength"] if "maxLength" in prop else max(len(v) for v in prop["enum"])


def union_schema(schemas: list[dict]) -> dict:
    """One schema accepting every answer any of `schemas` accepts (enums merged; an enum meeting free text
    becomes free text; required = fields required by all). `run` takes one parse for a whole batch, so the
    batch is parsed against the union and each answer is then checked against its own schema."""
    props: dict[str, dict] = {}
    for s in schemas:
        for k, p in s["properties"].items():
            q = props.get(k)
            if q is None or q == p:
                props[k] = dict(p)
            elif "enum" in q and "enum" in p:
                props[k] = {"type": "string", "enum": q["enum"] + [v for v in p["enum"] if v not in q["enum"]]}
            else:
                props[k] = {"type": "string", "minLength": min(q.get("minLength", 0), p.get("minLength", 0)),
                            "maxLength": max(_max_len(q), _max_len(p))}
    required = [k for k in props if all(k in s.get("required", []) for s in schemas)]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

# ---------------------------------------------------------------- enrichment (role "persona_filler")

JOB_MAX, FREE_TIME_MAX, LIFESTYLE_MAX, GENERATED_MAX = 160, 120, 100, 60

FILLER_SYSTEM = (
    "You complete profiles of synthetic people for a research dataset. Each profile comes from US census "
    "data plus a personality sketch. Fill in the requested fields so the whole person is realistic and "
    "consistent with age, sex, education, work, income, family, place and personality. Be concrete and brief.\n"
    "Fields:\n"
    "- detailed_job_description: one sentence on what they do at work; without a job, their main daily role "
    "(e.g. student, retiree, homemaker, looking for work, small child)\n"
    "- personal_time: how they spend their free time\n"
    "- lifestyle: a few words on their way of life\n"
    f"- ideology: their political outlook; under 13: {NOT_APPLICABLE_MINOR}\n"
    f"- political_views: the party they lean to; under 18: {NOT_APPLICABLE_MINOR}\n"
    "- religion: their religious affiliation, if any\n"
    "- any other listed field: as described in the request\n"
    "Answer with one JSON object and nothing else."
)

# What the model is told about each census field it may have to generate.
GENERATED_HINTS = {
    "ancestry": "ancestry or ethnic origin (e.g. German, Mexican, Irish, Chinese, African American)",
    "household_language": "the language mainly spoken at home (e.g. English only, Spanish, Vietnamese)",
    "household_type": "the type of household they live in",
    "family_presence_and_age": "whether their family includes related children under 18, and their ages",
    "place_of_birth": "where they were born: a US state, or a country outside the US",
}
# Closed candidate lists for fields that have them; `_options` keeps those the rules allow for a person.
CANDIDATES = {
    "ideology": IDEOLOGIES + [NOT_APPLICABLE_MINOR],
    "political_views": POLITICAL_VIEWS + [NOT_APPLICABLE_MINOR],
    "religion": RELIGIONS,
    "household_type": HOUSEHOLD_TYPES,
    "family_presence_and_age": FAMILY_PRESENCE,
    "place_of_birth": US_STATES + US_TERRITORIES,
}


def _options(row: Mapping, field: str) -> list[str] | None:
    """Candidates for `field` that break no rule for this person; None = free text (no closed list, or
    every candidate fits so the answer may lie outside it, e.g. a foreign birthplace)."""
    cands = CANDIDATES.get(field)
    if cands is None:
        return None
    already = set(check_rules(row))  # judge each candidate only by the rules it would newly break
    allowed = [c for c in cands if set(check_rules({**row, field: c})) <= already]
    if field == "place_of_birth" and len(allowed) in (0, len(cands)):
        return None
    return allowed or list(cands)  # nothing fits (cannot happen with the rules above): rules reject later


def fields_to_generate(row: Mapping) -> list[str]:
    """Census attributes the model must fill: the source's `generated_fields`, plus any attribute that is
    still empty (so every persona line ends up filled); in ATTRIBUTES order, then any others."""
    wanted = set(row.get("generated_fields") or []) - set(PROCEDURAL_ATTRIBUTES + LLM_ATTRIBUTES)
    wanted |= {a for a in CENSUS_ATTRIBUTES if _get(row, a) is None}
    return [a for a in ATTRIBUTES if a in wanted] + sorted(wanted - set(ATTRIBUTES))


def enrichment_schema(row: Mapping) -> dict:
    """This person's JSON schema: generated census fields first (they condition the rest), then the six
    LLM attributes. Strings are length-bounded so a small model cannot ramble until max_tokens."""
    free = {"detailed_job_description": JOB_MAX, "personal_time": FREE_TIME_MAX, "lifestyle": LIFESTYLE_MAX}
    blank = {f: None for f in fields_to_generate(row)}  # choose options as if those fields were unknown
    props = {}
    for field in list(blank) + LLM_ATTRIBUTES:
        opts = _options({**row, **blank}, field)
        if opts is not None:
            props[field] = {"type": "string", "enum": opts}
        else:
            props[field] = {"type": "string", "minLength": 2, "maxLength": free.get(field, GENERATED_MAX)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _household_role(row: Mapping) -> str | None:
    housing, sporder = _housing(row), _sporder(row)
    if housing == "GQ":
        return "lives in group quarters (e.g. dormitory, nursing home, barracks)"
    if sporder == 1:
        return "householder (person 1 of the household)"
    if sporder is not None:
        return f"household member {sporder} (not the householder)"
    return None


def _profile_lines(row: Mapping, skip: set[str]) -> list[str]:
    lines = [f"{_key(a)}: {_fmt(row[a])}" for a in ATTRIBUTES if a not in skip and _get(row, a) is not None]
    for label, value in (("state of residence", _get(row, "state")), ("core values", _get(row, "core_values")),
                         ("household role", _household_role(row))):
        if value is not None:
            lines.append(f"{label}: {value}")
    return lines


def enrichment_ask(row: Mapping) -> Ask:
    """One persona_filler Ask: the shared instruction in the system message (prefix cache), the person's
    known attributes and the extra fields to fill in the user message."""
    gen = fields_to_generate(row)
    schema = enrichment_schema(row)
    user = ["Profile:", *_profile_lines(row, skip=set(gen))]
    if gen:
        user += ["", "Also fill in:"]
        for f in gen:
            hint = GENERATED_HINTS.get(f, f.replace("_", " "))
            coarse = _get(row, f)
            user.append(f"- {f}: {hint}" + (f" (census category: {coarse})" if coarse is not None else ""))
    user += ["", "JSON keys: " + ", ".join(schema["properties"])]
    return Ask(key=f"enrich/{row['persona_id']}",
               messages=[{"role": "system", "content": FILLER_SYSTEM}, {"role": "user", "content": "\n".join(user)}],
               schema=schema)

# ---------------------------------------------------------------- consistency judge (role "consistency_judge")

# The reason comes before the verdict so the model states the evidence before deciding.
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string", "minLength": 2, "maxLength": 200},
                   "consistent": {"type": "boolean"}},
    "required": ["reason", "consistent"],
    "additionalProperties": False,
}
JUDGE_SYSTEM = (
    "You check synthetic person profiles for a research dataset. A profile is inconsistent only if it has "
    "a clear contradiction or something practically impossible, e.g. a 10-year-old with a master's degree, "
    "a child with a party affiliation, a job description that does not fit the occupation, or a birthplace "
    "that contradicts citizenship. Unusual but possible combinations are consistent; personality, quirks and "
    "hobbies never make a profile inconsistent on their own. Answer in JSON: reason (one short sentence), "
    "then consistent (true or false)."
)


def parse_judge(text: str) -> dict:
    return parse_json(text, JUDGE_SCHEMA)


def judge_ask(row: Mapping) -> Ask:
    user = "Profile:\n" + render_persona(row) + "\nIs this profile consistent?"
    return Ask(key=f"judge/{row['persona_id']}",
               messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}],
               schema=JUDGE_SCHEMA)

# ---------------------------------------------------------------- rendering


def _key(attr: str) -> str:
    return attr.replace("_", " ")


def _fmt(v) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()


def render_persona(row: Mapping) -> str:
    """The persona text: "key: value" per attribute in ATTRIBUTES order, newline-terminated."""
    missing = [a for a in ATTRIBUTES if _get(row, a) is None]
    if missing:
        raise ValueError(f"persona {row.get('persona_id')} lacks {', '.join(missing)}")
    return "".join(f"{_key(a)}: {_fmt(row[a])}\n" for a in ATTRIBUTES)

# ---------------------------------------------------------------- the stage


_SEQUENCE = (list, tuple, np.ndarray)  # list columns come back from Parquet as numpy arrays


def _as_list(v) -> list[str]:
    return [str(x) for x in v] if isinstance(v, _SEQUENCE) else []


def prepare_rows(people: pd.DataFrame, seed: int, replacement_round: int, n_quirks: int = 1,
                 n_mannerisms: int = 1, n_core_values: int = 3) -> list[dict]:
    """Census rows -> dicts with persona_id, procedural traits and clean values (missing -> None)."""
    rows = []
    for rec in people.to_dict("records"):
        row = {k: (v if isinstance(v, _SEQUENCE) else (None if _missing(v) else v)) for k, v in rec.items()}
        row["source_serialno"], row["source_sporder"] = str(row["source_serialno"]), int(row["source_sporder"])
        row["imputed_fields"] = _as_list(rec.get("imputed_fields"))
        row["generated_fields"] = _as_list(rec.get("generated_fields"))
        if row.get("age") is not None:
            row["age"] = int(row["age"])
        row["persona_id"] = persona_id(row["source_serialno"], row["source_sporder"], seed)
        traits = procedural_traits(row["persona_id"], seed, n_quirks, n_mannerisms, n_core_values)
        row.update({k: traits[k] for k in PROCEDURAL_ATTRIBUTES + ["core_values"]})
        row["replacement_round"] = replacement_round
        rows.append(row)
    return rows


def _enrich(rows: list[dict], run, reject) -> list[dict]:
    """One persona_filler Ask per row; returns the rows that got a valid answer and still pass the rules."""
    asks = {row["persona_id"]: enrichment_ask(row) for row in rows}
    if not asks:
        return []
    parse = functools.partial(parse_json, schema=union_schema([a.schema for a in asks.values()]))
    outcomes = run(FILLER_ROLE, list(asks.values()), parse)
    kept = []
    for row in rows:
        ask = asks[row["persona_id"]]
        out = outcomes[ask.key]
        problem = None if out.ok else (out.reason or "no valid answer")
        if out.ok:
            try:
                validate(out.value, ask.schema)  # the batch was parsed against the union of all schemas
            except ValueError as e:
                problem = f"schema: {e}"
        if problem:
            reject(row, ["enrichment_failed"], problem)
            continue
        row.update({k: v.strip() for k, v in out.value.items()})
        # what the model filled beyond the six LLM attributes: the effective generated fields
        row["generated_fields"] = [f for f in ask.schema["properties"] if f not in LLM_ATTRIBUTES]
        reasons = check_rules(row)  # again, now that the generated fields are known
        if reasons:
            reject(row, reasons)
        else:
            kept.append(row)
    return kept


def _judge(rows: list[dict], run, reject) -> list[dict]:
    """One consistency_judge Ask per row; returns the rows judged consistent, with their persona text."""
    if not rows:
        return []
    verdicts = run(JUDGE_ROLE, [judge_ask(row) for row in rows], parse_judge)
    kept = []
    for row in rows:
        out = verdicts[f"judge/{row['persona_id']}"]
        if not out.ok:
            reject(row, ["judge_failed"], out.reason)
        elif not out.value["consistent"]:
            reject(row, ["judge_inconsistent"], out.value["reason"])
        else:
            row["persona"] = render_persona(row)
            kept.append(row)
    return kept


def build_personas(people: pd.DataFrame, draw_more: Callable[[int, int, set], pd.DataFrame], run, n: int,
                   seed: int, max_rounds: int = 5, n_quirks: int = 1, n_mannerisms: int = 1,
                   n_core_values: int = 3) -> tuple[pd.DataFrame, dict]:
    """Turn sampled census people into n consistent personas, replacing rejects with fresh draws.

    Round 0 processes every row of `people`; round r = 1..max_rounds asks `draw_more(k, r, exclude)` for the
    k personas still missing (exclude = every (serialno, sporder) seen so far). Returns (personas in draw
    order, at most n rows; stats). Stats: "drawn" people processed; "rejected" {reason: count}, a persona
    breaking several rules counting under each; "rejected_personas"; "enrichment_rejects" (filler outcome
    not ok, or an answer outside the person's own schema: reason "enrichment_failed"); "judge_rejects"
    (judged inconsistent: "judge_inconsistent"); "judge_failures" (judge outcome not ok: "judge_failed");
    "duplicates_skipped"; "rounds" (replacement rounds run); "accepted"; "shortfall"; and "rejections",
    one {persona_id, round, reasons, detail} per rejected persona.
    """
    rejected, rejections, accepted = Counter(), [], []
    seen: set[tuple[str, int]] = set()
    drawn = duplicates = rounds = 0

    def reject(row, reasons, detail=None):
        rejected.update(reasons)
        rejections.append({"persona_id": row["persona_id"], "round": row["replacement_round"],
                           "reasons": reasons, "detail": detail})

    batch = people
    while True:
        rows = []
        for row in prepare_rows(batch, seed, rounds, n_quirks, n_mannerisms, n_core_values):
            key = (row["source_serialno"], row["source_sporder"])
            if key in seen:  # draw_more should exclude these; never process a person twice
                duplicates += 1
                continue
            seen.add(key)
            rows.append(row)
        drawn += len(rows)

        # census-only rule checks first: no LLM calls for people who are already inconsistent
        fine = []
        for row in rows:
            reasons = check_rules(row)
            if reasons:
                reject(row, reasons)
            else:
                fine.append(row)
        accepted += _judge(_enrich(fine, run, reject), run, reject)

        need = n - len(accepted)
        if need <= 0 or rounds >= max_rounds:
            break
        batch = draw_more(need, rounds + 1, set(seen))
        if batch is None or len(batch) == 0:
            break
        rounds += 1

    out = pd.DataFrame([{c: row.get(c) for c in OUTPUT_COLUMNS} for row in accepted[:n]], columns=OUTPUT_COLUMNS)
    stats = {"drawn": drawn, "rejected": dict(sorted(rejected.items())), "rejected_personas": len(rejections),
             "enrichment_rejects": rejected["enrichment_failed"], "judge_rejects": rejected["judge_inconsistent"],
             "judge_failures": rejected["judge_failed"], "duplicates_skipped": duplicates, "rounds": rounds,
             "accepted": len(out), "shortfall": max(0, n - len(out)), "rejections": rejections}
    return out, stats
