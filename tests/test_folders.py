"""The output and work folders: never delete what we did not make, one build at a time, a swap that a
kill cannot lose."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import folders
from builder.manifest import FORMAT

from .helpers import ROOT, build, env, make_recipe, one_line_error, recipe_text, run_py, start_build


def fake_build(folder: Path, tag: str = "old") -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "tag": tag}))
    (folder / "data.txt").write_text(tag)
    return folder


def user_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


# ------------------------------------------------------------------------------ ownership (no model)

@pytest.mark.parametrize("name", ["persona", "persona.old"])
def test_a_folder_of_user_files_is_refused_before_anything_runs(tmp_path, tiny_model, name):
    out = tmp_path / "persona"
    target = user_folder(tmp_path / name)
    if name == "persona.old":
        fake_build(out)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(tiny_model))
    line = one_line_error(build(recipe, out, tmp_path / "work", timeout=120))
    assert str(target) in line and "not a persona build" in line, line
    assert (target / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "work").exists()  # refused before the work folder (or any model) was touched
    assert not list(tmp_path.glob(".*.lock"))  # and before a lock file was made beside it


def test_check_output_accepts_builds_and_empty_folders(tmp_path):
    folders.check_output(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    folders.check_output(tmp_path / "empty")
    folders.check_output(fake_build(tmp_path / "built"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(folders.FolderError, match="not a folder"):
        folders.check_output(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "built")
    with pytest.raises(folders.FolderError, match="not a folder"):
        folders.check_output(tmp_path / "link")


def test_only_our_staging_folders_are_removed(tmp_path):
    out = tmp_path / "persona"
    ours = folders.new_staging(out)
    (ours / "shard.parquet").write_text("half")
    finished = fake_build(tmp_path / "persona.partial-999999")       # killed after its manifest
    theirs = user_folder(tmp_path / "persona.partial-notes")          # a user's folder with our pattern
    legacy = user_folder(tmp_path / "persona.partial")
    assert folders.remove_stale_staging(out) == sorted([ours, finished])
    assert not ours.exists() and not finished.exists()
    assert (theirs / "thesis.tex").exists() and (legacy / "thesis.tex").exists()


# ---------------------------------------------------------------------------------------------- swap

def test_a_kill_between_the_two_renames_is_undone_at_the_next_start(tmp_path, monkeypatch):
    out = fake_build(tmp_path / "persona", "v1")
    staging = fake_build(tmp_path / "persona.partial-1", "v2")
    real = os.replace
    calls = []

    def killed_after_first(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-swap")
        real(src, dst)

    monkeypatch.setattr(folders.os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        folders.swap_in(staging, out)
    monkeypatch.setattr(folders.os, "replace", real)
    assert not out.exists() and (tmp_path / "persona.old" / "data.txt").read_text() == "v1"

    folders.check_output(out)  # the next build's start puts the old build back
    assert (out / "data.txt").read_text() == "v1" and not (tmp_path / "persona.old").exists()
    folders.swap_in(staging, out)
    assert (out / "data.txt").read_text() == "v2" and not (tmp_path / "persona.old").exists()


def test_the_old_build_is_deleted_only_after_the_new_one_is_in_place(tmp_path, monkeypatch):
    out = fake_build(tmp_path / "persona", "v1")
    fake_build(tmp_path / "persona.old", "v0")  # left by a run killed after its swap
    staging = fake_build(tmp_path / "persona.partial-1", "v2")
    seen = []
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(folders.shutil, "rmtree",
                        lambda p, *a, **k: (seen.append((Path(p).name, (out / "data.txt").read_text())),
                                            real_rmtree(p, *a, **k)))
    folders.swap_in(staging, out)
    # v0 may go at once (v1 is in place); v1 goes only once v2 is at the output path
    assert seen == [("persona.old", "v1"), ("persona.old", "v2")]
    assert (out / "data.txt").read_text() == "v2"


# ---------------------------------------------------------------------------------------------- locks

HOLD = """
import sys, time
from pathlib import Path
from builder.folders import exclusive
with exclusive(Path(sys.argv[1]), "work folder"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_holder_is_refused_naming_the_first_pid(tmp_path):
    lock = tmp_path / "work" / "build.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(folders.FolderError, match=f"in use by another persona process \\(pid {holder.pid};"):
            with folders.exclusive(lock, "work folder"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folders.exclusive(lock, "work folder"):  # released by the kernel when the holder died (kill -9)
        assert lock.read_text() == f"{os.getpid()}\n"


def test_two_builds_on_one_output_run_one_at_a_time(tmp_path, tiny_model, census_small):
    recipe = make_recipe(tmp_path / "recipe.toml", tiny_model, census_small)
    out = tmp_path / "persona"
    first = start_build(recipe, out, tmp_path / "work", stderr=subprocess.PIPE)
    lock = folders.output_lock(out)
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)) and time.time() < deadline:
        time.sleep(0.05)
    # same output, other work folder; then same work folder, other output
    for other_out, other_work, what in ((out, tmp_path / "work2", "output folder"),
                                        (tmp_path / "elsewhere", tmp_path / "work", "work folder")):
        line = one_line_error(build(recipe, other_out, other_work, timeout=300))
        assert f"{what} " in line and f"in use by another persona process (pid {first.pid};" in line, line
    assert first.wait(timeout=900) == 0, first.stderr.read()[-3000:]
    assert not (tmp_path / "elsewhere").exists() and not list(tmp_path.glob("persona.partial*"))
    p = run_py(["-m", "builder.cli", "verify", out])
    assert p.returncode == 0, p.stdout + p.stderr


# ------------------------------------------------------------------------------------- work folder

def test_a_comment_in_the_recipe_reuses_every_stored_answer(tiny_build, tmp_path):
    built, recipe = tiny_build
    work = tmp_path / "work"
    shutil.copytree(built / "a" / "work", work)
    [store] = work.glob("*/requests.sqlite")
    count = lambda: sqlite3.connect(store).execute("SELECT count(*) FROM results").fetchone()[0]  # noqa: E731
    before = count()
    edited = tmp_path / "recipe.toml"
    edited.write_text("# a comment: same dataset\n" + recipe.read_text().replace("\n[census]", "\n\n[census]"))
    p = build(edited, tmp_path / "persona", work, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert count() == before  # nothing generated again
    assert (tmp_path / "persona" / "SHA256SUMS").exists()
