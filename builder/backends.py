"""Where generation requests run: in this process on one vLLM engine (local), or on Ray replicas."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from generation.engine import Backend, Chunked, ModelSpec, device, engine_args, get_engine
from generation.errors import PersonaError
from generation.log import log
from generation.models import hub_commit, resolve_model, unpinned_warning
from generation.server import ServerBackend, ServerError, ServerSpec, serve_command

from .recipe import ExecutorConfig, ModelConfig, Recipe


def model_spec(m: ModelConfig) -> tuple[ModelSpec, str | None]:
    path, revision = resolve_model(m.id, m.revision, m.path, m.prepare)
    # a Hub id loads the commit its requests are recorded under (the one resolved if it was unpinned)
    spec = ModelSpec(path=path, revision=revision if path == m.id else None, dtype=m.dtype,
                     max_model_len=m.max_model_len, tensor_parallel_size=m.tensor_parallel_size,
                     kv_cache_gib=m.kv_cache_gib, enforce_eager=m.enforce_eager,
                     enable_chunked_prefill=m.enable_chunked_prefill, max_num_batched_tokens=m.max_num_batched_tokens)
    return spec, revision


def engine_settings(m: ModelConfig) -> dict:
    """The vLLM engine arguments this machine uses for `m` (recorded in the manifest), and its device."""
    on = device()
    return {"device": on, **engine_args(model_spec(m)[0], on)}


def resolve_revisions(recipe: Recipe, pin: Callable[[str], str] | None = None) -> dict[str, str | None]:
    """Model name -> the revision recorded in request ids and the manifest (prepares local models,
    digests local folders, resolves unpinned Hub ids to their current commit). Prints a WARNING line
    on stderr for every unpinned Hub model; `pin(name)` says how to pin one (default: the recipe)."""
    # a server's weights are its own: the recipe's revision is recorded (vLLM reports none); checked first
    revisions = {name: m.revision if m.server else model_spec(m)[1] for name, m in recipe.models.items()}
    for m in recipe.models.values():
        if m.server:
            server_info(m)
    for line in unpinned_warnings(recipe.models, pin):
        log.warning(line)
    return revisions


def recipe_pin(name: str) -> str:
    return f'revision = "<commit>" under [models.{name}] of the recipe'


def unpinned_warnings(models: dict[str, ModelConfig], pin: Callable[[str], str] | None = None) -> list[str]:
    """One WARNING line per Hub model without a revision (local folders are pinned by their digest)."""
    return [unpinned_warning(m.id, *(served_commit(m) if m.server else hub_commit(m.id)), (pin or recipe_pin)(name))
            for name, m in models.items() if m.revision is None and m.path is None and m.prepare is None]


def served_commit(m: ModelConfig) -> tuple[None, str]:
    return None, f"served by {m.servers[0]}, whose /v1/models reports no revision"


def local_backend(m: ModelConfig):
    return server_backend(m) if m.server else get_engine(model_spec(m)[0])


_SERVERS: dict[ServerSpec, tuple[ServerBackend, dict]] = {}


def server_backend(m: ModelConfig) -> ServerBackend:
    """One client per server model for the process, checked once (GET /models) when first made."""
    key = m.api_key_env
    if key is not None and not os.environ.get(key):
        raise ServerError(f"model {m.id}: api_key_env names {key}, which is not set in the environment "
                          f"(the API key for {m.servers[0]})")
    spec = ServerSpec(urls=m.servers, model=m.id, api_key=os.environ[key] if key else None, timeout_s=m.timeout_s)
    if spec not in _SERVERS:
        backend = ServerBackend(spec)
        _SERVERS[spec] = backend, backend.check()
    return _SERVERS[spec][0]


def server_info(m: ModelConfig) -> dict:
    """What the servers report about the model: {"id", "root", "max_model_len"}."""
    backend = server_backend(m)
    return _SERVERS[backend.spec][1]


def backend_settings(m: ModelConfig) -> dict:
    """The manifest's record of where a model ran: {"engine": vLLM settings and device} in this process,
    {"server": what the server reports} for a model on a server."""
    if not m.server:
        return {"engine": engine_settings(m)}
    info = dict(server_info(m))
    root = info["root"] or ""
    if os.path.isabs(root) or root.startswith("~"):  # a folder of the server's machine: its name only
        info["root"] = ".../" + os.path.basename(root.rstrip("/"))
    return {"server": info}


class ExecutorError(PersonaError, ValueError):
    """A bad --executor / --replicas, or executor 'ray' without the ray extra."""


_POOLS: dict = {}


def ray_pool_for(m: ModelConfig, cfg: ExecutorConfig):
    """One RayPool per model for the whole process, like get_engine: a different model releases the
    previous pool's replicas (and their GPUs) first."""
    try:
        from .ray_backend import RayPool  # ray is an optional extra: imported only when asked for
    except ImportError as e:
        raise ExecutorError(f"executor 'ray' needs the ray extra: pip install -e '.[ray]' ({e})") from e

    spec = model_spec(m)[0]
    if spec not in _POOLS:
        for old in list(_POOLS):
            _POOLS.pop(old).close()
        _POOLS[spec] = RayPool(spec, cfg.replicas, cfg.address, cfg.timeout_s)
    return _POOLS[spec]


