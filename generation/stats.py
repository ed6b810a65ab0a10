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
