"""Plain reference versions of the optimised decoding math, for tests to compare against.

Each is the straightforward formula: a stable sort, exact sums, fresh tensors, one row at a time.
The package runs the optimised versions (``autodeco.core.decoding``, ``autodeco.core.heads``).
"""

import bisect
import itertools
from fractions import Fraction

import numpy as np
import torch

from autodeco.core.decoding import MIN_SAMPLING_TEMPERATURE
from autodeco.core.heads import ENTROPY_LOG_EPSILON, TOP_MASS_TOKENS


def reference_warp_logits(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` logits / T with ``-inf`` outside each row's top-p nucleus (the nucleus rule of ``core.decoding``)."""
    scaled_logits = logits.float() / temperature.float().clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1)
    return reference_mask_outside_nucleus(scaled_logits, scaled_logits.softmax(dim=-1), top_p)


def reference_mask_outside_nucleus(
    scaled_logits: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """A copy of ``scaled_logits`` with ``-inf`` outside each row's nucleus, the rule taken literally.

    Rank the tokens by a stable descending sort of the scaled logits (equal logits: the lowest index first);
    remove each rank ``r >= 1`` whose exact tail mass (fractions of the float32 probabilities), rounded to the
    nearest float32, is at most ``1 - top_p``. A row of NaN probabilities, or with ``top_p > 1``, keeps everything.
    """
    warped = scaled_logits.clone()
    thresholds = (1 - top_p.float()).tolist()  # float32 values, exactly
    for row, threshold in enumerate(thresholds):
        if probs[row].isnan().any():
            continue
        order = scaled_logits[row].sort(descending=True, stable=True).indices  # (V,) rank order
        kept = reference_kept_count(probs[row, order].tolist(), threshold)
        warped[row, order[kept:]] = float("-inf")
    return warped


def reference_kept_count(ranked_probs: list[float], threshold: float) -> int:
    """How many of the most likely tokens stay: rank ``r >= 1`` goes when float32(mass of ranks >= r) <= threshold.

    ``ranked_probs`` are float32 values, most likely first. The rounded tails only shrink with the rank, so the
    removed ranks are the last ones and a bisection finds the first.
    """
    units = [int(p * 2.0**149) for p in ranked_probs]  # exact: every float32 is a multiple of 2^-149
    tails = list(itertools.accumulate(reversed(units)))[::-1]  # tails[r]: the exact mass of ranks >= r

    def removed(rank: int) -> bool:
        return round_to_float32(Fraction(tails[rank], 2**149)) <= Fraction(threshold)

    return 1 + bisect.bisect_left(range(1, len(units)), True, key=removed)


def round_to_float32(value: Fraction) -> Fraction:
    """The float32 nearest to ``value >= 0`` (ties: the even significand), chosen among a first guess's neighbours."""
    guess = np.float32(float(value))  # rounded twice (to float64, then float32): at most one float32 step away
    neighbours = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]

    def distance_then_odd(candidate: np.float32) -> tuple[Fraction, int]:
        return abs(Fraction(float(candidate)) - value), int(candidate.view(np.uint32)) & 1

    return Fraction(float(min(neighbours, key=distance_then_odd)))


def reference_features_from_sorted(ascending_probs: torch.Tensor) -> torch.Tensor:
    """The four top-p features (max, entropy, unbiased variance, top-5 mass) of sorted probabilities."""
    top_probs = ascending_probs[..., -TOP_MASS_TOKENS:]
    entropy = -(ascending_probs * torch.log(ascending_probs + ENTROPY_LOG_EPSILON)).sum(dim=-1)
    return torch.stack([top_probs.amax(dim=-1), entropy, ascending_probs.var(dim=-1), top_probs.sum(dim=-1)], dim=-1)
