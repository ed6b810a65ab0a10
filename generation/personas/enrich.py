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
    US_STATES,
    US_TERRITORIES,
)
from .render import _fmt, _key
from .row import _get, _housing, _sporder
from .rules import check_rules

FILLER_ROLE = "persona_filler"
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
