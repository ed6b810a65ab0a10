"""`persona plan`: the requests, tokens, disk and GPU-hours of a recipe, without a model."""
import json
import subprocess
import sys

import pytest

from builder.plan import KNOWN_CONFIGS, REFERENCE, PlanError, gpu_hours, params_billion, plan, rates, weights_bytes
from builder.recipe import load_recipe

from .helpers import ROOT, env, one_line_error, run_py

PAPER = ROOT / "configs" / "paper.toml"
QWEN = "Qwen/Qwen2.5-72B-Instruct-AWQ"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ROLES = ("persona_filler", "consistency_judge", "prompt_classifier", "responder", "critic", "reviser")


def fake_manifest(folder, model: str, revision: str | None, requests: dict | None = None):
    """A manifest.json as a finished build writes it, with only what `persona plan` reads filled in."""
    requests = requests or {"persona_filler": (10, 6330, 1450, 0, 0), "consistency_judge": (8, 4016, 104, 0, 0),
                            "prompt_classifier": (40, 10480, 600, 0, 0), "responder": (20, 880, 2920, 2, 640),
                            "critic": (24, 15744, 1632, 1, 160), "reviser": (26, 18720, 2158, 0, 0)}
    counts = {role: {"requests": n, "ok": n, "rejects": {}, "prompt_tokens": p, "output_tokens": o, "retries": r,
                     "retry_output_tokens": w, "truncated_kept": 0} for role, (n, p, o, r, w) in requests.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({
        "format": "persona-manifest/1", "fingerprint": "a" * 64, "files": [], "splits": {},
        "models": {role: {"id": model, "revision": revision} for role in ROLES},
        "counts": {"personas": 8, "pairs": {"train": 16, "test_seen": 8}, "requests": counts}}))
    return folder


def test_paper_recipe_plan_counts_every_request_and_quotes_the_one_formula():
    paper = load_recipe(PAPER)
    pl = plan(paper, None)
    roles = {r.role: r for r in pl["roles"]}
    assert pl["pairs"] == 1586 * 200 == roles["critic"].requests == roles["reviser"].requests == 317_200
    assert roles["persona_filler"].requests == roles["consistency_judge"].requests == 1586
    assert roles["prompt_classifier"].requests == roles["responder"].requests == 4652  # hf:// source: the paper's count
    assert not any(r.measured for r in roles.values())  # no build to measure: max_tokens is the ceiling
    assert roles["critic"].output_per_request == paper.roles["critic"].max_tokens
    # a rewrite of a responder answer at its ceiling (768) may take 2 x 768 + 16 (the recipe's reviser max_tokens)
    assert roles["reviser"].output_per_request == 2 * 768 + 16 == paper.roles["reviser"].max_tokens
    # prefill: the rejected answer (+ the critique) is sent fresh with every critic (reviser) request
    assert roles["critic"].prompt_per_request >= paper.roles["responder"].max_tokens
    assert roles["reviser"].prompt_per_request >= paper.roles["responder"].max_tokens + paper.roles["critic"].max_tokens
    decode, prefill = rates(REFERENCE["H100"]["points"])
    scale = REFERENCE["H100"]["params_b"] / 72  # Qwen2.5-72B: scaled by parameters from the 70B reference
    assert pl["tokens_per_s"] == pytest.approx(decode * scale) and pl["prefill_tokens_per_s"] == pytest.approx(prefill * scale)
    t_out = sum(r.requests * r.output_per_request for r in roles.values())
    t_in = sum(r.requests * r.prompt_per_request for r in roles.values())
    assert pl["gpu_hours"] == pytest.approx((t_out / (decode * scale) + t_in / (prefill * scale)) / 3600)
    assert "assumption" in pl["rate_source"] and "TensorRT-LLM" in pl["rate_source"]


def test_the_published_points_are_reproduced_by_the_fitted_rates():
    decode, prefill = rates(REFERENCE["H100"]["points"])
    for n_in, n_out, per_gpu in REFERENCE["H100"]["points"]:
        assert n_out / (n_out / decode + n_in / prefill) == pytest.approx(per_gpu)
    assert gpu_hours(3600 * 100, 0, 2, 100, None) == 2.0  # TP GPUs for as long as the replica decodes


def test_awq_weights_count_the_unquantised_embeddings_and_lm_head():
    pl = plan(load_recipe(PAPER), None)
    naive = 72 * 0.5  # 72 B parameters at 4 bits
    embeddings = 2 * 152064 * 8192 * 2 / 1e9  # embed_tokens + lm_head, 16-bit, untied: 4.98 GB
    assert embeddings == pytest.approx(4.98, abs=0.01)
    assert pl["weights_gb"] == pytest.approx(weights_bytes(KNOWN_CONFIGS[QWEN]) / 1e9)
    assert naive + 4.5 < pl["weights_gb"] < naive + 6.5 and "config" in pl["weights_how"]


