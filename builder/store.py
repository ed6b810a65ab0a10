"""The durable request store: request id -> final outcome, in SQLite (WAL, synchronous=FULL).

One transaction per chunk: a kill -9 loses at most the chunk in flight, and a row is either fully
there or absent (no torn records); the primary key makes a duplicate impossible. A store SQLite cannot
read is a StoreError naming the file; one that lost answers (see `<path>.count`) is a warning on stderr.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from generation.errors import PersonaError
from generation.log import log

from .durable import write_atomic


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
    retry_output_tokens: int = 0  # output tokens of the attempts retried before this one (decode spent, then discarded)


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
    finish_reason TEXT NOT NULL,
    retry_output_tokens INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


# What to do about a store SQLite cannot read: its answers are a cache of model calls, so they can be redone.
_ADVICE = "move it (and any -wal / -shm file beside it) away and run again to recompute its answers"


def _warn(msg: str) -> None:
    log.warning(msg)


class RequestStore:
    """`<path>.count` beside the database records how many answers it held after the last committed
    chunk. SQLite opens a 0-byte file, or a database whose -wal file is gone, as a valid (emptier)
    store; the count is how that loss is noticed instead of silently recomputing everything."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count_path = self.path.with_name(self.path.name + ".count")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"request store {self.path}: {e}") from None
        try:
            with self._errors("cannot open it"):
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                problems = [p for (p,) in self.db.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError(f"damaged ({'; '.join(problems)})")
                self.db.executescript(_SCHEMA)
                columns = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
                if "retry_output_tokens" not in columns:  # a store written before retries were counted
                    self.db.execute("ALTER TABLE results ADD COLUMN retry_output_tokens INTEGER NOT NULL DEFAULT 0")
                self.n = self.db.execute("SELECT count(*) FROM results").fetchone()[0]
        except StoreError:
            self.db.close()
            raise
        recorded = self._recorded()
        if recorded is not None and self.n < recorded:
            _warn(f"request store {self.path} holds {self.n:,} answers but {self.count_path.name} recorded "
                  f"{recorded:,}: answers were lost (file truncated or its -wal file removed?); "
                  "the missing ones will be generated again")

    @contextmanager
    def _errors(self, doing: str):
        try:
            yield
        except sqlite3.Error as e:
            detail = " ".join(str(e).split())  # quick_check reports several lines: the CLI prints one
            raise StoreError(f"request store {self.path}: {doing}: {detail}; {_ADVICE}") from None

    def _recorded(self) -> int | None:
        try:
            return int(self.count_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            _warn(f"{self.count_path}: unreadable answer count, ignored ({e})")
            return None

    def _record(self) -> None:
        """Atomically replace the sidecar count; called after a commit, so a crash in between leaves the
        count below the database's (harmless), never above it (a false alarm)."""
        try:
            write_atomic(self.count_path, f"{self.n}\n")
        except OSError as e:
            raise StoreError(f"request store {self.path}: cannot record its answer count in {self.count_path}: {e}") from None

    def get_many(self, ids: list[str]) -> dict[str, Stored]:
        found = {}
        with self._errors("cannot read it"):
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
            added = self.db.executemany(
                "INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(r.request_id, r.role, r.key, int(r.ok), r.text, r.reason, r.attempts, r.prompt_tokens,
                  r.output_tokens, r.cached_tokens, r.finish_reason, r.retry_output_tokens) for r in rows],
            ).rowcount
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the write error below is the one to report
            raise StoreError(f"request store {self.path}: could not write a chunk of {len(rows)} results: {e}") from None
        self.n += max(added, 0)
        self._record()

    def flag(self, name: str) -> str | None:
        with self._errors("cannot read it"):
            row = self.db.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_flag(self, name: str, value: str) -> None:
        with self._errors("cannot write it"):
            self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (name, value))

    def count(self) -> int:
        with self._errors("cannot count its answers"):
            return self.db.execute("SELECT count(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._errors("cannot close it"):
            self.db.close()
