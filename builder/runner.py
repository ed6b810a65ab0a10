"""The builder's side of `generation.engine.Run`: turns a stage's Asks into seeded chat requests for
the role's model, answers what the store already holds, sends the rest to a Backend in durable
chunks, retries unusable outputs with a new derived seed, and records rejects with their raw text."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from generation.engine import PROMPT_TOO_LONG, Ask, Backend, ChatRequest, Outcome, prefix_key
from generation.ids import derive_seed, stable_id

from .recipe import ModelConfig, Recipe, RoleConfig
from .store import RequestStore, Stored


@dataclass(frozen=True)
class RunnerConfig:
    """The part of a recipe the runner reads: the seed, each role's model and sampling, the chunking.
    A build takes it from its recipe; `persona eval` makes its own for its two roles."""
    seed: int
    models: dict[str, ModelConfig]
    roles: dict[str, RoleConfig]
    chunk_size: int = 128            # requests per durable chunk
    max_attempts: int = 3            # tries for an unusable output before it is a reject

    @classmethod
    def from_recipe(cls, r: Recipe) -> RunnerConfig:
        return cls(r.seed, r.models, r.roles, r.output.chunk_size, r.output.max_attempts)

    def model_for(self, role: str) -> ModelConfig:
        return self.models[self.roles[role].model]


def request_for(cfg: RunnerConfig, role: str, ask: Ask, model_revision: str | None, attempt: int = 0) -> ChatRequest:
    """The request id hashes everything that determines the answer: role, model + revision,
    messages, sampling params, schema and seed (retries get a seed derived from the first)."""
    model = cfg.model_for(role)
    sampling = cfg.roles[role].sampling()
    if ask.max_tokens is not None:
        sampling["max_tokens"] = ask.max_tokens
    seed = derive_seed(cfg.seed, role, ask.key)
    base_id = stable_id(role, model.id, model_revision, ask.messages, sampling, ask.schema, seed, n=32)
    if attempt:
        seed = derive_seed(seed, "retry", attempt)
    return ChatRequest(id=base_id, messages=ask.messages, seed=seed, schema=ask.schema, **sampling)


class StoreRunner:
    """`run(role, asks, parse) -> {key: Outcome}` backed by a RequestStore and a Backend.

    `backend_for(model_config)` returns the Backend that serves that model (the local vLLM engine,
    or the Ray pool); it is only called when something is not stored yet.
    """

    def __init__(self, cfg: RunnerConfig, store: RequestStore, backend_for: Callable[[ModelConfig], Backend],
                 revisions: dict[str, str | None]):
        self.cfg = cfg
        self.store = store
        self.backend_for = backend_for
        self.revisions = revisions  # model name -> resolved revision
        self.stats: dict[str, dict] = defaultdict(lambda: {"requests": 0, "ok": 0, "rejects": Counter(),
                                                           "prompt_tokens": 0, "output_tokens": 0})

    def __call__(self, role: str, asks: list[Ask], parse: Callable[[str], Any] | None = None) -> dict[str, Outcome]:
        parse = parse or (lambda text: text)
        keys = [a.key for a in asks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{role}: duplicate ask keys")
        revision = self.revisions.get(self.cfg.roles[role].model)
        reqs = {a.key: request_for(self.cfg, role, a, revision) for a in asks}
        stored = self.store.get_many([r.id for r in reqs.values()])
        todo = sorted((a for a in asks if reqs[a.key].id not in stored), key=lambda a: prefix_key(reqs[a.key]))
        if todo:
            backend = self.backend_for(self.cfg.model_for(role))
            chunks = range(0, len(todo), self.cfg.chunk_size)
            for i in tqdm(chunks, desc=f"{role} ({len(todo)} requests, {len(asks) - len(todo)} stored)", unit="chunk"):
                rows = self._answer(role, todo[i:i + self.cfg.chunk_size], parse, backend, revision)
                self.store.put_many(rows)
                stored.update((r.request_id, r) for r in rows)
        out = {}
        st = self.stats[role]
        for a in asks:
            s = stored[reqs[a.key].id]
            value = parse(s.text) if s.ok else None
            out[a.key] = Outcome(key=a.key, ok=s.ok, value=value, text=s.text, reason=s.reason, attempts=s.attempts,
                                 prompt_tokens=s.prompt_tokens, output_tokens=s.output_tokens)
            st["requests"] += 1
            st["ok"] += s.ok
            st["prompt_tokens"] += s.prompt_tokens
            st["output_tokens"] += s.output_tokens
            if not s.ok:
                st["rejects"][reason_category(s.reason)] += 1
        return out

    def _answer(self, role, asks, parse, backend: Backend, revision) -> list[Stored]:
        done: dict[str, Stored] = {}
        pending = list(asks)
        for attempt in range(self.cfg.max_attempts):
            reqs = [request_for(self.cfg, role, a, revision, attempt) for a in pending]
            results = backend.generate(reqs)
            retry = []
            for a, req, res in zip(pending, reqs, results):
                reason = None
                if res.finish_reason == PROMPT_TOO_LONG:  # another seed cannot fix this: no retry
                    reason = f"prompt_too_long: {res.prompt_tokens} tokens do not fit max_model_len"
                else:
                    try:
                        parse(res.text)
                    except ValueError as e:
                        reason = (str(e).strip() or type(e).__name__)[:300]
                if reason is not None and attempt + 1 < self.cfg.max_attempts and res.finish_reason != PROMPT_TOO_LONG:
                    retry.append(a)
                    continue
                done[a.key] = Stored(req.id, role, a.key, reason is None, res.text, reason, attempt + 1,
                                     res.prompt_tokens, res.output_tokens, res.cached_tokens, res.finish_reason)
            pending = retry
            if not pending:
                break
        return [done[a.key] for a in asks]

    def summary(self) -> dict:
        return {role: {**s, "rejects": dict(sorted(s["rejects"].items()))} for role, s in sorted(self.stats.items())}


def reason_category(reason: str | None) -> str:
    """Rejects are counted by a stable category, the text before the first ':' of the parse error
    (e.g. "schema: missing key 'age'" -> "schema"); the full reason stays in the store."""
    return (reason or "unknown").split(":", 1)[0].strip()[:80]