def test_a_build_of_other_models_is_not_measured_for_the_paper(tmp_path):
    """The CPU demo build (SmolLM2) in persona/ must not lend its lengths to the 72B paper recipe."""
    code = f"from builder.cli import main; main(['plan', '--recipe', {str(PAPER)!r}])"
    fake_manifest(tmp_path / "persona", SMOL, "sha256:" + "1" * 64)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    ignored = [line for line in p.stdout.splitlines() if "ignored" in line]
    assert len(ignored) == 1 and f"its persona_filler is {SMOL}, the recipe's is {QWEN}" in ignored[0]
    assert "(measured)" not in p.stdout and "measured means from" not in p.stdout.replace(ignored[0], "")
    clean = plan(load_recipe(PAPER), None)
    assert f"= {clean['gpu_hours']:,.1f} H100-hours" in p.stdout  # exactly the plan without any build

    # the same models at another revision than the recipe pins: ignored too
    paper = load_recipe(PAPER)
    other = fake_manifest(tmp_path / "other", QWEN, "0" * 40)
    pl = plan(paper, other, explicit=True)
    assert not any(r.measured for r in pl["roles"]) and "the recipe pins @698703eae660" in pl["measured_ignored"]


def test_measured_means_count_retries_and_the_prefix_cache(tmp_path):
    built = fake_manifest(tmp_path / "persona", QWEN, load_recipe(PAPER).models["qwen72"].revision)
    pl = plan(load_recipe(PAPER), built, explicit=True)
    roles = {r.role: r for r in pl["roles"]}
    assert all(r.measured for r in roles.values()) and pl["measured_ignored"] is None
    resp, critic, reviser = roles["responder"], roles["critic"], roles["reviser"]
    assert resp.output_per_request == (2920 + 640) / 20 and resp.retries_per_request == 2 / 20
    assert critic.output_per_request == (1632 + 160) / 24
    # fresh prompt: question + answer (+ critique), not the persona's cached system message
    assert critic.prompt_per_request == pytest.approx(880 / 20 + 2920 / 20 + 32)
    assert reviser.prompt_per_request == pytest.approx(880 / 20 + 2920 / 20 + 32 + 1632 / 24)
    assert resp.prompt_tokens == pytest.approx(resp.requests * (1 + 0.1) * 44)  # retries send their prompt again
    assert reviser.requests == round(317_200 * 26 / 24)  # re-asked revisions, as measured


def test_measured_means_come_from_a_previous_build(tiny_build):
    tmp, recipe_path = tiny_build
    built = tmp / "a" / "persona"
    manifest = json.loads((built / "manifest.json").read_text())
    pl = plan(load_recipe(recipe_path), built, tokens_per_s=1000)
    roles = {r.role: r for r in pl["roles"]}
    seen = manifest["counts"]["requests"]
    for role in ("responder", "critic", "reviser"):
        s = seen[role]
        assert roles[role].measured
        assert roles[role].output_per_request == (s["output_tokens"] + s["retry_output_tokens"]) / s["requests"]
    assert pl["tokens_per_s"] == 1000 and pl["rate_source"].startswith("--tokens-per-s")
    assert pl["gpu_hours"] == pytest.approx(pl["output_tokens"] / 1000 / 3600)  # a pilot's rate holds its prefill
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
    assert "GPU-hours = TP x (T_out / r_out + T_in / r_in) / 3600" in p.stdout and "| critic | 317,200 |" in p.stdout
    assert "VLLM False False" in p.stdout  # no engine, no torch: a plan starts nothing
    line = one_line_error(run_py(["-m", "builder.cli", "plan", "--recipe", "configs/paper.toml", "--gpu", "B300"]))
    assert "--gpu B300: no published throughput" in line
    with pytest.raises(PlanError):
        plan(load_recipe(PAPER), None, gpu="TPU")


@pytest.mark.parametrize("rate", ["0", "-5", "nan", "inf"])
def test_a_rate_that_is_not_a_positive_number_is_one_line(rate):
    line = one_line_error(run_py(["-m", "builder.cli", "plan", "--recipe", "configs/paper.toml", f"--tokens-per-s={rate}"]))
    # the command line refuses it before plan runs (its table of ranges): "must be > 0" / "takes a number"
    assert "--tokens-per-s" in line and ("must be > 0" in line or "takes a number" in line), line


@pytest.mark.parametrize("text, where", [
    ("{not json", "not valid JSON"),
    ('{"format": "persona-manifest/1"}', "fingerprint: missing"),
    (None, "counts.requests.critic.output_tokens: expected a count"),
    ("", "not valid JSON"),
])
def test_a_malformed_measured_manifest_is_one_line(tmp_path, text, where):
    folder = fake_manifest(tmp_path / "built", QWEN, None)
    if text is None:
        m = json.loads((folder / "manifest.json").read_text())
        m["counts"]["requests"]["critic"]["output_tokens"] = "many"
        text = json.dumps(m)
    (folder / "manifest.json").write_text(text)
    line = one_line_error(run_py(["-m", "builder.cli", "plan", "--recipe", "configs/paper.toml", "--measured", folder]))
    assert str(folder / "manifest.json") in line and where in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(run_py(["-m", "builder.cli", "plan", "--recipe", "configs/paper.toml", "--measured", empty]))
    assert "no manifest.json there" in line
