"""Tests for autodeco.evaluation.metrics: Pass@k against brute force, bootstrap, and the oracle search."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from autodeco.evaluation.metrics import (
    OracleChoice,
    default_ks,
    mean_and_std,
    oracle_search,
    paired_bootstrap,
    pass_at_1_by_seed,
    pass_at_k,
    pass_at_k_curve,
    pick_best,
)

# --------------------------------------------------------------------------
# pass_at_k


def _brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of the k-subsets of n samples (the first c correct) that contain a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(index < c for index in subset) for subset in subsets)
    return Fraction(hits, len(subsets))


def _product_form(n: int, c: int, k: int) -> Fraction:
    """1 - prod_{i = n - c + 1}^{n} (1 - k / i), a different exact formula for the same estimator."""
    if n - c < k:
        return Fraction(1)
    failure = Fraction(1)
    for i in range(n - c + 1, n + 1):
        failure *= 1 - Fraction(k, i)
    return 1 - failure


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_matches_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == float(_brute_force_pass_at_k(n, c, k)), (n, c, k)


def test_pass_at_k_is_exact_and_monotone_at_128_samples():
    n = 128
    for c in (0, 1, 2, 5, 17, 64, 100, 127, 128):
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert values == [float(_product_form(n, c, k)) for k in range(1, n + 1)], c
        assert all(0.0 <= value <= 1.0 for value in values)
        assert all(later >= earlier for earlier, later in itertools.pairwise(values))
    # a naive float ratio of huge binomials would lose these tiny probabilities; the exact one keeps them
    assert pass_at_k(128, 1, 1) == 1 / 128
    assert pass_at_k(128, 127, 2) == 1.0
    assert pass_at_k(128, 0, 128) == 0.0


def test_pass_at_k_rejects_k_above_n_quoting_both():
    with pytest.raises(ValueError, match=r"k must be <= n samples per problem.*k=5.*n=4"):
        pass_at_k(4, 1, 5)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [(0, 0, 1, "n"), (4, 5, 1, "c"), (4, -1, 1, "c"), (4, 1, 0, "k"), (4.0, 1, 1, "integer"), (4, True, 1, "integer")],
)
def test_pass_at_k_validates_counts(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


# --------------------------------------------------------------------------
# Pass@1 over seeds, mean/std, curves


def test_pass_at_1_by_seed_averages_per_problem_rates():
    outcomes = {
        "p1": {0: [True, True, False, False], 1: [True, True, True, True]},  # rates 0.5, 1.0
        "p2": {0: [False] * 4, 1: [True, False, False, False]},  # rates 0.0, 0.25
        "p3": {0: [True, True, True, False]},  # seed 1 missing: left out of seed 1's mean
    }
    by_seed = pass_at_1_by_seed(outcomes)
    assert list(by_seed) == [0, 1]
    assert by_seed[0] == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    assert by_seed[1] == pytest.approx((1.0 + 0.25) / 2)


def test_pass_at_1_by_seed_greedy_is_one_seed():
    assert pass_at_1_by_seed({"a": {0: [True]}, "b": {0: [False]}}) == {0: 0.5}


def test_pass_at_1_by_seed_needs_outcomes():
    with pytest.raises(ValueError, match="no outcomes"):
        pass_at_1_by_seed({"a": {0: []}})


def test_mean_and_std_uses_sample_std():
    mean, std = mean_and_std([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4)
    assert std == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert mean_and_std([0.3]) == (0.3, 0.0)
    with pytest.raises(ValueError, match="empty"):
        mean_and_std([])


def test_pass_at_k_curve_averages_over_problems():
    curve = pass_at_k_curve({"a": (4, 1), "b": (4, 3), "c": (4, 0)}, [1, 2, 4])
    assert curve[1] == pytest.approx((0.25 + 0.75 + 0) / 3)
    assert curve[2] == pytest.approx((0.5 + 1.0 + 0) / 3)  # a: 1 - C(3,2)/C(4,2) = 1/2
    assert curve[4] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k must be <= n"):
        pass_at_k_curve({"a": (2, 1)}, [4])


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(24) == [1, 2, 4, 8, 16, 24]
    with pytest.raises(ValueError, match="positive integer"):
        default_ks(0)


# --------------------------------------------------------------------------
# paired bootstrap


def test_paired_bootstrap_identical_scores_give_a_zero_interval():
    scores = {f"p{i}": i / 10 for i in range(10)}
    result = paired_bootstrap(scores, dict(scores), resamples=500)
    assert (result.mean_difference, result.low, result.high) == (0.0, 0.0, 0.0)
    assert not result.excludes_zero
    assert result.num_problems == 10 and result.resamples == 500


def test_paired_bootstrap_two_problem_distribution_by_hand():
    # differences {0, 1}: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5 % and 97.5 % percentiles are 0 and 1
    result = paired_bootstrap({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 0.0}, resamples=4000)
    assert result.mean_difference == 0.5
    assert (result.low, result.high) == (0.0, 1.0)


def test_paired_bootstrap_detects_a_clear_difference_and_is_deterministic():
    a = {f"p{i}": 0.6 + 0.3 * ((i * 7) % 5) / 4 for i in range(40)}
    b = {f"p{i}": 0.1 + 0.3 * ((i * 3) % 4) / 3 for i in range(40)}
    result = paired_bootstrap(a, b, resamples=2000, seed=3)
    expected_mean = sum(a[p] - b[p] for p in a) / 40
    assert result.mean_difference == pytest.approx(expected_mean)
    assert 0.0 < result.low < expected_mean < result.high
    assert result.excludes_zero
    assert paired_bootstrap(a, b, resamples=2000, seed=3) == result
    other = paired_bootstrap(a, b, resamples=2000, seed=4)
    assert (other.low, other.high) != (result.low, result.high)
    reverse = paired_bootstrap(b, a, resamples=2000, seed=3)
    assert reverse.high < 0.0


def test_paired_bootstrap_validates_inputs():
    with pytest.raises(ValueError, match="same problems.*only in a: \\['x'\\]"):
        paired_bootstrap({"x": 1.0, "y": 0.0}, {"y": 0.0})
    with pytest.raises(ValueError, match="at least one problem"):
        paired_bootstrap({}, {})
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap({"x": 1.0}, {"x": 0.0}, confidence=95)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap({"x": 1.0}, {"x": 0.0}, resamples=0)


# --------------------------------------------------------------------------
# oracle


def test_pick_best_takes_the_highest_score():
    assert pick_best({0.3: 0.2, 0.6: 0.5, 1.0: 0.4}) == 0.6


def test_pick_best_breaks_ties_towards_the_default_then_the_smaller_value():
    assert pick_best({0.4: 0.5, 0.7: 0.5, 0.9: 0.1}) == 0.7
    assert pick_best({0.2: 0.5, 1.0: 0.5}) == 1.0
    assert pick_best({0.9: 0.5, 1.1: 0.5}) == 0.9
    assert pick_best({0.4: 0.1 + 0.2, 0.8: 0.3}) == 0.8  # 0.30000000000000004 vs 0.3 is a tie


def test_oracle_search_follows_the_papers_order_not_the_global_best():
    scores = {
        (0.5, 1.0): 0.60, (1.0, 1.0): 0.50,  # step 1 picks T = 0.5
        (0.5, 0.5): 0.55, (1.0, 0.5): 0.95,  # global best (1.0, 0.5) is off the search path
    }
    choice = oracle_search(scores, [0.5, 1.0], [0.5, 1.0])
    assert choice == OracleChoice(0.5, 1.0, {0.5: 0.60, 1.0: 0.50}, {0.5: 0.55, 1.0: 0.60})
    assert choice.score == 0.60


def test_oracle_search_second_step_moves_top_p():
    temperatures = [round(0.1 * i, 1) for i in range(1, 11)]
    top_ps = [0.1 * i for i in range(1, 11)]  # unrounded floats (0.30000000000000004) still match
    scores = {(t, 1.0): 0.5 - abs(t - 0.7) for t in temperatures}
    scores.update({(0.7, round(p, 2)): 0.5 - abs(p - 0.9) + (0.1 if round(p, 2) == 0.9 else 0.0) for p in top_ps[:-1]})
    choice = oracle_search(scores, temperatures, top_ps)
    assert (choice.temperature, choice.top_p) == (0.7, 0.9)
    assert list(choice.temperature_curve) == temperatures
    assert len(choice.top_p_curve) == 10
    assert choice.score == pytest.approx(0.6)


def test_oracle_search_without_top_p_grid_stops_after_step_one():
    choice = oracle_search({(0.5, 1.0): 0.2, (1.0, 1.0): 0.2}, [0.5, 1.0], [])
    assert (choice.temperature, choice.top_p) == (1.0, 1.0)  # tie: the default temperature


def test_oracle_search_names_missing_grid_points():
    with pytest.raises(ValueError, match=r"1 grid point\(s\) have no score: \(T=0.30, P=1.00\)"):
        oracle_search({(0.5, 1.0): 0.4}, [0.3, 0.5], [])
    with pytest.raises(ValueError, match=r"\(T=0.50, P=0.90\)"):
        oracle_search({(0.5, 1.0): 0.4}, [0.5], [0.9, 1.0])


def test_pass_at_k_agrees_with_float_formula_where_floats_suffice():
    for n, c, k in [(16, 3, 4), (20, 10, 5), (8, 0, 8)]:
        naive = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(naive, abs=1e-15)
