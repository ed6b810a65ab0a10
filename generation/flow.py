"""What a stage sees of the models: it asks (`Ask`) and gets answers (`Outcome`), one record's dependent
calls written as a `Flow` that yields `Need`s, all run by the `Run` it was given. No model, seed, store or
backend appears here; how the runner turns this into requests is docs/architecture.md ("The streaming loop").
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol


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


class Run(Protocol):
    """How stages reach a model (builder.runner.StoreRunner; in tests the same runner over a scripted
    backend): `run.flows(flows, desc)` -> each flow's return value, in order; `run(role, asks, parse)`
    -> {ask.key: Outcome} for asks that depend on nothing.

    `parse(text)` returns the value or raises ValueError with a short reason; a failing answer is
    retried with a new derived seed, then recorded as a reject. Results are durable: asking again
    returns the stored outcome without calling the model.
    """
    def __call__(self, role: str, asks: list[Ask], parse: Callable[[str], Any] | None = None) -> dict[str, Outcome]: ...

    def flows(self, flows: list[Flow], desc: str = "") -> list: ...
