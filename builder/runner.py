"""The builder's side of `generation.flow.Run`: turns a stage's Asks into seeded chat requests for
the role's model, answers what the store already holds, sends the rest to a Backend in durable
chunks, retries unusable outputs with a new derived seed, and records rejects with their raw text."""
from __future__ import annotations

import contextlib
import dataclasses
import heapq
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from generation.backends import PROMPT_TOO_LONG, Backend, ChatRequest, Result
from generation.flow import Ask, Flow, Need, Outcome
from generation.ids import derive_seed, stable_id
from generation.log import log

from .backends import engine_fingerprint
from .recipe import ModelConfig, OutputConfig, Recipe, RoleConfig
from .store import RequestStore, Stored, StoreError


@dataclass(frozen=True)
class RunnerConfig:
    """The part of a recipe the runner reads: the seed, each role's model and sampling, the chunking.
    A build takes it from its recipe; `persona eval` makes its own for its two roles."""
    seed: int
    models: dict[str, ModelConfig]
    roles: dict[str, RoleConfig]
    # the recipe's [output] defaults (builder.recipe.OutputConfig says what each means)
    chunk_size: int = OutputConfig.chunk_size
    max_attempts: int = OutputConfig.max_attempts
    truncated: str = OutputConfig.truncated

    @classmethod
    def from_recipe(cls, r: Recipe) -> RunnerConfig:
        return cls(r.seed, r.models, r.roles, r.output.chunk_size, r.output.max_attempts, r.output.truncated)

    def model_for(self, role: str) -> ModelConfig:
        return self.models[self.roles[role].model]

    def attempts(self, role: str) -> int:
        """How many tries one answer of `role` gets: the role's max_attempts, else output.max_attempts."""
        return self.roles[role].max_attempts or self.max_attempts


def request_for(cfg: RunnerConfig, role: str, ask: Ask, model_revision: str | None, attempt: int = 0) -> ChatRequest:
    """The request id hashes everything that determines the answer: role, model + revision, the engine
    (builder.backends.engine_fingerprint: dtype, quantization, tensor parallelism, max_model_len, vLLM),
    messages, sampling params, schema and seed (retries get a seed derived from the first)."""
    model = cfg.model_for(role)
    sampling = cfg.roles[role].sampling()
    if ask.max_tokens is not None:
        sampling["max_tokens"] = ask.max_tokens
    seed = derive_seed(cfg.seed, role, ask.key)
    messages = with_system(ask.messages, cfg.roles[role].system)
    base_id = stable_id(role, model.id, model_revision, engine_fingerprint(model), messages, sampling,
                        ask.schema, seed, n=32)
    if attempt:
        seed = derive_seed(seed, "retry", attempt)
    return ChatRequest(id=base_id, messages=messages, seed=seed, schema=ask.schema, **sampling)


def with_system(messages: list, system: str | None) -> list:
    """The role's recipe `system` text appended to the stage's system message (so a persona-first prefix
    stays first), or a system message of its own before the rest; no text: the messages unchanged."""
    if system is None:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{system}"}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


