"""The durable request store and the runner: resume after kill -9, retries, counted rejects."""
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from builder.store import RequestStore, Stored

from .helpers import ROOT, build, env, one_line_error, recipe_text, run_py


def _row(i, text="t"):
    return Stored(f"id{i}", "responder", f"k{i}", True, text, None, 1, 3, 4, 0, "stop")


def test_a_store_written_before_retry_tokens_were_counted_still_resumes(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before retry_output_tokens
        db.execute("CREATE TABLE results (request_id TEXT PRIMARY KEY, role TEXT NOT NULL, key TEXT NOT NULL, "
                   "ok INTEGER NOT NULL, text TEXT NOT NULL, reason TEXT, attempts INTEGER NOT NULL, prompt_tokens "
                   "INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, "
                   "finish_reason TEXT NOT NULL) WITHOUT ROWID")
        db.execute("INSERT INTO results VALUES ('id1', 'responder', 'k1', 1, 't', NULL, 2, 3, 4, 0, 'stop')")
    s = RequestStore(path)
    old = s.get_many(["id1"])["id1"]
    assert old.text == "t" and old.attempts == 2 and old.retry_output_tokens == 0
    s.put_many([Stored("id2", "responder", "k2", True, "t", None, 2, 3, 4, 0, "stop", 7)])
    assert RequestStore(path).get_many(["id2"])["id2"].retry_output_tokens == 7


def test_store_roundtrip_and_no_overwrite(tmp_path):
    s = RequestStore(tmp_path / "s.sqlite")
    s.put_many([_row(1), _row(2)])
    s.put_many([_row(2, "other")])  # a stored result is never replaced
    got = s.get_many(["id1", "id2", "id3"])
    assert set(got) == {"id1", "id2"} and got["id2"].text == "t"
    assert s.count() == 2


def test_store_on_unwritable_path_is_a_clear_error(tmp_path):
    from builder.store import StoreError
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="request store"):
        RequestStore(blocker / "s.sqlite")


def test_store_records_its_answer_count_beside_it(tmp_path):
    s = RequestStore(tmp_path / "s.sqlite")
    s.put_many([_row(1), _row(2)])
    s.put_many([_row(2), _row(3)])  # the duplicate is not counted
    assert (tmp_path / "s.sqlite.count").read_text() == "3\n" and s.count() == 3
    s.close()


def test_random_bytes_are_a_store_error_naming_the_file(tmp_path):
    from builder.store import StoreError
    db = tmp_path / "s.sqlite"
    db.write_bytes(random.Random(1).randbytes(64 * 1024))
    with pytest.raises(StoreError) as e:
        RequestStore(db)
    assert str(e.value).startswith(f"request store {db}: cannot open it: ") and "move it" in str(e.value)
    assert "\n" not in str(e.value)


def test_damaged_pages_are_a_store_error(tmp_path):
    from builder.store import StoreError
    db = tmp_path / "s.sqlite"
    s = RequestStore(db)
    s.put_many([_row(i, "x" * 500) for i in range(2000)])
    s.close()                      # checkpointed: everything is in the main file
    data = bytearray(db.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4096):  # one page in the middle, header intact
        data[i] = 0xFF
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as e:
        RequestStore(db)           # PRAGMA quick_check finds it
    assert str(e.value).startswith(f"request store {db}: cannot open it: damaged (")
    assert "move it" in str(e.value) and "\n" not in str(e.value)


def _lost(capfd, db, have, recorded):
    err = capfd.readouterr().err
    warning = [line for line in err.splitlines() if "WARNING" in line.upper()]
    assert len(warning) == 1, err
    assert f"request store {db} holds {have:,} answers but s.sqlite.count recorded {recorded:,}" in warning[0]


def test_truncated_store_warns_with_both_counts(tmp_path, capfd):
    db = tmp_path / "s.sqlite"
    s = RequestStore(db)
    s.put_many([_row(i) for i in range(500)])
    s.close()
    db.write_bytes(b"")            # e.g. a copy that failed half-way, or a disk repair
    s = RequestStore(db)           # SQLite opens a 0-byte file as an empty database
    assert s.count() == 0
    _lost(capfd, db, 0, 500)
    s.put_many([_row(1)])          # the count follows the database again: no second warning
    s.close()
    RequestStore(db).close()
    assert "warning" not in capfd.readouterr().err


def test_store_without_its_wal_warns(tmp_path, capfd):
    db = tmp_path / "s.sqlite"
    s = RequestStore(db)
    s.put_many([_row(i) for i in range(40)])  # small: committed to the -wal file, not yet checkpointed
    assert (tmp_path / "s.sqlite-wal").stat().st_size > 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("s.sqlite", "s.sqlite.count"):  # what is left when the -wal file is deleted
        shutil.copy(tmp_path / name, copy / name)
    s.close()
    lost = RequestStore(copy / "s.sqlite")
    assert lost.count() == 0
    _lost(capfd, copy / "s.sqlite", 0, 40)
    lost.close()
    RequestStore(db).close()       # the original, with its -wal, is whole: no warning
    assert "warning" not in capfd.readouterr().err


