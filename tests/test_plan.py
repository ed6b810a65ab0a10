"""`persona plan`: the requests, tokens, disk and GPU-hours of a recipe, without a model."""
import json
import subprocess
import sys

import pytest

from builder.plan import THROUGHPUT, PlanError, params_billion, plan
from builder.recipe import load_recipe

from .helpers import ROOT, env, one_line_error, run_py


def test_paper_recipe_plan_counts_every_request_and_quotes_the_one_formula():
    pl = plan(load_recipe(ROOT / "configs" / "paper.toml"), None)
    roles = {r.role: r for r in pl["roles"]}
    assert pl["pairs"] == 1586 * 200 == roles["critic"].requests == roles["reviser"].requests == 317_200
    assert roles["persona_filler"].requests == roles["consistency_judge"].requests == 1586
    assert roles["prompt_classifier"].requests == roles["responder"].requests == 4652  # hf:// source: the paper's count
    assert not any(r.measured for r in roles.values())  # no build to measure: max_tokens is the ceiling
    paper = load_recipe(ROOT / "configs" / "paper.toml")
    assert roles["reviser"].output_per_request == paper.roles["reviser"].max_tokens
    total = sum(r.requests * paper.roles[r.role].max_tokens for r in roles.values())
    assert pl["output_tokens"] == total
    rate = THROUGHPUT["H100"]["tokens_per_s"] * 8 / 72  # Qwen2.5-72B: scaled by parameters from the 8B figure
    assert pl["tokens_per_s"] == pytest.approx(rate) and pl["gpu_hours"] == pytest.approx(total / rate / 3600)
    assert "assumption" in pl["rate_source"] and pl["weights_gb"] == 36.0  # 72B at 4 bits


def test_measured_means_come_from_a_previous_build(tiny_build):
    tmp, recipe_path = tiny_build
    built = tmp / "a" / "persona"
    manifest = json.loads((built / "manifest.json").read_text())
    pl = plan(load_recipe(recipe_path), built, tokens_per_s=1000)
    roles = {r.role: r for r in pl["roles"]}
    seen = manifest["counts"]["requests"]
    for role in ("responder", "critic", "reviser"):
        assert roles[role].measured and roles[role].output_per_request == seen[role]["output_tokens"] / seen[role]["requests"]
    assert pl["tokens_per_s"] == 1000 and pl["rate_source"] == "--tokens-per-s"
    assert pl["output_measured"] and pl["output_bytes"] == pytest.approx(sum(f["bytes"] for f in manifest["files"]))


def test_parameter_counts_from_model_ids():
    assert params_billion("Qwen/Qwen2.5-72B-Instruct-AWQ") == 72
    assert params_billion("HuggingFaceTB/SmolLM2-135M-Instruct") == 0.135
    assert params_billion("meta-llama/Llama-3.1-8B-Instruct") == 8
    assert params_billion("test/model") is None


def test_plan_runs_in_seconds_without_a_model_and_refuses_an_unknown_gpu(tmp_path):
    code = ("import sys; from builder.cli import main\n"
            "try:\n    main(['plan', '--recipe', 'configs/paper.toml'])\n"
            "finally:\n    print('VLLM', 'vllm' in sys.modules, 'torch' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "GPU-hours = TP x T_out / r / 3600" in p.stdout and "| critic | 317,200 |" in p.stdout
    assert "VLLM False False" in p.stdout  # no engine, no torch: a plan starts nothing
    line = one_line_error(run_py(["-m", "builder.cli", "plan", "--recipe", "configs/paper.toml", "--gpu", "B300"]))
    assert "--gpu B300: no published throughput" in line
    with pytest.raises(PlanError):
        plan(load_recipe(ROOT / "configs" / "paper.toml"), None, gpu="TPU")