class StoreRunner:
    """`run(role, asks, parse) -> {key: Outcome}` and `run.flows(flows) -> results`, backed by a
    RequestStore and a Backend per model.

    `backend_for(model_config)` returns the Backend that serves that model (the local vLLM engine, a
    server, or the Ray pool); it is only called when something is not stored yet.
    """

    def __init__(self, cfg: RunnerConfig, store: RequestStore, backend_for: Callable[[ModelConfig], Backend],
                 revisions: dict[str, str | None], commit_s: float = 5.0):
        self.cfg = cfg
        self.store = store
        self.backend_for = backend_for
        self.revisions = revisions  # model name -> resolved revision
        self.commit_s = commit_s    # answers are committed every chunk_size answers or commit_s seconds
        self.backends: dict[str, Backend] = {}  # model name -> backend, once asked for
        self.stats: dict[str, dict] = defaultdict(lambda: {"requests": 0, "ok": 0, "rejects": Counter(),
                                                           "prompt_tokens": 0, "output_tokens": 0,
                                                           "retries": 0, "retry_output_tokens": 0,
                                                           "truncated_kept": 0})

    def __call__(self, role: str, asks: list[Ask], parse: Callable[[str], Any] | None = None) -> dict[str, Outcome]:
        keys = [a.key for a in asks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{role}: duplicate ask keys")
        return dict(zip(keys, self.flows([_one(Need(role, a, parse)) for a in asks], role)))

    def flows(self, flows: list[Flow], desc: str = "") -> list:
        """Run `flows` (see generation.flow.Flow) and return their results in order. At most
        `window` flows are open at once, admitted in the given order, so the requests in flight come
        from neighbouring records (a stage orders its records so that neighbours share a prompt prefix)."""
        return _Loop(self, flows, desc).run()

    def request(self, need: Need, attempt: int = 0) -> ChatRequest:
        role = need.role
        return request_for(self.cfg, role, need.ask, self.revisions.get(self.cfg.roles[role].model), attempt)

    def backend(self, model: str) -> Backend:
        # only one model has requests out at a time (see _Loop.send); letting go of the others lets
        # get_engine free the previous engine instead of this runner keeping it alive
        if model not in self.backends:
            backend = self.backend_for(self.cfg.models[model])
            _check_rehearsal(self.store, backend)
            if hasattr(backend, "check_recorded"):  # a server: the stored answers and the new ones, the same weights
                backend.check_recorded(self.store)
            self.backends = {model: backend}
        return self.backends[model]

    def count(self, s: Stored) -> None:
        st = self.stats[s.role]
        st["requests"] += 1
        st["ok"] += s.ok
        st["prompt_tokens"] += s.prompt_tokens
        st["output_tokens"] += s.output_tokens
        st["retries"] += s.attempts - 1
        st["retry_output_tokens"] += s.retry_output_tokens  # decoded, then thrown away by a retry
        st["truncated_kept"] += s.ok and s.finish_reason == "length"
        if not s.ok:
            st["rejects"][reason_category(s.reason)] += 1

    def summary(self) -> dict:
        return {role: {**s, "rejects": dict(sorted(s["rejects"].items()))} for role, s in sorted(self.stats.items())}


def reason_category(reason: str | None) -> str:
    """Rejects are counted by a stable category, the text before the first ':' of the parse error
    (e.g. "schema: missing key 'age'" -> "schema"); the full reason stays in the store."""
    return (reason or "unknown").split(":", 1)[0].strip()[:80]


REHEARSAL = "rehearsal"  # store flag: answers came from the benchmark's engine double (bench/double.py)


def _check_rehearsal(store: RequestStore, backend) -> None:
    """A store answered by the engine double never feeds a real build, and the double never writes into
    a real build's store: its placeholder texts would pass for model answers."""
    double = bool(getattr(backend, REHEARSAL, False))
    marked = store.flag(REHEARSAL) is not None
    if double and not marked:
        if store.count():
            raise StoreError(f"request store {store.path} holds real answers: the engine double may not add to it")
        store.set_flag(REHEARSAL, "engine double")
    elif marked and not double:
        raise StoreError(f"request store {store.path} holds answers of the rehearsal's engine double, not of a "
                         "model; use another work folder for a real build")


def _one(need: Need) -> Flow:
    return (yield need)


class _Pending(NamedTuple):
    need: Need
    request: ChatRequest        # the attempt to send next
    attempt: int                # 0-based
    wasted: int = 0             # output tokens of the attempts before this one (stored as retry_output_tokens)


class _Loop:
    """One `StoreRunner.flows` call. Single-threaded: admit flows, look their needs up in the store,
    keep each model's backend `capacity` requests busy, and as answers arrive check them (retry with a
    derived seed or a larger token budget, or reject), commit them in small transactions and resume
    the flows waiting for them."""

    def __init__(self, runner: StoreRunner, flows: list[Flow], desc: str):
        self.r, self.flows = runner, flows
        self.results: list = [None] * len(flows)
        self.ready: deque[tuple[int, Any]] = deque()          # (flow, value to send) to resume
        self.waiting: dict[str, list[int]] = {}               # request id -> flows waiting for it
        self.queued: dict[str, list] = defaultdict(list)      # model -> heap of (flow, seq, _Pending)
        self.sent: dict[str, _Pending] = {}                   # request id -> what is at a backend
        self.in_flight: Counter = Counter()                   # model -> requests at its backend
        self.buffer: dict[str, Stored] = {}                   # answered, not yet committed
        self.counted: set[str] = set()
        self.reparse_failed = 0                               # stored answers today's parser rejects
        self.seq = 0
        self.admitted = self.open = self.done = 0
        self.last_commit = time.monotonic()
        self.bar = tqdm(total=len(flows), desc=desc or "requests", unit="rec", dynamic_ncols=True,
                        disable=None if flows else True)
        self.out_tokens, self.t0 = 0, time.monotonic()

    @property
    def window(self) -> int:
        return max(4 * sum(self.r.backend(m).capacity for m in self.r.backends) if self.r.backends else 0, 1024)

    def run(self) -> list:
        try:
            while True:
                self.admit()
                self.resume()
                if self.sent or any(self.queued.values()):
                    self.send()
                    self.receive()
                elif not self.ready and self.admitted == len(self.flows):
                    break
            self.commit()
            if self.reparse_failed:
                log.warning(f"{self.reparse_failed:,} stored answer(s) of {self.r.store.path} failed today's parser: "
                            f"each was asked again with its next derived seed, or rejected after "
                            f"its role's max_attempts (the reason is in the store and the rejects)")
        except Exception:
            # a backend that gave up (a server gone for good): the answers already checked are valid, keep them
            with contextlib.suppress(Exception):
                self.commit()
            raise
        finally:
            self.bar.close()
        return self.results

    # ---- flows
    def admit(self) -> None:
        while self.admitted < len(self.flows) and self.open < self.window:
            self.ready.append((self.admitted, None))
            self.admitted += 1
            self.open += 1

    def resume(self) -> None:
        """Advance ready flows; look their new needs up (one store query for all of them)."""
        while self.ready:
            needs: dict[str, tuple[ChatRequest, Need, list[int]]] = {}
            while self.ready:
                i, value = self.ready.popleft()
                try:
                    need = self.flows[i].send(value)
                except StopIteration as stop:
                    self.results[i] = stop.value
                    self.open -= 1
                    self.done += 1
                    self.bar.update()
                    continue
                req = self.r.request(need)
                if req.id in self.waiting:       # already asked for by another flow
                    self.waiting[req.id].append(i)
                elif req.id in self.buffer:
                    self.ready.append((i, self.outcome(need, self.buffer[req.id])))
                else:
                    needs.setdefault(req.id, (req, need, []))[2].append(i)
            stored = self.r.store.get_many(list(needs)) if needs else {}
            for rid, (req, need, idx) in needs.items():
                if rid in stored:
                    self.reuse(need, stored[rid], idx)
                else:
                    self.waiting[rid] = idx
                    self.queue(_Pending(need, req, 0), min(idx))

    def reuse(self, need: Need, s: Stored, idx: list[int]) -> None:
        """Hand a stored answer to the flows waiting for it. Its text is parsed again (parsing is
        deterministic, but the parser may have changed since it was stored): one today's parser rejects
        is handled as a fresh parse failure would be, a retry with the next derived seed, or a reject
        with the reason once its attempts are used up; the new outcome then replaces the stored row."""
        value = None
        if s.ok:
            try:
                value = (need.parse or _text)(s.text)
            except ValueError as e:
                reason = _reason(e)
                self.reparse_failed += 1
                self.r.store.supersede(s.request_id)
                if s.attempts < self.r.cfg.attempts(need.role):
                    self.waiting[s.request_id] = idx
                    self.queue(_Pending(need, self.r.request(need, s.attempts), s.attempts), min(idx))
                    return
                s = dataclasses.replace(s, ok=False, reason=reason)
                self.buffer[s.request_id] = s
        self.account(s)
        self.ready.extend((i, self.outcome(need, s, value)) for i in idx)

    def queue(self, p: _Pending, flow: int) -> None:
        self.seq += 1
        heapq.heappush(self.queued[self.r.cfg.roles[p.need.role].model], (flow, self.seq, p))

    def outcome(self, need: Need, s: Stored, value: Any = None) -> Outcome:
        if s.ok and value is None:  # a buffered answer, parsed when it arrived: parse it again (deterministic)
            value = (need.parse or _text)(s.text)
        return Outcome(key=need.ask.key, ok=s.ok, value=value, text=s.text, reason=s.reason, attempts=s.attempts,
                       prompt_tokens=s.prompt_tokens, output_tokens=s.output_tokens)

    def account(self, s: Stored) -> None:
        if s.request_id not in self.counted:
            self.counted.add(s.request_id)
            self.r.count(s)

    # ---- backends
    def send(self) -> None:
        """Top every model's backend up to its capacity, lowest flow first. With several models, only
        one has requests out at a time: a local engine holds one model (get_engine swaps them)."""
        busy = [m for m in self.in_flight if self.in_flight[m]]
        for model, heap in self.queued.items():
            if not heap or (busy and model not in busy):
                continue
            backend = self.r.backend(model)
            batch = []
            while heap and self.in_flight[model] + len(batch) < backend.capacity:
                batch.append(heapq.heappop(heap)[2])
            if batch:
                for p in batch:
                    self.sent[p.request.id] = p
                backend.submit([p.request for p in batch])
                self.in_flight[model] += len(batch)
            busy = busy or [model]

    def receive(self) -> None:
        for model in [m for m in self.in_flight if self.in_flight[m]]:
            for res in self.r.backend(model).poll():
                self.in_flight[model] -= 1
                self.check(self.sent.pop(res.id), res)
        if len(self.buffer) >= self.r.cfg.chunk_size or time.monotonic() - self.last_commit >= self.r.commit_s:
            self.commit()

    def check(self, p: _Pending, res: Result) -> None:
        """A usable answer, a retry (new derived seed; a truncated answer also a larger budget), or a reject."""
        need, req = p.need, p.request
        model = self.r.cfg.model_for(need.role)
        self.out_tokens += res.output_tokens
        reason, retry, value = None, None, None
        if res.finish_reason == PROMPT_TOO_LONG:  # another seed cannot fix this: no retry
            reason = f"prompt_too_long: {res.prompt_tokens} tokens do not fit max_model_len"
        elif res.finish_reason == "length" and self.r.cfg.truncated == "retry":
            room = model.max_model_len - res.prompt_tokens - 1
            bigger = min(2 * req.max_tokens, room)
            reason = f"truncated: the answer stopped at max_tokens={req.max_tokens}"
            if bigger > req.max_tokens:
                retry = dataclasses.replace(req, max_tokens=bigger)  # same seed: the same start, continued
        else:
            try:
                value = (need.parse or _text)(res.text)
            except ValueError as e:
                reason = _reason(e)
                # the next attempt's seed, keeping a budget a truncation retry may have raised
                retry = dataclasses.replace(self.r.request(need, p.attempt + 1), max_tokens=req.max_tokens)
        if reason is not None and retry is not None and p.attempt + 1 < self.r.cfg.attempts(need.role):
            self.queue(_Pending(need, retry, p.attempt + 1, p.wasted + res.output_tokens), min(self.waiting[req.id]))
            return
        s = Stored(req.id, need.role, need.ask.key, reason is None, res.text, reason, p.attempt + 1,
                   res.prompt_tokens, res.output_tokens, res.cached_tokens, res.finish_reason, p.wasted)
        self.buffer[s.request_id] = s
        self.account(s)
        out = self.outcome(need, s, value)
        self.ready.extend((i, out) for i in self.waiting.pop(req.id))
        self.bar.set_postfix_str(f"{self.out_tokens / max(time.monotonic() - self.t0, 1e-9):,.0f} out tok/s",
                                 refresh=False)

    def commit(self) -> None:
        if self.buffer:
            self.r.store.put_many(list(self.buffer.values()))
            self.buffer.clear()
        self.last_commit = time.monotonic()


def _text(text: str) -> str:
    return text


def _reason(e: ValueError) -> str:
    return (str(e).strip() or type(e).__name__)[:300]
