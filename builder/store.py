"""The durable request store: request id -> final outcome, in SQLite (WAL, synchronous=FULL).

One transaction per chunk: a kill -9 loses at most the chunk in flight, and a row is either fully
there or absent (no torn records); the primary key makes a duplicate impossible. A store SQLite cannot
read is a StoreError naming the file; one that lost answers (see `<path>.count`) is a warning on stderr.
Each row carries the sha256 of its content (`digest`), checked when it is read: `quick_check` sees only
SQLite's own structure, so a changed byte inside an answer is found here (see `RequestStore.get_many`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
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
    retry_output_tokens INTEGER NOT NULL DEFAULT 0,
    digest TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


# What to do about a store SQLite cannot read: its answers are a cache of model calls, so they can be redone.
_ADVICE = "move it (and any -wal / -shm file beside it) away and run again to recompute its answers"


def _warn(msg: str) -> None:
    log.warning(msg)


_FIELDS = [f.name for f in dataclasses.fields(Stored)]


def _values(s: Stored) -> tuple:
    """A row's columns as stored (ok as 0 / 1), in _FIELDS order."""
    return (s.request_id, s.role, s.key, int(s.ok), s.text, s.reason, s.attempts, s.prompt_tokens, s.output_tokens,
            s.cached_tokens, s.finish_reason, s.retry_output_tokens)


def digest(s: Stored) -> str:
    """sha256 of a row's content (every column, the request id included, so a row cannot pass for another)."""
    return _sha256(_values(s))


def _sha256(values: tuple) -> str:
    return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode()).hexdigest()


def _stored(row) -> Stored:
    return Stored(*row[:3], bool(row[3]), *row[4:len(_FIELDS)])


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
                try:
                    problems = [p for (p,) in self.db.execute("PRAGMA quick_check(3)")]
                except sqlite3.DatabaseError as e:  # damage can stop the check itself
                    problems = [str(e)]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError(f"damaged ({'; '.join(problems)})")
                self.db.executescript(_SCHEMA)
                columns = {row[1] for row in self.db.execute("PRAGMA table_info(results)")}
                if "retry_output_tokens" not in columns:  # a store written before retries were counted
                    self.db.execute("ALTER TABLE results ADD COLUMN retry_output_tokens INTEGER NOT NULL DEFAULT 0")
                self._add_digests()  # after every other column exists: the digest covers them all
                self.n = self.db.execute("SELECT count(*) FROM results").fetchone()[0]
        except StoreError:
            self.db.close()
            raise
        self.stale: set[str] = set()  # ids whose stored row is replaced by the next answer written for them
        self.damaged = 0               # rows whose content did not match their digest (treated as missing)
        recorded = self._recorded()
        if recorded is not None and self.n < recorded:
            _warn(f"request store {self.path} holds {self.n:,} answers but {self.count_path.name} recorded "
                  f"{recorded:,}: answers were lost (file truncated or its -wal file removed?); "
                  "the missing ones will be generated again")

    def _add_digests(self) -> None:
        """A store from before per-answer digests: add the column and fill it, once, in one transaction
        (a kill meanwhile leaves the store as it was)."""
        columns = [c[1] for c in self.db.execute("PRAGMA table_info(results)")]
        if "digest" in columns:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE results ADD COLUMN digest TEXT NOT NULL DEFAULT ''")
            # one statement, the digest computed as SQLite visits each row (the columns as stored: ok as 0 / 1)
            self.db.create_function("persona_digest", len(_FIELDS), lambda *values: _sha256(values), deterministic=True)
            rows = self.db.execute(f"UPDATE results SET digest = persona_digest({','.join(_FIELDS)})").rowcount
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        log.info(f"request store {self.path}: added a content digest to each of its {rows:,} answers (once)")

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
        """The stored rows of `ids`. A row whose content no longer matches its digest (a byte changed on
        disk) is left out, as if never stored, and replaced by the next answer written for it: an answer
        is a cache of a model call, so asking again costs one request, while an error would leave only
        moving the whole store away (every answer recomputed). Each such batch is one WARNING line."""
        found, damaged = {}, []
        with self._errors("cannot read it"):
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                q = f"SELECT {','.join(_FIELDS)}, digest FROM results WHERE request_id IN ({','.join('?' * len(part))})"
                for row in self.db.execute(q, part):
                    s = _stored(row)
                    if digest(s) != row[-1]:
                        damaged.append(s.request_id)
                        continue
                    found[s.request_id] = s
        if damaged:
            self.damaged += len(damaged)
            self.stale.update(damaged)
            _warn(f"request store {self.path}: {len(damaged):,} stored answer(s) do not match their digest (changed on "
                  f"disk; first: request {damaged[0]}); they are treated as missing and asked again "
                  f"({self.damaged:,} so far)")
        return found

    def supersede(self, request_id: str) -> None:
        """The stored row of `request_id` is to be replaced by the next one written for it (e.g. an
        answer today's parser rejects, asked again); until then it stays, so a kill loses nothing."""
        self.stale.add(request_id)

    def put_many(self, rows: list[Stored]) -> None:
        """Write one chunk atomically. INSERT OR IGNORE: a result already stored is never replaced,
        unless it was marked stale (see `supersede`, `get_many`)."""
        values = lambda rs: [(*_values(r), digest(r)) for r in rs]  # noqa: E731
        insert = f"INTO results ({','.join(_FIELDS)}, digest) VALUES ({','.join('?' * (len(_FIELDS) + 1))})"
        fresh = [r for r in rows if r.request_id not in self.stale]
        replacing = [r for r in rows if r.request_id in self.stale]
        try:
            self.db.execute("BEGIN IMMEDIATE")
            added = self.db.executemany(f"INSERT OR IGNORE {insert}", values(fresh)).rowcount
            if replacing:
                self.db.executemany(f"INSERT OR REPLACE {insert}", values(replacing))
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the write error below is the one to report
            raise StoreError(f"request store {self.path}: could not write a chunk of {len(rows)} results: {e}") from None
        self.n += max(added, 0)
        self.stale.difference_update(r.request_id for r in replacing)
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
