"""What regenerating a cut-off answer costs, against continuing it (issue 22, item 4).

A cut-off answer (finish_reason "length") is asked again with the same seed and twice the budget, up to the
context and output.max_attempts (builder/runner.py). With per-request seeds the retry reproduces the same first
tokens, so each retry throws away exactly the tokens the previous attempt decoded (now counted per role as
`retry_output_tokens`). Continuing the cut-off text instead would save those tokens.

1. `--smollm2`: configs/cpu.toml's responder (SmolLM2-135M, its sampling and seeds) answers N PRISM prompts
   once with 4x its budget + 1; the retry chain of the real runner (160 -> 320 -> 640,
   three attempts) is then read off each answer's one-shot length (same seed, so the same tokens).
2. A plausible 70B length distribution (lognormal per role, seeded; paper.toml's budgets), with the reviser's
   budget as it was (its max_tokens, 768) and as it is now (generation.pairs.revision_budget).

Prints, per case: share of answers cut at the first budget, retries per 1,000 requests, tokens decoded then
thrown away as a share of the tokens kept, and the GPU-hours that is at configs/paper.toml's scale.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.plan import REFERENCE, rates  # noqa: E402
from generation.pairs import RevisionLimits, revision_budget  # noqa: E402


def chain(length: int, budget: int, room: int, attempts: int = 3) -> tuple[int, int, bool]:
    """(retries, tokens thrown away, still cut off) for an answer whose one-shot length is `length` under the
    runner's rule: budget, then 2x, ... up to `room`, at most `attempts` tries."""
    wasted = retries = 0
    for _ in range(attempts - 1):
        if length <= budget:
            return retries, wasted, False
        bigger = min(2 * budget, room)
        if bigger <= budget:
            break
        wasted, retries, budget = wasted + budget, retries + 1, bigger
    return retries, wasted, length > budget


def summarise(name: str, lengths: list[int], budgets: list[int], room: int) -> dict:
    runs = [chain(n, b, room) for n, b in zip(lengths, budgets)]
    kept = sum(min(n, b * 4) for n, b in zip(lengths, budgets))
    out = {"case": name, "requests": len(lengths),
           "cut_at_first_budget": round(sum(n > b for n, b in zip(lengths, budgets)) / len(lengths), 4),
           "retries_per_1000": round(1000 * sum(r for r, _, _ in runs) / len(runs), 1),
           "wasted_tokens_per_request": round(sum(w for _, w, _ in runs) / len(runs), 1),
           "wasted_share_of_kept": round(sum(w for _, w, _ in runs) / max(kept, 1), 4),
           "still_cut_after_3": round(sum(c for _, _, c in runs) / len(runs), 4)}
    print(json.dumps(out))
    return out


def lognormal(rng: random.Random, median: float, sigma: float, n: int) -> list[int]:
    return [max(1, round(median * math.exp(rng.gauss(0, sigma)))) for _ in range(n)]


def seventy_b(n: int = 100_000, seed: int = 20240725) -> list[dict]:
    """Responder median 350 tokens (3% past paper.toml's 768), critic median 150, a revision 1.1x the answer it
    rewrites (+- 15%) plus a 16-token header; paper.toml's context 8192 with ~1.5k-token prompts."""
    rng = random.Random(seed)
    answers = lognormal(rng, 350, 0.42, n)
    critiques = lognormal(rng, 150, 0.45, n)
    revisions = [round(a * 1.1 * math.exp(rng.gauss(0, 0.15))) + 16 for a in answers]
    limits = RevisionLimits(1552, 8192)  # configs/paper.toml: reviser max_tokens 1552, context 8192
    rows = [summarise("70B responder (max_tokens 768)", answers, [768] * n, 8192 - 100),
            summarise("70B critic (max_tokens 512)", critiques, [512] * n, 8192 - 1500),
            summarise("70B reviser, old budget (768)", revisions, [768] * n, 8192 - 1700),
            summarise("70B reviser, budget follows the answer", revisions,
                      [revision_budget(min(a, 768 * 4), None, limits, 1700) for a in answers], 8192 - 1700)]
    return rows


def smollm2(n: int) -> dict:
    """One-shot lengths of cpu.toml's responder on n PRISM prompts (seeds as the runner derives them)."""
    from builder.backends import model_spec
    from builder.recipe import load_recipe
    from builder.runner import RunnerConfig, request_for
    from generation.backends import generate_all
    from generation.backends.engine import get_engine
    from generation.flow import Ask
    from generation.prompt_sources import read_prompts
    from generation.prompts import filter_prompts

    recipe = load_recipe(ROOT / "configs" / "cpu.toml")
    cfg = RunnerConfig.from_recipe(recipe)
    texts, _ = read_prompts(str(ROOT / recipe.prompts.source) if not Path(recipe.prompts.source).is_absolute()
                            else recipe.prompts.source, recipe.prompts.text_field, recipe.prompts.sha256)
    table = filter_prompts(texts)[0].head(n)
    model = recipe.model_for("responder")
    spec, revision = model_spec(model)
    engine = get_engine(spec)
    budget = recipe.roles["responder"].max_tokens
    reqs = []
    for pid, q in zip(table.prompt_id, table.text):
        req = request_for(cfg, "responder", Ask(key=f"rejected/{pid}", messages=[{"role": "user", "content": q}]), revision)
        # 4 x the budget + 1: the runner's chain (160 -> 320 -> 640) only needs to know which budgets it passes
        reqs.append(req.__class__(**{**req.__dict__, "max_tokens": 4 * budget + 1}))
    results = generate_all(engine, reqs)
    lengths = [r.output_tokens for r in results]
    return summarise(f"SmolLM2 cpu.toml responder (max_tokens {budget}), {n} PRISM prompts", lengths,
                     [budget] * len(lengths), model.max_model_len - 100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", type=int, default=0, help="also measure SmolLM2 on this many prompts")
    args = ap.parse_args()
    rows = seventy_b()
    decode, _ = rates(REFERENCE["H100"]["points"])
    print(f"decode rate used for hours: {decode * 70.6 / 72:,.0f} output tokens/s per H100 (builder/plan.py)")
    requests = {"70B responder (max_tokens 768)": 3868, "70B critic (max_tokens 512)": 317_200,
                "70B reviser, old budget (768)": 317_200, "70B reviser, budget follows the answer": 317_200}
    for r in rows:
        hours = requests[r["case"]] * r["wasted_tokens_per_request"] / (decode * 70.6 / 72) / 3600
        print(f"{r['case']}: {hours:.2f} H100-hours of decode thrown away at paper scale")
    if args.smollm2:
        smollm2(args.smollm2)


if __name__ == "__main__":
    main()
