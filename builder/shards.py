"""Write one config/split as deterministic Parquet shards: `<out>/<config>/<split>-0000i-of-0000N.parquet`.

Identical rows give identical bytes, however the rows are batched: row groups and shards are cut from
per-row sizes (uncompressed Arrow bytes), never from batch boundaries, and the writer options below are
fixed. Input is streamed: we hold at most one row group's worth of rows plus one incoming batch.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features
from datasets.table import table_cast

from generation.errors import PersonaError

from .durable import fsync_dir

# Fixed writer options: changing any of them changes the bytes of every build.
ZSTD_LEVEL = 1  # Arrow's default zstd level, chosen for speed; pinned so a new default can't change bytes
WRITER_OPTIONS = dict(
    version="2.6",
    compression="zstd",
    compression_level=ZSTD_LEVEL,
    use_dictionary=True,
    write_statistics=True,
    write_page_index=True,
    data_page_version="1.0",
    store_schema=True,  # ARROW:schema keeps exact Arrow types (e.g. int32) for readers other than `datasets`
)


class ShardWriteError(PersonaError, OSError):
    """A shard could not be written (e.g. the disk is full); str() names the file like any OSError."""


def write_config(out_dir, config: str, split: str, table_or_batches, features: Features,
                 max_shard_bytes: int = 500_000_000, row_group_bytes: int = 100_000_000) -> list[dict]:
    """Write rows (a Table, a RecordBatch, or an iterable of either) as shards of one split.

    Returns one dict per shard, in order: {"path": POSIX path relative to out_dir, "bytes", "rows", "sha256"}.
    Shards are written as `*.tmp`, fsynced, and renamed only once all are done (the count N is in the
    names); older shards of the same split are then removed so the folder holds exactly this split.
    """
    out_dir = Path(out_dir)
    folder = out_dir / config
    folder.mkdir(parents=True, exist_ok=True)
    schema = features.arrow_schema  # carries the `huggingface` metadata that `datasets` reads types from
    for stale in folder.glob(f"{split}-*.parquet.tmp"):  # left by an interrupted run
        stale.unlink()

    tmp_paths: list[Path] = []
    rows_per_shard: list[int] = []
    writer = None
    shard_bytes = 0
    pending = _Pending(schema)
    budget = min(row_group_bytes, max_shard_bytes)

    def write_group():
        nonlocal writer, shard_bytes
        if writer is not None and max_shard_bytes - shard_bytes < budget:
            writer.close()  # shards hold whole row groups: no runt group to fill the last bytes
            writer, shard_bytes = None, 0
        n = max(pending.fit(budget), 1)  # a single row larger than the budget still goes somewhere: alone
        table, nbytes = pending.pop(n)
        if writer is None:
            tmp_paths.append(folder / f"{split}-{len(tmp_paths):05d}.parquet.tmp")
            rows_per_shard.append(0)
            writer = pq.ParquetWriter(tmp_paths[-1], schema, **WRITER_OPTIONS)
        writer.write_table(table, row_group_size=table.num_rows)  # (pyarrow raises on a full disk, no path)
        shard_bytes += nbytes
        rows_per_shard[-1] += table.num_rows

    try:
        for table in _tables(table_or_batches, schema):
            pending.add(table)
            while pending.bytes > budget:  # a full row group is buffered: write it out
                write_group()
        while pending.rows:
            write_group()
        if writer is not None:
            writer.close()
            writer = None
        if not tmp_paths:  # no rows: still one (empty) shard, so the split exists and carries its schema
            tmp_paths.append(folder / f"{split}-00000.parquet.tmp")
            rows_per_shard.append(0)
            pq.ParquetWriter(tmp_paths[0], schema, **WRITER_OPTIONS).close()

        shards = []
        for tmp, rows in zip(tmp_paths, rows_per_shard):
            sha256 = _hash_and_fsync(tmp)
            shards.append({"path": tmp, "bytes": tmp.stat().st_size, "rows": rows, "sha256": sha256})
    except BaseException as e:
        if writer is not None:
            try:
                writer.close()
            except OSError:  # e.g. the disk is still full: closing flushes too; the first error matters
                pass
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, PersonaError):  # pyarrow's errors name no file: add it
            raise ShardWriteError(e.errno, e.strerror or str(e), e.filename or str(tmp_paths[-1] if tmp_paths else folder)) from e
        raise

    total = len(shards)
    final_names = set()
    for i, shard in enumerate(shards):
        final = folder / f"{split}-{i:05d}-of-{total:05d}.parquet"
        os.replace(shard["path"], final)
        final_names.add(final.name)
        shard["path"] = final.relative_to(out_dir).as_posix()
    shard_name = re.compile(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.parquet")
    for old in folder.iterdir():  # a previous build of this split may have had a different N
        if shard_name.fullmatch(old.name) and old.name not in final_names:
            old.unlink()
    fsync_dir(folder)
    return shards


def row_nbytes(array) -> np.ndarray:
    """Uncompressed Arrow bytes of each row of `array` (float64; validity bits ignored).

    Additive over rows, so a row group's size does not depend on how rows were batched.
    """
    if isinstance(array, pa.ChunkedArray):
        parts = [row_nbytes(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0)
    t = array.type
    if isinstance(t, pa.ExtensionType):
        return row_nbytes(array.storage)
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        offset = 8 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else 4
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64) + offset
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_map(t):
        offset = 8 if pa.types.is_large_list(t) else 0 if pa.types.is_fixed_size_list(t) else 4
        child = row_nbytes(array.flatten())
        parents = pc.list_parent_indices(array).to_numpy()
        return np.bincount(parents, weights=child, minlength=len(array)) + offset
    if pa.types.is_struct(t):
        sizes = np.zeros(len(array))
        for child in array.flatten():
            sizes += row_nbytes(child)
        return sizes
    try:  # fixed width (dictionary and view types count their indices / view headers only)
        return np.full(len(array), t.bit_width / 8)
    except ValueError:  # rare types without a fixed width (unions, ...): spread the array's bytes evenly
        return np.full(len(array), array.nbytes / max(len(array), 1))


class _Pending:
    """Rows received but not yet written, with their sizes (bounded by one row group + one batch)."""

    def __init__(self, schema: pa.Schema):
        self.table = schema.empty_table()
        self.sizes = np.zeros(0)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @property
    def bytes(self) -> float:
        return float(self.sizes.sum())

    def add(self, table: pa.Table):
        sizes = np.zeros(table.num_rows)
        for column in table.columns:
            sizes += row_nbytes(column)
        self.table = pa.concat_tables([self.table, table])
        self.sizes = np.concatenate([self.sizes, sizes])

    def fit(self, budget: float) -> int:
        """How many leading rows fit in `budget` bytes."""
        return int(np.searchsorted(np.cumsum(self.sizes), budget, side="right"))

    def pop(self, n: int) -> tuple[pa.Table, int]:
        head, nbytes = self.table.slice(0, n), int(self.sizes[:n].sum())
        self.table, self.sizes = self.table.slice(n), self.sizes[n:]
        return head, nbytes


def _tables(data, schema: pa.Schema) -> Iterable[pa.Table]:
    """Each input piece as a Table cast to the features' schema (column order, exact types, metadata)."""
    if isinstance(data, pa.Table):
        data = data.to_batches()
    elif isinstance(data, pa.RecordBatch):
        data = [data]
    for piece in data:
        table = pa.Table.from_batches([piece]) if isinstance(piece, pa.RecordBatch) else piece
        if table.num_rows:
            yield table_cast(table, schema)


def _hash_and_fsync(path: Path) -> str:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        os.fsync(f.fileno())
    return digest
