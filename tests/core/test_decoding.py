"""Pure math of a decoding step: per-row temperature and top-p, user multipliers, probability features."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import force_heads
from reference import reference_features_from_sorted, reference_mask_outside_nucleus, reference_warp_logits
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from autodeco.core import decoding
from autodeco.core.decoding import (
    CHUNK_ELEMENTS,
    adjusted_log_probs,
    combine_with_user_values,
    mask_outside_nucleus,
    nucleus_boundary,
    nucleus_removal_mask,
    warp_logits,
)
from autodeco.core.heads import (
    probability_features,
    probability_features_from_probs,
    probability_features_from_sorted,
    top_probabilities,
)

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

REAL_VOCAB = 49_152  # SmolLM2's
PEAKED_NUCLEUS_MAX_FRACTION = 0.25


@pytest.mark.parametrize("vocab", [50, REAL_VOCAB])
@pytest.mark.parametrize("peaked", [False, True], ids=["whole-vocabulary", "tail-only"])
def test_warp_logits_equals_the_plain_reference(vocab, peaked):
    # peaked: every nucleus holds at most a quarter of the vocabulary; otherwise a row with P = 1 keeps it all.
    logits = random_logits(rows=3, vocab=vocab, seed=22, scale=12.0 if peaked else 1.0)
    temperature = torch.tensor([0.7, 1.0, 1.3])
    top_p = torch.tensor([0.3, 0.5, 0.2]) if peaked else torch.tensor([0.9, 0.5, 1.0])
    actual, expected = warp_logits(logits, temperature, top_p), reference_warp_logits(logits, temperature, top_p)
    nucleus_sizes = torch.isfinite(expected).sum(dim=-1)
    assert bool(nucleus_sizes.max() <= PEAKED_NUCLEUS_MAX_FRACTION * vocab) == peaked
    assert_same_log_probs(torch.log_softmax(actual, -1), torch.log_softmax(expected, -1))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("vocab", [50, REAL_VOCAB])
def test_probability_features_from_sorted_equal_the_plain_reference(vocab):
    logits = random_logits(rows=3, vocab=vocab, seed=23, scale=4.0)
    probs = logits.softmax(dim=-1).sort(dim=-1).values
    expected = reference_features_from_sorted(probs)
    torch.testing.assert_close(probability_features_from_sorted(probs), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vocab", [50, REAL_VOCAB])
def test_probability_features_from_probs_in_vocabulary_order_equal_the_sorted_ones(vocab):
    logits = random_logits(rows=3, vocab=vocab, seed=24, scale=4.0)
    logits[1, 64 * 7 : 64 * 7 + 3] = logits[1].max() + 1  # three equal maxima in one block of the search
    probs = logits.softmax(dim=-1)
    ascending = probs.sort(dim=-1).values
    assert torch.equal(top_probabilities(probs), ascending[:, -5:])
    from_probs, from_sorted = probability_features_from_probs(probs), probability_features_from_sorted(ascending)
    assert torch.equal(from_probs[:, [0, 3]], from_sorted[:, [0, 3]])  # max and top-5 mass: the same sums
    torch.testing.assert_close(from_probs, reference_features_from_sorted(ascending), rtol=1e-5, atol=1e-7)


# The nucleus without a sort: bit for bit the rule's, against the plain reference ---------------------------


def assert_same_warp(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The same tensor: equal bits, -inf in the same places, NaN in the same places."""
    assert actual.dtype == expected.dtype == torch.float32
    assert torch.equal(actual.isnan(), expected.isnan())
    assert torch.equal(actual.nan_to_num(nan=0.0), expected.nan_to_num(nan=0.0)), "the warped logits differ"


