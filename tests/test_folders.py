"""The output and work folders: never delete what we did not make, one build at a time, a swap that a
kill cannot lose."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import folders
from builder.cli import main
from builder.manifest import FORMAT, verify_folder

from .helpers import ROOT, build, env, one_line_error, recipe_text, run_py, start_build
from .test_manifest import build as small_build


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A complete, verifying persona build made without a model (tests/test_manifest.py); tests copy it."""
    folder = tmp_path_factory.mktemp("small") / "persona"
    small_build(folder)
    return folder


def copy_build(small: Path, dest: Path) -> Path:
    shutil.copytree(small, dest)
    return dest


def user_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


def same(a: Path, b: Path) -> bool:
    """A folder moved by a rename keeps its inode: which copy of the build is where."""
    return a.stat().st_ino == b.stat().st_ino


def verifies(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() and verify_folder(folder) == []


def in_process(capsys, *args) -> str:
    """`persona ARGS` through main(): its one error line (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("persona: error: ") and sum(x.startswith("persona: error: ") for x in lines) == 1, err
    return lines[-1]


# ------------------------------------------------------------------------------ ownership (no model)

@pytest.mark.parametrize("name", ["persona", "persona.old"])
def test_a_folder_of_user_files_is_refused_before_anything_runs(tmp_path, tiny_model, small, name):
    out = tmp_path / "persona"
    target = user_folder(tmp_path / name)
    if name == "persona.old":
        copy_build(small, out)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(tiny_model))
    line = one_line_error(build(recipe, out, tmp_path / "work", timeout=120))
    assert str(target) in line and ("not ours to replace" in line or "never deleted" in line), line
    assert (target / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "work").exists()  # refused before the work folder (or any model) was touched
    assert not list(tmp_path.glob(".*.lock"))  # and before a lock file was made beside it


def test_only_an_empty_folder_or_a_complete_build_with_nothing_else_is_ours(tmp_path, small):
    assert folders.foreign(tmp_path / "absent") == []
    (tmp_path / "empty").mkdir()
    assert folders.foreign(tmp_path / "empty") == []
    assert folders.foreign(copy_build(small, tmp_path / "built")) == []
    folders.check_output(tmp_path / "built")

    # a copy of a build with a .git/ and notes added: the first problems name what is foreign
    git = copy_build(small, tmp_path / "git")
    (git / ".git").mkdir()
    (git / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "notes.md").write_text("my notes")
    with pytest.raises(folders.FolderError) as e:
        folders.refuse_foreign(git)
    assert str(e.value).startswith(f"--out {git} is not a persona build with nothing else in it")
    assert "extra: .git/HEAD" in str(e.value) and "extra: notes.md" in str(e.value)

    # a project whose manifest has the one key (the old test of "a persona build"), with its src/
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "manifest.json").write_text(json.dumps({"format": FORMAT}))
    assert folders.foreign(project)
    with pytest.raises(folders.FolderError, match="not ours to replace"):
        folders.check_output(project)
    assert (project / "src" / "main.py").exists()

    edited = copy_build(small, tmp_path / "edited")  # a user's edit of the card makes it theirs too
    (edited / "README.md").write_text((edited / "README.md").read_text() + "\nmy own note\n")
    assert any(p.startswith("altered: README.md") for p in folders.foreign(edited))

    user = user_folder(tmp_path / "user")
    assert folders.foreign(user) == ["no persona manifest.json; it holds thesis.tex"]
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "built")
    for path in (tmp_path / "file", tmp_path / "link"):
        with pytest.raises(folders.FolderError, match="not a folder"):
            folders.check_output(path)


@pytest.mark.parametrize("value", ["", " ", ".", "..", "/", "foo/..", "a/b/../..", "~/.."])
def test_an_output_that_names_no_folder_of_its_own_is_refused(value):
    with pytest.raises(folders.FolderError, match="does not name a folder of its own"):
        folders.output_path(value)


def test_output_paths_that_name_a_folder_are_kept():
    assert folders.output_path("persona") == Path("persona")
    assert folders.output_path("a/./b/") == Path("a/b")
    assert folders.output_path("~/x") == Path.home() / "x"


@pytest.mark.parametrize("out, work", [
    ("X", "X"), ("X", "X/cache"), ("W/sub", "W"), ("X", "X/../X/cache"), ("X", "link/cache"),
    ("X", "X.old"), ("X", "X.partial-7/w"), ("a/b/X", "."),
])
def test_the_work_folder_is_never_inside_the_output_nor_the_output_inside_it(tmp_path, monkeypatch, out, work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "X").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "X")
    with pytest.raises(folders.FolderError, match="inside"):
        folders.check_apart(Path(out), Path(work))


@pytest.mark.parametrize("out, work", [("persona", ".persona-work"), ("persona", "persona-work"),
                                       ("persona", "persona.older"), ("out/persona", "work")])
def test_folders_side_by_side_are_apart(tmp_path, monkeypatch, out, work):
    monkeypatch.chdir(tmp_path)
    folders.check_apart(Path(out), Path(work))


def test_a_recipe_named_eval_would_share_persona_evals_work_folder(tmp_path):
    with pytest.raises(folders.FolderError, match="recipe name 'eval' is reserved"):
        folders.work_folder(tmp_path, "eval")
    assert folders.work_folder(tmp_path, "evaluation") == tmp_path / "evaluation"


@pytest.mark.parametrize("flags", [
    ["--out", ""], ["--out", "."], ["--out", "/"], ["--out", "{tmp}/foo/.."], ["--work", ""],
    ["--out", "{tmp}/X", "--work", "{tmp}/X"], ["--out", "{tmp}/X", "--work", "{tmp}/X/cache"],
    ["--out", "{tmp}/W/sub", "--work", "{tmp}/W"], ["--out", "{tmp}/named-eval"],
])
def test_bad_folders_are_one_line_before_anything_is_created(tmp_path, capsys, shared_data, flags):
    recipe = tmp_path / "recipe.toml"
    name = "eval" if flags[-1].endswith("named-eval") else "test"
    recipe.write_text(recipe_text(tmp_path).replace('name = "test"', f'name = "{name}"'))
    line = in_process(capsys, "build", "--recipe", recipe, *[f.format(tmp=tmp_path) for f in flags])
    assert "does not name a folder" in line or "inside" in line or "is reserved" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]  # no folder, no lock file


def test_a_read_only_output_parent_or_work_folder_is_one_line(tmp_path, capsys, shared_data):
    """/sys refuses new entries even to root (the tests run as root, where chmod stops nothing)."""
    try:
        os.close(os.open("/sys/.persona-probe", os.O_RDWR | os.O_CREAT, 0o644))
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(tmp_path))
    line = in_process(capsys, "build", "--recipe", recipe, "--out", "/sys/persona", "--work", tmp_path / "work")
    assert line.startswith("persona: error: output folder /sys/persona: cannot create /sys/.persona.lock ("), line
    line = in_process(capsys, "build", "--recipe", recipe, "--out", tmp_path / "persona", "--work", "/sys/work")
    assert line.startswith("persona: error: work folder /sys/work/test: cannot create /sys/work/test/build.lock ("), line
    assert not (tmp_path / "persona").exists() and not (tmp_path / "work").exists()


# ------------------------------------------------------------------------------------- staging folders

def test_staging_is_named_by_the_journal_from_its_first_moment_and_removed_at_the_next_start(tmp_path, caplog):
    out = tmp_path / "persona"
    staging = folders.new_staging(out)
    assert json.loads(folders.journal_path(out).read_text()) == {"staging": staging.name, "swap": False}
    (staging / "README.md").write_text("card written, no manifest yet")  # the old unmarked window
    legacy = tmp_path / "persona.partial-999999"                         # marked by a build before the journal
    legacy.mkdir()
    (legacy / folders.STAGING_MARK).write_text("999999\n")
    theirs = user_folder(tmp_path / "persona.partial-notes")             # a user's folder with our pattern
    unmarked = user_folder(tmp_path / "persona.partial-123")             # not named by any journal
    caplog.set_level("INFO", logger="persona")
    folders.check_output(out)
    assert not staging.exists() and not legacy.exists() and not folders.journal_path(out).exists()
    assert (theirs / "thesis.tex").exists() and (unmarked / "thesis.tex").exists()
    said = [r.getMessage() for r in caplog.records]
    assert f"removed {staging}, the staging folder of an interrupted build" in said
    assert f"removed {legacy}, the staging folder of an interrupted build" in said
    for left in (theirs, unmarked):  # every leftover named, one line each
        assert f"left {left} as it is: no journal of ours names it (move or delete it yourself)" in said


def test_a_reused_pid_picks_another_staging_name(tmp_path):
    out = tmp_path / "persona"
    theirs = user_folder(tmp_path / f"persona.partial-{os.getpid()}")  # left by another process with our pid
    staging = folders.new_staging(out)
    assert staging == tmp_path / f"persona.partial-{os.getpid()}-1"
    assert (theirs / "thesis.tex").exists()
    assert json.loads(folders.journal_path(out).read_text())["staging"] == staging.name


# ---------------------------------------------------------------------------------------------- swap

def staged(small: Path, out: Path) -> Path:
    """A finished staging folder, as the build leaves it right before the swap."""
    staging = folders.new_staging(out)
    shutil.copytree(small, staging, dirs_exist_ok=True)
    (staging / folders.STAGING_MARK).unlink(missing_ok=True)  # (the mark of builds before the journal)
    return staging


KILLS = ["journal", "aside", "in", "half-deleted", "deleted"]


@pytest.mark.parametrize("kill", KILLS)
def test_a_kill_at_any_instant_of_the_swap_leaves_one_complete_build(tmp_path, small, monkeypatch, capsys, kill):
    out = copy_build(small, tmp_path / "persona")
    first = out.stat().st_ino
    staging = staged(small, out)
    new = staging.stat().st_ino
    real_replace, real_rmtree, real_clear = os.replace, shutil.rmtree, folders._clear_journal
    events = []

    def event(name):
        events.append(name)
        if name == kill:
            raise KeyboardInterrupt(f"killed at {name}")

    def replace(src, dst):
        event({folders.journal_path(out).name: "journal", out.name + ".old": "aside", out.name: "in"}[Path(dst).name])
        real_replace(src, dst)

    def rmtree(path, *a, **k):
        parquet = sorted(Path(path).rglob("*.parquet"))
        for p in [Path(path) / "manifest.json", *parquet[:len(parquet) // 2]]:
            p.unlink()  # what a kill midway through the deletion leaves
        event("half-deleted")
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(folders, "_clear_journal", lambda o: (event("deleted"), real_clear(o)))
    with pytest.raises(KeyboardInterrupt):
        folders.swap_in(staging, out)
    monkeypatch.undo()
    assert events[-1] == kill
    # one complete build at OUT or OUT.old, whatever the instant
    old = tmp_path / "persona.old"
    assert verifies(out) or verifies(old)
    if kill == "in":  # between the two renames: OUT is missing, verify names where the build is
        line = in_process(capsys, "verify", out)
        assert line == (f"persona: error: {out}: no such folder, but {old} is there (a build killed mid-swap put "
                        "it there; the next `persona build` with this --out puts it back)")

    folders.check_output(out)  # the next start finishes what the journal says
    assert verifies(out) and out.stat().st_ino == (new if kill in ("half-deleted", "deleted") else first)
    assert not old.exists() and not folders.journal_path(out).exists()
    assert not list(tmp_path.glob("persona.partial-*"))
    folders.swap_in(staged(small, out), out)
    assert verifies(out) and not old.exists() and not folders.journal_path(out).exists()


def test_a_build_moved_to_old_by_hand_is_neither_restored_nor_deleted(tmp_path, small):
    out, old = tmp_path / "persona", tmp_path / "persona.old"
    copy_build(small, old)
    moved = old.stat().st_ino
    folders.check_output(out)  # no journal of ours: nothing to put back
    assert not out.exists() and old.stat().st_ino == moved
    folders.swap_in(staged(small, out), out)
    assert verifies(out) and old.stat().st_ino == moved and verifies(old)
    # now the swap would need the name: the backup is refused, never deleted
    (old / "notes.md").write_text("why I kept this one")
    with pytest.raises(folders.FolderError, match=f"{old} exists and no interrupted swap of ours left it"):
        folders.check_output(out)
    assert (old / "notes.md").exists()


@pytest.mark.parametrize("what", ["folder", "file"])
def test_an_output_made_during_the_build_is_never_deleted(tmp_path, small, caplog, what):
    out = tmp_path / "persona"
    folders.check_output(out)  # absent at start-up
    staging = staged(small, out)
    if what == "folder":
        user_folder(out)
    else:
        out.write_text("thesis")
    with pytest.raises(folders.FolderError) as e:
        folders.swap_in(staging, out)
    assert str(e.value).startswith(f"--out {out} changed during the build and is not ours to replace (")
    assert str(e.value).endswith(f"nothing was deleted: the finished, verified build is in {staging}")
    assert (out / "thesis.tex").exists() if what == "folder" else out.read_text() == "thesis"
    assert verifies(staging) and not folders.journal_path(out).exists()
    caplog.set_level("INFO", logger="persona")
    with pytest.raises(folders.FolderError):
        folders.check_output(out)  # the next start leaves both alone, and says so
    assert verifies(staging) and f"left {staging} as it is" in caplog.text


def test_a_file_written_into_the_old_build_during_the_swap_keeps_it(tmp_path, small, monkeypatch, caplog):
    out = copy_build(small, tmp_path / "persona")
    old = tmp_path / "persona.old"
    staging = staged(small, out)
    real_replace = os.replace

    def replace(src, dst):  # a shell whose cwd is inside the old build saves a file right after it moved
        real_replace(src, dst)
        if Path(dst) == old:
            (old / "notes.md").write_text("saved from an editor")

    monkeypatch.setattr(os, "replace", replace)
    caplog.set_level("INFO", logger="persona")
    folders.swap_in(staging, out)
    assert verifies(out) and (old / "notes.md").exists() and not folders.journal_path(out).exists()
    assert f"kept {old}, the previous build: it changed during the swap (extra: notes.md" in caplog.text


def test_a_swap_says_what_it_replaced(tmp_path, small, caplog):
    out = copy_build(small, tmp_path / "persona")
    caplog.set_level("INFO", logger="persona")
    folders.swap_in(staged(small, out), out)
    assert f"replaced the previous build in {out} (it verified with nothing else in it)" in caplog.messages


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


def test_two_builds_on_one_output_run_one_at_a_time(tmp_path, shared_build):
    """A build of the shared recipe (its work folder copied: every answer is stored) is paused (SIGSTOP)
    once it holds both locks, so the other two builds meet it still running however fast it would be."""
    recipe, out, work = shared_build["recipe"], tmp_path / "persona", tmp_path / "work"
    shutil.copytree(shared_build["work"], work)
    first = start_build(recipe, out, work, stderr=subprocess.PIPE)
    locks = (folders.output_lock(out), next(work.glob("*/requests.sqlite")).with_name("build.lock"))
    try:
        deadline = time.time() + 120
        while not all(lock.exists() and lock.read_text().strip() == str(first.pid) for lock in locks):
            assert first.poll() is None and time.time() < deadline, "the first build never held both locks"
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        # same output, other work folder; then same work folder, other output
        for other_out, other_work, what in ((out, tmp_path / "work2", "output folder"),
                                            (tmp_path / "elsewhere", work, "work folder")):
            line = one_line_error(build(recipe, other_out, other_work, timeout=300))
            assert f"{what} " in line and f"in use by another persona process (pid {first.pid};" in line, line
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert not (tmp_path / "elsewhere").exists() and not list(tmp_path.glob("persona.partial*"))
    p = run_py(["-m", "builder.cli", "verify", out])
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "SHA256SUMS").read_text() == (shared_build["out"] / "SHA256SUMS").read_text()


# ------------------------------------------------------------------------------------- work folder

def test_a_comment_in_the_recipe_reuses_every_stored_answer(shared_build, tmp_path):
    # the shared build: its three small states read in a second, where tiny_build reads the whole census
    recipe, work = shared_build["recipe"], tmp_path / "work"
    shutil.copytree(shared_build["work"], work)
    [store] = work.glob("*/requests.sqlite")
    count = lambda: sqlite3.connect(store).execute("SELECT count(*) FROM results").fetchone()[0]  # noqa: E731
    before = count()
    edited = tmp_path / "recipe.toml"
    edited.write_text("# a comment: same dataset\n" + recipe.read_text().replace("\n[census]", "\n\n[census]"))
    p = build(edited, tmp_path / "persona", work, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert count() == before  # nothing generated again
    assert (tmp_path / "persona" / "SHA256SUMS").exists()
