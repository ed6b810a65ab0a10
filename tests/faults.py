"""Faults that cannot be produced for real here, injected from outside the production code.

`python -m tests.faults build ...` runs the persona CLI after patching what the environment names
(tests run as root, where a read-only chmod does not stop writes; a kill at an exact instant cannot
be timed from outside):
- PERSONA_FAULT=after_shards: SIGKILL right after the shards are written, before manifest, card and swap;
- PERSONA_FAULT=enospc_store: a chunk write fails inside its transaction, as SQLite fails on a full disk;
- PERSONA_FAULT=enospc_shard: a row-group write fails, as pyarrow fails on a full disk;
- PERSONA_RAY_KILL_AFTER=N / PERSONA_RAY_STALL_AFTER=N: after N generate() calls of the Ray pool, the
  next call kills (ray.kill) / freezes (SIGSTOP) the first replica right after sending it its slice.
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


def _ray(patch, kill_after: int, stall_after: int) -> None:
    from builder import ray_backend
    from generation.log import log

    pool = ray_backend.RayPool
    faults = {"PERSONA_RAY_KILL_AFTER": kill_after, "PERSONA_RAY_STALL_AFTER": stall_after}
    calls = {"generate": 0}
    real_generate, real_send = pool.generate, pool._send

    def generate(self, requests):
        calls["generate"] += 1
        calls["due"] = [name for name, n in faults.items() if n > 0 and calls["generate"] == n + 1]
        return real_generate(self, requests)

    def send(self, slot, requests):
        ref = real_send(slot, requests)  # a staticmethod: no self
        while calls.get("due") and self.live:
            name, victim = calls["due"].pop(), self.live[0]
            kill = name == "PERSONA_RAY_KILL_AFTER"
            log.info(f"ray: fault injection ({name}={faults[name]}): "
                     f"{'killing' if kill else 'freezing (SIGSTOP)'} {victim.name} mid-batch")
            if kill:
                ray_backend.ray.kill(victim.actor)
            else:
                os.kill(victim.pid, signal.SIGSTOP)
        return ref

    patch(pool, "generate", generate)
    patch(pool, "_send", send)


def install(patch, fault: str | None = None, ray_kill_after: int = 0, ray_stall_after: int = 0) -> None:
    """`patch(owner, name, value)` is pytest's monkeypatch.setattr or a plain setattr."""
    known = {"after_shards": _after_shards, "enospc_store": _enospc_store, "enospc_shard": _enospc_shard}
    if fault:
        known[fault](patch)
    if ray_kill_after or ray_stall_after:
        _ray(patch, ray_kill_after, ray_stall_after)


def main() -> None:
    install(setattr, os.environ.get("PERSONA_FAULT"), int(os.environ.get("PERSONA_RAY_KILL_AFTER") or 0),
            int(os.environ.get("PERSONA_RAY_STALL_AFTER") or 0))
    from builder.cli import main as cli

    cli(sys.argv[1:])


if __name__ == "__main__":
    main()
