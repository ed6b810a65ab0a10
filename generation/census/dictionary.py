"""The PUMS data dictionary: variables, their codes and labels, read from the official CSV."""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import CensusError


@dataclass
class Variable:
    name: str
    type: str                      # "C" (coded) or "N" (numeric) as in the dictionary
    description: str
    codes: dict = field(default_factory=dict)     # exact code (int, or str if not numeric) -> label
    ranges: list = field(default_factory=list)    # (lo, hi, label) for VAL rows with lo != hi
    na_label: str | None = None                   # label of the blank code ("b", "bb", ...)

    def knows(self, code) -> bool:
        return code in self.codes or any(lo <= code <= hi for lo, hi, _ in self.ranges)


def unknown_code_label(var: str, code) -> str:
    return f"Unknown code {code} for {var} (not in the data dictionary)"


class Dictionary:
    """The PUMS data dictionary: `label(var, code)` with None for the N/A code."""

    def __init__(self, variables: dict[str, Variable], path: str = "<memory>"):
        self.variables = variables
        self.path = str(path)

    def __contains__(self, var) -> bool:
        return var in self.variables

    def __getitem__(self, var) -> Variable:
        if var not in self.variables:
            raise CensusError(f"{self.path}: variable {var} is not in the data dictionary")
        return self.variables[var]

    def label(self, var: str, code) -> str:
        v = self[var]
        if code is None or code is pd.NA or (isinstance(code, float) and math.isnan(code)):
            return v.na_label or "N/A"
        code = int(code)
        if code in v.codes:
            return v.codes[code]
        for lo, hi, lab in v.ranges:
            if lo <= code <= hi:
                return lab
        return unknown_code_label(var, code)


def _parse_code(s: str):
    """'01' -> 1, '-19998' -> -19998, 'bbbb' -> None (the N/A code), anything else stays a string."""
    s = s.strip()
    if s and set(s) == {"b"}:
        return None
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    return s


def read_dictionary(path) -> Dictionary:
    """Parse the official PUMS data dictionary CSV (`NAME,VAR,type,length,desc` / `VAL,VAR,type,length,lo,hi,label`).

    A variable listed twice (housing and person sections both list SERIALNO, STATE, ...) keeps its
    first definition.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CensusError(f"{path}: cannot read the data dictionary ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:      # older dictionaries were written in Windows-1252
        text = raw.decode("cp1252", errors="replace")
    variables: dict[str, Variable] = {}
    closed: set[str] = set()        # variables whose first definition is complete
    current = None
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not any(cell.strip() for cell in row):
            continue
        kind = row[0].strip()
        if kind == "NAME":
            if len(row) < 5:
                raise CensusError(f"{path} row {lineno}: NAME row needs 5 fields, got {len(row)}")
            if current is not None:
                closed.add(current)
            var = row[1].strip()
            current = var
            if var not in variables:
                variables[var] = Variable(var, row[2].strip(), row[4].strip())
        elif kind == "VAL":
            if len(row) < 7:
                raise CensusError(f"{path} row {lineno}: VAL row needs 7 fields, got {len(row)}")
            var = row[1].strip()
            if var not in variables:
                raise CensusError(f"{path} row {lineno}: VAL row for {var} comes before its NAME row")
            if var in closed:
                continue
            v = variables[var]
            lo, hi, label = _parse_code(row[4]), _parse_code(row[5]), row[6].strip()
            if lo is None:
                v.na_label = label
            elif lo == hi:
                v.codes[lo] = label
            elif isinstance(lo, int) and isinstance(hi, int):
                v.ranges.append((lo, hi, label))
            # other string ranges (e.g. SERIALNO "2023GQ0000001".."2023GQ9999999") are not codes we label
        else:
            raise CensusError(f"{path} row {lineno}: expected a NAME or VAL row, got {kind[:20]!r}")
    if not variables:
        raise CensusError(f"{path}: no NAME rows; this is not a PUMS data dictionary")
    return Dictionary(variables, path)


def as_dictionary(dictionary) -> Dictionary | None:
    """A Dictionary as is, a path read as one; None stays None."""
    if dictionary is None or isinstance(dictionary, Dictionary):
        return dictionary
    return read_dictionary(dictionary)