MIXED_TOP_PS = [0.0, 1e-6, 0.1, 0.3, 0.45, 0.5, 0.8, 0.95, 0.999, 0.999999, 1.0]
"""One per row: only the most likely token, through the tail, to every token of positive probability."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("scale", [0.5, 4.0, 12.0], ids=["flat", "peaked", "very-peaked"])
def test_warp_logits_equals_the_exact_reference_bit_for_bit(dtype, scale):
    # 11 rows at V = 49,152 span three bucketing chunks; bfloat16 and float16 logits tie by the thousand.
    assert len(MIXED_TOP_PS) * REAL_VOCAB > 2 * CHUNK_ELEMENTS
    logits = random_logits(rows=len(MIXED_TOP_PS), vocab=REAL_VOCAB, seed=31, scale=scale).to(dtype)
    temperature = torch.tensor([0.3, 0.7, 1.0, 1.6, 0.9, 1.0, 0.5, 1.2, 0.05, 1.0, 2.0])
    top_p = torch.tensor(MIXED_TOP_PS)
    actual = warp_logits(logits, temperature, top_p)
    assert_same_warp(actual, reference_warp_logits(logits, temperature, top_p))
    kept = torch.isfinite(actual).sum(dim=-1)
    assert kept[0] == 1 and kept[-1] == REAL_VOCAB and kept.unique().numel() > 3


def test_ties_at_the_boundary_keep_the_lowest_indices():
    # Row 0: ten equal logits, each token 0.1, the lower index ranking first. P = 0.35: the tails from the bottom
    # are 0.1, 0.2, ...; rank r goes when its tail (10 - r) / 10 is at most 0.65, so tokens 0-3 stay.
    # Row 1: tokens 2, 5, 7 share the top logit (0.2876 each, the other seven 0.0658): P = 0.2 removes rank 2
    # (tail 0.7482 <= 0.8) and keeps rank 1 (tail 1.0358), so the tie keeps tokens 2 and 5.
    logits = torch.zeros(2, 10)
    logits[1, [2, 5, 7]] = 1.0
    warped = warp_logits(logits, torch.ones(2), torch.tensor([0.35, 0.2]))
    assert torch.isfinite(warped).nonzero().tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 2], [1, 5]]
    assert_same_warp(warped, reference_warp_logits(logits, torch.ones(2), torch.tensor([0.35, 0.2])))


def test_a_flat_vocabulary_keeps_a_prefix_of_its_indices():
    # Every token in one bucket: the boundary bucket is the whole vocabulary.
    logits = torch.zeros(2, REAL_VOCAB)
    top_p = torch.tensor([0.5, 0.9])
    warped = warp_logits(logits, torch.ones(2), top_p)
    assert_same_warp(warped, reference_warp_logits(logits, torch.ones(2), top_p))
    for row, kept in enumerate(torch.isfinite(warped).sum(dim=-1).tolist()):
        assert torch.isfinite(warped[row, :kept]).all() and abs(kept - top_p[row].item() * REAL_VOCAB) <= 2


def test_top_p_one_and_near_zero_with_minus_infinity():
    logits = random_logits(rows=4, vocab=1000, seed=32, scale=3.0)
    logits[:, ::3] = -math.inf
    logits[0, 1] = -200.0  # probability 0 in float32: P = 1 removes it, as Hugging Face's cumsum <= 0 does
    logits[2, [10, 20]] = 50.0  # two equal maxima: the lower index is the most likely
    logits[3] = -math.inf
    logits[3, 7] = 0.0
    top_p = torch.tensor([1.0, 1e-7, 1e-7, 0.5])
    warped = warp_logits(logits, torch.ones(4), top_p)
    assert_same_warp(warped, reference_warp_logits(logits, torch.ones(4), top_p))
    expected_row_0 = logits[0].clone()
    expected_row_0[1] = -math.inf
    assert torch.equal(warped[0], expected_row_0)
    assert torch.isfinite(warped[1]).nonzero().flatten().tolist() == [int(logits[1].argmax())]
    assert torch.isfinite(warped[2]).nonzero().flatten().tolist() == [10]
    assert torch.isfinite(warped[3]).nonzero().flatten().tolist() == [7]


def test_rows_without_a_ranking_or_a_cut_keep_every_token():
    logits = random_logits(rows=3, vocab=REAL_VOCAB, seed=33)
    logits[0, 5] = math.nan  # its softmax is NaN everywhere: left as it is, as the sort-based warp left it
    top_p = torch.tensor([0.5, 1.5, 0.5])  # 1 - 1.5 < 0: no tail is at most that
    warped = warp_logits(logits, torch.ones(3), top_p)
    assert_same_warp(warped, reference_warp_logits(logits, torch.ones(3), top_p))
    assert_same_warp(warped[:2], logits[:2])
    assert torch.isinf(warped[2]).any()


def midpoint_rows(vocab: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows whose deciding tail lies exactly on a float32 rounding midpoint, and two random rows.

    Row 0: 1 - P = 0.5; probabilities 0.5, 0.5, 2^-25 (ranks 0, 1, 2). Rank 1's tail, 0.5 + 2^-25, lies halfway
    between 0.5 and the next float32, 0.5 + 2^-24, and rounds to the even 0.5: rank 1 goes.
    Row 1: 1 - P = 0.5 + 2^-24 (an odd significand); rank 1's tail, 0.5 + 3 * 2^-25, rounds up to the even
    0.5 + 2^-23: rank 1 stays.
    """
    scaled = random_logits(rows=4, vocab=vocab, seed=34, scale=3.0)
    probs = scaled.softmax(dim=-1)
    scaled[:2] = -math.inf
    scaled[:2, :3] = torch.tensor([2.0, 1.0, 0.0])
    probs[:2] = 0.0
    probs[:2, :3] = torch.tensor([[0.5, 0.5, 2.0**-25], [0.5, 0.5, 3 * 2.0**-25]])
    top_p = torch.tensor([0.5, 0.5 - 2.0**-24, 0.6, 0.9])
    assert (1 - top_p[:2]).tolist() == [0.5, 0.5 + 2.0**-24]
    return scaled, probs, top_p


