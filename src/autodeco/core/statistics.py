"""Statistics of per-token values: entropy of a distribution, Pearson and Spearman correlations.

Pure tensor code: imports torch and math only.
"""

from __future__ import annotations

import math

import torch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` per row: ``(N, V) -> (N,)``.

    Example:
        >>> round(entropy(torch.zeros(1, 4)).item(), 4)  # uniform over 4: log 4
        1.3863
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two ``(N,)`` vectors (NaN when either is constant).

    Example:
        >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0]))
        0.9933992677987828
    """
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else float("nan")


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties sharing their average rank: ``(N,) -> (N,)`` float64.

    Example:
        >>> average_ranks(torch.tensor([10.0, 30.0, 20.0, 20.0])).tolist()
        [1.0, 4.0, 2.5, 2.5]
    """
    order = values.argsort(stable=True)
    sorted_values = values[order]
    _, counts = torch.unique_consecutive(sorted_values, return_counts=True)
    ends = counts.cumsum(0).double()  # last 1-based rank of each tie group
    group_ranks = ends - (counts.double() - 1) / 2  # average of first and last rank
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = group_ranks.repeat_interleave(counts)
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson on average ranks).

    Example:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 70.0]))
        1.0
    """
    return pearson(average_ranks(x), average_ranks(y))


def bootstrap_ratio_interval(
    numerators: torch.Tensor,
    denominators: torch.Tensor,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(numerators) / sum(denominators)``, resampling the groups.

    Each entry is one group (e.g. one trajectory: the sum of a per-token value and its token
    count), so the interval of a token mean accounts for tokens of one trajectory moving together.
    With unit denominators it is the interval of the mean over groups.

    Args:
        numerators: ``(K,)`` per-group sums.
        denominators: ``(K,)`` per-group weights (> 0 in total for every resample, e.g. token counts >= 1).
        resamples: bootstrap resamples (>= 1).
        confidence: central mass of the interval, in (0, 1).
        seed: seed of the resampling.

    Returns:
        ``(low, high)`` quantiles ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` of the resampled ratios.

    Example:
        >>> bootstrap_ratio_interval(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 1.0]))  # no spread
        (2.0, 2.0)
    """
    if numerators.ndim != 1 or numerators.shape != denominators.shape or numerators.numel() == 0:
        raise ValueError(f"numerators and denominators must be equal-length non-empty vectors, got shapes "
                         f"{tuple(numerators.shape)} and {tuple(denominators.shape)}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1), got {resamples} and {confidence}")
    generator = torch.Generator().manual_seed(seed)
    count = numerators.numel()
    picks = torch.randint(0, count, (resamples, count), generator=generator)  # (R, K) group indices
    ratios = numerators.double().cpu()[picks].sum(dim=1) / denominators.double().cpu()[picks].sum(dim=1)  # (R,)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(ratios, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high
