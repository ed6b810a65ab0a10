"""Census side of PERSONA: read ACS PUMS person records, validate them, read the PUMS data dictionary,
fetch the official files with a checksum cache, and turn sampled people into labelled rows.

Two sources are read into the same `CensusFrame`:
- a folder of Parquet files `p_<FIPS>.parquet` (one state each). A file that has none of the
  WIDE columns is "narrow" (the shared extract has CA and TX only this way); its people are kept and
  their missing attributes are later filled by hot-deck imputation (generation/sampling.py).
- the official census.gov files: `csv_pus.zip` (members `psam_pus*.csv`), optionally with the housing
  file `csv_hus.zip` (`psam_hus*.csv`) joined on SERIALNO for HHT/HUPAC/HHL.

Codes are kept as PUMS integer codes in pandas nullable small ints; <NA> is the PUMS N/A (blank) code.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import urllib.request
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .ids import sha256_file
from .errors import PersonaError


class CensusError(PersonaError, ValueError):
    """Bad census input; the message names the file (zip:member for official files), the column and,
    where it applies, the row (0-based data row, header not counted) and the code."""


OFFICIAL_BASE = "https://www2.census.gov/programs-surveys/acs/data/pums/2024/1-Year/"
OFFICIAL_PERSONS_URL = OFFICIAL_BASE + "csv_pus.zip"
OFFICIAL_HOUSING_URL = OFFICIAL_BASE + "csv_hus.zip"
OFFICIAL_DICTIONARY_URL = ("https://www2.census.gov/programs-surveys/acs/tech_docs/pums/data_dict/"
                           "PUMS_Data_Dictionary_2024.csv")

# Columns every file must have (the narrow CA/TX files have exactly these, apart from PUMA which we skip).
CORE = ["SERIALNO", "SPORDER", "STATE", "PWGTP", "AGEP", "SEX", "RAC1P", "HISP", "SCHL", "CIT", "DIS"]
# Person attributes a full file has; a file with none of them is narrow, with only some is broken.
WIDE = ["NATIVITY", "LANX", "ENG", "MAR", "FER", "ESR", "COW", "INDP", "OCCP", "PINCP",
        "HICOV", "PRIVCOV", "PUBCOV", "DEAR", "DEYE", "DREM", "MIL"]
# Used when every file has them (the official person file); the shared Parquet extract lacks them.
EXTRA_PERSON = ["ANC1P", "POBP", "LANP"]
EXTRA_HOUSING = ["HHT", "HUPAC", "HHL"]

# Smallest integer type that holds each column's codes: the frame stays ~0.3 GB for 3.4 M people.
TYPES = {
    "SERIALNO": pa.string(), "SPORDER": pa.int8(), "STATE": pa.int8(), "PWGTP": pa.int32(),
    "AGEP": pa.int8(), "SEX": pa.int8(), "RAC1P": pa.int8(), "HISP": pa.int8(), "SCHL": pa.int8(),
    "CIT": pa.int8(), "DIS": pa.int8(), "NATIVITY": pa.int8(), "LANX": pa.int8(), "ENG": pa.int8(),
    "MAR": pa.int8(), "FER": pa.int8(), "ESR": pa.int8(), "COW": pa.int8(), "INDP": pa.int16(),
    "OCCP": pa.int16(), "PINCP": pa.int32(), "HICOV": pa.int8(), "PRIVCOV": pa.int8(),
    "PUBCOV": pa.int8(), "DEAR": pa.int8(), "DEYE": pa.int8(), "DREM": pa.int8(), "MIL": pa.int8(),
    "ANC1P": pa.int16(), "POBP": pa.int16(), "LANP": pa.int16(),
    "HHT": pa.int8(), "HUPAC": pa.int8(), "HHL": pa.int8(),
}
# PUMS never leaves these blank (SCHL is blank under age 3, so it is not here).
NOT_NULL = ["SERIALNO", "SPORDER", "STATE", "PWGTP", "AGEP", "SEX", "RAC1P", "HISP", "CIT", "DIS"]
# Numeric (not coded) columns: checked for range, not against the dictionary's code list.
NUMERIC = {"SPORDER", "PWGTP", "AGEP", "PINCP"}

# 50 states + DC: FIPS -> (postal, name, census region, census division). Region/division are not in
# the Parquet extract but drive stratification and donor matching.
STATES = {
    1: ("AL", "Alabama", 3, 6), 2: ("AK", "Alaska", 4, 9), 4: ("AZ", "Arizona", 4, 8),
    5: ("AR", "Arkansas", 3, 7), 6: ("CA", "California", 4, 9), 8: ("CO", "Colorado", 4, 8),
    9: ("CT", "Connecticut", 1, 1), 10: ("DE", "Delaware", 3, 5), 11: ("DC", "District of Columbia", 3, 5),
    12: ("FL", "Florida", 3, 5), 13: ("GA", "Georgia", 3, 5), 15: ("HI", "Hawaii", 4, 9),
    16: ("ID", "Idaho", 4, 8), 17: ("IL", "Illinois", 2, 3), 18: ("IN", "Indiana", 2, 3),
    19: ("IA", "Iowa", 2, 4), 20: ("KS", "Kansas", 2, 4), 21: ("KY", "Kentucky", 3, 6),
    22: ("LA", "Louisiana", 3, 7), 23: ("ME", "Maine", 1, 1), 24: ("MD", "Maryland", 3, 5),
    25: ("MA", "Massachusetts", 1, 1), 26: ("MI", "Michigan", 2, 3), 27: ("MN", "Minnesota", 2, 4),
    28: ("MS", "Mississippi", 3, 6), 29: ("MO", "Missouri", 2, 4), 30: ("MT", "Montana", 4, 8),
    31: ("NE", "Nebraska", 2, 4), 32: ("NV", "Nevada", 4, 8), 33: ("NH", "New Hampshire", 1, 1),
    34: ("NJ", "New Jersey", 1, 2), 35: ("NM", "New Mexico", 4, 8), 36: ("NY", "New York", 1, 2),
    37: ("NC", "North Carolina", 3, 5), 38: ("ND", "North Dakota", 2, 4), 39: ("OH", "Ohio", 2, 3),
    40: ("OK", "Oklahoma", 3, 7), 41: ("OR", "Oregon", 4, 9), 42: ("PA", "Pennsylvania", 1, 2),
    44: ("RI", "Rhode Island", 1, 1), 45: ("SC", "South Carolina", 3, 5), 46: ("SD", "South Dakota", 2, 4),
    47: ("TN", "Tennessee", 3, 6), 48: ("TX", "Texas", 3, 7), 49: ("UT", "Utah", 4, 8),
    50: ("VT", "Vermont", 1, 1), 51: ("VA", "Virginia", 3, 5), 53: ("WA", "Washington", 4, 9),
    54: ("WV", "West Virginia", 3, 5), 55: ("WI", "Wisconsin", 2, 3), 56: ("WY", "Wyoming", 4, 8),
}
REGIONS = {1: "Northeast", 2: "Midwest", 3: "South", 4: "West"}
DIVISIONS = {1: "New England", 2: "Middle Atlantic", 3: "East North Central", 4: "West North Central",
             5: "South Atlantic", 6: "East South Central", 7: "West South Central", 8: "Mountain",
             9: "Pacific"}


def resolve_states(states) -> list[int] | None:
    """None -> None (all); else sorted FIPS codes from FIPS ints/strings ("06") or postal codes ("CA")."""
    if states is None:
        return None
    if isinstance(states, (str, int)):
        states = [states]
    by_postal = {v[0]: k for k, v in STATES.items()}
    out = set()
    for s in states:
        key = str(s).strip()
        fips = int(key) if key.isdigit() else by_postal.get(key.upper())
        if fips not in STATES:
            raise CensusError(f"unknown state {s!r}: use a FIPS code (e.g. 6 or '06') or a postal code "
                              f"(e.g. 'CA') of the 50 states + DC")
        out.add(fips)
    if not out:
        raise CensusError("states filter is empty: pass None for all states")
    return sorted(out)


def person_id(serialno: str, sporder: int) -> str:
    """The id of a census person: household serial number + person number, e.g. '2024HU0000123-02'."""
    return f"{serialno}-{int(sporder):02d}"


# ----------------------------------------------------------------------------- data dictionary

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


def _as_dictionary(dictionary) -> Dictionary | None:
    if dictionary is None or isinstance(dictionary, Dictionary):
        return dictionary
    return read_dictionary(dictionary)


# ----------------------------------------------------------------------------- reading

@dataclass
class CensusFrame:
    """All person records: one row per person with PUMS codes, plus a `narrow` flag for people whose
    file lacked the WIDE columns (their WIDE codes are <NA> here and get imputed when sampled).
    Treat `data` as read-only: generation.sampling caches arrays derived from it in `cache`."""
    data: pd.DataFrame
    dictionary: Dictionary | None
    sources: list[dict]                    # per file: name, rows, narrow (for the manifest)
    cache: dict = field(default_factory=dict, repr=False)   # derived arrays reused by sampling.py

    @property
    def extras(self) -> list[str]:
        return [c for c in EXTRA_PERSON + EXTRA_HOUSING if c in self.data.columns]

    def __len__(self) -> int:
        return len(self.data)


def read_census(source, states=None, dictionary=None, *, housing=None,
                unknown_codes: str = "label") -> CensusFrame:
    """Read person records from a folder of `p_<FIPS>.parquet` files, or from the official
    `csv_pus.zip` (a path to it, or a folder holding it; `csv_hus.zip` beside it, or `housing=`,
    adds HHT/HUPAC/HHL).

    states: None for all, or FIPS / postal codes. dictionary: path or Dictionary; when given, every
    coded column is checked against it: an unknown code warns (unknown_codes="label": it will be
    labelled "Unknown code ...") or raises CensusError (unknown_codes="error").
    """
    if unknown_codes not in ("label", "error"):
        raise ValueError(f"unknown_codes must be 'label' or 'error', not {unknown_codes!r}")
    source = Path(source)
    fips = resolve_states(states)
    d = _as_dictionary(dictionary)
    if source.is_dir() and (source / "csv_pus.zip").exists() and not any(source.glob("*.parquet")):
        if housing is None and (source / "csv_hus.zip").exists():
            housing = source / "csv_hus.zip"
        source = source / "csv_pus.zip"
    def check(table, label):
        if d is not None:
            _check_codes(table, label, d, unknown_codes)
        return table

    if source.is_dir():
        parts = _read_parquet_dir(source, fips, check)
    elif source.suffix == ".zip":
        parts = _read_official(source, fips, Path(housing) if housing else None, check)
    elif not source.exists():
        raise CensusError(f"{source}: no such file or folder")
    else:
        raise CensusError(f"{source}: expected a folder of p_<FIPS>.parquet files or an official csv_pus.zip")
    return _to_frame(parts, d)


PARQUET_NAME = re.compile(r"^p_(\d{2})(?:_narrow)?\.parquet$")


def _read_parquet_dir(folder: Path, fips: list[int] | None, check):
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise CensusError(f"{folder}: no .parquet files")
    by_state: dict[int, list[Path]] = {}
    for f in files:
        m = PARQUET_NAME.match(f.name)
        by_state.setdefault(int(m.group(1)) if m else -1, []).append(f)
    if fips is not None:
        missing = [s for s in fips if s not in by_state and -1 not in by_state]
        if missing:
            raise CensusError(f"{folder}: no file for state(s) "
                              f"{', '.join(STATES[s][0] + f' ({s:02d})' for s in missing)}")
    chosen = []
    for state, paths in sorted(by_state.items()):
        if fips is not None and state != -1 and state not in fips:
            continue
        # The wide file wins when a state has both a wide and a narrow file.
        chosen += sorted(paths, key=lambda p: "_narrow" in p.name)[:1] if state != -1 else paths
    # Files are small (one row group each), so read them side by side; results keep file order and
    # the first failing file (in that order) raises.
    def read(path):
        table, narrow = _read_parquet(path)
        return path.name, _filter_states(check(table, path), fips), narrow

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(read, chosen))


def _read_parquet(path: Path):
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise CensusError(f"{path}: not a readable Parquet file, truncated or corrupt ({e})") from None
    if pf.metadata.num_rows == 0:
        raise CensusError(f"{path}: empty file (0 rows)")
    schema = pf.schema_arrow
    columns = _select_columns(path, schema.names)
    for c in columns:
        _check_type(path, c, schema.field(c).type)
    try:
        table = pf.read(columns=columns, use_threads=False)
    except (pa.ArrowException, OSError) as e:
        raise CensusError(f"{path}: cannot read the Parquet data, truncated or corrupt ({e})") from None
    return _normalise(table, path), not any(c in schema.names for c in WIDE)


def _select_columns(label, names) -> list[str]:
    """The needed columns present in a file; a missing CORE column, or a partial WIDE set, is an error."""
    names = set(names)
    if "STATE" not in names and "ST" in names:   # older official files call the state column ST
        names.add("STATE")
    missing = [c for c in CORE if c not in names]
    wide = [c for c in WIDE if c in names]
    if wide:
        missing += [c for c in WIDE if c not in names]
    if missing:
        raise CensusError(f"{label}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return CORE + wide + [c for c in EXTRA_PERSON + EXTRA_HOUSING if c in names]


def _check_type(label, column, typ) -> None:
    if column == "SERIALNO":
        ok = pa.types.is_string(typ) or pa.types.is_large_string(typ)
        expected = "string"
    elif column == "STATE":   # "06" in the extract, 6 in some files
        ok = pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ)
        expected = "integer or string FIPS code"
    else:
        ok = pa.types.is_integer(typ)
        expected = "integer codes"
    if not ok:
        raise CensusError(f"{label}: column {column} has type {typ}, expected {expected}")


def _first_row(mask) -> int:
    return int(pc.index(mask, True).as_py())


def _normalise(table: pa.Table, label) -> pa.Table:
    """Cast to the small target types and check the never-blank columns, weights and ages."""
    out = {}
    for name in table.column_names:
        col = table[name]
        if name == "ST":
            name = "STATE"
        target = TYPES[name]
        try:
            col = pc.cast(col, target)
        except pa.ArrowInvalid as e:
            raise CensusError(f"{label}: column {name}: values do not fit {target} ({e})") from None
        out[name] = col
    for name in NOT_NULL:
        if out[name].null_count:
            row = _first_row(pc.is_null(out[name]))
            raise CensusError(f"{label}: column {name} row {row}: blank value, but PUMS never leaves {name} blank")
    bad = pc.less_equal(out["PWGTP"], 0)
    if pc.any(bad).as_py():
        raise CensusError(f"{label}: column PWGTP row {_first_row(bad)}: person weight must be positive")
    bad = pc.or_(pc.less(out["AGEP"], 0), pc.greater(out["AGEP"], 120))
    if pc.any(bad).as_py():
        raise CensusError(f"{label}: column AGEP row {_first_row(bad)}: age outside 0..120")
    bad = pc.invert(pc.is_in(out["STATE"], pa.array(list(STATES), pa.int8())))
    if pc.any(bad).as_py():
        row = _first_row(bad)
        raise CensusError(f"{label}: column STATE row {row}: code {out['STATE'][row].as_py()} is not "
                          f"one of the 50 states + DC")
    return pa.table(out)


def _filter_states(table: pa.Table, fips) -> pa.Table:
    if fips is None:
        return table
    return table.filter(pc.is_in(table["STATE"], pa.array(fips, pa.int8())))


def _check_codes(table: pa.Table, label, d: Dictionary, mode: str) -> None:
    for name in table.column_names:
        if name == "SERIALNO" or name in NUMERIC:
            continue
        var = d[name]   # a needed column the dictionary lacks is an error: we could not label it
        values = pc.unique(table[name].drop_null()).to_pylist()
        unknown = sorted(v for v in values if not var.knows(v))
        if unknown:
            row = _first_row(pc.is_in(table[name], pa.array(unknown, table[name].type)))
            msg = (f"{label}: column {name} row {row}: code{'s' if len(unknown) > 1 else ''} "
                   f"{', '.join(map(str, unknown[:10]))} not in the data dictionary {d.path}")
            if mode == "error":
                raise CensusError(msg)
            warnings.warn(msg + "; labelled as unknown code", stacklevel=3)


def _read_official(path: Path, fips, housing: Path | None, check):
    persons = _read_zip_csvs(path, "psam_pus", _select_columns, fips, check)
    table = pa.concat_tables(t for _, t in persons)
    if housing is not None:
        hus = pa.concat_tables(t for _, t in _read_zip_csvs(housing, "psam_hus", _housing_columns, None, check))
        # Left join that keeps person order: position of each person's household in the housing table.
        pos = pc.index_in(table["SERIALNO"], value_set=hus["SERIALNO"])
        for c in EXTRA_HOUSING:
            table = table.append_column(c, hus[c].take(pos))
    return [(path.name, table, False)]


def _housing_columns(label, names) -> list[str]:
    missing = [c for c in ["SERIALNO"] + EXTRA_HOUSING if c not in names]
    if missing:
        raise CensusError(f"{label}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return ["SERIALNO"] + EXTRA_HOUSING


def _read_zip_csvs(path: Path, prefix: str, select, fips, check):
    """Stream each `<prefix>*.csv` member of an official zip, keeping only the needed columns."""
    if not path.exists():
        raise CensusError(f"{path}: no such file")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CensusError(f"{path}: not a readable zip file ({e})") from None
    out = []
    with z:
        members = sorted(n for n in z.namelist() if re.fullmatch(prefix + r"\w*\.csv", Path(n).name))
        if not members:
            raise CensusError(f"{path}: no {prefix}*.csv member (found {', '.join(z.namelist()[:5]) or 'nothing'})")
        for m in members:
            label = f"{path.name}:{m}"  # a file name: the manifest never records machine paths
            try:
                with z.open(m) as fh:
                    header = fh.readline().decode("utf-8-sig").strip()
                if not header:
                    raise CensusError(f"{label}: empty file")
                names = [h.strip().strip('"') for h in header.split(",")]
                columns = select(label, names)
                read_cols = ["ST" if c == "STATE" and "STATE" not in names else c for c in columns]
                # Parse straight into the small types (an out-of-range value is a conversion error), so
                # the 3.4 M-row US file never exists as int64 columns; the state may be "06" or "6".
                types = {c: (pa.string() if c in ("STATE", "ST") else TYPES[c]) for c in read_cols}
                with z.open(m) as fh:
                    reader = pacsv.open_csv(fh, read_options=pacsv.ReadOptions(block_size=1 << 24),
                                            convert_options=pacsv.ConvertOptions(include_columns=read_cols,
                                                                                 column_types=types))
                    batches = [b for b in reader]
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise CensusError(f"{label}: corrupt zip member ({e})") from None
            except pa.ArrowInvalid as e:
                raise CensusError(f"{label}: {_csv_error(e, names)}") from None
            table = pa.Table.from_batches(batches, schema=reader.schema)
            if table.num_rows == 0:
                raise CensusError(f"{label}: empty file (header only)")
            if prefix == "psam_pus":
                table = _filter_states(check(_normalise(table, label), label), fips)
            else:
                table = check(table, label)
            out.append((label, table))
    return out


def _csv_error(e: Exception, names: list[str]) -> str:
    """Arrow says 'In CSV column #12: ...'; name the column."""
    msg = str(e)
    m = re.search(r"CSV column #(\d+)", msg)
    if m and int(m.group(1)) < len(names):
        return f"column {names[int(m.group(1))]}: {msg}"
    return msg


def _to_frame(parts, d: Dictionary | None) -> CensusFrame:
    if not parts or sum(t.num_rows for _, t, _ in parts) == 0:
        raise CensusError("no person records for the requested states")
    # An extra column (ANC1P, HHT, ...) is kept only if every file has it: a blank must mean PUMS N/A.
    extras = [c for c in EXTRA_PERSON + EXTRA_HOUSING if all(c in t.column_names for _, t, _ in parts)]
    columns = CORE + WIDE + extras
    tables = []
    for _, t, narrow in parts:
        cols = [t[c] if c in t.column_names else pa.nulls(t.num_rows, TYPES[c]) for c in columns]
        cols.append(pa.array(np.full(t.num_rows, narrow)))
        tables.append(pa.table(cols, names=columns + ["narrow"]))
    table = pa.concat_tables(tables)
    mapping = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
               pa.string(): pd.StringDtype("pyarrow")}
    data = table.to_pandas(types_mapper=mapping.get)
    sources = [{"file": label, "rows": t.num_rows, "narrow": narrow} for label, t, narrow in parts]
    return CensusFrame(data, d, sources)


# ----------------------------------------------------------------------------- download

@dataclass(frozen=True)
class Fetched:
    path: Path
    url: str
    sha256: str
    bytes: int
    reused: bool         # True when the cached copy was used


def download(url: str, cache_dir, sha256: str | None = None, *, timeout: float = 120) -> Fetched:
    """Fetch `url` into `cache_dir`, checking sha256 when pinned; a cached copy is re-used.

    Beside the file the cache keeps `<name>.json` with the url and the computed sha256, so a first
    unpinned download can be pinned in the manifest. Re-use: with a pin, any cached file of that name
    whose checksum matches (so official files copied in by hand are used offline); without one, the
    file this url downloaded earlier, if its checksum still matches the record. Otherwise the file is
    fetched again; a fresh download with a wrong checksum raises CensusError and is not kept.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.request.url2pathname(url.split("?")[0].rstrip("/").rsplit("/", 1)[-1])).name
    if not name:
        raise CensusError(f"{url}: cannot tell the file name")
    path, meta = cache_dir / name, cache_dir / (name + ".json")
    expected = sha256.lower() if sha256 else None
    if path.exists():
        try:
            recorded = json.loads(meta.read_text())
        except (OSError, ValueError):
            recorded = {}
        want = expected or (recorded.get("sha256") if recorded.get("url") == url else None)
        if want is not None:
            digest = sha256_file(path)
            if digest == want:
                size = path.stat().st_size
                meta.write_text(json.dumps({"url": url, "sha256": digest, "bytes": size}, indent=1))
                return Fetched(path, url, digest, size, True)
    part = cache_dir / (name + ".part")
    h, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block)
                f.write(block)
                size += len(block)
    except OSError as e:    # URLError and HTTPError are OSErrors
        part.unlink(missing_ok=True)
        raise CensusError(f"{url}: download failed ({e})") from None
    digest = h.hexdigest()
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise CensusError(f"{url}: sha256 mismatch: expected {expected}, got {digest}")
    os.replace(part, path)
    meta.write_text(json.dumps({"url": url, "sha256": digest, "bytes": size}, indent=1))
    return Fetched(path, url, digest, size, False)


