"""`persona plan`: what a recipe will ask of the models and of the machine, without starting a model.

The one cost formula (README, docs/ray.md and BENCHMARKS.md quote it from here):

    GPU-hours = TP x T_out / r / 3600,   T_out = sum over roles of requests x output tokens per request

with `r` the output tokens/s of one engine replica from THROUGHPUT below, or --tokens-per-s from a
pilot run. It assumes the engine is kept full (offline batch decoding, as the published figures were
measured) and counts output tokens only (prefill is inside those figures' request mix, not ours).
Output tokens per request are the role's max_tokens (a ceiling) unless a previous build's manifest
gives measured means (`--measured FOLDER`, default the recipe's own output folder when it exists).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from generation.errors import PersonaError
from generation.names import ROLES
from generation.prompt_sources import read_prompts
from generation.prompts import filter_prompts

from .manifest_schema import MANIFEST, load_manifest
from .recipe import Recipe

# Published offline throughputs, output tokens/s per GPU. Only measured figures go here, with their source.
THROUGHPUT = {
    "H100": {"params_b": 8.0, "tokens_per_s": 5777,
             "source": "MLPerf Inference v5.1, Red Hat's vLLM 0.10.0 submission: Llama-3.1-8B-Instruct FP8, Offline, "
                       "one H100 (redhat.com, \"Efficient and reproducible LLM inference: Red Hat MLPerf Inference "
                       "v5.1 results\")"},
}
# Assumption, not a measurement: decoding reads every weight once per step, so a model with k times the
# parameters runs at ~1/k of the reference rate on the same GPU (4-bit weights read fewer bytes, but AWQ
# kernels compute in FP16 and the KV cache leaves fewer sequences in flight; we take the two as a wash).
# A smaller model is not assumed faster than the reference: overheads, not weights, bound it there.
SCALING = "scaled from the reference by parameter count (assumption)"
PAPER_CLASSIFIED = 4652  # prompts the paper's rules kept from PRISM (used when the source is not read here)
BYTES_PER_TOKEN = 4      # English text, for disk estimates without a previous build


class PlanError(PersonaError):
    pass


@dataclass
class RolePlan:
    role: str
    requests: int
    output_per_request: float
    measured: bool
    prompt_per_request: float | None

    @property
    def output_tokens(self) -> float:
        return self.requests * self.output_per_request


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


def _measured(folder: Path | None) -> dict:
    if folder is None or not (folder / MANIFEST).is_file():
        return {}
    m = load_manifest(folder / MANIFEST)
    return {"requests": m["counts"].get("requests", {}), "personas": m["counts"].get("personas") or 0,
            "pairs": sum(m["counts"]["pairs"].values()), "bytes": sum(f["bytes"] for f in m["files"]),
            "where": str(folder)}


def plan(recipe: Recipe, measured_from: Path | None = None, gpu: str = "H100",
         tokens_per_s: float | None = None) -> dict:
    if gpu not in THROUGHPUT:
        raise PlanError(f"--gpu {gpu}: no published throughput for it (known: {', '.join(THROUGHPUT)}); "
                        "pass --tokens-per-s from a pilot run instead")
    c, p = recipe.census, recipe.pairs
    pairs = c.personas * (p.train_per_persona + p.n_unseen)
    prompts, prompts_from = _prompt_count(recipe)
    base = {"persona_filler": c.personas, "consistency_judge": c.personas, "prompt_classifier": prompts,
            "responder": min(prompts, pairs), "critic": pairs, "reviser": pairs}
    seen = _measured(measured_from)
    per_unit = {"persona_filler": seen.get("personas"), "consistency_judge": seen.get("personas"),
                "reviser": (seen.get("requests", {}).get("critic") or {}).get("requests")}
    roles = []
    for role in ROLES:
        got = seen.get("requests", {}).get(role)
        n = base[role]
        if got and got["requests"] and per_unit.get(role):  # replacements and re-asks, as measured
            n = round(n * got["requests"] / per_unit[role])
        if got and got["requests"]:
            roles.append(RolePlan(role, n, got["output_tokens"] / got["requests"], True,
                                  got["prompt_tokens"] / got["requests"]))
        else:
            roles.append(RolePlan(role, n, recipe.roles[role].max_tokens, False, None))
    out_tokens = sum(r.output_tokens for r in roles)
    model = recipe.model_for("responder")
    ref = THROUGHPUT[gpu]
    size = params_billion(model.id)
    if tokens_per_s is not None:
        rate, rate_source = float(tokens_per_s), "--tokens-per-s"
    else:
        scale = min(1.0, ref["params_b"] / size) if size else 1.0
        rate = ref["tokens_per_s"] * scale
        rate_source = ref["source"] + ("" if scale == 1.0 else f"; {SCALING}")
    hours = model.tensor_parallel_size * out_tokens / rate / 3600
    store_bytes = sum(r.requests * (r.output_per_request * BYTES_PER_TOKEN + 300) for r in roles)
    output_bytes = (seen["bytes"] / seen["pairs"] * pairs if seen.get("pairs")
                    else pairs * 2 * BYTES_PER_TOKEN * sum(r.output_per_request for r in roles
                                                           if r.role in ("responder", "critic", "reviser")))
    return {"recipe": recipe.path, "personas": c.personas, "pairs": pairs, "prompts": prompts,
            "prompts_from": prompts_from, "roles": roles, "output_tokens": out_tokens, "model": model.id,
            "params_b": size, "weights_gb": _weights_gb(model.id, model.dtype, size), "gpu": gpu,
            "tokens_per_s": rate, "rate_source": rate_source, "tp": model.tensor_parallel_size,
            "gpu_hours": hours, "store_bytes": store_bytes, "output_bytes": output_bytes,
            "output_measured": bool(seen.get("pairs")), "measured_from": seen.get("where")}


def _weights_gb(model_id: str, dtype: str, size: float | None) -> float | None:
    if size is None:
        return None
    per_param = 0.5 if re.search(r"AWQ|GPTQ|[Ii]nt4|4bit", model_id) else 4 if dtype == "float32" else 2
    return size * per_param


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
             "| role | requests | output tokens / request | output tokens | prompt tokens / request |",
             "|---|---:|---:|---:|---:|"]
    for r in pl["roles"]:
        per = f"{r.output_per_request:,.0f} ({'measured' if r.measured else 'max_tokens, ceiling'})"
        prompt = f"{r.prompt_per_request:,.0f} (measured)" if r.prompt_per_request is not None else "unknown"
        lines.append(f"| {r.role} | {r.requests:,} | {per} | {_count(r.output_tokens)} | {prompt} |")
    weights = f"~{pl['weights_gb']:,.1f} GB of weights" if pl["weights_gb"] is not None else "weights: size not stated in its id"
    lines += ["",
              f"output tokens: {_count(pl['output_tokens'])}"
              + (f" (measured means from {pl['measured_from']})" if pl["measured_from"] else " (ceiling: every answer at max_tokens)"),
              f"model: {pl['model']} ({weights}; tensor_parallel_size {pl['tp']})",
              f"throughput: {pl['tokens_per_s']:,.0f} output tokens/s per {pl['gpu']} ({pl['rate_source']})",
              f"GPU-hours = TP x T_out / r / 3600 = {pl['tp']} x {pl['output_tokens']:,.0f} / {pl['tokens_per_s']:,.0f} / 3600"
              f" = {pl['gpu_hours']:,.{1 if pl['gpu_hours'] >= 1 else 3}f} {pl['gpu']}-hours (engine kept full; a lower bound on wall time x GPUs)",
              f"disk: request store ~{gb(pl['store_bytes'])} (text at {BYTES_PER_TOKEN} bytes/token + 300 bytes a row); "
              f"output ~{gb(pl['output_bytes'])} ("
              + ("scaled from the measured build" if pl["output_measured"] else "uncompressed upper bound: preferences + dpo") + ")",
              "memory: the engine's weights above plus its KV cache (kv_cache_gib); the pipeline's own memory "
              "is not estimated here"]
    return "\n".join(lines)


def plan_json(pl: dict) -> str:
    return json.dumps({**pl, "roles": [vars(r) for r in pl["roles"]]}, indent=2, sort_keys=True)