def test_corrupt_store_is_one_line_from_the_cli(tmp_path, census_small, prism_file):
    from builder.recipe import load_recipe
    model = tmp_path / "model"  # passes the start-up check (a config.json); the store is opened after it
    model.mkdir()
    (model / "config.json").write_text("{}")
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(model, census=str(census_small), prism=str(prism_file)))
    r = load_recipe(recipe)
    work = tmp_path / "work"
    # the build's store folder: <work>/<name>-<fingerprint12> today, maybe <work>/<name> later
    stores = [work / f"{r.name}-{r.fingerprint[:12]}" / "requests.sqlite", work / r.name / "requests.sqlite"]
    for db in stores:
        db.parent.mkdir(parents=True)
        db.write_bytes(random.Random(2).randbytes(8192))
    line = one_line_error(build(recipe, tmp_path / "out", work))
    assert any(line.startswith(f"persona: error: request store {db}: cannot open it: ") for db in stores), line
    assert "move it" in line


def _run(recipe, store, n, out, mode="plain"):
    p = run_py(["tests/workers/run_asks.py", recipe, store, n, out, mode])
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, tiny_model):  # noqa: F811
    n = 400
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tiny_model, chunk_size=8, max_tokens=64))
    reference = _run(recipe, tmp_path / "ref.sqlite", n, tmp_path / "ref.json")

    store = tmp_path / "killed.sqlite"
    proc = subprocess.Popen([sys.executable, "tests/workers/run_asks.py", recipe, store, str(n), tmp_path / "x.json"],
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stored = 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
                stored = db.execute("SELECT count(*) FROM results").fetchone()[0]
        except sqlite3.Error:
            continue
        if stored >= n // 4:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 0 < stored < n

    resumed = _run(recipe, store, n, tmp_path / "resumed.json")
    assert resumed["before"] >= stored and resumed["after"] == n   # nothing lost, nothing duplicated
    assert resumed["results"] == reference["results"]             # same answers as an uninterrupted run
    with sqlite3.connect(store) as db:
        keys = [k for (k,) in db.execute("SELECT key FROM results")]
    assert sorted(keys) == sorted(f"q{i}" for i in range(n))        # each request exactly once

    again = _run(recipe, store, n, tmp_path / "again.json")        # a finished run is all stored
    assert again["before"] == again["after"] == n and again["results"] == reference["results"]


@pytest.mark.slow
def test_unusable_output_is_retried_then_a_counted_reject(tmp_path, tiny_model):  # noqa: F811
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tiny_model))
    out = _run(recipe, tmp_path / "s.sqlite", 10, tmp_path / "o.json", mode="never")
    assert out["after"] == 10
    for ok, text, attempts, reason in out["results"].values():
        assert not ok and text and attempts == 3 and reason.startswith("never: ")
    st = out["stats"]["responder"]
    assert st["requests"] == 10 and st["ok"] == 0 and st["rejects"] == {"never": 10}


@pytest.mark.slow
def test_schema_outputs_parse(tmp_path, tiny_model):  # noqa: F811
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tiny_model, max_tokens=96))
    out = _run(recipe, tmp_path / "s.sqlite", 16, tmp_path / "o.json", mode="schema")
    assert all(ok for ok, *_ in out["results"].values())


OLD_SCHEMA = """CREATE TABLE results (request_id TEXT PRIMARY KEY, role TEXT NOT NULL, key TEXT NOT NULL, ok INTEGER NOT NULL,
    text TEXT NOT NULL, reason TEXT, attempts INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, finish_reason TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL);"""


def test_a_store_from_before_digests_opens_and_gets_them_once(tmp_path, capfd):
    db = tmp_path / "s.sqlite"
    with sqlite3.connect(db) as c:  # a store written before rows carried a digest
        c.executescript(OLD_SCHEMA)
        c.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      [(r.request_id, r.role, r.key, int(r.ok), r.text, r.reason, r.attempts, r.prompt_tokens,
                        r.output_tokens, r.cached_tokens, r.finish_reason) for r in (_row(1), _row(2, "two"))])
    c.close()
    s = RequestStore(db)
    lines = [line for line in capfd.readouterr().err.splitlines() if "digest" in line]
    assert lines == [f"[persona] request store {db}: added a content digest to each of its 2 answers (once)"]
    assert s.get_many(["id1", "id2"]) == {"id1": _row(1), "id2": _row(2, "two")}
    s.put_many([_row(3)])
    s.close()
    s = RequestStore(db)                      # migrated: no second line, every row checks
    assert "digest" not in capfd.readouterr().err
    assert set(s.get_many(["id1", "id2", "id3"])) == {"id1", "id2", "id3"} and s.damaged == 0
    with sqlite3.connect(db) as c:
        c.execute("UPDATE results SET text = 'tampered' WHERE request_id = 'id2'")
    c.close()
    assert set(s.get_many(["id1", "id2"])) == {"id1"} and s.damaged == 1   # changed content is not served
