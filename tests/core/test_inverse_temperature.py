"""The inverse-temperature test's math against finite differences, hand-computed values and its Taylor error."""

import math

import pytest
import torch

from autodeco.core.inverse_temperature import (
    gold_log_prob,
    gold_slope_and_curvature,
    inverse_temperature_terms,
    predicted_gain,
)
from autodeco.core.statistics import bootstrap_ratio_interval


def hand_built(seed=0, rows=6, vocabulary=9):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, vocabulary, generator=generator)).double()
    logits[0, 4] = -math.inf  # a token that can never appear
    labels = torch.randint(0, vocabulary, (rows,), generator=generator)
    labels[0] = 2
    return logits, labels


@pytest.mark.parametrize("beta", [0.5, 0.8, 1.3, 2.0])
def test_slope_is_the_first_derivative_of_the_gold_log_probability(beta):
    logits, labels = hand_built()
    step = 1e-5
    central = (gold_log_prob(logits, labels, beta + step)
               - gold_log_prob(logits, labels, beta - step)) / (2 * step)
    slope, _ = gold_slope_and_curvature(logits, labels, beta)
    torch.testing.assert_close(slope, central, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("beta", [0.5, 0.8, 1.3, 2.0])
def test_minus_variance_is_the_second_derivative(beta):
    logits, labels = hand_built(seed=1)
    step = 1e-3
    values = [gold_log_prob(logits, labels, beta + offset) for offset in (-step, 0.0, step)]
    second = (values[0] - 2 * values[1] + values[2]) / step**2
    _, variance = gold_slope_and_curvature(logits, labels, beta)
    torch.testing.assert_close(-variance, second, rtol=1e-4, atol=1e-5)
    assert bool((variance >= 0).all()) and bool(torch.isfinite(variance).all())


def test_slope_and_variance_by_hand():
    # z = [2, 0], beta = 1: q = [e^2, 1] / (1 + e^2); E[z] = 2 q0; g(y=0) = 2 - 2 q0 = 2 q1; g(y=1) = -2 q0;
    # Var[z] = 4 q0 q1.
    q0 = math.exp(2) / (1 + math.exp(2))
    logits, labels = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    slope, variance = gold_slope_and_curvature(logits, labels, 1.0)
    assert slope.tolist() == pytest.approx([2 * (1 - q0), -2 * q0], abs=1e-12)
    assert variance.tolist() == pytest.approx([4 * q0 * (1 - q0)] * 2, abs=1e-12)
    # A -inf logit has q = 0: it changes nothing (and brings no NaN).
    slope_inf, variance_inf = gold_slope_and_curvature(
        torch.tensor([[2.0, 0.0, -math.inf]]), torch.tensor([0]), torch.tensor(1.0)
    )
    assert slope_inf.item() == pytest.approx(slope[0].item(), abs=1e-12)
    assert variance_inf.item() == pytest.approx(variance[0].item(), abs=1e-12)
    assert predicted_gain(torch.tensor([2.0]), torch.tensor([4.0]), torch.tensor([-0.5])).item() == pytest.approx(-1.5)


def test_predicted_matches_measured_to_third_order():
    logits, labels = hand_built(seed=2, rows=8)
    mean_inverse = 0.9
    errors = []
    for size in (0.004, 0.002, 0.001):
        signs = torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)
        temperature = 1.0 / (mean_inverse + size * signs)
        terms = inverse_temperature_terms(logits, labels, temperature, mean_inverse)
        torch.testing.assert_close(terms.delta, size * signs, rtol=0, atol=1e-12)
        error = (terms.predicted - terms.measured).abs()
        assert bool((error <= 10 * size**3 * (1 + terms.variance * logits[torch.isfinite(logits)].abs().max())).all())
        errors.append(error)
    # Halving delta divides the error by about 2^3 = 8 (third-order remainder).
    for larger, smaller in zip(errors, errors[1:]):
        ratio = larger / smaller.clamp(min=1e-300)
        significant = larger > 1e-11
        assert significant.any()
        assert bool(((ratio[significant] > 6.0) & (ratio[significant] < 10.0)).all()), ratio


def test_constant_temperature_gives_exactly_zero_gain():
    logits, labels = hand_built(seed=3)
    temperature = torch.full((6,), 0.7, dtype=torch.float64)
    terms = inverse_temperature_terms(logits, labels, temperature, 1 / 0.7)
    assert terms.delta.abs().max().item() == 0.0
    assert terms.measured.abs().max().item() == 0.0 and terms.predicted.abs().max().item() == 0.0


def test_sharpening_where_gold_leads_and_flattening_where_it_trails_gains():
    logits, labels = hand_built(seed=4, rows=12)
    mean_inverse = 1.0
    slope, _ = gold_slope_and_curvature(logits, labels, mean_inverse)
    aligned = 1.0 / (mean_inverse + 0.1 * slope.sign())  # delta has the sign of g
    opposed = 1.0 / (mean_inverse - 0.1 * slope.sign())
    gain_aligned = inverse_temperature_terms(logits, labels, aligned, mean_inverse).measured
    gain_opposed = inverse_temperature_terms(logits, labels, opposed, mean_inverse).measured
    assert bool((gain_opposed < 0).all())  # against the slope, concavity and slope both cost
    assert gain_aligned.mean() > 0
    # Exact value on one hand-built token: z = [2, 0], gold 0, beta 1 -> 1.5.
    exact = inverse_temperature_terms(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), torch.tensor([1 / 1.5], dtype=torch.float64), 1.0)
    expected = -math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-2.0))
    assert exact.measured.item() == pytest.approx(expected, abs=1e-12)


def test_mean_inverse_temperature_must_be_positive():
    with pytest.raises(ValueError, match="got 0.0"):
        inverse_temperature_terms(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1.0]), 0.0)


def test_bootstrap_ratio_interval():
    sums, counts = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])
    low, high = bootstrap_ratio_interval(sums, counts, resamples=500, seed=1)
    # Resampled means of two groups are 1, 2 or 3: the 95 % interval spans 1 to 3.
    assert (low, high) == (1.0, 3.0)
    # A ratio of sums, not a mean of ratios: groups (2 over 1 token) and (0 over 3 tokens) -> 2 / 4 overall.
    low, high = bootstrap_ratio_interval(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0]), resamples=2000)
    assert low == 0.0 and high == 2.0
    same = bootstrap_ratio_interval(torch.tensor([0.5] * 5), torch.ones(5), resamples=50)
    assert same == (0.5, 0.5)
    with pytest.raises(ValueError, match="shapes"):
        bootstrap_ratio_interval(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ratio_interval(torch.tensor([1.0]), torch.tensor([1.0]), resamples=0)
