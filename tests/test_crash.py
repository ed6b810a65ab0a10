"""A whole build survives crashes and bad inputs: kill -9 in every stage, a full disk, broken inputs,
an interrupted publish.

Builds run `python -m builder.cli build` in a subprocess with the tiny random-weight Llama on a census
folder of three small states. Every crashed or failed build is rerun with the same command and must
end with the SHA256SUMS of an uninterrupted build of the same recipe, the same stored answers
(none missing, none twice) and Parquet row counts that match the manifest.

Faults that cannot be produced for real here (a kill right after the shards are written, a full disk
under the store or a shard) are injected by tests/faults.py from outside the production code.

Cheap variants start from a copy of the reference build's request store (answers are keyed by
request id, not by recipe), so only what a case changes is generated again.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from .helpers import ROOT, build, kill_when, make_recipe, one_line_error, start_build

# ------------------------------------------------------------------------------------------ helpers

def rows_by_role(store: Path, role: str | None = None) -> int:
    """Rows stored so far (read-only; 0 while the file is not there yet or is locked)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            if role is None:
                return db.execute("SELECT count(*) FROM results").fetchone()[0]
            return db.execute("SELECT count(*) FROM results WHERE role = ?", (role,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def stored(store: Path) -> dict[str, tuple]:
    with sqlite3.connect(store) as db:
        pairs = db.execute("SELECT role, key, count(*) FROM results GROUP BY role, key HAVING count(*) > 1").fetchall()
        assert pairs == [], f"the same ask stored twice: {pairs[:3]}"
        return {rid: rest for rid, *rest in db.execute("SELECT request_id, role, key, ok, text FROM results")}


def seed_store(recipe: Path, work: Path, reference_store: Path, delete_sql: str | None = None) -> Path:
    """Copy the reference answers into the store `recipe` will use (the work folder is named after the
    recipe); `delete_sql` (a WHERE clause) removes some so they must be generated again."""
    from builder.recipe import load_recipe
    r = load_recipe(recipe)
    path = work / r.name / "requests.sqlite"
    path.parent.mkdir(parents=True)
    src, dst = sqlite3.connect(reference_store), sqlite3.connect(path)
    with dst:
        src.backup(dst)  # the reference may still have its WAL file: backup reads through it
        if delete_sql:
            assert dst.execute(f"DELETE FROM results WHERE {delete_sql}").rowcount > 0
    src.close()
    dst.close()
    return path


def check_folder(out: Path, reference_out: Path) -> dict:
    """Same bytes as the uninterrupted build; verifies; every Parquet file has the manifest's rows."""
    from builder.manifest import verify_folder
    assert (out / "SHA256SUMS").read_text() == (reference_out / "SHA256SUMS").read_text()
    assert verify_folder(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["path"].endswith(".parquet"):
            assert pq.read_metadata(out / f["path"]).num_rows == f["rows"], f["path"]
    for config, splits in manifest["splits"].items():
        for split, info in splits.items():
            assert sum(pq.read_metadata(out / p).num_rows for p in info["files"]) == info["rows"], (config, split)
    prefs = pa.concat_tables([pq.read_table(out / p) for s in manifest["splits"]["preferences"].values()
                              for p in s["files"]])
    assert prefs.num_rows == sum(manifest["counts"]["pairs"].values())
    assert len(set(prefs["pair_id"].to_pylist())) == prefs.num_rows  # no pair twice
    assert not list(out.parent.glob(out.name + ".partial*"))  # no staging folder left behind
    return manifest


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def reference(shared_build):
    """The uninterrupted build every other build must reproduce (tests/conftest.py shared_build: read or
    copy it, never change it)."""
    manifest = json.loads((shared_build["out"] / "manifest.json").read_text())
    # the recipe must exercise every stage, or the kill points below prove nothing
    assert manifest["counts"]["personas"] >= 1 and sum(manifest["counts"]["pairs"].values()) >= 2, manifest["counts"]
    return shared_build


def copy_output(reference, dest: Path) -> Path:
    """An already built dataset at the --out path: a failing build must leave it as it was."""
    shutil.copytree(reference["out"], dest)
    return dest


# -------------------------------------------------------------------------------------------- crash

@pytest.mark.timeout(1800)  # four builds in a row (three of them cut short)
def test_kill_9_in_every_stage_then_resume_is_identical(reference, tmp_path):
    recipe, out, work = reference["recipe"], tmp_path / "persona", tmp_path / "work"
    partials = lambda: list(out.parent.glob("persona.partial-*"))  # noqa: E731
    store = lambda: next(work.glob("*/requests.sqlite"), None)  # noqa: E731

    # 1. persona enrichment: filler answers stored, no pair generated yet
    kill_when(start_build(recipe, out, work), lambda: store() is not None and rows_by_role(store(), "persona_filler") > 0,
              "persona_filler rows were stored")
    assert rows_by_role(store(), "critic") == 0 and not out.exists()

    # 2. pair generation: critic (or reviser) answers stored
    before = rows_by_role(store())
    kill_when(start_build(recipe, out, work),
              lambda: rows_by_role(store(), "critic") + rows_by_role(store(), "reviser") > 0, "critic rows were stored")
    assert rows_by_role(store()) > before and not out.exists()

    # 3. sharding: the hook kills the build once the shards are written, before manifest and swap
    p = build(recipe, out, work, PERSONA_FAULT="after_shards")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    [partial] = partials()
    assert list(partial.glob("preferences/*.parquet")) and not (partial / "manifest.json").exists()
    assert not out.exists()

    # 4. resume to the end: the bytes and the stored answers of the uninterrupted build
    build(recipe, out, work, check=True)
    check_folder(out, reference["out"])
    assert stored(store()) == stored(reference["store"])  # nothing missing, nothing extra, same texts


@pytest.mark.parametrize("where", ["store", "shard"])
def test_disk_full_is_one_line_then_a_rerun_completes(reference, tmp_path, where):
    recipe = reference["recipe"]
    out, work = copy_output(reference, tmp_path / "persona"), tmp_path / "work"
    sums = (out / "SHA256SUMS").read_text()
    # store: two answers are missing and must be written; shard: everything is stored already
    delete = "request_id IN (SELECT request_id FROM results WHERE role = 'reviser' LIMIT 2)" if where == "store" else None
    store = seed_store(recipe, work, reference["store"], delete)
    rows = rows_by_role(store)

    line = one_line_error(build(recipe, out, work, PERSONA_FAULT=f"enospc_{where}"))
    if where == "store":
        # one or both missing answers in the commit that fails: commits go by count or by time when streaming
        assert re.match(rf"persona: error: request store {re.escape(str(store))}: could not write a chunk of [12] results:", line)
        assert line.endswith("database or disk is full")
    else:
        assert "No space left on device" in line and f"{out.with_name('persona.partial')}-" in line
        assert line.endswith(".parquet.tmp'")
    assert rows_by_role(store) == rows                       # no answer lost, no half chunk
    assert (out / "SHA256SUMS").read_text() == sums          # the dataset already there is untouched

    build(recipe, out, work, check=True)                     # the disk has room again
    check_folder(out, reference["out"])
    assert stored(store) == stored(reference["store"])


# --------------------------------------------------------------------------------------- bad inputs

def _truncate(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])


def _scramble(p: Path):  # damage inside the data pages, footer intact
    data = bytearray(p.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))


def _drop_agep(p: Path):
    pq.write_table(pq.read_table(p).drop_columns(["AGEP"]), p)


def _agep_as_text(p: Path):
    t = pq.read_table(p)
    pq.write_table(t.set_column(t.schema.get_field_index("AGEP"), "AGEP", pc.cast(t["AGEP"], pa.string())), p)


CENSUS_CASES = {
    "census_truncated": (_truncate, "p_50.parquet: not a readable Parquet file, truncated or corrupt"),
    "census_corrupt": (_scramble, "p_50.parquet: cannot read the Parquet data, truncated or corrupt"),
    "census_missing_column": (_drop_agep, "p_50.parquet: missing column AGEP"),
    "census_wrong_type": (_agep_as_text, "p_50.parquet: column AGEP has type string, expected integer codes"),
}
PROMPT_CASES = {  # fixture files shared with tests/test_prompts.py
    "prompts_empty": ("empty.json", "prompts.json: empty file"),
    "prompts_not_json": ("not_json.json", "prompts.json: not valid JSON at line"),
}


@pytest.mark.parametrize("case", [*CENSUS_CASES, *PROMPT_CASES, "model_path_missing"])
def test_bad_input_is_one_clear_line_and_keeps_what_was_built(reference, tmp_path, case):
    census, prompts, model_path = reference["census"], None, None
    if case in CENSUS_CASES:
        census = tmp_path / "census"
        shutil.copytree(reference["census"], census)
        damage, expected = CENSUS_CASES[case]
        damage(census / "p_50.parquet")
        expected = f"{census}/{expected}"
    elif case in PROMPT_CASES:
        name, expected = PROMPT_CASES[case]
        prompts = tmp_path / "prompts.json"
        shutil.copy(ROOT / "tests" / "fixtures" / "prompts" / name, prompts)
        expected = f"{tmp_path}/{expected}"
    else:
        model_path = tmp_path / "no-such-model"
        expected = f"model folder '{model_path}' does not exist"
    recipe = make_recipe(tmp_path / "recipe.toml", reference["model"], census, prompts, model_path=model_path)
    out, work = copy_output(reference, tmp_path / "persona"), tmp_path / "work"
    sums = (out / "SHA256SUMS").read_text()
    # a store from an earlier run: a bad input found at start-up must leave its answers untouched
    store = seed_store(recipe, work, reference["store"]) if case in PROMPT_CASES else None
    rows = rows_by_role(store) if store else 0

    line = one_line_error(build(recipe, out, work))
    assert line.startswith("persona: error: ") and expected in line, line
    assert (out / "SHA256SUMS").read_text() == sums          # the dataset already there is untouched
    assert not list(out.parent.glob("persona.partial*"))
    if store:
        assert rows_by_role(store) == rows                   # stored answers kept (and none regenerated)


@pytest.mark.parametrize("critic_tokens", [130, 4])
def test_output_that_never_fits_the_schema_is_a_counted_reject(reference, tmp_path, critic_tokens):
    """With the critic's max_tokens at 130, some critiques cannot close their JSON in any of the 3
    attempts: each is a counted reject (manifest, card, `rejects` config, raw text kept) and the build
    goes on with the other pairs. At 4 tokens no critique fits: one line, naming the store of raw answers."""
    recipe = make_recipe(tmp_path / "recipe.toml", reference["model"], reference["census"],
                         max_tokens={"critic": critic_tokens})
    out, work = tmp_path / "persona", tmp_path / "work"
    store = seed_store(recipe, work, reference["store"])  # personas, prompts, answers as in the reference
    p = build(recipe, out, work)

    with sqlite3.connect(store) as db:  # the critiques asked for with this max_tokens
        ref_ids = set(stored(reference["store"]))
        critic = [r for r in db.execute("SELECT request_id, ok, reason, attempts, finish_reason, text FROM results "
                                        "WHERE role = 'critic'") if r[0] not in ref_ids]
    ref = json.loads((reference["out"] / "manifest.json").read_text())
    tried = sum(ref["counts"]["pairs"].values()) + sum(ref["rejects"]["pairs"].values())  # every assigned pair
    assert len(critic) == tried
    truncated = [r for r in critic if not r[1] and r[2].startswith("invalid JSON")]
    assert truncated and all(r[3] == 3 and r[4] == "length" for r in truncated)  # retried, never fitted
    if critic_tokens == 4:
        assert not any(r[1] for r in critic)  # no critique fits
        line = one_line_error(p)
        assert line.startswith("persona: error: no preference pair survived generation (rejects: invalid JSON")
        assert line.endswith(f"see the model's answers in {store}")
        assert not out.exists()
        return

    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    from builder.manifest import verify_folder
    assert verify_folder(out) == []
    m = json.loads((out / "manifest.json").read_text())
    failed = [r for r in critic if not r[1]]
    assert 0 < sum(m["counts"]["pairs"].values()) == tried - len(failed)  # the build went on with the rest
    assert m["rejects"]["pairs"]["critique:invalid JSON"] == len(truncated)
    assert sum(m["rejects"]["pairs"].values()) == len(failed)
    assert m["counts"]["requests"]["critic"]["rejects"]["invalid JSON"] == len(truncated)
    rejects = pq.read_table(next((out / "rejects").glob("train-*.parquet"))).to_pylist()
    raw = sorted(r["raw"] for r in rejects if r["stage"] == "pairs" and r["step"] == "critique")
    assert raw == sorted(r[5] for r in failed)  # each reject row keeps the model's raw text


# ------------------------------------------------------------------------------------------ publish

@pytest.mark.parametrize("moment", ["upload", "commit"])
def test_publish_killed_midway_leaves_no_version_then_completes(tmp_path, moment):
    """kill -9 of `persona publish` while the Hub receives the data (upload) or after the commit request
    is sent (the commit lands but its answer is lost): no tag appears; publishing again finishes the
    version. (An HTTP 500 on the commit is tests/test_publish.py::test_commit_outage_leaves_nothing_then_succeeds.)"""
    from .hub_server import Handler
    from .test_publish import REPO, TOKEN, Client, HubServer, build, refs

    hub = HubServer(token=TOKEN).start()
    try:
        client = Client(hub, tmp_path)
        build(tmp_path / "b1", seed=1)
        client.one("publish", path=tmp_path / "b1", repo=REPO, version="v1.0.0")
        rows2 = build(tmp_path / "b2", seed=2)
        before = refs(hub)

        arrived, release = threading.Event(), threading.Event()
        handler = hub.httpd.RequestHandlerClass
        name = "lfs_put" if moment == "upload" else "commit"
        original = getattr(Handler, name)

        def stalled(self, seg, query):  # hold the request until the client is dead, then serve it
            arrived.set()
            release.wait(60)
            return original(self, seg, query)

        setattr(handler, name, stalled)
        steps = [["publish", {"path": str(tmp_path / "b2"), "repo": REPO, "version": "v1.1.0"}]]
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "test_publish.py"), json.dumps(steps)],
                                env=client.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert arrived.wait(120), f"the publish never reached the {moment}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
        setattr(handler, name, original)
        time.sleep(0.5)  # let the released request finish on the server
        branches, tags, commits = refs(hub)
        assert tags == before[1]  # no v1.1.0
        if moment == "upload":
            assert (branches, commits) == before[0::2]  # nothing changed
        else:
            assert branches["main"] != before[0]["main"]  # the commit landed, untagged

        ok = client.one("publish", path=tmp_path / "b2", repo=REPO, version="v1.1.0")["ok"]
        branches, tags, _ = refs(hub)
        assert tags["v1.1.0"] == ok["commit"] == branches["main"] and tags["v1.0.0"] == before[1]["v1.0.0"]
        assert client.one("verify", repo=REPO, revision="v1.1.0") == {"ok": []}
        assert client.one("load", repo=REPO, revision="v1.1.0")["ok"] == rows2
    finally:
        hub.stop()