def test_tails_on_a_rounding_midpoint_are_decided_exactly_and_only_they(monkeypatch):
    # float64 sums cannot tell which way those tails round: their rows take the exact path, the others do not.
    exact_rows = []
    exact_boundary = decoding._exact_boundary
    monkeypatch.setattr(decoding, "_exact_boundary", lambda *row: exact_rows.append(row) or exact_boundary(*row))
    scaled, probs, top_p = midpoint_rows()
    assert nucleus_boundary(scaled, probs, top_p).index[:2].tolist() == [0, 1]
    assert len(exact_rows) == 2
    expected = reference_mask_outside_nucleus(scaled, probs, top_p)
    assert_same_warp(mask_outside_nucleus(scaled.clone(), probs, top_p), expected)


def test_the_exact_path_alone_gives_the_same_warp(monkeypatch):
    # Every row too close to call: all decided by sorting and exact sums, bfloat16 ties included.
    monkeypatch.setattr(decoding, "FLOAT64_TERM_ERROR", 1.0)
    logits = random_logits(rows=6, vocab=3000, seed=36, scale=2.0).to(torch.bfloat16)
    temperature, top_p = torch.tensor([0.5, 0.8, 1.0, 1.2, 1.5, 2.0]), torch.tensor([0.05, 0.3, 0.5, 0.7, 0.9, 1.0])
    warped = warp_logits(logits, temperature, top_p)
    assert_same_warp(warped, reference_warp_logits(logits, temperature, top_p))
    monkeypatch.undo()
    assert_same_warp(warp_logits(logits, temperature, top_p), warped)


def test_nucleus_removal_mask_is_the_rule_on_a_sorted_row():
    _, probs, top_p = midpoint_rows()
    ascending = probs[:2, :3].flip(-1)  # 2^-25 (or 3 * 2^-25), 0.5, 0.5
    assert nucleus_removal_mask(ascending, top_p[:2]).tolist() == [[True, True, False], [True, False, False]]


class FixedStream:
    """A shuffle control's value stream that always draws the same (T, P)."""

    def __init__(self, pair: tuple[float, float]):
        self.pair = pair

    def draw(self, entropy: float) -> tuple[float, float]:
        return self.pair


def test_every_decoding_path_warps_with_the_same_code(tiny_autodeco):
    """generate()'s step, the compacting loop's static setting, a method and the vLLM plugin: warp_logits's bits."""
    from autodeco.core.dynamic import dynamic_step
    from autodeco.engines.vllm_export import HeadsSettings
    from autodeco.engines.vllm_models import RowSettings, warp_rows
    from autodeco.model.heads import AutoDecoHeads
    from autodeco.sampling.decode_loop import static_logits
    from autodeco.sampling.policies import method_step
    from autodeco.sampling.settings import DecodingSetting

    model = tiny_autodeco("llama")
    generator = torch.Generator().manual_seed(35)
    hidden = torch.randn(4, model.config.hidden_size, generator=generator)
    logits = 3 * torch.randn(4, model.config.vocab_size, generator=generator)
    for forced_temperature in (None, 0.1):  # T = 0.1: T + 1e-8 is another float32, the features' softmax not reused
        if forced_temperature is not None:
            force_heads(model, temperature=forced_temperature)
        with torch.no_grad():
            warped, temperature, top_p = dynamic_step(model, hidden, logits, 1.0, 1.0)
        assert_same_warp(warped, warp_logits(logits, temperature, top_p))
    heads = AutoDecoHeads(HeadsSettings(hidden_size=model.config.hidden_size, vocab_size=model.config.vocab_size))
    heads.load_state_dict({name: value for name, value in model.state_dict().items()
                           if name.startswith(("temp_head.", "top_p_head."))})
    rows = [RowSettings(top_p=0.8) for _ in range(4)]
    with torch.no_grad():
        warped_rows = warp_rows(heads, hidden, logits, rows)
        _, temperature, top_p = dynamic_step(heads, hidden, logits, 1.0, 0.8, sample=False)
    assert_same_warp(warped_rows, warp_logits(logits, temperature, top_p))
    assert_same_warp(static_logits(logits, 0.7, 0.9), warp_logits(logits, torch.full((4,), 0.7), torch.full((4,), 0.9)))
    streams = [FixedStream(pair) for pair in [(0.6, 0.5), (1.0, 0.9), (1.4, 0.3), (0.2, 1.0)]]
    step = method_step(DecodingSetting.shuffle(), value_pools=streams)(logits, torch.zeros(4))
    assert_same_warp(step.logits, warp_logits(logits, step.temperature, step.top_p))