# ----------------------------------------------------------------------------- labels

OUTPUT_COLUMNS = [
    "source_serialno", "source_sporder", "state", "age", "sex", "race", "education",
    "employment_status", "class_of_worker", "industry_category", "occupation_category", "income",
    "marital_status", "citizenship", "nativity", "veteran_status", "disability", "health_insurance",
    "cognitive_difficulty", "ability_to_speak_english", "household_language", "vision_difficulty",
    "hearing_difficulty", "fertility", "ancestry", "place_of_birth", "household_type",
    "family_presence_and_age", "imputed_fields", "generated_fields",
]
# Which PUMS columns each labelled attribute comes from (imputed_fields maps imputed columns through it).
ATTRIBUTE_SOURCES = {
    "state": ["STATE"], "age": ["AGEP"], "sex": ["SEX"], "race": ["RAC1P", "HISP"], "education": ["SCHL"],
    "employment_status": ["ESR"], "class_of_worker": ["COW"], "industry_category": ["INDP"],
    "occupation_category": ["OCCP"], "income": ["PINCP"], "marital_status": ["MAR"],
    "citizenship": ["CIT"], "nativity": ["NATIVITY"], "veteran_status": ["MIL"], "disability": ["DIS"],
    "health_insurance": ["HICOV", "PRIVCOV", "PUBCOV"], "cognitive_difficulty": ["DREM"],
    "ability_to_speak_english": ["ENG"], "household_language": ["LANX", "LANP", "HHL"],
    "vision_difficulty": ["DEYE"], "hearing_difficulty": ["DEAR"], "fertility": ["FER"],
    "ancestry": ["ANC1P"], "place_of_birth": ["POBP"], "household_type": ["HHT"],
    "family_presence_and_age": ["HUPAC"],
}
# Raw codes kept beside the labels (as code_<VAR>, nullable Int64, <NA> = PUMS N/A) for rule checks.
CODE_COLUMNS = ["AGEP", "SEX", "STATE", "RAC1P", "HISP", "SCHL", "ESR", "COW", "INDP", "OCCP", "PINCP",
                "MAR", "CIT", "NATIVITY", "MIL", "DIS", "HICOV", "PRIVCOV", "PUBCOV", "DREM", "ENG",
                "LANX", "DEYE", "DEAR", "FER", "ANC1P", "POBP", "LANP", "HHT", "HUPAC", "HHL"]
