"""`persona plan`: what a recipe will ask of the models and of the machine, without starting a model.

The one cost formula (README, docs/ray.md, BENCHMARKS.md and bench/run_all.py quote it from `gpu_hours`):

    GPU-hours = TP x (T_out / r_out + T_in / r_in) / 3600

    T_out = sum over roles of requests x (output tokens + output tokens of retried attempts) per request
    T_in  = sum over roles of (requests + retries) x prompt tokens per request NOT held by the prefix cache

with r_out (decode) and r_in (prefill) the tokens/s of one engine replica (TP GPUs), from the published
figures in REFERENCE below, or `--tokens-per-s` measured on a pilot run of this recipe (a pilot's output
tokens/s already pays for its own prefill, so then the T_in term is dropped). It assumes the engine is
kept full (offline batch decoding, as the published figures were measured).

Tokens per request are each role's ceiling (max_tokens; prompts from the templates' allowances below)
unless a previous build of the SAME models and revisions gives measured means (`--measured FOLDER`,
default the recipe's output folder when it holds a build); a build of other models is ignored, and the
plan says why in one line.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from generation.errors import PersonaError
from generation.names import ROLES
from generation.pairs import RevisionLimits, revision_budget
from generation.prompt_sources import read_prompts
from generation.prompts import filter_prompts

from .manifest_schema import MANIFEST, load_manifest
from .recipe import ModelConfig, Recipe

# Published offline throughputs, per GPU. Only measured figures go here, with their source.
# NVIDIA, TensorRT-LLM performance overview (github.com/NVIDIA/TensorRT-LLM,
# docs/source/developer-guide/perf-overview.md, "LLaMA v3.3 70B" table, trtllm-bench throughput, H100 SXM 80GB,
# nvidia/Llama-3.3-70B-Instruct-FP8, TP2): output tokens/s per GPU at two input/output lengths.
REFERENCE = {
    "H100": {"params_b": 70.6, "points": ((1000, 1000, 2209), (8192, 1024, 398)),
             "source": "NVIDIA TensorRT-LLM performance overview (github.com/NVIDIA/TensorRT-LLM, docs/source/"
                       "developer-guide/perf-overview.md): Llama-3.3-70B-Instruct FP8 on H100 SXM, TP2, "
                       "2,209 output tok/s/GPU at 1000 in/1000 out, 398 at 8192 in/1024 out"},
}
# What the published points do NOT measure, said wherever the rate is shown: they are FP8 on TensorRT-LLM;
# an AWQ (4-bit weight, FP16 compute) model on vLLM on one GPU keeps fewer sequences in flight and runs its
# matrix products at the FP16 rate, so expect it slower. No published vLLM AWQ figure split into prefill and
# decode was found; a pilot's --tokens-per-s replaces all of this.
CAVEAT = "FP8 TensorRT-LLM figures; AWQ on vLLM is slower: measure a pilot and pass --tokens-per-s"
SCALING = "scaled by parameter count from the reference model (assumption)"


def rates(points) -> tuple[float, float]:
    """(decode, prefill) tokens/s per GPU from two published (input, output, output tok/s per GPU) points.

    Offline, a GPU spends out/r_out + in/r_in seconds per request, so 1/R = 1/r_out + (in/out)/r_in at each
    point: two points, two unknowns. Between the two points' input/output ratios this interpolates measured
    throughput; the split itself is a model (the long-context point's attention cost lands in the prefill rate)."""
    (i1, o1, r1), (i2, o2, r2) = points
    per_in = (o2 / r2 - o1 / r1 * o2 / o1) / (i2 - i1 * o2 / o1)   # seconds per input token
    per_out = (o1 / r1 - i1 * per_in) / o1                         # seconds per output token
    return 1 / per_out, 1 / per_in


def gpu_hours(out_tokens: float, prompt_tokens: float, tp: int, out_rate: float, prompt_rate: float | None) -> float:
    """THE cost formula: GPU-hours = TP x (T_out / r_out + T_in / r_in) / 3600, rates per replica of TP GPUs.
    `prompt_rate` None: the output rate was measured with its prefill included (a pilot's), no T_in term."""
    return tp * (out_tokens / out_rate + (prompt_tokens / prompt_rate if prompt_rate else 0.0)) / 3600


PAPER_CLASSIFIED = 4652  # prompts the paper's rules kept from PRISM (used when the source is not read here)
BYTES_PER_TOKEN = 4      # English text, for disk estimates without a previous build
# Prompt tokens per request when no build of these models was measured (ceilings, like max_tokens):
QUESTION_TOKENS = 64     # a PRISM opening prompt: 66 characters on average (max 1,195) + the chat template
# our templates + census fields (not model text): the CPU demo build measured 633, 262 and 502 - 145 of the
# filler's persona text (SmolLM2's tokenizer), rounded up; the judge also reads the filler's persona
TEMPLATE_TOKENS = {"persona_filler": 700, "prompt_classifier": 300, "consistency_judge": 400}
LABEL_TOKENS = 32        # "QUESTION:", "ANSWER:", "CRITIQUE:", a length line


class PlanError(PersonaError):
    pass


@dataclass
class RolePlan:
    role: str
    requests: int
    output_per_request: float     # output tokens of the answer kept + of retried attempts, per request
    retries_per_request: float
    prompt_per_request: float     # prompt tokens not held by the prefix cache, per attempt
    measured: bool

    @property
    def output_tokens(self) -> float:
        return self.requests * self.output_per_request

    @property
    def prompt_tokens(self) -> float:
        return self.requests * (1 + self.retries_per_request) * self.prompt_per_request


def params_billion(model_id: str) -> float | None:
    """The parameter count a model id states, e.g. "Qwen2.5-72B-Instruct-AWQ" -> 72.0, "SmolLM2-135M" -> 0.135."""
    m = re.search(r"(\d+(?:\.\d+)?)([BM])(?![a-z])", model_id.split("/")[-1])
    return None if not m else float(m[1]) / (1000 if m[2] == "M" else 1)


def _prompt_count(recipe: Recipe) -> tuple[int, str]:
    p = recipe.prompts
    if p.classify_limit:
        return p.classify_limit, "classify_limit"
    if p.source.startswith("hf://"):
        return PAPER_CLASSIFIED, "the paper's count after its rules (hf:// source not read here)"
    texts, _ = read_prompts(p.source, p.text_field, p.sha256)
    return len(filter_prompts(texts)[0]), f"{p.source} after the rules"


def other_models(recipe: Recipe, manifest: dict) -> str | None:
    """Why a build's lengths do not describe this recipe's models (None when every role has the same model
    id, and the same revision where the recipe pins one; an unpinned recipe is compared by id)."""
    built = manifest.get("models") or {}
    for role in ROLES:
        want, got = recipe.model_for(role), built.get(role)
        if got is None:
            return f"it records no model for {role}"
        if got["id"] != want.id:
            return f"its {role} is {got['id']}, the recipe's is {want.id}"
        if want.revision and got.get("revision") != want.revision:
            return f"its {role} is {want.id}@{str(got.get('revision'))[:12]}, the recipe pins @{want.revision[:12]}"
    return None


def _measured(recipe: Recipe, folder: Path | None, explicit: bool) -> tuple[dict, str | None]:
    """(what a previous build measured, or {}; why it was ignored, or None)."""
    if folder is None:
        return {}, None
    path = folder / MANIFEST
    if not path.is_file():
        if explicit:
            raise PlanError(f"--measured {folder}: no {MANIFEST} there (a finished build's folder is needed)")
        return {}, None
    m = load_manifest(path)  # one error naming the file and key when malformed
    why = other_models(recipe, m)
    if why:
        return {}, f"measured means from {path} ignored: {why}; ceilings used"
    return {"requests": m["counts"].get("requests", {}), "personas": m["counts"].get("personas") or 0,
            "pairs": sum(m["counts"]["pairs"].values()), "bytes": sum(f["bytes"] for f in m["files"]),
            "where": str(folder)}, None


def _check_rate(tokens_per_s) -> float | None:
    if tokens_per_s is None:
        return None
    if isinstance(tokens_per_s, bool) or not isinstance(tokens_per_s, int | float) \
            or not math.isfinite(tokens_per_s) or tokens_per_s <= 0:
        raise PlanError(f"--tokens-per-s {tokens_per_s}: expected a positive number of output tokens/s "
                        "(measured on a pilot run)")
    return float(tokens_per_s)


def _ceiling_prompts(recipe: Recipe) -> dict[str, float]:
    """Uncached prompt tokens per request without a measured build: the critic and reviser requests of a
    persona share their system message (persona + instruction, held by the prefix cache after the first),
    so what is sent fresh is the question, the answer (<= responder max_tokens) and, to the reviser, the
    critique (<= critic max_tokens)."""
    mx = {role: recipe.roles[role].max_tokens for role in ROLES}
    return {"persona_filler": TEMPLATE_TOKENS["persona_filler"],
            "consistency_judge": TEMPLATE_TOKENS["consistency_judge"] + mx["persona_filler"],
            "prompt_classifier": TEMPLATE_TOKENS["prompt_classifier"],
            "responder": QUESTION_TOKENS,
            "critic": QUESTION_TOKENS + mx["responder"] + LABEL_TOKENS,
            "reviser": QUESTION_TOKENS + mx["responder"] + mx["critic"] + LABEL_TOKENS}


def _ceiling_output(recipe: Recipe, role: str) -> int:
    """max_tokens; for the reviser the budget a rewrite of a responder answer at its max_tokens gets."""
    if role != "reviser":
        return recipe.roles[role].max_tokens
    limits = RevisionLimits(recipe.roles["reviser"].max_tokens, recipe.model_for("reviser").max_model_len)
    return revision_budget(recipe.roles["responder"].max_tokens, recipe.pairs.length_control, limits,
                           _ceiling_prompts(recipe)["reviser"])


def _measured_prompts(seen: dict) -> dict[str, float]:
    """Uncached prompt tokens per request from a build: the critic's fresh part is the responder's prompt
    (question) + answer, the reviser's that + the critique (never more than the measured whole prompt);
    for the other roles the whole prompt counts (what the cache holds there is not known)."""
    per = {role: r["prompt_tokens"] / r["requests"] for role, r in seen.items() if r.get("requests")}
    out = {role: r["output_tokens"] / r["requests"] for role, r in seen.items() if r.get("requests")}
    if {"responder", "critic"} <= per.keys():
        fresh = per["responder"] + out["responder"] + LABEL_TOKENS
        per["critic"] = min(per["critic"], fresh)
        if "reviser" in per:
            per["reviser"] = min(per["reviser"], fresh + out["critic"])
    return per


def plan(recipe: Recipe, measured_from: Path | None = None, gpu: str = "H100",
         tokens_per_s: float | None = None, explicit: bool = False) -> dict:
    """The plan of `recipe`; `explicit`: `measured_from` was named by the user (so it must hold a build)."""
    if gpu not in REFERENCE:
        raise PlanError(f"--gpu {gpu}: no published throughput for it (known: {', '.join(REFERENCE)}); "
                        "pass --tokens-per-s from a pilot run instead")
    pilot_rate = _check_rate(tokens_per_s)
    c, p = recipe.census, recipe.pairs
    pairs = c.personas * (p.train_per_persona + p.n_unseen)
    prompts, prompts_from = _prompt_count(recipe)
    base = {"persona_filler": c.personas, "consistency_judge": c.personas, "prompt_classifier": prompts,
            "responder": min(prompts, pairs), "critic": pairs, "reviser": pairs}
    seen, ignored = _measured(recipe, measured_from, explicit)
    got_all = seen.get("requests", {})
    per_unit = {"persona_filler": seen.get("personas"), "consistency_judge": seen.get("personas"),
                "reviser": (got_all.get("critic") or {}).get("requests")}
    measured_prompt, ceiling_prompt = _measured_prompts(got_all), _ceiling_prompts(recipe)
    roles = []
    for role in ROLES:
        got, n = got_all.get(role) or {}, base[role]
        if got.get("requests"):
            if per_unit.get(role):  # replacements and re-asks, as measured
                n = round(n * got["requests"] / per_unit[role])
            k = got["requests"]
            roles.append(RolePlan(role, n, (got["output_tokens"] + got.get("retry_output_tokens", 0)) / k,
                                  got.get("retries", 0) / k, measured_prompt[role], True))
        else:
            roles.append(RolePlan(role, n, _ceiling_output(recipe, role), 0.0, ceiling_prompt[role], False))
    out_tokens = sum(r.output_tokens for r in roles)
    in_tokens = sum(r.prompt_tokens for r in roles)
    model = recipe.model_for("responder")
    ref = REFERENCE[gpu]
    size = params_billion(model.id)
    tp = model.tensor_parallel_size
    if pilot_rate is not None:
        out_rate, in_rate, rate_source = pilot_rate, None, "--tokens-per-s (a pilot's rate, its prefill included)"
    else:
        scale = min(1.0, ref["params_b"] / size) if size else 1.0
        decode, prefill = rates(ref["points"])
        out_rate, in_rate = decode * scale * tp, prefill * scale * tp
        rate_source = ref["source"] + ("" if scale == 1.0 else f"; {SCALING}") + f"; {CAVEAT}"
    hours = gpu_hours(out_tokens, in_tokens, tp, out_rate, in_rate)
    store_bytes = sum(r.requests * (r.output_per_request * BYTES_PER_TOKEN + 300) for r in roles)
    output_bytes = (seen["bytes"] / seen["pairs"] * pairs if seen.get("pairs")
                    else pairs * 2 * BYTES_PER_TOKEN * sum(r.output_per_request for r in roles
                                                           if r.role in ("responder", "critic", "reviser")))
    weights, weights_how = weights_gb(model, size)
    return {"recipe": recipe.path, "personas": c.personas, "pairs": pairs, "prompts": prompts,
            "prompts_from": prompts_from, "roles": roles, "output_tokens": out_tokens, "prompt_tokens": in_tokens,
            "model": model.id, "params_b": size, "weights_gb": weights, "weights_how": weights_how, "gpu": gpu,
            "tokens_per_s": out_rate, "prefill_tokens_per_s": in_rate, "rate_source": rate_source, "tp": tp,
            "gpu_hours": hours, "store_bytes": store_bytes, "output_bytes": output_bytes,
            "output_measured": bool(seen.get("pairs")), "measured_from": seen.get("where"),
            "measured_ignored": ignored}


# ------------------------------------------------------------------------------------------ weights

# config.json numbers of the models a shipped recipe names, for sizing without a download (a local model
# folder's own config.json is read instead). Qwen2.5-72B-Instruct-AWQ: Qwen2.5-72B's architecture
# (hidden 8192, MLP 29568, 80 layers, 64 query / 8 KV heads, vocabulary 152064, untied lm_head) with AWQ
# 4-bit weights in groups of 128 (a 16-bit scale and a 4-bit zero point per group).
KNOWN_CONFIGS = {
    "Qwen/Qwen2.5-72B-Instruct-AWQ": {
        "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}},
}


def weights_bytes(cfg: dict, dtype_bytes: float = 2) -> float:
    """Bytes of a decoder's weights from its config.json numbers: the linear layers (attention q, k, v, o and
    the gated MLP) at the quantized width, plus group scales and zero points; the embeddings and lm_head
    (not quantized by AWQ/GPTQ) at `dtype_bytes`. Norms and biases (< 0.1%) are left out."""
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    kv = cfg.get("num_key_value_heads") or heads
    linear = layers * (h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * cfg["intermediate_size"])
    embed = cfg["vocab_size"] * h * (1 if cfg.get("tie_word_embeddings") else 2)
    q = cfg.get("quantization_config") or {}
    if q.get("bits"):
        group = q.get("group_size") or 128
        per_param = q["bits"] / 8 + (2 + q["bits"] / 8) / group  # weight + its group's scale and zero point
        return linear * per_param + embed * 2
    return (linear + embed) * dtype_bytes


def weights_gb(model: ModelConfig, size: float | None) -> tuple[float | None, str]:
    """(GB of weights, how they were sized)."""
    dtype_bytes = 4 if model.dtype == "float32" else 2
    cfg, where = KNOWN_CONFIGS.get(model.id), "its config numbers (recorded in builder/plan.py)"
    if model.path and (Path(model.path) / "config.json").is_file():
        try:
            cfg, where = json.loads((Path(model.path) / "config.json").read_text()), f"{model.path}/config.json"
        except (OSError, ValueError):
            cfg = None
    if cfg is not None:
        try:
            return weights_bytes(cfg, dtype_bytes) / 1e9, f"from {where}"
        except (KeyError, TypeError, ZeroDivisionError):
            pass
    if size is None:
        return None, "size not stated in its id"
    bits = 0.5 if re.search(r"AWQ|GPTQ|[Ii]nt4|4bit", model.id) else dtype_bytes
    return size * bits, "parameters in its id x bytes per weight (embeddings not told apart: an underestimate "\
                        "for 4-bit models)"


# ------------------------------------------------------------------------------------------ output

def _size(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def _count(n: float) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 1e6 else f"{n:,.0f}"


def render(pl: dict) -> str:
    gb = _size
    lines = [f"plan for {pl['recipe']}: {pl['personas']:,} personas, {pl['pairs']:,} pairs, "
             f"{pl['prompts']:,} prompts to classify ({pl['prompts_from']})", "",
             "| role | requests | output tokens / request | retries / request | fresh prompt tokens / request "
             "| output tokens | prompt tokens |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in pl["roles"]:
        how = "measured" if r.measured else "ceiling"
        lines.append(f"| {r.role} | {r.requests:,} | {r.output_per_request:,.0f} ({how}) | "
                     f"{r.retries_per_request:.3f} | {r.prompt_per_request:,.0f} ({how}) | {_count(r.output_tokens)} | "
                     f"{_count(r.prompt_tokens)} |")
    if pl["weights_gb"] is not None:
        weights = f"~{pl['weights_gb']:,.1f} GB of weights, {pl['weights_how']}"
    else:
        weights = f"weights: {pl['weights_how']}"
    basis = (f"measured means from {pl['measured_from']} (retried attempts included)" if pl["measured_from"]
             else "ceiling: every answer at max_tokens, prompts at the templates' allowances")
    prefill = pl["prefill_tokens_per_s"]
    formula = (f"GPU-hours = TP x (T_out / r_out + T_in / r_in) / 3600 = {pl['tp']} x ({pl['output_tokens']:,.0f} / "
               f"{pl['tokens_per_s']:,.0f} + {pl['prompt_tokens']:,.0f} / {prefill:,.0f}) / 3600" if prefill else
               f"GPU-hours = TP x (T_out / r_out + T_in / r_in) / 3600, T_in term in the pilot's rate = {pl['tp']} x "
               f"{pl['output_tokens']:,.0f} / {pl['tokens_per_s']:,.0f} / 3600")
    lines += [""] + ([pl["measured_ignored"]] if pl["measured_ignored"] else []) + [
              f"output tokens T_out: {_count(pl['output_tokens'])}; fresh prompt tokens T_in: "
              f"{_count(pl['prompt_tokens'])} ({basis})",
              f"model: {pl['model']} ({weights}; tensor_parallel_size {pl['tp']})",
              f"throughput per replica: r_out {pl['tokens_per_s']:,.0f} output tokens/s"
              + (f", r_in {prefill:,.0f} prompt tokens/s" if prefill else "") + f" on {pl['gpu']} ({pl['rate_source']})",
              f"{formula} = {pl['gpu_hours']:,.{1 if pl['gpu_hours'] >= 1 else 3}f} {pl['gpu']}-hours "
              "(engine kept full; a lower bound on wall time x GPUs)",
              f"disk: request store ~{gb(pl['store_bytes'])} (text at {BYTES_PER_TOKEN} bytes/token + 300 bytes a row); "
              f"output ~{gb(pl['output_bytes'])} ("
              + ("scaled from the measured build" if pl["output_measured"] else "uncompressed upper bound: preferences + dpo") + ")",
              "memory: the engine's weights above plus its KV cache (kv_cache_gib); the pipeline's own memory "
              "is not estimated here"]
    return "\n".join(lines)


def plan_json(pl: dict) -> str:
    return json.dumps({**pl, "roles": [vars(r) | {"output_tokens": r.output_tokens, "prompt_tokens": r.prompt_tokens}
                                       for r in pl["roles"]]}, indent=2, sort_keys=True)
