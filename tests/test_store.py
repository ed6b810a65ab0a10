"""The durable request store and the runner: resume after kill -9, retries, counted rejects."""
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from builder.store import RequestStore, Stored
from .helpers import ROOT, env, recipe_text, run_py


def _row(i, text="t"):
    return Stored(f"id{i}", "responder", f"k{i}", True, text, None, 1, 3, 4, 0, "stop")


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


def _run(recipe, store, n, out, mode="plain"):
    p = run_py(["tests/workers/run_asks.py", recipe, store, n, out, mode])
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


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


def test_unusable_output_is_retried_then_a_counted_reject(tmp_path, tiny_model):  # noqa: F811
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tiny_model))
    out = _run(recipe, tmp_path / "s.sqlite", 10, tmp_path / "o.json", mode="never")
    assert out["after"] == 10
    for ok, text, attempts, reason in out["results"].values():
        assert not ok and text and attempts == 3 and reason.startswith("never: ")
    st = out["stats"]["responder"]
    assert st["requests"] == 10 and st["ok"] == 0 and st["rejects"] == {"never": 10}


def test_schema_outputs_parse(tmp_path, tiny_model):  # noqa: F811
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tiny_model, max_tokens=96))
    out = _run(recipe, tmp_path / "s.sqlite", 16, tmp_path / "o.json", mode="schema")
    assert all(ok for ok, *_ in out["results"].values())
