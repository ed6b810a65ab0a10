"""Faults that cannot be produced for real here, injected from outside the production code.

`python -m tests.faults build ...` runs the persona CLI after patching what the environment names
(tests run as root, where a read-only chmod does not stop writes; a kill at an exact instant cannot
be timed from outside):
- PERSONA_FAULT=after_shards: SIGKILL right after the shards are written, before manifest, card and swap;
- PERSONA_FAULT=enospc_store: a chunk write fails inside its transaction, as SQLite fails on a full disk;
- PERSONA_FAULT=enospc_shard: a row-group write fails, as pyarrow fails on a full disk;
In-process tests call `install(...)` under monkeypatch instead. Nothing in builder/ or generation/ reads
these variables.
"""
from __future__ import annotations

import errno
import os
import signal
import sqlite3
import sys


def _after_shards(patch) -> None:
    from builder import pipeline

    real = pipeline.write_tables

    def write_then_die(*args, **kwargs):
        shards = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return shards

    patch(pipeline, "write_tables", write_then_die)


class _FullDisk:
    """A connection whose bulk writes fail as SQLite's do on a full disk (mid-transaction)."""

    def __init__(self, db):
        self._db = db

    def executemany(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name):
        return getattr(self._db, name)


def _enospc_store(patch) -> None:
    from builder.store import RequestStore

    real = RequestStore.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.db = _FullDisk(self.db)

    patch(RequestStore, "__init__", init)


def _enospc_shard(patch) -> None:
    import pyarrow.parquet as pq

    class FullDiskWriter(pq.ParquetWriter):
        def write_table(self, *args, **kwargs):  # pyarrow's own error on a full disk names no file
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    patch(pq, "ParquetWriter", FullDiskWriter)


def install(patch, fault: str | None = None) -> None:
    """`patch(owner, name, value)` is pytest's monkeypatch.setattr or a plain setattr."""
    known = {"after_shards": _after_shards, "enospc_store": _enospc_store, "enospc_shard": _enospc_shard}
    if fault:
        known[fault](patch)


def main() -> None:
    install(setattr, os.environ.get("PERSONA_FAULT"))
    from builder.cli import main as cli

    cli(sys.argv[1:])


if __name__ == "__main__":
    main()
