"""`persona serve`: a recipe's models as one Ray Serve LLM application (OpenAI-compatible), for a build
past one machine. The build talks to it like to any vLLM server (generation/server.py: streaming,
retries, one schema per answer): put the printed base URL in the recipe's `server =`.

Each replica runs the engine arguments the in-process engine would use on the replicas' device
(generation.backends.engine.engine_args: the CPU workarounds on CPU, vLLM's defaults on a GPU), so the answers
are the in-process build's. The device is the cluster's, not this process's: a head node without a GPU
serves GPU replicas with GPU settings. Ray Serve restarts a replica that dies or fails its health
check, and routes requests sharing a prompt prefix to one replica (PrefixCacheAffinityRouter).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from generation.backends.engine import ModelSpec, engine_args, engine_env
from generation.backends.server import PER_SERVER
from generation.errors import PersonaError

from .recipe import Recipe

ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
DEVICES = ("cpu", "cuda")


class ServeError(PersonaError, RuntimeError):
    """A `persona serve` that cannot start: bad arguments, no Ray Serve LLM, two models under one name."""


@dataclass(frozen=True)
class Served:
    """One model of the app: the name it is served under (the recipe's id) and its engine."""
    name: str
    spec: ModelSpec


def served_models(recipe: Recipe, spec_of) -> list[Served]:
    """The recipe's distinct models (roles sharing a model share its replicas), each under its recipe id.
    `spec_of(m)` -> ModelSpec (builder.backends.model_spec's first item: prepares/resolves the weights)."""
    out: dict[str, Served] = {}
    for key, m in recipe.models.items():
        s = Served(m.id, spec_of(m))
        if m.id in out and out[m.id] != s:
            raise ServeError(f"{recipe.path}: [models.{key}] serves id {m.id!r} with other engine settings than "
                             "another model of the same id; a server answers one model per name")
        out[m.id] = s
    return list(out.values())


def replica_env(spec: ModelSpec, on: str, threads: int = 1) -> dict[str, str]:
    """The environment of a replica on device `on`: the in-process engine's (engine_env), the driver's
    VLLM_BATCH_INVARIANT (it is in the request ids), offline for a local folder, no progress bars; on CPU
    `threads` OpenMP threads, the CPUs its bundle reserves (replicas whose threads outnumber the cores slow
    each other 3-10x)."""
    env = {"TQDM_DISABLE": "1", "VLLM_BATCH_INVARIANT": os.environ.get("VLLM_BATCH_INVARIANT", "0"), **engine_env(on)}
    if os.path.isdir(spec.path):  # a local folder (same path on every node): never ask the Hub
        env["HF_HUB_OFFLINE"] = "1"
    if on == "cpu":
        # vLLM's "auto" binding pins every replica's engine to the node's first core (measured: core ids=[0])
        env.update(OMP_NUM_THREADS=str(threads), VLLM_CPU_OMP_THREADS_BIND="nobind")
    return env


def check_args(replicas: int, device: str | None) -> None:
    """Refuse bad arguments before Ray starts."""
    if device is not None and device not in DEVICES:
        raise ServeError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if replicas < 1:
        raise ServeError(f"--replicas must be >= 1, got {replicas}")


def llm_config_args(s: Served, replicas: int, on: str, threads: int = 1) -> dict:
    """The keyword arguments of ray.serve.llm.LLMConfig for `s` on `replicas` replicas of device `on`.

    engine_kwargs: engine_args plus what serve_command adds for a server (vLLM's sampling defaults rather
    than the model's generation_config; prompt-cache counts in usage). On CPU `threads` CPUs per replica
    (Ray Serve LLM's default asks for a GPU); on a GPU tensor_parallel_size GPUs, Ray's default."""
    check_args(replicas, on)
    kwargs = {**engine_args(s.spec, on), "generation_config": "vllm", "enable_prompt_tokens_details": True}
    if kwargs.get("revision") is None:
        kwargs.pop("revision", None)
    args = dict(
        model_loading_config={"model_id": s.name, "model_source": s.spec.path},
        engine_kwargs=kwargs,
        runtime_env={"env_vars": replica_env(s.spec, on, threads)},
        deployment_config={"num_replicas": replicas,
                           # a persona's requests share their leading messages: one replica's prefix cache
                           "request_router_config": {"request_router_class": ROUTER}},
    )
    if on == "cpu":
        args["placement_group_config"] = {"bundles": [{"CPU": threads}]}
        # Ray Serve LLM adds the replica actor's own CPU (default 1) to the first bundle: a CPU replica would
        # need two logical CPUs, and `--replicas 2` on a 3-CPU private Ray placed one (measured); the actor
        # runs in its engine's bundle
        args["deployment_config"]["ray_actor_options"] = {"num_cpus": 0}
    return args


def private_threads(replicas: int, models: int) -> int:
    """OpenMP threads of each CPU replica on a private Ray: this machine's cores shared among them."""
    return max(1, (os.cpu_count() or 1) // (replicas * models))


def serve_in_flight(replicas: int) -> str:
    """What the recipe adds beside `server =` for an app of `replicas` replicas behind its one URL: the
    client keeps PER_SERVER requests in flight per URL, which would starve all but one replica."""
    return "" if replicas == 1 else f" and in_flight = {replicas * PER_SERVER}"


def cluster_device(resources: dict) -> str:
    """The replicas' device: "cuda" on a cluster with GPUs (they must have joined by now), else "cpu"."""
    return "cuda" if resources.get("GPU", 0) > 0 else "cpu"


def build_app(configs: list[dict]):
    """The Ray Serve application of LLMConfig argument dicts (imports ray only here: an optional extra)."""
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as e:
        raise ServeError(f"`persona serve` needs Ray Serve LLM: pip install -e '.[ray]' ({e})") from e
    return build_openai_app({"llm_configs": [LLMConfig(**c) for c in configs]})


def serve(recipe: Recipe, spec_of, replicas: int = 1, address: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, device: str | None = None, num_cpus: int | None = None) -> str:
    """Start the app on the Ray cluster at `address` (or $RAY_ADDRESS; none: a private local Ray) and return
    its OpenAI base URL once every replica answers. The app lives as long as the Ray cluster, or this
    process for a private one."""
    check_args(replicas, device)
    models = served_models(recipe, spec_of)
    try:
        import ray
        from ray import serve as ray_serve
    except ImportError as e:
        raise ServeError(f"`persona serve` needs Ray Serve LLM: pip install -e '.[ray]' ({e})") from e
    address = address or os.environ.get("RAY_ADDRESS")
    # a private Ray shares this machine's cores among the replicas (one replica of SmolLM2 on one of two
    # cores ran at 0.49x the in-process engine, measured); on a cluster one thread each, its nodes unknown here
    threads = 1 if address else private_threads(replicas, len(models))
    if not ray.is_initialized():
        # the replicas' vLLM lines stay in Ray's session logs (.../session_latest/logs/serve/): the console
        # keeps the one line that matters, the URL
        quiet = dict(logging_level="warning", log_to_driver=False)
        if address:
            ray.init(address=address, **quiet)
        else:
            # logical CPUs: each CPU replica's threads and one for Serve's HTTP ingress, however few cores
            need = replicas * len(models) * threads + 1
            ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, need), include_dashboard=False, **quiet)
    on = device or cluster_device(ray.cluster_resources())
    app = build_app([llm_config_args(s, replicas, on, threads) for s in models])
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(app, name="persona", route_prefix="/", blocking=False)
    # Serve keeps the HTTP options it was first started with on a cluster (measured: a second `persona serve
    # --port B` on the same cluster was served on the first one's port A): print where it really listens
    from ray.serve.context import _get_global_client
    http = _get_global_client().http_config
    host, port = http.host or host, http.port or port
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/v1"


def stop() -> None:
    """Delete the app (its replicas free their GPUs); Ray itself stays for a cluster it joined."""
    import ray
    from ray import serve as ray_serve
    if ray.is_initialized():
        ray_serve.delete("persona", _blocking=True)
