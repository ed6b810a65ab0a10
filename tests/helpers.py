"""Shared test helpers: recipes pointing at local models, and running project code in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
