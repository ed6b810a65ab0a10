"""The consistency rules (`check_rules`; `US_ONLY` lists those for US personas only), run on the census fields before enrichment and again after."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .attributes import _STATES_AB, GROUP_QUARTERS, NOT_APPLICABLE_MINOR, NOT_IN_FAMILY, US_TERRITORIES
from .row import _age, _code, _get, _housing, _is_us, _sporder, _text

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


def _dollars_outside_the_us(row) -> bool:
    # a persona of another country's census states its income in that country's currency, never dollars
    income = _text(row, "income")
    return not _is_us(row) and ("$" in income or "dollar" in income or "usd" in income.split())


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
    "dollars_outside_the_us": _dollars_outside_the_us,
}
# Rules written for PUMS codes and US concepts (school grades, householders, group quarters, US birthplaces
# and citizenship): they apply to US personas only. The others (age and politics, home language, young
# retirees, currency) hold for every country.
US_ONLY = frozenset({
    "education_exceeds_age", "married_under_15", "fertility_out_of_universe", "employed_under_16",
    "military_under_17", "birthplace_vs_citizenship", "living_alone_conflict", "householder_sex_mismatch",
    "householder_marriage_mismatch", "group_quarters_mismatch", "householder_family_mismatch",
    "child_family_mismatch",
})


def check_rules(row: Mapping) -> list[str]:
    """Reason codes of every rule the row breaks (empty = consistent as far as the rules can tell)."""
    us = _is_us(row)
    return [code for code, broken in RULES.items() if (us or code not in US_ONLY) and broken(row)]
