"""Where generation requests run: in this process on one vLLM engine (local), or on Ray replicas."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from generation.engine import Backend, Chunked, ModelSpec, device, engine_args, get_engine
from generation.errors import PersonaError
from generation.log import log
from generation.models import hub_commit, resolve_model, unpinned_warning

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
    revisions = {name: model_spec(m)[1] for name, m in recipe.models.items()}
    for line in unpinned_warnings(recipe.models, pin):
        log.warning(line)
    return revisions


def recipe_pin(name: str) -> str:
    return f'revision = "<commit>" under [models.{name}] of the recipe'


def unpinned_warnings(models: dict[str, ModelConfig], pin: Callable[[str], str] | None = None) -> list[str]:
    """One WARNING line per Hub model without a revision (local folders are pinned by their digest)."""
    return [unpinned_warning(m.id, *hub_commit(m.id), (pin or recipe_pin)(name))
            for name, m in models.items() if m.revision is None and m.path is None and m.prepare is None]


def local_backend(m: ModelConfig):
    return get_engine(model_spec(m)[0])


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
    if recipe.executor.kind == "ray":
        return lambda m: Chunked(ray_pool_for(m, recipe.executor), recipe.output.chunk_size)
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
