"""The durable request store: request id -> final outcome, in SQLite (WAL, synchronous=FULL).

One transaction per chunk: a kill -9 loses at most the chunk in flight, and a row is either fully
there or absent (no torn records); the primary key makes a duplicate impossible.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from generation.errors import PersonaError


class StoreError(PersonaError, RuntimeError):
    pass


@dataclass(frozen=True)
class Stored:
    request_id: str
    role: str
    key: str
    ok: bool
    text: str
    reason: str | None
    attempts: int
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    finish_reason: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    request_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    key TEXT NOT NULL,
    ok INTEGER NOT NULL,
    text TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class RequestStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"request store {self.path}: {e}") from None

    def get_many(self, ids: list[str]) -> dict[str, Stored]:
        found = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = f"SELECT * FROM results WHERE request_id IN ({','.join('?' * len(part))})"
            for row in self.db.execute(q, part):
                s = Stored(*row[:3], bool(row[3]), *row[4:])
                found[s.request_id] = s
        return found

    def put_many(self, rows: list[Stored]) -> None:
        """Write one chunk atomically. INSERT OR IGNORE: a result already stored is never replaced."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            if os.environ.get("PERSONA_FAULT") == "enospc_store":  # test hook (tests/test_crash.py): what
                raise sqlite3.OperationalError("database or disk is full")  # SQLite raises on a full disk
            self.db.executemany(
                "INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(r.request_id, r.role, r.key, int(r.ok), r.text, r.reason, r.attempts, r.prompt_tokens,
                  r.output_tokens, r.cached_tokens, r.finish_reason) for r in rows],
            )
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise StoreError(f"request store {self.path}: could not write a chunk of {len(rows)} results: {e}") from None

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self.db.close()
