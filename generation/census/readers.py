"""Read census person records into one `CensusFrame`, from a folder of `p_<FIPS>.parquet` files or
from the official `csv_pus.zip` (+ `csv_hus.zip`), validating types, never-blank columns and codes."""
from __future__ import annotations

import os
import re
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

from .columns import CORE, EXTRA_HOUSING, EXTRA_PERSON, NOT_NULL, NUMERIC, TYPES, WIDE
from .dictionary import Dictionary, as_dictionary
from .errors import CensusError
from .states import STATES, resolve_states


@dataclass
class CensusFrame:
    """All person records: one row per person with PUMS codes, plus a `narrow` flag for people whose
    file lacked the WIDE columns (their WIDE codes are <NA> here and get imputed when sampled).
    Treat `data` as read-only: generation.sampling caches arrays derived from it in `cache`."""
    data: pd.DataFrame
    dictionary: Dictionary | None
    sources: list[dict]                    # per file: name, rows, narrow (for the manifest)
    cache: dict = field(default_factory=dict, repr=False)   # derived arrays reused by generation.sampling

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
    d = as_dictionary(dictionary)
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
