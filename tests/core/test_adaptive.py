"""The comparison methods' tensor math (autodeco.core.adaptive): hand-computed values and transformers' warpers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import EtaLogitsWarper, MinPLogitsWarper, TemperatureLogitsWarper

from autodeco.core.adaptive import (
    confidence_gate,
    confidence_gated_logits,
    edt_logits,
    edt_temperature,
    entropy,
    entropy_shift_logits,
    entropy_shift_temperature,
    eta_logits,
    eta_removal_mask,
    greedy_logits,
    kept_mass,
    min_p_logits,
    min_p_removal_mask,
    top_n_sigma_logits,
    top_n_sigma_removal_mask,
    top_probability,
)
from autodeco.core.decoding import MIN_SAMPLING_TEMPERATURE, warp_logits

INF = float("inf")


def random_logits(rows: int = 6, vocab: int = 300, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * scale


# Entropy and the per-token temperatures ------------------------------------------------------------


def test_entropy_matches_hand_values_and_ignores_minus_infinity():
    probs = torch.tensor([0.5, 0.25, 0.25])
    logits = torch.stack([probs.log(), torch.tensor([0.0, -INF, -INF]), torch.tensor([1.0, 1.0, -INF])])
    expected = torch.tensor([0.5 * math.log(2) + 0.5 * math.log(4), 0.0, math.log(2)])
    torch.testing.assert_close(entropy(logits), expected, rtol=0, atol=1e-6)


def test_entropy_equals_categorical_entropy_on_random_logits():
    logits = random_logits()
    expected = torch.distributions.Categorical(logits=logits.double()).entropy().float()
    torch.testing.assert_close(entropy(logits), expected, rtol=0, atol=1e-5)
    assert not torch.isnan(entropy(logits.masked_fill(logits < 0, -INF))).any()


def test_edt_temperature_hand_values_and_limits():
    # T = T0 * N^(theta / H): 0.7 * 0.8^(2 / 0.5) = 0.7 * 0.4096
    got = edt_temperature(torch.tensor([0.5, 4.0, 0.0, 1e6]), t0=0.7, n=0.8, theta=2.0)
    expected = torch.tensor([0.7 * 0.8**4, 0.7 * 0.8**0.5, MIN_SAMPLING_TEMPERATURE, 0.7])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert (got <= 0.7).all()
    assert torch.all(got[[2, 0, 1, 3]].diff() >= 0), "T grows with the entropy"


def test_entropy_shift_temperature_hand_values_and_clamps():
    vocab = 1000
    log_v = math.log(vocab)
    entropies = torch.tensor([0.3 * log_v, 0.5 * log_v, 0.0, log_v])
    got = entropy_shift_temperature(entropies, vocab, t_base=0.8, delta=2.0, mean_entropy=0.3, t_min=0.5, t_max=1.1)
    # 0.8 + 2 (0.3 - 0.3) = 0.8; 0.8 + 2 (0.5 - 0.3) = 1.2 -> 1.1; 0.8 - 0.6 = 0.2 -> 0.5; 0.8 + 1.4 -> 1.1
    torch.testing.assert_close(got, torch.tensor([0.8, 1.1, 0.5, 1.1]), rtol=0, atol=1e-6)
    negative = entropy_shift_temperature(entropies, vocab, 0.8, -1.0, 0.3, 0.1, 5.0)
    torch.testing.assert_close(negative, torch.tensor([0.8, 0.6, 1.1, 0.1]), rtol=0, atol=1e-6)


def test_confidence_gate_is_strictly_above_the_threshold():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [0.0, -INF]])  # top probabilities 0.75, 0.5, 1
    torch.testing.assert_close(top_probability(logits), torch.tensor([0.75, 0.5, 1.0]), rtol=0, atol=1e-6)
    assert confidence_gate(logits, 0.5).tolist() == [True, False, True]
    assert confidence_gate(logits, 0.75 + 1e-4).tolist() == [False, False, True]


# Truncation masks ---------------------------------------------------------------------------------


def test_min_p_hand_values():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert min_p_removal_mask(logits, 0.4).tolist() == [[False, False, True, True]]  # threshold 0.2
    assert min_p_removal_mask(logits, 0.3).tolist() == [[False, False, False, True]]  # threshold 0.15: kept
    assert min_p_removal_mask(logits, 1.0).tolist() == [[False, True, True, True]]
    step = min_p_logits(logits, 1.0, 0.4)
    torch.testing.assert_close(step.logits.softmax(-1), torch.tensor([[0.625, 0.375, 0.0, 0.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(step.top_p, torch.tensor([0.8]), rtol=0, atol=1e-6)


def test_eta_hand_values():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    h = -(probs * probs.log()).sum().item()  # 1.1443
    logits = probs.log().unsqueeze(0)
    # epsilon = 0.09: eta = min(0.09, 0.3 e^-H = 0.0955) = 0.09 -> only 0.05 goes
    assert eta_removal_mask(logits, 0.09).tolist() == [[False, False, False, True]]
    # epsilon = 0.5: eta = min(0.5, 0.7071 e^-H = 0.2251) -> 0.15 and 0.05 go
    assert 0.15 < math.sqrt(0.5) * math.exp(-h) < 0.3
    assert eta_removal_mask(logits, 0.5).tolist() == [[False, False, True, True]]
    torch.testing.assert_close(eta_logits(logits, 1.0, 0.5).top_p, torch.tensor([0.8]), rtol=0, atol=1e-6)


def test_eta_keeps_the_most_likely_token_of_a_flat_row():
    logits = torch.zeros(1, 4)  # p = 0.25 each, H = log 4: eta = min(0.99, 0.995 / 4) < 0.25: nothing removed
    assert not eta_removal_mask(logits, 0.99).any()
    peaked = torch.tensor([[0.0, -0.01, -0.02, -0.03]])
    assert not eta_removal_mask(peaked, 0.999)[0, 0]


def test_top_n_sigma_hand_values_and_temperature_invariance():
    logits = torch.tensor([[4.0, 2.0, 0.0, -2.0]])  # mean 1, population std sqrt(5) = 2.236
    assert top_n_sigma_removal_mask(logits, 1.0).tolist() == [[False, False, True, True]]  # >= 1.764
    assert top_n_sigma_removal_mask(logits, 0.8).tolist() == [[False, True, True, True]]  # >= 2.211
    assert top_n_sigma_removal_mask(logits, 2.0).tolist() == [[False, False, False, True]]  # >= -0.472
    with_minus_inf = torch.tensor([[4.0, 2.0, 0.0, -2.0, -INF]])  # the -inf entry is left out of the std
    assert top_n_sigma_removal_mask(with_minus_inf, 1.0).tolist() == [[False, False, True, True, True]]
    many = random_logits(seed=4)
    for n in (0.5, 1.0, 2.0):
        for temperature in (0.3, 1.0, 2.5):
            assert torch.equal(top_n_sigma_removal_mask(many / temperature, n), top_n_sigma_removal_mask(many, n))
    step = top_n_sigma_logits(logits, 2.0, 1.0)
    assert step.logits.tolist() == [[2.0, 1.0, -INF, -INF]]
    expected_mass = torch.tensor([2.0, 1.0, 0.0, -1.0]).softmax(-1)[:2].sum()
    torch.testing.assert_close(step.top_p, expected_mass.unsqueeze(0), rtol=0, atol=1e-6)


def test_top_n_sigma_matches_a_brute_force_loop():
    logits = random_logits(rows=3, vocab=50, seed=7)
    for row in range(3):
        values = logits[row].tolist()
        mean = sum(values) / len(values)
        std = math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))
        expected = [value < max(values) - 1.3 * std for value in values]
        assert top_n_sigma_removal_mask(logits[row : row + 1], 1.3)[0].tolist() == expected


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
@pytest.mark.parametrize("min_p", [0.02, 0.1, 0.5, 1.0])
def test_min_p_matches_transformers(temperature, min_p):
    logits = random_logits(seed=1)
    expected = MinPLogitsWarper(min_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    got = min_p_logits(logits, temperature, min_p).logits
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got.softmax(-1), expected.softmax(-1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
@pytest.mark.parametrize("epsilon", [3e-4, 0.01, 0.2, 0.9])
def test_eta_matches_transformers(temperature, epsilon):
    logits = random_logits(seed=2)
    expected = EtaLogitsWarper(epsilon)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    got = eta_logits(logits, temperature, epsilon).logits
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got.softmax(-1), expected.softmax(-1), rtol=0, atol=1e-6)
    assert torch.isinf(got).any() and not torch.isinf(got).all(dim=-1).any()


def test_kept_mass_is_the_mass_of_the_kept_tokens():
    logits = random_logits(seed=3)
    removed = min_p_removal_mask(logits, 0.2)
    expected = torch.where(removed, 0.0, logits.softmax(-1)).sum(-1)
    torch.testing.assert_close(kept_mass(logits, removed), expected, rtol=0, atol=1e-6)


# Methods: warped logits ---------------------------------------------------------------------------


def test_edt_logits_are_warp_logits_at_the_edt_temperature():
    logits = random_logits(seed=5)
    step = edt_logits(logits, t0=0.9, n=0.7, theta=1.5, top_p=0.8)
    expected_temperature = 0.9 * 0.7 ** (1.5 / entropy(logits))
    torch.testing.assert_close(step.temperature, expected_temperature, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(step.top_p, torch.full((6,), 0.8), rtol=0, atol=0)
    expected = warp_logits(logits, expected_temperature, torch.full((6,), 0.8))
    torch.testing.assert_close(step.logits.softmax(-1), expected.softmax(-1), rtol=0, atol=1e-6)
    assert torch.isinf(step.logits).any(), "the top-p 0.8 nucleus should drop tokens"


def test_edt_on_a_certain_step_is_greedy():
    logits = torch.tensor([[30.0, 0.0, 0.0]])  # H ~ 2e-12 nats: T clamps to 1e-8
    step = edt_logits(logits, 1.0, 0.5, 1.0)
    assert step.temperature.item() == pytest.approx(MIN_SAMPLING_TEMPERATURE)
    assert step.logits.softmax(-1).tolist() == [[1.0, 0.0, 0.0]]


def test_entropy_shift_logits_use_the_vocabulary_size():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, -INF]])
    step = entropy_shift_logits(logits, 1.0, 0.5, 0.5, 0.2, 3.0, top_p=1.0)
    h = entropy(logits)
    expected_temperature = 1.0 + 0.5 * (h / math.log(4) - 0.5)  # row 0: H / log V = 1 -> 1.25
    torch.testing.assert_close(step.temperature, expected_temperature, rtol=0, atol=1e-6)
    assert step.temperature[0].item() == pytest.approx(1.25)
    torch.testing.assert_close(step.logits.softmax(-1), (logits / expected_temperature[:, None]).softmax(-1))


def test_confidence_gated_logits_mix_greedy_and_sampled_rows():
    logits = torch.tensor([[math.log(8.0), 0.0, 0.0], [0.2, 0.1, 0.0]])  # top probabilities 0.8, 0.367
    step = confidence_gated_logits(logits, 0.7, temperature=1.5, top_p=0.9)
    assert step.temperature.tolist() == [0.0, 1.5]
    torch.testing.assert_close(step.top_p, torch.tensor([0.9, 0.9]))
    assert step.logits[0].softmax(-1).tolist() == [1.0, 0.0, 0.0]
    expected = warp_logits(logits[1:], torch.tensor([1.5]), torch.tensor([0.9]))
    torch.testing.assert_close(step.logits[1:].softmax(-1), expected.softmax(-1), rtol=0, atol=1e-6)


def test_greedy_logits_pick_the_first_maximum():
    assert greedy_logits(torch.tensor([[1.0, 5.0, 5.0], [-1.0, -2.0, -INF]])).softmax(-1).tolist() == [
        [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]
    ]