LABEL_PREFIX = re.compile(r"^[A-Z]{3}-(?=\S)")     # "MGR-Chief Executives..." -> "Chief Executives..."
NOT_WORKED = "Not applicable (has not worked in the past 5 years or never worked)"
GROUP_QUARTERS = "Not applicable (lives in group quarters)"


def label_people(df: pd.DataFrame, dictionary) -> pd.DataFrame:
    """One labelled row per sampled person (columns OUTPUT_COLUMNS, then code_<VAR> for CODE_COLUMNS
    and code_DONOR, the person id of the hot-deck donor or None).

    df: a sample table from generation.sampling (PUMS codes, `imputed_columns`, `donor_id`).
    """
    d = _as_dictionary(dictionary)
    if d is None:
        raise CensusError("label_people needs the PUMS data dictionary")
    missing = [c for c in CORE + WIDE if c not in df.columns]
    if missing:
        raise CensusError(f"sample table: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    cols = [c for c in CODE_COLUMNS + ["SERIALNO", "SPORDER"] if c in df.columns]
    records = df[cols].astype(object).where(df[cols].notna(), None).to_dict("records")
    imputed = df["imputed_columns"] if "imputed_columns" in df.columns else [[]] * len(df)
    donors = df["donor_id"] if "donor_id" in df.columns else [None] * len(df)
    rows = []
    for r, imp, donor in zip(records, imputed, donors):
        row = _label_row(r, d)
        imp = set(imp)
        row["imputed_fields"] = [a for a, src in ATTRIBUTE_SOURCES.items() if imp.intersection(src)]
        for c in CODE_COLUMNS:
            row["code_" + c] = r.get(c)
        row["code_DONOR"] = donor if isinstance(donor, str) else None
        rows.append(row)
    out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS + ["code_" + c for c in CODE_COLUMNS] + ["code_DONOR"])
    for c in ["ancestry", "place_of_birth", "household_type", "family_presence_and_age", "code_DONOR"]:
        out[c] = pd.Series([row[c] for row in rows], dtype=object)   # None stays None, not NaN
    out["source_sporder"] = out["source_sporder"].astype("int64")
    out["age"] = out["age"].astype("int64")
    for c in CODE_COLUMNS:
        out["code_" + c] = out["code_" + c].astype("Int64")
    return out