def backend_for_recipe(recipe: Recipe) -> Callable[[ModelConfig], Backend]:
    """The recipe's [executor]: `model config -> Backend`. The Ray pool takes whole batches, one durable
    chunk per call, spread over its replicas (see `Chunked`)."""
    if recipe.executor.kind == "ray":  # a model with a server is served by it, not by a replica
        return lambda m: local_backend(m) if m.server else Chunked(ray_pool_for(m, recipe.executor), recipe.output.chunk_size)
    return local_backend


def with_executor(recipe: Recipe, kind: str | None = None, address: str | None = None,
                  replicas: int | None = None) -> Recipe:
    """Command-line overrides of [executor]. The recipe text (fingerprint, work folder, manifest) is
    unchanged: where requests run must not change what the dataset is."""
    if kind is not None and kind not in ("local", "ray"):
        raise ExecutorError(f"--executor {kind!r} is not 'local' or 'ray'")
    if replicas is not None and int(replicas) < 1:
        raise ExecutorError(f"--replicas must be >= 1, got {replicas}")
    changes = {k: v for k, v in (("kind", kind), ("address", address),
                                 ("replicas", None if replicas is None else int(replicas))) if v is not None}
    if address is not None and kind is None:
        changes["kind"] = "ray"  # an address only means something for Ray
    return dataclasses.replace(recipe, executor=dataclasses.replace(recipe.executor, **changes)) if changes else recipe


def serve_command_for(m: ModelConfig, path: str | None = None, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """The `vllm` server command for recipe model `m` (weights from `path`, default its Hub id at its
    revision), serving it under the recipe's id with this machine's engine settings."""
    spec = ModelSpec(path=path or m.id, revision=None if path else m.revision, dtype=m.dtype,
                     max_model_len=m.max_model_len, tensor_parallel_size=m.tensor_parallel_size,
                     kv_cache_gib=m.kv_cache_gib, enforce_eager=m.enforce_eager,
                     enable_chunked_prefill=m.enable_chunked_prefill, max_num_batched_tokens=m.max_num_batched_tokens)
    return serve_command(spec, m.id, host, port, device())


if __name__ == "__main__":  # python -m builder.backends RECIPE MODEL [PATH] [PORT]: print the server command
    import shlex
    import sys

    from .recipe import load_recipe
    recipe_path, name, *rest = sys.argv[1:]
    print(shlex.join(serve_command_for(load_recipe(recipe_path).models[name], rest[0] if rest else None,
                                       port=int(rest[1]) if len(rest) > 1 else 8000)))
