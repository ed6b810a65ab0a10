"""The real vLLM CPU engine: a tiny random-weight Llama in this process, SmolLM2 in a subprocess."""
import json

import pytest

from generation.engine import ChatRequest, Engine, ModelSpec

from .helpers import run_py

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "likes": {"type": "array", "items": {"enum": ["tea", "coffee", "water"]}, "maxItems": 3}},
          "required": ["name", "age", "likes"], "additionalProperties": False}


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(ModelSpec(path=str(tiny_model), dtype="float32", max_model_len=1024, kv_cache_gib=0.25))


def _req(i, **kw):
    kw = {"max_tokens": 24, **kw}
    return ChatRequest(id=f"r{i}", seed=1000 + i,
                       messages=[{"role": "system", "content": "You are helpful."},
                                 {"role": "user", "content": f"Tell me about {i}."}], **kw)


def test_chat_answers(engine):
    res = engine.generate([_req(i) for i in range(8)])
    assert [r.id for r in res] == [f"r{i}" for i in range(8)]
    for r in res:
        assert r.text and r.output_tokens > 0 and r.prompt_tokens > 5
        assert r.finish_reason in ("stop", "length")


def test_json_schema_batch(engine):
    import jsonschema
    res = engine.generate([_req(i, schema=SCHEMA, max_tokens=96) for i in range(16)])
    for r in res:
        jsonschema.validate(json.loads(r.text), SCHEMA)


def test_alone_equals_in_batch_and_seed_matters(engine):
    batch = engine.generate([_req(i, temperature=1.0) for i in range(12)])
    alone = engine.generate([_req(5, temperature=1.0)])
    assert alone[0].text == batch[5].text
    other_seed = engine.generate([ChatRequest(**{**_req(5, temperature=1.0).__dict__, "seed": 99})])
    assert other_seed[0].text != batch[5].text


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


@pytest.mark.slow
def test_smollm2_answers_in_english(tmp_path):
    code = ("from generation.models import prepare_smollm2\n"
            "from generation.engine import Engine, ModelSpec, ChatRequest\n"
            "e = Engine(ModelSpec(path=str(prepare_smollm2()), dtype='bfloat16', max_model_len=1024, kv_cache_gib=0.25))\n"
            "r = e.generate([ChatRequest(id='x', seed=1, temperature=0.0, max_tokens=24, messages=[{'role': 'user', 'content': 'What is the capital of France?'}])])\n"
            "print('ANSWER:' + r[0].text)\n")
    p = run_py(["-c", code])
    assert p.returncode == 0, p.stderr[-3000:]
    answer = p.stdout.split("ANSWER:", 1)[1]
    assert "Paris" in answer


# ----------------------------------------------------------------- engine settings per device (no engine)

def test_cpu_gets_the_workarounds_and_a_gpu_gets_vllms_defaults():
    from generation.engine import engine_args

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
    from generation.engine import engine_args

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
