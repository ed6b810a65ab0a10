"""Shared test helpers: recipes pointing at local models, and running project code in a subprocess."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STATES = ("p_10.parquet", "p_50.parquet", "p_56.parquet")  # Delaware, Vermont, Wyoming: small files
# The random-weight model fills JSON strings up to their maxLength: the persona filler's object needs
# ~600 tokens; the responder (plain text) never stops by itself, so keep it short.
MAX_TOKENS = {"persona_filler": 1024, "responder": 48}


def recipe_text(model_dir: str | Path, *, personas: int = 4, extra: str = "", classify_limit: int = 24,
                train_per_persona: int = 3, n_train: int = 2, n_unseen: int = 1, seed: int = 7,
                census: str | None = None, prism: str | None = None, chunk_size: int = 16,
                max_tokens: int = 48, max_model_len: int = 8192) -> str:
    shared = Path(os.environ.get("PERSONA_SHARED_DATA", ROOT.parent / "shared" / "data"))
    census = census or str(shared / "census" / "acs-pums-2024-1yr")
    prism = prism or str(shared / "prism" / "prism_opening_prompts.json")
    roles = "".join(f'\n[roles.{r}]\nmodel = "m"\ntemperature = 0.8\nmax_tokens = {max_tokens}\n'
                    for r in ("persona_filler", "consistency_judge", "prompt_classifier", "responder", "critic", "reviser"))
    return f"""name = "test"
seed = {seed}
demo = true

[census]
source = "{census}"
personas = {personas}

[prompts]
source = "{prism}"
classify_limit = {classify_limit}

[pairs]
train_per_persona = {train_per_persona}
n_train = {n_train}
n_unseen = {n_unseen}
structured = true
cap_to_pool = true

[output]
chunk_size = {chunk_size}

[models.m]
id = "test/model"
path = "{model_dir}"
dtype = "float32"
max_model_len = {max_model_len}
kv_cache_gib = 0.25
{roles}
{extra}
"""


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
                model_path=None) -> Path:
    text = recipe_text(model_path or model, personas=3, train_per_persona=2, n_train=1, n_unseen=1,
                       classify_limit=16, chunk_size=8, max_tokens=320, census=str(census),
                       prism=str(prompts) if prompts else None)
    # one replacement round at most: every round is another ~600-token filler batch
    text = text.replace("personas = 3\n", "personas = 3\nmax_rounds = 1\n", 1)
    for role, n in {**MAX_TOKENS, **(max_tokens or {})}.items():
        section = f'[roles.{role}]\nmodel = "m"\ntemperature = 0.8\nmax_tokens = 320\n'
        assert text.count(section) == 1, role
        text = text.replace(section, section.replace("max_tokens = 320", f"max_tokens = {n}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
