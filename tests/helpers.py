"""Shared test helpers: recipes (as data) pointing at local models, running project code (and builds) in a
subprocess, and the builder's runner over a scripted backend."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
import weakref
from collections import Counter
from pathlib import Path

from builder.recipe import ModelConfig, RoleConfig
from builder.runner import RunnerConfig, StoreRunner
from builder.store import RequestStore
from generation.backends import Result
from generation.evaluation import JUDGE, SUBJECT

ROOT = Path(__file__).resolve().parents[1]

STATES = ("p_10.parquet", "p_50.parquet", "p_56.parquet")  # Delaware, Vermont, Wyoming: small files
# The random-weight model fills JSON strings up to their maxLength: the persona filler's object needs
# ~600 tokens; the responder (plain text) never stops by itself, so keep it short.
MAX_TOKENS = {"persona_filler": 1024, "responder": 48}


ROLES = ("persona_filler", "consistency_judge", "prompt_classifier", "responder", "critic", "reviser")


def recipe_data(model_dir: str | Path, *, personas: int = 4, classify_limit: int = 24,
                train_per_persona: int = 3, n_train: int = 2, n_unseen: int = 1, seed: int = 7,
                census: str | Path | None = None, prism: str | Path | None = None, chunk_size: int = 16,
                max_tokens: int = 48, max_model_len: int = 8192) -> dict:
    """A recipe as data (the TOML tables as nested dicts): one local model `m` serves every role.
    The defaults shape the request ids, and so the data the tests see: change them with care."""
    shared = Path(os.environ.get("PERSONA_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return {
        "name": "test", "seed": seed, "demo": True,
        "census": {"source": str(census or shared / "census" / "acs-pums-2024-1yr"), "personas": personas},
        "prompts": {"source": str(prism or shared / "prism" / "prism_opening_prompts.json"),
                    "classify_limit": classify_limit},
        "pairs": {"train_per_persona": train_per_persona, "n_train": n_train, "n_unseen": n_unseen,
                  "structured": True, "cap_to_pool": True},
        # a random-weight model seldom stops by itself: keep its cut-off answers (counted) so the
        # plumbing has pairs to carry; tests of the "retry" default set it back
        "output": {"chunk_size": chunk_size, "truncated": "keep"},
        "models": {"m": {"id": "test/model", "path": str(model_dir), "dtype": "float32",
                         "max_model_len": max_model_len, "kv_cache_gib": 0.25}},
        "roles": {role: {"model": "m", "temperature": 0.8, "max_tokens": max_tokens} for role in ROLES},
    }


def edited(data: dict, changes: dict) -> dict:
    """A copy of `data` with `{"table.key": value}` set (tables made as needed); the value None removes the key."""
    out = copy.deepcopy(data)
    for dotted, value in changes.items():
        *tables, key = dotted.split(".")
        table = out
        for name in tables:
            table = table.setdefault(name, {})
        if value is None:
            del table[key]
        else:
            table[key] = value
    return out


def toml_text(data: dict, path: tuple = ()) -> str:
    """TOML for the value types recipes use (str, int, float, bool, lists, nested tables); tomllib reads it
    back as `data`. Values come before sub-tables, as TOML requires."""
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in data), f"not a bare key in {list(data)}"
    values = [f"{k} = {_toml_value(v)}\n" for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    head = f"\n[{'.'.join(path)}]\n" if path and (values or not tables) else ""
    return head + "".join(values) + "".join(toml_text(v, (*path, k)) for k, v in tables)


def _toml_value(v) -> str:
    if isinstance(v, bool):  # before int: bool is an int
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)  # also nan, inf, -inf, which TOML spells the same way
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_value, v)) + "]"
    raise TypeError(f"no TOML for {type(v).__name__}: {v!r}")


def write_recipe(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text(data))
    return path


def recipe_text(model_dir: str | Path, **kw) -> str:
    return toml_text(recipe_data(model_dir, **kw))


def load_toml(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)

def env(**extra) -> dict:
    e = dict(os.environ)
    e.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TQDM_DISABLE": "1"})
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run_py(args: list, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env(),
                          timeout=timeout, cwd=ROOT, **kw)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The CLI's failure: exit code 2 and exactly one `persona: error: ...` line, no traceback."""
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert "Traceback" not in p.stderr, p.stderr[-4000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("persona: error: ")]
    assert len(errors) == 1 and p.stderr.strip().splitlines()[-1] == errors[0], p.stderr[-2000:]
    return errors[0]


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    """SIGKILL `proc` as soon as `ready()` holds; fail if it ends or times out first."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended (exit {proc.returncode}) before {what}"


def stored(work: Path, role: str, pattern: str = "*/requests.sqlite") -> int:
    """How many answers of `role` a (running) build or eval has stored so far; 0 before its store exists."""
    db = next(Path(work).glob(pattern), None)
    if db is None:
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return c.execute("SELECT count(*) FROM results WHERE role = ?", (role,)).fetchone()[0]
    except sqlite3.Error:  # not created yet, or mid-transaction
        return 0


def popen(args: list, **extra_env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env(**extra_env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_recipe(path: Path, model, census: Path, prompts: Path | None = None, max_tokens: dict | None = None,
                model_path=None, changes: dict | None = None) -> Path:
    """The crash tests' small recipe (3 personas, short answers) written to `path`; `changes` as in `edited`."""
    data = recipe_data(model_path or model, personas=3, train_per_persona=2, n_train=1, n_unseen=1,
                       classify_limit=16, chunk_size=8, max_tokens=320, census=census, prism=prompts)
    data["census"]["max_rounds"] = 1  # one replacement round at most: every round is another ~600-token filler batch
    for role, n in {**MAX_TOKENS, **(max_tokens or {})}.items():
        data["roles"][role]["max_tokens"] = n
    return write_recipe(path, edited(data, changes or {}))


