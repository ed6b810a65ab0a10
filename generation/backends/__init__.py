"""Where chat requests run. The contract every backend implements (`Backend`: submit / poll / capacity)
and the types it speaks (`ChatRequest` in, `Result` out) are here; the backends are this package's
modules: `engine` (vLLM in this process) and `server` (OpenAI-compatible servers: `vllm serve`, or a Ray
Serve LLM app from `persona serve`, builder/serve.py). Why they live here and how the runner drives them:
docs/architecture.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol


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
    (generation.backends.server: `vllm serve`, or a Ray Serve LLM app from `persona serve`).

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


PROMPT_TOO_LONG = "prompt_too_long"
# vLLM 0.32's refusals of a prompt that does not fit max_model_len (VLLMValidationError, raised by the chat
# renderer or the input processor; the server answers HTTP 400 with the same text). Behind Ray Serve LLM a
# prompt that leaves no room for one output token arrives as "max_tokens must be at least 1, got 0": the
# server cut our max_tokens to the context left (every request asks for >= 1: the recipe checks it).
TOO_LONG = re.compile(r"maximum (context|model) length|max_tokens must be at least 1, got (0|-[0-9]+)\b")
