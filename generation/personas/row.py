"""Reading one person's row (a dict of census fields, `code_<PUMS variable>` codes and generated fields):
missing values (None, NaN, blank) read as None. Package-internal helpers for the rules, asks and rendering."""
from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd


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


def _country(row: Mapping) -> str:
    """The persona's country: a row without `country` is a US (ACS PUMS) persona."""
    return _get(row, "country") or "United States"


def _is_us(row: Mapping) -> bool:
    return _country(row) == "United States"
