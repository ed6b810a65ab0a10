"""LLM enrichment (role "persona_filler"): one ask per person for the six LLM attributes and every census
field the source lacks, under a per-person JSON schema whose enums already exclude what the rules reject."""
from __future__ import annotations

import functools
from collections.abc import Mapping

from generation.flow import Ask, Outcome
from generation.schema import parse_json, union_schema, validate

from .attributes import (
    ATTRIBUTES,
    CENSUS_ATTRIBUTES,
    FAMILY_PRESENCE,
    HOUSEHOLD_TYPES,
    IDEOLOGIES,
    LLM_ATTRIBUTES,
    NOT_APPLICABLE_MINOR,
    POLITICAL_VIEWS,
    PROCEDURAL_ATTRIBUTES,
    RELIGIONS,
    UK_PARTIES,
    US_STATES,
    US_TERRITORIES,
)
from .render import _fmt, _key
from .row import _country, _get, _housing, _is_us, _sporder
from .rules import check_rules

FILLER_ROLE = "persona_filler"
JOB_MAX, FREE_TIME_MAX, LIFESTYLE_MAX, GENERATED_MAX = 160, 120, 100, 60

# the fields both filler instructions describe, and their last lines (a change here changes request ids)
_FIELDS = (
    "Fields:\n"
    "- detailed_job_description: one sentence on what they do at work; without a job, their main daily role "
    "(e.g. student, retiree, homemaker, looking for work, small child)\n"
    "- personal_time: how they spend their free time\n"
    "- lifestyle: a few words on their way of life\n"
    f"- ideology: their political outlook; under 13: {NOT_APPLICABLE_MINOR}\n"
    f"- political_views: the party they lean to; under 18: {NOT_APPLICABLE_MINOR}\n"
)
_LAST = (
    "- any other listed field: as described in the request\n"
    "Answer with one JSON object and nothing else."
)

FILLER_SYSTEM = (
    "You complete profiles of synthetic people for a research dataset. Each profile comes from US census "
    "data plus a personality sketch. Fill in the requested fields so the whole person is realistic and "
    "consistent with age, sex, education, work, income, family, place and personality. Be concrete and brief.\n"
    + _FIELDS
    + "- religion: their religious affiliation, if any\n"
    + _LAST
)

# The same instruction for a persona of another country's census: its terms, its currency, its parties.
FILLER_SYSTEM_OTHER = (
    "You complete profiles of synthetic people for a research dataset. Each profile comes from the {census} "
    "plus a personality sketch; the person lives in {place}. Fill in the requested fields so the "
    "whole person is realistic for {place} and consistent with age, sex, work, family, place and personality. "
    "Use that country's own terms: its qualifications, its currency ({currency}) for income, its health "
    "service and its political parties; never US states, dollars or US institutions. Be concrete and brief.\n"
    + _FIELDS
    + _LAST
)
CURRENCY = {"United Kingdom": "pounds sterling, £"}

