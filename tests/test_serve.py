"""`persona serve`: the Ray Serve LLM application's arguments (built, no engine started), and the command
line's refusals before Ray starts. Builds through a real Serve app are in test_serve_ray.py."""
import pytest

from builder.backends import model_spec
from builder.recipe import load_recipe
from builder.serve import ROUTER, Served, ServeError, llm_config_args, serve_in_flight, served_models
from generation.backends.engine import ModelSpec, engine_args

from .helpers import edited, one_line_error, recipe_data, write_recipe
from .test_cli import persona


def _llm_config(args: dict):
    pytest.importorskip("ray.serve.llm")
    from ray.serve.llm import LLMConfig
    return LLMConfig(**args)


def test_cpu_replicas_get_the_in_process_engine_settings():
    spec = ModelSpec(path="/models/tiny", dtype="float32", max_model_len=2048, kv_cache_gib=0.25)
    args = llm_config_args(Served("test/model", spec), replicas=2, on="cpu")
    cfg = _llm_config(args)
    want = {**engine_args(spec, "cpu"), "generation_config": "vllm", "enable_prompt_tokens_details": True}
    want.pop("revision")  # a local folder has none
    assert cfg.engine_kwargs == want
    assert want["enforce_eager"] and want["enable_chunked_prefill"] is False and want["kv_cache_memory_bytes"] == 1 << 28
    assert cfg.model_id == "test/model" and cfg.model_loading_config.model_source == "/models/tiny"
    assert cfg.accelerator_config.kind == "cpu" and cfg.placement_group_config["bundles"] == [{"CPU": 1}]
    assert cfg.deployment_config["ray_actor_options"] == {"num_cpus": 0}  # one logical CPU per replica, not two
    assert cfg.deployment_config["num_replicas"] == 2
    assert cfg.deployment_config["request_router_config"]["request_router_class"] == ROUTER
    env = cfg.runtime_env["env_vars"]
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"  # "auto" pins every replica to core 0
    assert env["VLLM_BATCH_INVARIANT"] == "0"


def test_cpu_replicas_reserve_the_cpus_their_threads_use():
    spec = ModelSpec(path="/models/tiny", dtype="float32", max_model_len=2048, kv_cache_gib=0.25)
    cfg = _llm_config(llm_config_args(Served("test/model", spec), replicas=1, on="cpu", threads=2))
    assert cfg.placement_group_config["bundles"] == [{"CPU": 2}]
    assert cfg.runtime_env["env_vars"]["OMP_NUM_THREADS"] == "2"


def test_gpu_replicas_get_vllm_defaults_and_their_gpus(monkeypatch):
    """The GPU path's arguments, decided for the replicas' device (not this CPU machine's): no CPU
    workarounds, tensor_parallel_size GPUs per replica (Ray Serve LLM's default placement)."""
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    spec = ModelSpec(path="Qwen/Qwen2.5-72B-Instruct-AWQ", revision="abc123", max_model_len=8192,
                     tensor_parallel_size=2, max_num_seqs=64)
    cfg = _llm_config(llm_config_args(Served("Qwen/Qwen2.5-72B-Instruct-AWQ", spec), replicas=8, on="cuda"))
    kw = cfg.engine_kwargs
    assert kw == {**engine_args(spec, "cuda"), "generation_config": "vllm", "enable_prompt_tokens_details": True}
    assert kw["revision"] == "abc123" and kw["tensor_parallel_size"] == 2 and kw["max_num_seqs"] == 64
    assert not {"enforce_eager", "enable_chunked_prefill", "kv_cache_memory_bytes"} & kw.keys()
    assert cfg.accelerator_config.kind == "gpu" and cfg.placement_group_config is None
    assert "ray_actor_options" not in cfg.deployment_config
    env = cfg.runtime_env["env_vars"]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in env and "OMP_NUM_THREADS" not in env
    assert env["VLLM_BATCH_INVARIANT"] == "1" and "HF_HUB_OFFLINE" not in env


def test_the_printed_line_scales_the_clients_calls_with_the_replicas():
    """One URL fronts all replicas, and the client keeps in_flight calls open per URL (default 128)."""
    assert serve_in_flight(1) == ""
    assert serve_in_flight(8) == " and in_flight = 1024"


def test_a_model_is_served_once_under_its_recipe_id(tmp_path):
    data = recipe_data(tmp_path)
    data["models"]["j"] = dict(data["models"]["m"])  # the same model under two names: one deployment
    data["roles"]["critic"]["model"] = "j"
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", data))
    assert [s.name for s in served_models(recipe, lambda m: model_spec(m)[0])] == ["test/model"]
    data["models"]["j"]["max_model_len"] = 1024  # same id, other engine: a server cannot tell them apart
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", data))
    with pytest.raises(ServeError, match=r"\[models.j\] serves id 'test/model' with other engine settings"):
        served_models(recipe, lambda m: model_spec(m)[0])


@pytest.mark.parametrize("args, expected", [
    (["serve", "--replicas", "0"], "--replicas for `persona serve` must be >= 1, not 0"),
    (["serve", "--port", "70000"], "--port for `persona serve` must be in [1, 65535], not 70000"),
    (["serve", "--device", "tpu"], "--device 'tpu' is not one of cpu, cuda"),
])
def test_serve_refuses_before_ray_starts(tmp_path, args, expected):
    recipe = write_recipe(tmp_path / "r.toml", recipe_data(tmp_path))
    p = persona(*args, "--recipe", recipe)
    assert one_line_error(p) == f"persona: error: {expected}"
    assert "ray" not in p.stderr.lower().replace("--replicas", "")  # refused before Ray was started
RETIRED = ("the Ray actor pool is retired: start the models with `persona serve --recipe RECIPE` "
           "and set server = \"URL\" under [models.*] of the recipe (docs/ray.md)")


def test_the_old_ray_executor_points_to_persona_serve(tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", recipe_data(tmp_path))
    for flags in (["--executor", "ray"], ["--address", "auto"], ["--replicas", "2"]):
        line = one_line_error(persona("build", "--recipe", recipe, "--out", tmp_path / "o", "--work", tmp_path / "w", *flags))
        assert line == f"persona: error: {flags[0]}: {RETIRED}"
    old = write_recipe(tmp_path / "old.toml", edited(recipe_data(tmp_path), {"executor.kind": "ray", "executor.replicas": 2}))
    line = one_line_error(persona("build", "--recipe", old, "--out", tmp_path / "o", "--work", tmp_path / "w"))
    assert line == f"persona: error: {old}: executor.kind = 'ray': {RETIRED}"
    for key, value in (("replicas", 2), ("address", "auto"), ("timeout_s", 60.0)):  # the pool's own settings
        old = write_recipe(tmp_path / "old.toml", edited(recipe_data(tmp_path), {f"executor.{key}": value}))
        line = one_line_error(persona("build", "--recipe", old, "--out", tmp_path / "o", "--work", tmp_path / "w"))
        assert line == f"persona: error: {old}: executor.{key} = {value!r}: {RETIRED}"
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()
