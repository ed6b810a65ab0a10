"""Rendering (`render_persona`), same format as the released PERSONA data: one "key: value" line per
attribute in ATTRIBUTES order, key = column name with "_" -> " " (e.g. `big five scores: Openness: High,
...`, `ability to speak english: Very well`), text ends with a newline. State of residence and core values
are kept as columns (and shown to the models) but are not persona lines, as in the release.
"""
from __future__ import annotations

from collections.abc import Mapping

from .attributes import ATTRIBUTES
from .row import _get


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
