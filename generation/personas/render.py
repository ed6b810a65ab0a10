"""Rendering (`render_persona`), same format as the released PERSONA data: one "key: value" line per
attribute in ATTRIBUTES order, key = column name with "_" -> " " (e.g. `big five scores: Openness: High,
...`, `ability to speak english: Very well`), text ends with a newline. State of residence and core values
are kept as columns (and shown to the models) but are not persona lines, as in the release.

A persona of another country's census (a row with `country`, e.g. the UK teaching files) is rendered in
that country's terms: its census's names for the attributes (`UK_KEYS`), then its census facts beyond the
33 attributes (`census_extra`, e.g. approximate social grade) and its nation of residence.
"""
from __future__ import annotations

from collections.abc import Mapping

from .attributes import ATTRIBUTES
from .row import _country, _get, _is_us

# The UK censuses' own names for the attributes whose US name is a US concept or a PUMS term.
UK_KEYS = {
    "race": "ethnic group", "place_of_birth": "country of birth", "marital_status": "legal partnership status",
    "household_type": "family type", "class_of_worker": "employee or self-employed", "industry_category": "industry",
    "occupation_category": "occupation (SOC major group)", "veteran_status": "armed forces service",
    "health_insurance": "health care cover", "political_views": "party preference",
    "family_presence_and_age": "dependent children", "citizenship": "passport held",
}


def _key(attr: str, row: Mapping | None = None) -> str:
    if row is not None and not _is_us(row) and attr in UK_KEYS:
        return UK_KEYS[attr]
    return attr.replace("_", " ")


def _fmt(v) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip()


def render_persona(row: Mapping) -> str:
    """The persona text: "key: value" per attribute in ATTRIBUTES order, newline-terminated."""
    missing = [a for a in ATTRIBUTES if _get(row, a) is None]
    if missing:
        raise ValueError(f"persona {row.get('persona_id')} lacks {', '.join(missing)}")
    text = "".join(f"{_key(a, row)}: {_fmt(row[a])}\n" for a in ATTRIBUTES)
    if _is_us(row):
        return text
    extra = [str(x) for x in (row.get("census_extra") or [])]
    place = ", ".join(x for x in (_get(row, "state"), _country(row)) if x)
    return text + "".join(f"{line}\n" for line in extra + [f"nation of residence: {place}"])