# The window stage and the bucketing together ------------------------------------------------------


def spy_window(monkeypatch) -> list[torch.Tensor]:
    """Record which rows each window stage decided (the first stage's first: every row of the batch)."""
    decided = []
    window_boundary = decoding._window_boundary

    def spy(*arguments, **options):
        result = window_boundary(*arguments, **options)
        decided.append(result.decided.clone())
        return result

    monkeypatch.setattr(decoding, "_window_boundary", spy)
    return decided


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_settled_by_the_window_and_by_the_bucketing_in_one_batch_match_the_reference(monkeypatch, dtype):
    # Peaked rows with small nuclei take the window; flat rows and large P spill past it to the bucketing.
    decided = spy_window(monkeypatch)
    scales = torch.tensor([12.0, 12.0, 8.0, 0.5, 0.5, 4.0, 12.0, 1.0]).unsqueeze(-1)
    logits = (scales * torch.randn(8, REAL_VOCAB, generator=torch.Generator().manual_seed(40))).to(dtype)
    temperature = torch.tensor([0.7, 1.0, 0.5, 1.0, 0.8, 1.2, 0.3, 0.6])
    top_p = torch.tensor([0.9, 0.5, 0.95, 0.9, 0.3, 0.999, 1e-6, 0.7])
    warped = warp_logits(logits, temperature, top_p)
    assert_same_warp(warped, reference_warp_logits(logits, temperature, top_p))
    assert decided[0].any() and not decided[0].all(), decided[0]
    assert not decided[0][3] and decided[0][6]  # a flat row spills; one kept token always fits


