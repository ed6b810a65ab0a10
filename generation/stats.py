"""The two statistics the testbed reports: percentile bootstrap intervals and Cohen's kappa."""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], seed: int, groups: Sequence[Hashable] | None = None,
                 resamples: int = 2000, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values`; None for no values.

    With `groups` (e.g. the persona of every pair) whole groups are resampled: answers about one
    persona are not independent, and resampling them one by one would make the interval too narrow.
    The estimate stays the plain mean over all values.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None
    gen = np.random.default_rng(seed)
    if groups is None:
        means = x[gen.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    else:
        keys = list(dict.fromkeys(groups))  # first-seen order: the result does not depend on hashing
        index = {k: i for i, k in enumerate(keys)}
        g = np.array([index[k] for k in groups])
        sums, counts = np.bincount(g, weights=x), np.bincount(g).astype(float)
        pick = gen.integers(0, len(keys), size=(resamples, len(keys)))
        means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa between two raters' labels of the same items.

    None when it is undefined: no items, or chance agreement of 1 (both raters gave one and the same
    label to every item), where agreement carries no information beyond the marginals.
    """
    if len(a) != len(b):
        raise ValueError(f"kappa needs two label lists of one length, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


# ------------------------------------------------------------------ the shape of a built dataset

WORDS_TO_TOKENS = 1.3  # rough tokens per English word, used only when no tokenizer can be loaded


def percentile_99(values: Sequence[int]) -> int:
    """The 99th percentile as one of the values (no interpolation): a length some pair really has."""
    return int(np.percentile(np.asarray(values), 99, method="higher")) if len(values) else 0


def dpo_lengths(dpo_rows, tokenizer=None, tokenizer_name: str | None = None) -> dict:
    """Tokens of prompt + longer answer per DPO row (rows: {"prompt", "chosen", "rejected"} message lists)
    and their 99th percentile, the `max_length` a DPO trainer needs to truncate at most 1% of pairs.

    With a `tokenizer` the whole conversation is rendered with its chat template (as TRL does) when it
    has one, else the message texts are counted; without one, words x 1.3 approximates tokens."""
    def convs(side):
        return [list(r["prompt"]) + list(r[side]) for r in dpo_rows]

    if tokenizer is None:
        def count(conv):
            return round(WORDS_TO_TOKENS * sum(len(m["content"].split()) for m in conv))
        basis = f"approximation: words x {WORDS_TO_TOKENS} (no tokenizer could be loaded)"
        chosen, rejected = [count(c) for c in convs("chosen")], [count(c) for c in convs("rejected")]
    else:
        if getattr(tokenizer, "chat_template", None):
            texts = lambda cs: [tokenizer.apply_chat_template(c, tokenize=False) for c in cs]  # noqa: E731
            basis = f"tokenizer of {tokenizer_name} with its chat template"
        else:
            texts = lambda cs: ["\n".join(m["content"] for m in c) for c in cs]  # noqa: E731
            basis = f"tokenizer of {tokenizer_name} (message texts; it has no chat template)"
        ids = lambda cs: tokenizer(texts(cs), add_special_tokens=False)["input_ids"] if cs else []  # noqa: E731
        chosen, rejected = [len(x) for x in ids(convs("chosen"))], [len(x) for x in ids(convs("rejected"))]
    longer = [max(c, r) for c, r in zip(chosen, rejected)]
    return {"dpo_max_length": percentile_99(longer), "dpo_longest": max(longer, default=0),
            "dpo_length_basis": basis}


def chosen_diversity(prompt_ids: Sequence[Hashable], chosen: Sequence[str]) -> dict:
    """How far the chosen answers to one prompt differ across personas: per prompt answered for two or
    more personas, distinct chosen texts / pairs (1 = every persona got its own answer)."""
    texts: dict[Hashable, list[str]] = {}
    for p, c in zip(prompt_ids, chosen):
        texts.setdefault(p, []).append(c)
    shares = [len(set(t)) / len(t) for t in texts.values() if len(t) > 1]
    if not shares:
        return {"prompts": 0, "mean_distinct_share": None, "min_distinct_share": None}
    return {"prompts": len(shares), "mean_distinct_share": round(float(np.mean(shares)), 4),
            "min_distinct_share": round(float(min(shares)), 4)}


def repeated_share(values: Sequence) -> float | None:
    """Share of the (non-null) values that another row repeats verbatim; None without values."""
    present = [v for v in values if v is not None and v == v]  # v == v drops NaN
    if not present:
        return None
    counts = Counter(present)
    return round(sum(counts[v] > 1 for v in present) / len(present), 4)