# What the model is told about each census field it may have to generate.
GENERATED_HINTS = {
    "ancestry": "ancestry or ethnic origin (e.g. German, Mexican, Irish, Chinese, African American)",
    "household_language": "the language mainly spoken at home (e.g. English only, Spanish, Vietnamese)",
    "household_type": "the type of household they live in",
    "family_presence_and_age": "whether their family includes related children under 18, and their ages",
    "place_of_birth": "where they were born: a US state, or a country outside the US",
}
# For a UK persona (the teaching files lack these): the UK's terms.
GENERATED_HINTS_UK = {
    "ancestry": "ancestry or national/ethnic origin (e.g. Irish, Scottish, English, Polish, Indian)",
    "household_language": "the language mainly spoken at home (e.g. English, Irish, Scots Gaelic, Polish)",
    "education": "highest qualification in UK terms (e.g. none, GCSEs or O levels, A levels or Highers, degree), "
                 "or current schooling for a child",
    "income": "gross yearly personal income in pounds sterling (e.g. '£24,000 a year', 'No income')",
    "citizenship": "passport or citizenship held (e.g. British, Irish, British and Irish, Polish)",
    "veteran_status": "service in the UK armed forces (e.g. 'Has never served', 'Served in the British Army')",
    "disability": "whether a long-term health problem or disability limits day-to-day activities",
    "health_insurance": "health care cover (e.g. 'NHS only', 'NHS and private medical insurance')",
    "family_presence_and_age": "dependent children in the family, and their ages",
    "cognitive_difficulty": "any serious difficulty concentrating, remembering or making decisions",
    "ability_to_speak_english": "how well they speak English",
    "vision_difficulty": "any serious difficulty seeing",
    "hearing_difficulty": "any serious difficulty hearing",
    "fertility": "whether they gave birth in the past 12 months (or not applicable)",
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


def _candidates(row: Mapping, field: str) -> list[str] | None:
    """The closed list for `field`; for another country's persona, its own parties (the US lists of
    parties, religions and birthplaces do not describe it; ideologies do)."""
    if _is_us(row):
        return CANDIDATES.get(field)
    if field == "political_views":
        parties = UK_PARTIES.get(_get(row, "state"))
        return parties + [NOT_APPLICABLE_MINOR] if parties else None
    return CANDIDATES.get(field) if field == "ideology" else None


def _options(row: Mapping, field: str) -> list[str] | None:
    """Candidates for `field` that break no rule for this person; None = free text (no closed list, or
    every candidate fits so the answer may lie outside it, e.g. a foreign birthplace)."""
    cands = _candidates(row, field)
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
    for field in list(blank) + _llm_attributes(row):
        opts = _options({**row, **blank}, field)
        if opts is not None:
            props[field] = {"type": "string", "enum": opts}
        else:
            props[field] = {"type": "string", "minLength": 2, "maxLength": free.get(field, GENERATED_MAX)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _llm_attributes(row: Mapping) -> list[str]:
    """The six LLM attributes, minus those this person's census gives (NI and Scotland: religion)."""
    provided = set(row.get("census_provided") or [])
    return [a for a in LLM_ATTRIBUTES if a not in provided]


def _system(row: Mapping) -> str:
    if _is_us(row):
        return FILLER_SYSTEM
    country = _country(row)
    place = f"{_get(row, 'state')}, {country}" if _get(row, "state") else country
    return FILLER_SYSTEM_OTHER.format(census=_get(row, "census_name") or country, place=place,
                                      currency=CURRENCY.get(country, "the local currency"))


def _household_role(row: Mapping) -> str | None:
    housing, sporder = _housing(row), _sporder(row)
    if not _is_us(row):  # the teaching files have no person numbers within a household
        return None
    if housing == "GQ":
        return "lives in group quarters (e.g. dormitory, nursing home, barracks)"
    if sporder == 1:
        return "householder (person 1 of the household)"
    if sporder is not None:
        return f"household member {sporder} (not the householder)"
    return None


def _profile_lines(row: Mapping, skip: set[str]) -> list[str]:
    lines = [f"{_key(a, row)}: {_fmt(row[a])}" for a in ATTRIBUTES if a not in skip and _get(row, a) is not None]
    place = "state of residence" if _is_us(row) else "UK nation of residence"
    lines += [str(x) for x in (row.get("census_extra") or [])]
    for label, value in ((place, _get(row, "state")), ("core values", _get(row, "core_values")),
                         ("household role", _household_role(row))):
        if value is not None:
            lines.append(f"{label}: {value}")
    return lines


def enrichment_ask(row: Mapping) -> Ask:
    """One persona_filler Ask: the shared instruction in the system message (prefix cache), the person's
    known attributes and the extra fields to fill in the user message."""
    gen = fields_to_generate(row)
    schema = enrichment_schema(row)
    hints = GENERATED_HINTS if _is_us(row) else {**GENERATED_HINTS, **GENERATED_HINTS_UK}
    user = ["Profile:", *_profile_lines(row, skip=set(gen))]
    if gen:
        user += ["", "Also fill in:"]
        for f in gen:
            hint = hints.get(f, f.replace("_", " "))
            coarse = _get(row, f)
            user.append(f"- {f}: {hint}" + (f" (census category: {coarse})" if coarse is not None else ""))
    user += ["", "JSON keys: " + ", ".join(schema["properties"])]
    return Ask(key=f"enrich/{row['persona_id']}",
               messages=[{"role": "system", "content": _system(row)}, {"role": "user", "content": "\n".join(user)}],
               schema=schema)


def enrichment_parser(asks: list[Ask]):
    """One parser for a round's filler answers: the union of their schemas (each answer is then checked
    against its own person's schema by `enrich_one`)."""
    return functools.partial(parse_json, schema=union_schema([a.schema for a in asks]))


def enrich_one(row: dict, ask: Ask, out: Outcome, reject) -> bool:
    """Apply a persona_filler answer to `row`; False (and a reject) when it is unusable or the filled-in
    person breaks a rule."""
    problem = None if out.ok else (out.reason or "no valid answer")
    if out.ok:
        try:
            validate(out.value, ask.schema)
        except ValueError as e:
            problem = f"schema: {e}"
    if problem:
        reject(row, ["enrichment_failed"], problem)
        return False
    row.update({k: v.strip() for k, v in out.value.items()})
    # what the model filled beyond the six LLM attributes: the effective generated fields
    row["generated_fields"] = [f for f in ask.schema["properties"] if f not in LLM_ATTRIBUTES]
    reasons = check_rules(row)  # again, now that the generated fields are known
    if reasons:
        reject(row, reasons)
        return False
    return True
