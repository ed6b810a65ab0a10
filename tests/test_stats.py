"""Bootstrap intervals and Cohen's kappa against values worked out by hand."""
import math

import pytest

from generation.stats import bootstrap_ci, cohen_kappa


def test_bootstrap_of_a_constant_is_that_constant():
    assert bootstrap_ci([1, 1, 1, 1], seed=1) == (1.0, 1.0)
    assert bootstrap_ci([], seed=1) is None


def test_bootstrap_small_samples_match_the_exact_resampling_distribution():
    # [0, 1]: resample means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 2.5% point 0, 97.5% point 1
    assert bootstrap_ci([0, 1], seed=3) == (0.0, 1.0)
    # [0, 0, 0, 1, 1]: the resampled count of ones is Binomial(5, 0.4): P(0) = 0.078 > 2.5%, so the
    # lower bound is 0; P(>= 4) = 0.087 > 2.5% but P(5) = 0.010 < 2.5%, so the upper bound is 4/5
    assert bootstrap_ci([0, 0, 0, 1, 1], seed=3, resamples=20000) == (0.0, 0.8)


def test_bootstrap_large_sample_matches_the_normal_interval():
    values = [1] * 700 + [0] * 300
    lo, hi = bootstrap_ci(values, seed=5, resamples=20000)
    half = 1.96 * math.sqrt(0.7 * 0.3 / 1000)  # 0.0284
    assert lo == pytest.approx(0.7 - half, abs=0.004) and hi == pytest.approx(0.7 + half, abs=0.004)


def test_bootstrap_by_group_resamples_whole_groups():
    # 10 personas x 10 answers; personas 0-4 always right, 5-9 always wrong. Independent answers
    # would give 0.5 +- 1.96 * sqrt(0.25 / 100) = +-0.098; only 10 independent personas give +-0.31.
    values = [1 if g < 5 else 0 for g in range(10) for _ in range(10)]
    groups = [g for g in range(10) for _ in range(10)]
    lo, hi = bootstrap_ci(values, seed=7, resamples=20000)
    assert (hi - lo) / 2 == pytest.approx(0.098, abs=0.01)
    lo, hi = bootstrap_ci(values, seed=7, groups=groups, resamples=20000)
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 10), abs=0.05)
    assert bootstrap_ci(values, seed=7, groups=groups) == bootstrap_ci(values, seed=7, groups=groups)


def test_kappa_textbook_example():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_edges():
    assert cohen_kappa(["x", "y", "x"], ["x", "y", "x"]) == pytest.approx(1.0)
    assert cohen_kappa(["x", "y"], ["y", "x"]) == pytest.approx(-1.0)  # p_o 0, p_e 0.5
    # 3 of 4 agree but the marginals explain it: p_o = 0.75, p_e = 0.75 * 1 + 0.25 * 0 = 0.75 -> 0
    assert cohen_kappa(["x", "x", "x", "y"], ["x", "x", "x", "x"]) == pytest.approx(0.0)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # chance agreement 1: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa(["x"], ["x", "y"])
