"""The rehearsal's engine double: a Backend that answers every request at once with deterministic,
schema-valid placeholder text, so `make bench` can run the real pipeline at paper size (317,200 pairs)
and measure only our own code: asks, request ids, the store, flows, pandas, shards.

It lives in bench/, outside the installed packages: `persona build` cannot select it. A store it
answered is flagged (builder.runner REHEARSAL) and refused by real builds; the manifest of a build made
with it says "rehearsal" and `persona publish` refuses it.
"""
from __future__ import annotations

import hashlib
import json

from generation.backends import ChatRequest, Result


def _words(seed: str, n: int) -> str:
    h = hashlib.blake2b(seed.encode(), digest_size=16).hexdigest()
    return " ".join(f"w{h[i % 32]}{h[(i * 7) % 32]}" for i in range(n))


def instance(schema: dict, seed: str):
    """The first value that fits `schema` (the subset generation.schema.validate accepts)."""
    if "enum" in schema:
        return schema["enum"][int(hashlib.blake2b(seed.encode(), digest_size=4).hexdigest(), 16) % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return {k: instance(v, f"{seed}.{k}") for k, v in schema.get("properties", {}).items()}
    if kind == "string":
        text = _words(seed, 6)[: schema.get("maxLength", 60)]
        return text if len(text.strip()) >= schema.get("minLength", 0) else "x" * schema["minLength"]
    if kind == "boolean":
        return True  # e.g. the judge's "consistent" and the classifier's "controversial": keep the flow moving
    if kind in ("integer", "number"):
        return max(0, schema.get("minimum", 0))
    raise ValueError(f"engine double: unsupported schema {schema}")


def answer(req: ChatRequest) -> str:
    if req.schema is not None:
        return json.dumps(instance(req.schema, req.id))
    system = req.messages[0]["content"] if req.messages[0]["role"] == "system" else ""
    body = _words(req.id + str(req.seed), 40)
    if "SUGGESTIONS:" in system:
        return f"EVALUATION: {body}\nSUGGESTIONS: {_words(req.id, 20)}"
    if "REVISED PREFERENCE:" in system:
        return f"REVISED PREFERENCE: {body}"
    return body


class Double:
    """Backend contract of generation.backends (submit / poll / capacity), answered in-process."""
    rehearsal = True
    capacity = 4096

    def __init__(self):
        self.done: list[Result] = []
        self.answered = 0

    def submit(self, requests: list[ChatRequest]) -> None:
        for req in requests:
            text = answer(req)
            prompt = sum(len(m["content"]) for m in req.messages) // 4  # ~4 characters per token
            self.done.append(Result(id=req.id, text=text, prompt_tokens=prompt, output_tokens=len(text.split()),
                                    finish_reason="stop"))
        self.answered += len(requests)

    def poll(self) -> list[Result]:
        done, self.done = self.done, []
        return done