# ------------------------------------------------------------------------------ `persona build` in a subprocess

FAULTS = ("PERSONA_FAULT",)  # see tests/faults.py


def build_args(recipe: Path, out: Path | None = None, work: Path | None = None, *flags, faults=False) -> list:
    return ["-m", "tests.faults" if faults else "builder.cli", "build", "--recipe", recipe, *(["--out", out] if out else []),
            *(["--work", work] if work else []), *flags]


def build(recipe: Path, out: Path | None = None, work: Path | None = None, *flags, timeout: float = 900,
          check: bool = False, **extra_env) -> subprocess.CompletedProcess:
    """`python -m builder.cli build` with the test environment (plus `extra_env`; a fault named there runs
    the CLI under tests/faults.py);
    check=True asserts it succeeded, showing the end of its output if not."""
    faults = any(k in extra_env for k in FAULTS)
    p = subprocess.run([sys.executable, *map(str, build_args(recipe, out, work, *flags, faults=faults))], capture_output=True,
                       text=True, env=env(**extra_env), timeout=timeout, cwd=ROOT)
    if check:
        assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-6000:]}"
    return p


def start_build(recipe: Path, out: Path, work: Path, *flags, stderr=subprocess.DEVNULL,
                **extra_env) -> subprocess.Popen:
    """The same build, running in the background (to kill it, or to race another build)."""
    faults = any(k in extra_env for k in FAULTS)
    return subprocess.Popen([sys.executable, *map(str, build_args(recipe, out, work, *flags, faults=faults))], cwd=ROOT,
                            env=env(**extra_env), stdout=subprocess.DEVNULL, stderr=stderr, text=True)


# ------------------------------------------------------------------------------ the real runner over a scripted backend

class ScriptedBackend:
    """A Backend (generation.backends: submit / poll / capacity) answering from a script instead of a model:
    each request's text is `answer(request)`; every poll returns all submitted requests, in submission order,
    with the text's words counted as output tokens and no prompt tokens. `submitted` records every submit
    call's requests."""

    capacity = 64

    def __init__(self, answer):
        self.answer = answer
        self.queue: list = []
        self.submitted: list[list] = []

    def submit(self, requests) -> None:
        assert len(self.queue) + len(requests) <= self.capacity, "more in flight than capacity"
        self.queue += requests
        self.submitted.append(list(requests))

    def poll(self) -> list:
        done, self.queue = self.queue, []
        return [Result(r.id, text, 0, len(text.split()), "stop") for r, text in ((r, self.answer(r)) for r in done)]


class ScriptedRun(StoreRunner):
    """The production runner (builder.runner.StoreRunner: the streaming loop, a request store, retries and
    rejects) over a ScriptedBackend, for testing stages without a model. One model serves every role; each
    answer is `answer(role, ask, attempt)`, or the fixed text `answer`: the backend finds the ask a request was
    made for in the requests this runner made (the contract's ChatRequest carries no key), and `attempt` counts
    the submissions of the same request id (a retry keeps the id, with a new derived seed).
    `asked[role]` lists each ask sent to the backend, in the order it was sent, once (retries not repeated)."""

    def __init__(self, answer, max_attempts: int = 3):
        script = answer if callable(answer) else (lambda role, ask, attempt: answer)
        folder = tempfile.mkdtemp(prefix="scripted-run-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        self.needs: dict = {}                            # request id -> the Need it was made for
        self.attempts: Counter = Counter()               # request id -> submissions so far
        self.asked: dict[str, list] = {}

        def reply(request) -> str:
            need, attempt = self.needs[request.id], self.attempts[request.id]
            self.attempts[request.id] += 1
            if attempt == 0:
                self.asked.setdefault(need.role, []).append(need.ask)
            return script(need.role, need.ask, attempt)

        self.scripted = ScriptedBackend(reply)
        cfg = RunnerConfig(seed=0, models={"m": ModelConfig(id="scripted/model")},
                           roles={role: RoleConfig(model="m") for role in (*ROLES, SUBJECT, JUDGE)},
                           max_attempts=max_attempts)
        super().__init__(cfg, RequestStore(Path(folder) / "requests.sqlite"), lambda m: self.scripted, {"m": None})

    def batches(self) -> list[list]:
        """The Need behind each request of each submit call, in the order sent."""
        return [[self.needs[r.id] for r in batch] for batch in self.scripted.submitted]

    def request(self, need, attempt: int = 0):
        req = super().request(need, attempt)
        self.needs[req.id] = need
        return req
