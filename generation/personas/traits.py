"""Procedural traits, from (recipe seed, persona id) only: persona ids, Big Five levels, and quirks,
mannerisms and core values picked from the curated lists in generation/data/."""
from __future__ import annotations

import functools
import math
from pathlib import Path

from generation.ids import rng, stable_id

BIG_FIVE = ["Openness", "Conscientiousness", "Extraversion", "Agreeableness", "Neuroticism"]
# T-score T ~ N(50, 10) per trait, bucketed by upper bounds: T < 30 Extremely Low (p=.0228),
# 30 <= T < 40 Low (.1359), 40 <= T < 60 Average (.6827), 60 <= T < 70 High (.1359), T >= 70 Extremely High (.0228).
BIG_FIVE_CUTS = [(30.0, "Extremely Low"), (40.0, "Low"), (60.0, "Average"), (70.0, "High"),
                 (math.inf, "Extremely High")]


def big_five_level(t: float) -> str:
    return next(label for upper, label in BIG_FIVE_CUTS if t < upper)


def big_five_probabilities() -> dict[str, float]:
    """Probability of each level under T ~ N(50, 10): what the bucketing should produce."""
    cdf = lambda t: 0.5 * (1 + math.erf((t - 50) / (10 * math.sqrt(2))))  # noqa: E731
    probs, lower = {}, -math.inf
    for upper, label in BIG_FIVE_CUTS:
        probs[label] = cdf(upper) - cdf(lower)
        lower = upper
    return probs


DATA_DIR = Path(__file__).parent.parent / "data"


@functools.cache
def load_list(name: str) -> tuple[str, ...]:
    """A curated list from generation/data/<name>.txt: one entry per line, blank lines ignored."""
    lines = (DATA_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return tuple(s for s in (line.strip() for line in lines) if s)


def persona_id(source_serialno: str, source_sporder: int, seed: int) -> str:
    return stable_id("persona", seed, str(source_serialno), int(source_sporder))


def big_five(pid: str, seed: int) -> dict[str, str]:
    """Level per trait (BIG_FIVE order) from T-scores drawn with the persona's own generator."""
    t_scores = rng(seed, "big_five", pid).normal(50.0, 10.0, size=len(BIG_FIVE))
    return {trait: big_five_level(float(t)) for trait, t in zip(BIG_FIVE, t_scores)}


def procedural_traits(pid: str, seed: int, n_quirks: int = 1, n_mannerisms: int = 1,
                      n_core_values: int = 3) -> dict:
    """Big Five levels, quirks, mannerisms and core values from (seed, persona id) only.

    Each trait family has its own generator, so changing e.g. the number of core values leaves the Big Five
    and quirks of every persona unchanged.
    """
    levels = big_five(pid, seed)

    def pick(name: str, k: int) -> list[str]:
        items = load_list(name)
        idx = rng(seed, name, pid).choice(len(items), size=k, replace=False)
        return [items[i] for i in idx]

    return {
        "big_five": levels,
        "big_five_scores": ", ".join(f"{trait}: {level}" for trait, level in levels.items()),
        "defining_quirks": "; ".join(pick("quirks", n_quirks)),
        "mannerisms": "; ".join(pick("mannerisms", n_mannerisms)),
        "core_values": ", ".join(pick("core_values", n_core_values)),
    }