def tie_row(top_p: float, tied: int = 3 * decoding.NUCLEUS_WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """One row: a leading token, then ``tied`` equal logits spread over the vocabulary, then the rest far below."""
    logits = torch.full((1, REAL_VOCAB), -20.0)
    logits[0, 7] = 4.0
    columns = torch.arange(tied) * (REAL_VOCAB // tied) + 3  # one or two per block: across many blocks
    logits[0, columns] = 0.0
    return logits, torch.tensor([top_p])


@pytest.mark.parametrize("top_p", [0.43, 0.6], ids=["cut-inside-the-window", "cut-past-the-window"])
def test_a_tie_across_the_window_edge_goes_on_and_keeps_its_lowest_indices(monkeypatch, top_p):
    # The leading token holds about 0.362 of the mass, each of the 96 tied tokens 0.0066. P = 0.43 cuts at the
    # 11th tied token, inside the window, but the window holds only 31 of the tie, chosen in no set order; P = 0.6
    # cuts past the window. Either way the row goes on to the wide window (which holds the whole tie), and the tie
    # keeps its lowest indices.
    decided = spy_window(monkeypatch)
    logits, top_p = tie_row(top_p)
    warped = warp_logits(logits, torch.ones(1), top_p)
    assert_same_warp(warped, reference_warp_logits(logits, torch.ones(1), top_p))
    assert decided[0].tolist() == [False]
    kept = torch.isfinite(warped[0]).nonzero().flatten().tolist()
    tied_columns = (torch.arange(3 * decoding.NUCLEUS_WINDOW) * (REAL_VOCAB // (3 * decoding.NUCLEUS_WINDOW)) + 3).tolist()
    assert 7 in kept and kept == sorted(set(kept)) and [c for c in kept if c != 7] == tied_columns[: len(kept) - 1]
    assert 1 < len(kept) < len(tied_columns)


def test_a_cut_above_a_tie_at_the_window_edge_is_settled_by_the_window(monkeypatch):
    # P = 0.2 keeps only the leading token: the tie below it does not matter.
    decided = spy_window(monkeypatch)
    logits, top_p = tie_row(0.2)
    warped = warp_logits(logits, torch.ones(1), top_p)
    assert_same_warp(warped, reference_warp_logits(logits, torch.ones(1), top_p))
    assert decided[0].tolist() == [True]
    assert torch.isfinite(warped[0]).nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("vocab", [20, 1000, 64 * 130], ids=["within-the-window", "ragged", "few-blocks"])
def test_the_window_on_small_and_ragged_vocabularies(monkeypatch, vocab):
    decided = spy_window(monkeypatch)
    logits = torch.cat([6.0 * torch.randn(6, vocab, generator=torch.Generator().manual_seed(41)),
                        torch.zeros(2, vocab)])  # two flat rows: ties everywhere
    temperature = torch.tensor([0.5, 1.0, 0.7, 1.5, 0.3, 1.0, 1.0, 1.0])
    top_p = torch.tensor([0.9, 0.5, 0.99, 0.8, 1.0, 1e-6, 0.5, 0.05])
    warped = warp_logits(logits, temperature, top_p)
    assert_same_warp(warped, reference_warp_logits(logits, temperature, top_p))
    assert decided[0].any()
    if vocab <= decoding.NUCLEUS_WINDOW:  # the whole vocabulary is the window: no tie can reach past it
        assert decided[0][6:].all()


def test_a_tail_within_the_block_sums_rounding_is_left_to_the_bucketing(monkeypatch):
    # Rank 1's exact tail lies 1e-7 above the bound: a float64 sum tells them apart, the window's float32 block sums
    # (each within 63 * 2^-24 of exact, relatively) cannot, so the window must not decide the row.
    decided = spy_window(monkeypatch)
    vocab = 4 * decoding.NUCLEUS_WINDOW * decoding.WINDOW_BLOCK  # the smallest vocabulary read in blocks
    scaled = -1e-3 * torch.arange(vocab, dtype=torch.float32).unsqueeze(0)  # distinct logits, rank = index
    probs = torch.full((1, vocab), 0.5 / (vocab - 1))
    probs[0, 0] = 0.5
    tail = probs[0, 1:].double().sum().item()  # exact: the terms span few enough binary orders for float64
    top_p = torch.tensor([1 - (tail - 1e-7)], dtype=torch.float32)
    bound = decoding.tail_bound(top_p).item()
    assert 0 < tail - bound < 2e-7 and tail - (tail - 1 / (vocab - 1) * 0.5) > 1e-5  # rank 2's tail is far below
    boundary = nucleus_boundary(scaled, probs, top_p)
    assert boundary.index.tolist() == [1] and decided[0].tolist() == [False]
    assert_same_warp(mask_outside_nucleus(scaled.clone(), probs, top_p),
                     reference_mask_outside_nucleus(scaled, probs, top_p))


def test_three_stages_each_settle_their_rows(monkeypatch):
    # Row 0: a peaked row, settled by the narrow window. Row 1: about a hundred leading tokens, P = 0.5: past the
    # narrow window, inside the wide one. Row 2: flat, P = 0.9: tens of thousands of tokens, which the narrow
    # window already shows no wide window can hold, so it goes straight to the bucketing.
    decided = spy_window(monkeypatch)
    generator = torch.Generator().manual_seed(42)
    logits = torch.randn(3, REAL_VOCAB, generator=generator)
    logits[0] *= 12.0
    logits[1] = logits[1] * 0.5 - 10.0
    logits[1, 1000:1100] = 5.0 + 0.01 * torch.randn(100, generator=generator)
    top_p = torch.tensor([0.9, 0.5, 0.9])
    warped = warp_logits(logits, torch.ones(3), top_p)
    assert_same_warp(warped, reference_warp_logits(logits, torch.ones(3), top_p))
    kept = torch.isfinite(warped).sum(dim=-1).tolist()
    assert kept[0] < decoding.NUCLEUS_WINDOW < kept[1] < decoding.NUCLEUS_WIDE_WINDOW < kept[2]
    assert [d.tolist() for d in decided] == [[True, False, False], [True]]  # the wide window saw row 1 only
