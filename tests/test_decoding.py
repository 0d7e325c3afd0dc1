"""Pure math of a decoding step: per-row temperature and top-p, user multipliers, probability features."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from reference import reference_features_from_sorted, reference_warp_logits
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from autodeco.core.decoding import (
    NUCLEUS_TAIL_MAX_FRACTION,
    RADIX_SORT_MIN_VOCAB,
    adjusted_log_probs,
    combine_with_user_values,
    nucleus_removal_mask,
    sort_ascending,
    warp_logits,
)
from autodeco.core.heads import probability_features, probability_features_from_sorted

TEMPERATURES = (0.3, 0.7, 1.0, 1.6)
TOP_PS = (0.1, 0.5, 0.9, 1.0)


def random_logits(rows: int = 4, vocab: int = 50, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def reference_log_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Hugging Face's warpers, in the order generate() applies them, then log-softmax."""
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.log_softmax(scores, dim=-1)


def assert_same_log_probs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same support (-inf in the same places) and close values on it."""
    assert torch.equal(torch.isinf(actual), torch.isinf(expected)), "the nuclei differ"
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-5, atol=1e-6)


# adjusted_log_probs against transformers -------------------------------------------------------


@pytest.mark.parametrize("temperature,top_p", list(itertools.product(TEMPERATURES, TOP_PS)))
def test_adjusted_log_probs_matches_transformers_warpers(temperature, top_p):
    logits = random_logits(seed=int(temperature * 10) + int(top_p * 100))
    rows = logits.shape[0]
    actual = adjusted_log_probs(logits, torch.full((rows,), temperature), torch.full((rows,), top_p))
    assert actual.dtype == torch.float32 and actual.shape == logits.shape
    assert_same_log_probs(actual, reference_log_probs(logits, temperature, top_p))
    torch.testing.assert_close(actual.exp().sum(dim=-1), torch.ones(rows))


def test_adjusted_log_probs_per_row_values_match_transformers_row_by_row():
    pairs = list(itertools.product(TEMPERATURES, TOP_PS))  # 16 rows, each its own (T, P)
    logits = random_logits(rows=len(pairs), seed=11)
    temperature = torch.tensor([t for t, _ in pairs])
    top_p = torch.tensor([p for _, p in pairs])
    actual = adjusted_log_probs(logits, temperature, top_p)
    for row, (t, p) in enumerate(pairs):
        assert_same_log_probs(actual[row : row + 1], reference_log_probs(logits[row : row + 1], t, p))
    # Different values really give different nuclei: the grid is not degenerate.
    kept = torch.isfinite(actual).sum(dim=-1)
    assert kept.unique().numel() > 4


def test_warp_logits_accepts_bfloat16_logits():
    logits = random_logits(seed=3)
    temperature, top_p = torch.full((4,), 0.7), torch.full((4,), 0.9)
    warped = warp_logits(logits.to(torch.bfloat16), temperature, top_p)
    assert warped.dtype == torch.float32
    expected = warp_logits(logits.to(torch.bfloat16).float(), temperature, top_p)
    assert torch.equal(warped, expected)


# Hand-built nuclei -----------------------------------------------------------------------------


def test_hand_built_nucleus():
    # Probabilities 0.3, 0.1, 0.4, 0.2 in vocabulary order: P = 0.6 keeps {0.4, 0.3} (mass 0.7).
    probs = torch.tensor([[0.3, 0.1, 0.4, 0.2]])
    log_probs = adjusted_log_probs(probs.log(), torch.ones(1), torch.tensor([0.6]))
    expected = torch.tensor([[0.3 / 0.7, 0.0, 0.4 / 0.7, 0.0]])
    torch.testing.assert_close(log_probs.exp(), expected)
    assert torch.isinf(log_probs[0, [1, 3]]).all() and torch.isfinite(log_probs[0, [0, 2]]).all()
    # The docstring's example, in ascending order.
    mask = nucleus_removal_mask(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([0.6]))
    assert mask.tolist() == [[True, True, False, False]]


@pytest.mark.parametrize(
    "top_p,kept",
    [(0.35, [2]), (0.45, [0, 2]), (0.75, [0, 2, 3]), (0.95, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_hand_built_nucleus_sizes(top_p, kept):
    probs = torch.tensor([[0.3, 0.1, 0.4, 0.2]])
    log_probs = adjusted_log_probs(probs.log(), torch.ones(1), torch.tensor([top_p]))
    assert torch.isfinite(log_probs[0]).nonzero().flatten().tolist() == kept
    torch.testing.assert_close(log_probs.exp().sum(), torch.tensor(1.0))


def test_temperature_scales_before_the_nucleus_is_chosen():
    # softmax([2, 1, 0] / 0.5) = softmax([4, 2, 0]) ~ [0.867, 0.117, 0.016]: P = 0.8 keeps one token;
    # at T = 1, softmax([2, 1, 0]) ~ [0.665, 0.245, 0.090]: P = 0.8 keeps two.
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    log_probs = adjusted_log_probs(logits, torch.tensor([0.5, 1.0]), torch.tensor([0.8, 0.8]))
    assert torch.isfinite(log_probs).sum(dim=-1).tolist() == [1, 2]
    expected_row_1 = torch.softmax(torch.tensor([2.0, 1.0]), dim=-1)
    torch.testing.assert_close(log_probs[1, :2].exp(), expected_row_1)


def test_top_p_one_is_plain_temperature_softmax():
    logits = random_logits(seed=5)
    temperature = torch.tensor([0.3, 0.7, 1.0, 1.6])
    actual = adjusted_log_probs(logits, temperature, torch.ones(4))
    torch.testing.assert_close(actual, torch.log_softmax(logits / temperature[:, None], dim=-1))


@pytest.mark.parametrize("top_p", [0.0, 1e-6, 1e-3])
def test_most_likely_token_is_always_kept(top_p):
    logits = random_logits(seed=6)
    log_probs = adjusted_log_probs(logits, torch.full((4,), 1.3), torch.full((4,), top_p))
    assert (torch.isfinite(log_probs).sum(dim=-1) == 1).all()
    assert torch.equal(log_probs.argmax(dim=-1), logits.argmax(dim=-1))
    torch.testing.assert_close(log_probs.max(dim=-1).values, torch.zeros(4))


def test_tiny_temperature_does_not_produce_nan():
    logits = random_logits(seed=8)
    log_probs = adjusted_log_probs(logits, torch.tensor([0.0, 1e-12, 1e-6, 1.0]), torch.full((4,), 0.9))
    assert not torch.isnan(log_probs).any()
    assert torch.equal(log_probs[:3].argmax(dim=-1), logits[:3].argmax(dim=-1))


def test_rows_are_independent():
    logits = random_logits(rows=3, seed=9)
    temperature = torch.tensor([0.5, 1.0, 1.5])
    top_p = torch.tensor([0.3, 0.9, 0.6])
    together = adjusted_log_probs(logits, temperature, top_p)
    for row in range(3):
        alone = adjusted_log_probs(logits[row : row + 1], temperature[row : row + 1], top_p[row : row + 1])
        assert torch.equal(torch.isinf(together[row : row + 1]), torch.isinf(alone))
        torch.testing.assert_close(together[row : row + 1], alone)
    # Changing one row's logits, temperature or top-p leaves the others untouched.
    changed_logits = logits.clone()
    changed_logits[0] = 10 * torch.randn(logits.shape[1], generator=torch.Generator().manual_seed(1))
    changed = adjusted_log_probs(changed_logits, torch.tensor([0.1, 1.0, 1.5]), torch.tensor([1.0, 0.9, 0.6]))
    torch.testing.assert_close(changed[1:], together[1:])
    assert not torch.equal(torch.isinf(changed[0]), torch.isinf(together[0]))


# User multipliers ------------------------------------------------------------------------------


def test_combine_with_user_values_multiplies_and_caps_top_p():
    head_temperature = torch.tensor([0.4, 1.0, 1.8])
    head_top_p = torch.tensor([0.2, 0.6, 0.95])
    temperature, top_p = combine_with_user_values(head_temperature, head_top_p, 0.5, 1.5)
    torch.testing.assert_close(temperature, torch.tensor([0.2, 0.5, 0.9]))
    torch.testing.assert_close(top_p, torch.tensor([0.3, 0.9, 1.0]))
    temperature, top_p = combine_with_user_values(head_temperature, head_top_p, 2.0, 10.0)
    torch.testing.assert_close(temperature, torch.tensor([0.8, 2.0, 3.6]))
    assert torch.equal(top_p, torch.ones(3))


def test_combine_with_user_values_defaults_are_identity():
    head_temperature = torch.tensor([0.4, 1.9])
    head_top_p = torch.tensor([0.2, 0.99])
    temperature, top_p = combine_with_user_values(head_temperature, head_top_p)
    assert torch.equal(temperature, head_temperature) and torch.equal(top_p, head_top_p)


# Probability features --------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [4, 10])
def test_probability_features_uniform(vocab):
    features = probability_features(torch.zeros(1, vocab), torch.ones(1))
    probability = 1.0 / vocab
    expected = torch.tensor([[probability, -math.log(probability + 1e-8), 0.0, min(5, vocab) * probability]])
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_probability_features_peaked_hand_computed():
    # logits [a, 0, 0, 0, 0, 0, 0] with a = 10 * T: p0 = e^10 / (e^10 + 6), the rest q = 1 / (e^10 + 6).
    vocab, temperature = 7, 0.5
    logits = torch.zeros(1, vocab)
    logits[0, 0] = 10.0 * temperature
    p0 = math.exp(10) / (math.exp(10) + vocab - 1)
    q = 1 / (math.exp(10) + vocab - 1)
    probs = [p0] + [q] * (vocab - 1)
    entropy = -sum(p * math.log(p + 1e-8) for p in probs)
    mean = 1 / vocab
    variance = sum((p - mean) ** 2 for p in probs) / (vocab - 1)
    expected = torch.tensor([[p0, entropy, variance, p0 + 4 * q]])
    features = probability_features(logits, torch.tensor([temperature]))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-6)  # entropy ~3e-3, float32


def test_probability_features_keep_leading_dimensions():
    logits = torch.randn(2, 3, 20, generator=torch.Generator().manual_seed(0))
    temperature = torch.rand(2, 3, generator=torch.Generator().manual_seed(1)) + 0.5
    features = probability_features(logits, temperature)
    assert features.shape == (2, 3, 4)
    torch.testing.assert_close(features[1, 2], probability_features(logits[1, 2:3], temperature[1, 2:3])[0])


def test_probability_features_from_sorted_matches_unsorted():
    logits = random_logits(rows=6, vocab=40, seed=12)
    temperature = torch.tensor([0.2, 0.5, 0.9, 1.0, 1.4, 1.9])
    probs = torch.softmax(logits / (temperature[:, None] + 1e-8), dim=-1)
    from_sorted = probability_features_from_sorted(probs.sort(dim=-1).values)
    torch.testing.assert_close(from_sorted, probability_features(logits, temperature), rtol=1e-5, atol=1e-7)


# the optimised step against the plain reference, at a real vocabulary size ------------------------

REAL_VOCAB = 49_152  # SmolLM2's; above RADIX_SORT_MIN_VOCAB, so the CPU radix sort runs


def test_sort_ascending_radix_path_equals_a_stable_sort_with_special_values():
    assert REAL_VOCAB >= RADIX_SORT_MIN_VOCAB
    logits = random_logits(rows=3, vocab=REAL_VOCAB, seed=21)
    logits[0, :6] = torch.tensor([-0.0, 0.0, float("inf"), float("-inf"), float("nan"), 1e-38])
    logits[1, 100:200] = 0.5  # ties come in vocabulary order
    values, indices = sort_ascending(logits)
    expected_values, expected_indices = logits.sort(dim=-1, stable=True)
    assert torch.equal(indices, expected_indices)
    assert torch.equal(values.nan_to_num(nan=7.0), expected_values.nan_to_num(nan=7.0))


@pytest.mark.parametrize("vocab", [50, REAL_VOCAB])
@pytest.mark.parametrize("peaked", [False, True], ids=["whole-vocabulary", "tail-only"])
def test_warp_logits_equals_the_plain_reference(vocab, peaked):
    # peaked: every nucleus lies in the last NUCLEUS_TAIL_MAX_FRACTION of the sorted vocabulary, so only
    # that tail is masked and scattered; otherwise (a row with P = 1) the whole vocabulary is.
    logits = random_logits(rows=3, vocab=vocab, seed=22, scale=12.0 if peaked else 1.0)
    temperature = torch.tensor([0.7, 1.0, 1.3])
    top_p = torch.tensor([0.3, 0.5, 0.2]) if peaked else torch.tensor([0.9, 0.5, 1.0])
    actual, expected = warp_logits(logits, temperature, top_p), reference_warp_logits(logits, temperature, top_p)
    nucleus_sizes = torch.isfinite(expected).sum(dim=-1)
    assert bool(nucleus_sizes.max() <= NUCLEUS_TAIL_MAX_FRACTION * vocab) == peaked
    assert_same_log_probs(torch.log_softmax(actual, -1), torch.log_softmax(expected, -1))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("vocab", [50, REAL_VOCAB])
def test_probability_features_from_sorted_equal_the_plain_reference(vocab):
    logits = random_logits(rows=3, vocab=vocab, seed=23, scale=4.0)
    probs = logits.softmax(dim=-1).sort(dim=-1).values
    expected = reference_features_from_sorted(probs)
    torch.testing.assert_close(probability_features_from_sorted(probs), expected, rtol=1e-5, atol=1e-7)
