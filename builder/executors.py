"""Where generation requests run: in this process on one vLLM engine (local), or on Ray replicas."""
from __future__ import annotations

from generation.engine import ModelSpec, get_engine
from generation.models import resolve_model

from .recipe import ModelConfig, Recipe


def model_spec(m: ModelConfig) -> tuple[ModelSpec, str | None]:
    path, revision = resolve_model(m.id, m.revision, m.path, m.prepare)
    spec = ModelSpec(path=path, revision=m.revision if path == m.id else None, dtype=m.dtype,
                     max_model_len=m.max_model_len, tensor_parallel_size=m.tensor_parallel_size,
                     kv_cache_gib=m.kv_cache_gib, enforce_eager=m.enforce_eager)
    return spec, revision


def resolve_revisions(recipe: Recipe) -> dict[str, str | None]:
    """Model name -> the revision recorded in request ids and the manifest (prepares local models)."""
    return {name: model_spec(m)[1] for name, m in recipe.models.items()}


def local_executor_for(m: ModelConfig):
    return get_engine(model_spec(m)[0])
