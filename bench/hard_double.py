"""The hard engine double: like bench/double.py a Backend outside the installed packages (a store it
answered is flagged and refused by real builds), but shaped like a 70B instruct model instead of kind:

- answers are deterministic per request, drawn from (request id, seed) only, never from arrival order;
  a truncation retry (same seed, larger max_tokens) gets the same answer, continued;
- lengths in real tokenizer tokens: Mistral's Tekken tokenizer (131k BPE, tiktoken-based; the file
  ships inside the `mistral_common` package that vLLM installs, so it is there offline). Texts are
  built from whole-word tokens of its vocabulary (frequent words first), so an answer of n tokens
  re-encodes to n tokens; lengths per role are heavy-tailed (lognormal, plus answers that never stop);
- faults, each seeded per request and COUNTED by role and kind: answers cut at max_tokens (finish
  "length"), prompts over max_model_len (finish PROMPT_TOO_LONG, as the server backend reports them),
  unparseable JSON, schema-breaking JSON, headers left out, empty answers, revisions identical to the
  answer, and judge / classifier answers saying no (replacement rounds, fewer prompts);
- latency: `slots` sequences run at once (a 72B AWQ KV cache holds ~60-90); each request's service
  time is prefill + decode at per-sequence rates with lognormal noise and rare stalls, times
  `time_scale` (scaled down so a paper-size rehearsal fits in minutes). Requests queue FIFO for a slot.

`expected()` turns the counts into what the build's manifest must report (requests, ok, retries,
rejects by category and tokens per role; the personas, prompts and pairs stages' "no" counts): the
fault kinds are named by the reject category our parsers give them (builder.runner.reason_category).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import random
import re
import time
from collections import Counter, defaultdict
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from generation.backends import PROMPT_TOO_LONG, ChatRequest, Result
from generation.pairs import CRITIC_INSTRUCTION, REVISER_INSTRUCTION
from generation.personas.enrich import FILLER_SYSTEM
from generation.personas.judge import JUDGE_SYSTEM
from generation.prompts import CLASSIFY_SYSTEM, TOPICS

# per role: median answer tokens, lognormal sigma (the tail past max_tokens), share of answers that never stop
LENGTHS = {"responder": (350, 0.45, 0.002), "critic": (150, 0.55, 0.001), "reviser": (450, 0.40, 0.002),
           "persona_filler": (0, 0, 0.002), "consistency_judge": (0, 0, 0.001), "prompt_classifier": (0, 0, 0.001)}
# per role: probability of each injected fault, named by the reject category our parsers give it
FAULTS = {
    "responder": {"empty answer": 0.002},
    "critic": {"missing SUGGESTIONS": 0.01},
    "reviser": {"missing REVISED PREFERENCE": 0.008, "identical": 0.01},
    "persona_filler": {"invalid JSON": 0.02, "$": 0.02},          # "$: missing lifestyle"
    "consistency_judge": {"invalid JSON": 0.01, "$": 0.01, "no": 0.15},
    "prompt_classifier": {"not json": 0.01, "unknown topic": 0.01, "no": 0.5},
}
TOO_LONG = 0.002         # share of requests whose prompt is over max_model_len (a pasted document)
CHAT_TOKENS = (3, 5)     # chat template tokens: per conversation, per message (Qwen's <|im_start|>role\n ... <|im_end|>\n)
# simulated engine: per-sequence decode and prefill rates of a 72B AWQ model on one H100 at ~64 sequences
DECODE_TOK_S, PREFILL_TOK_S, STALL = 25.0, 2500.0, 0.002


def tekken_path() -> str:
    import mistral_common
    return os.path.join(os.path.dirname(mistral_common.__file__), "data", "tekken_240911.json")


POOL_TOKENS = 4_000_000  # answers are slices of one seeded stream of prose (fast, and deterministic)


@lru_cache(maxsize=2)
def _vocab(corpus: str):
    """(tokenizer, a stream of POOL_TOKENS token ids of prose, a map id -> id of the capitalised word).

    The words are those of `corpus` (a JSON list of texts: the PRISM prompts, real people's English)
    that are one Tekken token with their leading space, drawn with their frequency in it; about one
    token in eight is a comma or a full stop, and a word after a full stop is capitalised."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    enc = Tekkenizer.from_file(tekken_path())._model  # a tiktoken Encoding
    with open(corpus) as f:
        counts = Counter(w for text in json.load(f) for w in re.findall(r"[a-z]{2,14}", text.lower()))
    words, freq = [], []
    for w, c in counts.most_common(6000):
        ids = enc.encode_ordinary(" " + w)
        if len(ids) == 1:
            words.append(ids[0])
            freq.append(c)
    words, p = np.array(words), np.array(freq, dtype=float) / sum(freq)
    capmap = np.arange(enc.n_vocab)
    for i in words:
        cap = enc.encode_ordinary(enc.decode([int(i)]).title())
        capmap[i] = cap[0] if len(cap) == 1 else i
    rng = np.random.default_rng(20240725)
    pool = rng.choice(words, size=POOL_TOKENS, p=p)
    marks = rng.random(POOL_TOKENS)
    punct = marks < 0.12
    punct[1:] &= ~punct[:-1]  # never two marks in a row
    [dot], [comma] = enc.encode_ordinary("."), enc.encode_ordinary(",")
    pool = np.where(punct, np.where(marks < 0.07, dot, comma), pool)
    after = np.flatnonzero(pool[:-1] == dot) + 1
    pool[after] = capmap[pool[after]]
    return enc, pool, capmap, dot, comma


def _draws(req: ChatRequest) -> list[float]:
    """Eight uniforms in [0, 1) from (request id, seed) alone."""
    h = hashlib.blake2b(f"{req.id}/{req.seed}".encode(), digest_size=64).digest()
    return [int.from_bytes(h[i:i + 8], "big") / 2**64 for i in range(0, 64, 8)]


_NORMAL = NormalDist()


def _normal(u: float) -> float:
    return _NORMAL.inv_cdf(min(max(u, 1e-12), 1 - 1e-12))


def role_of(req: ChatRequest) -> str:
    system = req.messages[0]["content"] if req.messages[0]["role"] == "system" else None
    if system is None:
        return "responder"
    for role, text in (("persona_filler", FILLER_SYSTEM), ("consistency_judge", JUDGE_SYSTEM),
                       ("prompt_classifier", CLASSIFY_SYSTEM)):
        if system == text:
            return role
    for role, text in (("critic", CRITIC_INSTRUCTION), ("reviser", REVISER_INSTRUCTION)):
        if text[:80] in system:
            return role
    raise ValueError(f"hard double: no role for a request with system message {system[:60]!r}")


class HardDouble:
    """Backend contract of generation.backends (submit / poll / capacity) with `slots` simulated sequences."""
    rehearsal = True  # builder.runner._check_rehearsal: the store is flagged, real builds refuse it

    def __init__(self, corpus, max_model_len: int = 8192, slots: int = 64, time_scale: float = 1 / 400,
                 boost: float = 1.0):
        """`corpus`: a JSON list of English texts (the PRISM prompts) for the words; `boost` multiplies
        every fault's probability except the judge's and classifier's "no" (a small test sees them all)."""
        self.faults_p = {role: {k: p if k == "no" else min(p * boost, 0.3) for k, p in kinds.items()}
                         for role, kinds in FAULTS.items()}
        self.lengths = {role: (m, s, min(never * boost, 0.3)) for role, (m, s, never) in LENGTHS.items()}
        self.too_long = min(TOO_LONG * boost, 0.3)
        self.enc, self.pool, self.capmap, self.dot, comma = _vocab(str(corpus))
        self.marks, [self.the] = (self.dot, comma), self.enc.encode_ordinary(" the")
        self.head = {h: self.enc.encode_ordinary(h) for h in ("EVALUATION:", ".\n", ".\nSUGGESTIONS:", "REVISED PREFERENCE:")}
        self.max_model_len, self.slots, self.time_scale = max_model_len, slots, time_scale
        self.capacity = 2 * slots
        self.free = [0.0] * slots                 # when each slot is next free (time.monotonic)
        self.running: list = []                   # heap of (finish time, seq, Result)
        self.seq = 0
        self.piece_tokens: dict[str, int] = {}    # paragraph -> tokens (prompts share their paragraphs)
        # counts: attempts by (role, kind); per role the final outcome of every request id
        self.attempts: Counter = Counter()
        self.final: dict[str, Counter] = defaultdict(Counter)       # role -> {kind of the last attempt: ids}
        self.tokens: dict[str, Counter] = defaultdict(Counter)      # role -> prompt/output tokens of last attempts
        self.open: dict[str, tuple] = {}          # request id -> (role, kind, prompt, output) of a retried attempt
        self.answered = 0
        self.cpu_s = self.wait_s = self.simulated_s = 0.0

    # ------------------------------------------------------------------------------------ texts
    def prose(self, u: float, n: int) -> list[int]:
        """n token ids of prose from the pool, at an offset given by `u`; ends with a full stop."""
        if n <= 0:
            return []
        n = min(n, len(self.pool) // 2)
        start = int(u * (len(self.pool) - n))
        ids = self.pool[start:start + n].tolist()
        if ids[0] in self.marks:  # a slice starting at a comma
            ids[0] = self.the
        ids[0] = int(self.capmap[ids[0]])
        if n > 2:
            if ids[-2] in self.marks:  # ",." would be one token
                ids[-2] = self.the
            ids[-1] = self.dot
        return ids

    def words_text(self, u: float, n: int) -> str:
        return self.enc.decode(self.prose(u, n)).strip()

    def prompt_tokens(self, req: ChatRequest) -> int:
        """Real-tokenizer count of the chat, paragraph by paragraph, each paragraph encoded once (a
        persona's system message, a question, an answer recur in thousands of prompts). The cache is
        keyed by the paragraph's hash, so it holds no texts."""
        n = CHAT_TOKENS[0]
        cache = self.piece_tokens
        if len(cache) > 500_000:  # bounded: the per-pair paragraphs (critiques) never recur
            cache.clear()
        for m in req.messages:
            parts = m["content"].split("\n\n")
            n += CHAT_TOKENS[1] + len(parts) - 1
            for p in parts:
                c = cache.get(hash(p))
                if c is None:
                    c = cache[hash(p)] = len(self.enc.encode_ordinary(p))
                n += c
        return n

    def answer(self, req: ChatRequest, role: str, u: list[float]) -> tuple[list[int], float, str]:
        """(token ids, tokens the model would write (inf: never stops), fault kind or "")."""
        fault, acc = "", 0.0
        for kind, p in self.faults_p[role].items():
            acc += p
            if u[0] < acc:
                fault = kind
                break
        median, sigma, never = self.lengths[role]
        runaway = u[1] < never
        if role in ("responder", "critic", "reviser"):
            if req.schema is not None:
                raise ValueError("the hard double writes the paper's text format: set pairs.structured = false")
            if role == "reviser":  # a revision is about as long as the answer it rewrites
                answer = req.messages[-1]["content"].split("ANSWER:\n", 1)[-1].split("\n\nCRITIQUE:", 1)[0]
                median = 1.15 * max(self.piece_tokens.get(hash("ANSWER:\n" + answer), 0) - 3, 20)
            n = 2 * self.max_model_len if runaway else max(int(median * math.exp(sigma * _normal(u[2]))), 8)
            body = self.prose(u[3], n)
            if fault == "empty answer":
                return self.enc.encode_ordinary("  \n"), 2, fault
            if role == "critic":
                cut = max(len(body) * 2 // 3, 2)
                for i in (cut - 2, cut):  # ",." or ":," would be one token
                    if i < len(body) and body[i] in self.marks:
                        body[i] = self.the
                mid = self.head[".\n"] if fault else self.head[".\nSUGGESTIONS:"]
                ids = self.head["EVALUATION:"] + body[:cut - 1] + mid + body[cut:]
            elif role == "reviser":
                if fault == "identical":
                    ids = self.enc.encode_ordinary("REVISED PREFERENCE: " + answer)
                else:
                    ids = ([] if fault else self.head["REVISED PREFERENCE:"]) + body
            else:
                ids = body
            return ids, (math.inf if runaway else len(ids)), fault
        rnd = random.Random(u[3])
        value = self.json_value(req, role, rnd, fault)
        text = value if isinstance(value, str) else json.dumps(value)
        if runaway:  # the object never closes
            text = text[:-1] + "".join(f', "note{i}": "{self.words_text(rnd.random(), 12)}"' for i in range(400))
        ids = self.enc.encode_ordinary(text)
        return ids, (math.inf if runaway else len(ids)), fault

    def json_value(self, req: ChatRequest, role: str, rnd: random.Random, fault: str):
        if fault in ("invalid JSON", "not json"):
            return "{" + self.words_text(rnd.random(), 20) + '": true'
        if role == "prompt_classifier":
            topic = "Pets and plants" if fault == "unknown topic" else rnd.choice(TOPICS)
            return {"topic": topic, "controversial": fault != "no"}
        if role == "consistency_judge":
            value = {"reason": self.words_text(rnd.random(), rnd.randrange(12, 30))[:190], "consistent": fault != "no"}
            if fault == "$":
                del value["reason"]
            return value
        value = {}
        for key, prop in req.schema["properties"].items():
            if "enum" in prop:
                value[key] = rnd.choice(prop["enum"])
            else:
                text = self.words_text(rnd.random(), rnd.randrange(8, 40))[: prop.get("maxLength", 60)].strip()
                value[key] = text if len(text) >= prop.get("minLength", 0) else "unknown"
        if fault == "$":
            del value[list(req.schema["properties"])[-1]]  # an LLM attribute: required in every person's schema
        return value

    # ---------------------------------------------------------------------------------- backend
    def result(self, req: ChatRequest) -> tuple[Result, float]:
        role, u = role_of(req), _draws(req)
        prompt = self.prompt_tokens(req)
        # over max_model_len: a property of the prompt (its id), the same on every attempt
        pasted = int.from_bytes(hashlib.blake2b(req.id.encode(), digest_size=8).digest(), "big") < self.too_long * 2**64
        if pasted or prompt > self.max_model_len:
            prompt += self.max_model_len if pasted else 0  # a pasted document
            res, kind = Result(req.id, "", prompt, 0, PROMPT_TOO_LONG), "prompt_too_long"
        else:
            ids, n, kind = self.answer(req, role, u)
            budget = min(req.max_tokens, self.max_model_len - prompt)
            if n > budget:  # cut at max_tokens: what a truncation retry continues from
                res, kind = Result(req.id, self.enc.decode(ids[:budget]), prompt, budget, "length"), "truncated"
            else:
                res, kind = Result(req.id, self.enc.decode(ids), prompt, len(ids), "stop"), kind or "ok"
        self.tally(req.id, role, kind, res)
        service = prompt / PREFILL_TOK_S + res.output_tokens / DECODE_TOK_S
        service *= math.exp(0.3 * _normal(u[4])) * (20 if u[5] < STALL else 1)
        return res, service * self.time_scale

    def tally(self, rid: str, role: str, kind: str, res: Result) -> None:
        """Count the attempt; the request's final outcome is its last attempt's (a retried one is undone)."""
        self.attempts[role, kind] += 1
        prev = self.open.pop(rid, None)
        if prev is not None:
            _, pkind, pp, po = prev
            self.final[role][pkind] -= 1
            self.tokens[role]["prompt_tokens"] -= pp
            self.tokens[role]["output_tokens"] -= po
            self.tokens[role]["retry_output_tokens"] += po  # decoded, then thrown away by the retry
        else:
            self.final[role]["requests"] += 1
        self.final[role][kind] += 1
        self.tokens[role]["prompt_tokens"] += res.prompt_tokens
        self.tokens[role]["output_tokens"] += res.output_tokens
        if kind not in ("ok", "no", "identical", "prompt_too_long"):  # the runner may ask again
            self.open[rid] = (role, kind, res.prompt_tokens, res.output_tokens)

    def submit(self, requests: list[ChatRequest]) -> None:
        t0 = time.perf_counter()
        now = time.monotonic()
        for req in requests:
            res, service = self.result(req)
            start = max(now, heapq.heappop(self.free))  # FIFO: the next free slot
            heapq.heappush(self.free, start + service)
            self.seq += 1
            heapq.heappush(self.running, (start + service, self.seq, res))
            self.simulated_s += service
        self.answered += len(requests)
        self.cpu_s += time.perf_counter() - t0

    def poll(self) -> list[Result]:
        """The answers finished by now; waits for the first one when none has finished yet."""
        if not self.running:
            return []
        t0 = time.perf_counter()
        wait = self.running[0][0] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        now, done = time.monotonic(), []
        while self.running and self.running[0][0] <= now:
            done.append(heapq.heappop(self.running)[2])
        self.wait_s += time.perf_counter() - t0
        return done

    # ----------------------------------------------------------------------------------- counts
    def expected(self) -> dict:
        """What the build's manifest must report, from the faults injected.

        requests[role]: {requests, ok, retries, rejects: {category: n}, prompt_tokens, output_tokens,
        retry_output_tokens}
        (a "no" or an identical revision is a usable answer); personas: judge_rejects, enrichment and
        judge failures; prompts: not_controversial and classifier rejects; pairs: revise_retries +
        identical rejects (every identical revision is asked again with a note, or rejected at the last)."""
        tried = Counter()
        for (role, _), n in self.attempts.items():
            tried[role] += n
        requests = {}
        for role, f in self.final.items():
            rejects = {k: n for k, n in f.items()
                       if k not in ("requests", "ok", "no", "identical") and n}
            requests[role] = {"requests": f["requests"], "ok": f["requests"] - sum(rejects.values()),
                              "retries": tried[role] - f["requests"], "rejects": dict(sorted(rejects.items())),
                              "prompt_tokens": self.tokens[role]["prompt_tokens"],
                              "output_tokens": self.tokens[role]["output_tokens"],
                              "retry_output_tokens": self.tokens[role]["retry_output_tokens"]}
        failed = lambda role: requests.get(role, {"requests": 0, "ok": 0})  # noqa: E731
        return {
            "requests": requests,
            "judge_rejects": self.final["consistency_judge"]["no"],
            "enrichment_rejects": failed("persona_filler")["requests"] - failed("persona_filler")["ok"],
            "judge_failures": failed("consistency_judge")["requests"] - failed("consistency_judge")["ok"],
            "not_controversial": self.final["prompt_classifier"]["no"],
            "classifier_rejects": failed("prompt_classifier")["requests"] - failed("prompt_classifier")["ok"],
            "identical_revisions": self.final["reviser"]["identical"],
        }

    def faults(self) -> dict:
        """Every injected fault, attempt by attempt: {role: {kind: n}} ("ok" left out)."""
        out: dict = defaultdict(dict)
        for (role, kind), n in sorted(self.attempts.items()):
            if kind != "ok":
                out[role][kind] = n
        return dict(out)


def mismatches(manifest: dict, expected: dict) -> list[str]:
    """Where a build's manifest does not report the faults the double injected (empty: all reported)."""
    out = []
    c, rejects = manifest["counts"], manifest["rejects"]

    def same(what, got, want):
        if got != want:
            out.append(f"{what}: manifest {got!r}, double {want!r}")

    for role, want in expected["requests"].items():
        got = c["requests"].get(role, {})
        for k, v in want.items():
            same(f"requests.{role}.{k}", got.get(k), v)
        same(f"requests.{role}.truncated_kept", got.get("truncated_kept"), 0)
    same("roles", sorted(c["requests"]), sorted(expected["requests"]))
    personas = rejects["personas"]
    same("personas judged inconsistent", personas.get("judge_inconsistent", 0), expected["judge_rejects"])
    same("personas failed enrichment", personas.get("enrichment_failed", 0), expected["enrichment_rejects"])
    same("personas judge failed", personas.get("judge_failed", 0), expected["judge_failures"])
    classify = c["prompts"]["classify"]
    same("prompts not controversial", classify["not_controversial"], expected["not_controversial"])
    same("prompts classifier rejects", classify["classifier_rejects"], expected["classifier_rejects"])
    # every accepted critique asks the reviser once; every identical revision once more, or is rejected
    req = c["requests"]
    if "reviser" in req:
        same("reviser requests = critiques + identical revisions - identical rejects", req["reviser"]["requests"],
             req["critic"]["ok"] + expected["identical_revisions"] - rejects["pairs"].get("chosen:identical", 0))
    return out