def _strip_state(label: str) -> str:
    return re.sub(r"/[A-Z]{2}$", "", label)


def _label_row(r: dict, d: Dictionary) -> dict:
    age = r["AGEP"]
    lab = d.label
    out = {"source_serialno": str(r["SERIALNO"]), "source_sporder": int(r["SPORDER"]), "age": int(age)}
    out["state"] = _strip_state(lab("STATE", r["STATE"]))
    out["sex"] = lab("SEX", r["SEX"])
    hispanic = r["HISP"] != 1
    origin = lab("HISP", r["HISP"])
    out["race"] = (f"Hispanic or Latino ({origin}), " if hispanic else "Not Hispanic or Latino, ") + lab("RAC1P", r["RAC1P"])
    out["education"] = "Not applicable (under 3)" if r["SCHL"] is None else lab("SCHL", r["SCHL"])

    out["employment_status"] = "Not applicable (under 16)" if r["ESR"] is None else lab("ESR", r["ESR"])
    for attr, var in [("class_of_worker", "COW"), ("industry_category", "INDP"), ("occupation_category", "OCCP")]:
        if r[var] is None:
            out[attr] = "Not applicable (under 16)" if age < 16 else NOT_WORKED
        else:
            out[attr] = LABEL_PREFIX.sub("", lab(var, r[var]))
    out["income"] = _income(r["PINCP"])
    if r["MAR"] == 5:   # PUMS code 5 is "Never married or under 15 years old": say which
        out["marital_status"] = "Never married" if age >= 15 else "Not applicable (under 15)"
    else:
        out["marital_status"] = lab("MAR", r["MAR"])
    out["citizenship"] = lab("CIT", r["CIT"])
    out["nativity"] = lab("NATIVITY", r["NATIVITY"])
    out["veteran_status"] = "Not applicable (under 17)" if r["MIL"] is None else lab("MIL", r["MIL"])
    out["disability"] = lab("DIS", r["DIS"])
    out["health_insurance"] = _insurance(r)
    out["cognitive_difficulty"] = "Not applicable (under 5)" if r["DREM"] is None else lab("DREM", r["DREM"])
    out["vision_difficulty"] = lab("DEYE", r["DEYE"])
    out["hearing_difficulty"] = lab("DEAR", r["DEAR"])

    if r["ENG"] is not None:
        out["ability_to_speak_english"] = lab("ENG", r["ENG"])
    elif r["LANX"] == 2:
        out["ability_to_speak_english"] = "Speaks only English at home"
    else:
        out["ability_to_speak_english"] = "Not applicable (under 5)"
    generated = []
    if r["LANX"] == 2:
        out["household_language"] = "English only"
    elif r["LANX"] == 1:
        if r.get("LANP") is not None:
            out["household_language"] = lab("LANP", r["LANP"])
        else:   # the extract only says "not English": the LLM picks the language
            out["household_language"] = "A language other than English"
            generated.append("household_language")
    elif r.get("HHL") is not None:   # under 5: no own answer, the household's language says most
        out["household_language"] = lab("HHL", r["HHL"])
    else:
        out["household_language"] = "Not applicable (under 5)"

    if r["FER"] == 1:
        out["fertility"] = "Gave birth within the past 12 months"
    elif r["FER"] == 2:
        out["fertility"] = "Did not give birth within the past 12 months"
    elif r["FER"] is not None:
        out["fertility"] = lab("FER", r["FER"])
    elif r["SEX"] == 1:
        out["fertility"] = "Not applicable (male)"
    else:
        out["fertility"] = "Not applicable (under 15 or over 50)"

    for attr, var, na in [("ancestry", "ANC1P", "Not reported"), ("place_of_birth", "POBP", "Not reported"),
                          ("household_type", "HHT", GROUP_QUARTERS),
                          ("family_presence_and_age", "HUPAC", GROUP_QUARTERS)]:
        if var not in r:          # the source lacks the column: the LLM must fill it
            out[attr] = None
            generated.append(attr)
        elif r[var] is None:
            out[attr] = na
        else:
            out[attr] = _strip_state(lab(var, r[var])) if var == "POBP" else lab(var, r[var])
    out["generated_fields"] = [a for a in OUTPUT_COLUMNS if a in generated]
    return out


def _income(v) -> str:
    if v is None:
        return "Not applicable (under 15)"
    if v == 0:
        return "No income"
    if v < 0:
        return f"Net loss of ${-v:,} per year"
    return f"${v:,} per year"


def _insurance(r: dict) -> str:
    if r["HICOV"] == 2:
        return "No health insurance"
    private, public = r["PRIVCOV"] == 1, r["PUBCOV"] == 1
    if private and public:
        return "Private and public insurance"
    if private:
        return "Private insurance only"
    if public:
        return "Public insurance only"
    return "Insured (type not recorded)"
