"""The Ray executor: the same recipe on a local Ray cluster with two engine replicas gives the same
dataset bytes as the local engine, and a replica killed or frozen mid-run costs only its slice."""
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from .helpers import build, edited, make_recipe, recipe_data, write_recipe

pytest.importorskip("ray")

# Every Ray build starts a private Ray (all local CPUs) inside the build process; it ends with it.
# The recipe is identical for local and Ray builds (same fingerprint, same manifest); only the
# command line picks the executor. timeout_s is small so the frozen replica is noticed quickly.
EXECUTOR = {"executor.replicas": 2, "executor.timeout_s": 30}


@pytest.fixture(scope="module")
def ray_tmp(tmp_path_factory):
    """Ray's session folder. AF_UNIX socket paths must stay under 107 bytes, so fall back to a short
    /tmp folder when pytest's is too long. Afterwards, any process of ours still there is reaped."""
    d = tmp_path_factory.mktemp("r")
    short = None
    if len(str(d)) > 40:
        d = short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    yield d
    _reap(str(d))
    if short:
        import shutil
        shutil.rmtree(short, ignore_errors=True)


def _ours(marker: str) -> list[psutil.Process]:
    """Processes started for this test's Ray (they inherit RAY_TMPDIR=marker)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("RAY_TMPDIR") == marker:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def _reap(marker: str, wait_s: float = 60) -> None:
    # Ray's workers notice their raylet is gone on their own (an engine still loading can take a
    # while); only what is still there after wait_s is killed, by pid.
    deadline = time.time() + wait_s
    while _ours(marker) and time.time() < deadline:
        time.sleep(1)
    for p in _ours(marker):
        p.kill()


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, tiny_model, census_small, prism_file):  # noqa: F811
    """3 personas x 3 prompts on three small states (the crash tests' recipe), built locally."""
    tmp = tmp_path_factory.mktemp("raybuild")
    recipe = make_recipe(tmp / "recipe.toml", tiny_model, census_small, changes=EXECUTOR)
    _build(recipe, tmp / "local", "--executor", "local")
    return recipe, tmp / "local"


def _build(recipe: Path, where: Path, *flags, **extra_env) -> subprocess.CompletedProcess:
    return build(recipe, where / "persona", where / "work", *flags, check=True, **extra_env)


def _rows(where: Path) -> dict:
    """request id -> everything stored about its answer, except cached_tokens (which depends on what
    else the answering replica had in its prefix cache)."""
    (db,) = where.glob("work/*/requests.sqlite")
    with sqlite3.connect(db) as c:
        return {r[0]: r[1:] for r in c.execute(
            "SELECT request_id, role, key, ok, text, reason, attempts, prompt_tokens, output_tokens, finish_reason "
            "FROM results")}


def _exactly_once(where: Path) -> tuple[int, int]:
    (db,) = where.glob("work/*/requests.sqlite")
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*), count(DISTINCT role || '/' || key) FROM results").fetchone()


def test_split_keeps_order_in_near_equal_pieces():
    from builder.ray_backend import _split
    items = list(range(10))
    assert _split(items, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert _split(items, 0) == [items] and _split([1, 2], 5) == [[1], [2]]


def test_command_line_executor_overrides_keep_the_recipe(tmp_path):
    from builder.backends import with_executor
    from builder.recipe import load_recipe
    f = write_recipe(tmp_path / "r.toml", edited(recipe_data(tmp_path), EXECUTOR))
    r = load_recipe(f)
    ray_r = with_executor(r, "ray", "10.0.0.1:6379", 4)
    assert (ray_r.executor.kind, ray_r.executor.address, ray_r.executor.replicas, ray_r.executor.timeout_s) == \
        ("ray", "10.0.0.1:6379", 4, 30.0)
    assert ray_r.text == r.text and ray_r.fingerprint == r.fingerprint   # same dataset, same work folder
    assert with_executor(r, address="auto").executor.kind == "ray"
    assert with_executor(r) is r
    with pytest.raises(ValueError, match="'spark'"):
        with_executor(r, "spark")


@pytest.mark.slow
def test_two_ray_replicas_build_the_same_bytes_as_local(local_build, tmp_path, ray_tmp):
    recipe, local = local_build
    p = _build(recipe, tmp_path, "--executor", "ray", RAY_TMPDIR=ray_tmp)
    assert "[persona] ray: 2 replica(s)" in p.stderr            # it really ran on two Ray replicas
    assert "fault injection" not in p.stderr and "redoing" not in p.stderr
    assert (tmp_path / "persona" / "SHA256SUMS").read_text() == (local / "persona" / "SHA256SUMS").read_text()
    rows = _rows(tmp_path)
    assert len(rows) > 10 and rows == _rows(local)    # every answer, not just the published ones
    _reap(str(ray_tmp))


@pytest.mark.slow
def test_killed_and_frozen_replicas_lose_only_their_slice(local_build, tmp_path, ray_tmp):
    recipe, local = local_build
    # 2nd chunk: replica-0 is killed mid-batch; 4th chunk: whichever replica is first then is frozen
    # (SIGSTOP), noticed after timeout_s, killed and replaced
    p = _build(recipe, tmp_path, "--executor", "ray", RAY_TMPDIR=ray_tmp,
               PERSONA_RAY_KILL_AFTER=1, PERSONA_RAY_STALL_AFTER=3)
    assert "fault injection (PERSONA_RAY_KILL_AFTER=1): killing replica-0" in p.stderr
    assert "died mid-batch" in p.stderr
    assert "fault injection (PERSONA_RAY_STALL_AFTER=3): freezing" in p.stderr
    assert "silent for 30 s, killed: redoing" in p.stderr
    rows, total_distinct = _rows(tmp_path), _exactly_once(tmp_path)
    assert total_distinct[0] == total_distinct[1] == len(_rows(local))   # each request answered once
    assert rows == _rows(local)                                          # and as the local engine did
    assert (tmp_path / "persona" / "SHA256SUMS").read_text() == (local / "persona" / "SHA256SUMS").read_text()
    _reap(str(ray_tmp))
