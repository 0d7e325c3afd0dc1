"""Per-row temperature and top-p: the final sampling distribution of a decoding step.

Pure tensor code: imports torch only. Top-p follows Hugging Face's ``TopPLogitsWarper``
exactly (ascending sort, drop the tokens whose cumulative probability from the bottom is at
most ``1 - top_p``, always keep the most likely token), but with one ``top_p`` per row.
"""

from __future__ import annotations

import torch

MIN_SAMPLING_TEMPERATURE = 1e-8
"""Temperatures are clamped to at least this before dividing the logits."""


def combine_with_user_values(
    head_temperature: torch.Tensor,
    head_top_p: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the user's ``temperature`` and ``top_p`` as multipliers, as the official vLLM integration does.

    ``T = T_head * temperature`` and ``P = min(1, P_head * top_p)``.

    Example:
        >>> combine_with_user_values(torch.tensor([0.8]), torch.tensor([0.9]), 0.5, 2.0)
        (tensor([0.4000]), tensor([1.]))
    """
    return head_temperature * temperature, (head_top_p * top_p).clamp(max=1.0)


def nucleus_removal_mask(ascending_probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Which tokens top-p removes, for probabilities sorted in *ascending* order.

    A token is removed when the probability of it and every less likely token is at most
    ``1 - top_p``. With probabilities ``[0.1, 0.2, 0.3, 0.4]`` and ``top_p = 0.6`` the
    cumulative sums are ``[0.1, 0.3, 0.6, 1.0]``; ``1 - 0.6 = 0.4`` removes the first two, so
    the nucleus is ``{0.3, 0.4}`` (mass 0.7 >= 0.6). The most likely token always stays.

    Args:
        ascending_probs: ``(B, V)`` probabilities sorted ascending along the last dimension.
        top_p: ``(B,)`` nucleus mass per row.

    Returns:
        ``(B, V)`` boolean mask in the same sorted order, True where a token is removed.

    Example:
        >>> nucleus_removal_mask(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([0.6]))
        tensor([[ True,  True, False, False]])
    """
    cumulative_probs = ascending_probs.cumsum(dim=-1)  # (B, V)
    removed = cumulative_probs <= (1 - top_p).unsqueeze(-1)  # (B, V)
    removed[..., -1] = False
    return removed


def warp_logits(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Scale logits by a per-row temperature and mask everything outside the per-row nucleus.

    Args:
        logits: ``(B, V)`` unscaled logits.
        temperature: ``(B,)`` temperatures (> 0).
        top_p: ``(B,)`` nucleus masses in (0, 1].

    Returns:
        ``(B, V)`` float32 logits whose softmax is the sampling distribution; ``-inf`` outside the nucleus.

    Example:
        >>> warp_logits(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0.5]), torch.tensor([0.5]))
        tensor([[4., -inf, -inf]])
    """
    scaled_logits = logits.float() / temperature.float().clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1)
    sorted_logits, sorted_indices = scaled_logits.sort(dim=-1)  # (B, V), ascending
    return warp_sorted_logits(sorted_logits, sorted_indices, top_p)


def warp_sorted_logits(
    ascending_scaled_logits: torch.Tensor,
    sorted_indices: torch.Tensor,
    top_p: torch.Tensor,
    ascending_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`warp_logits` for scaled logits that are already sorted ascending.

    Args:
        ascending_scaled_logits: ``(B, V)`` temperature-scaled logits, sorted ascending.
        sorted_indices: ``(B, V)`` vocabulary index of each sorted entry.
        top_p: ``(B,)``.
        ascending_probs: ``(B, V)`` their softmax, if already computed.

    Returns:
        ``(B, V)`` warped logits in vocabulary order.
    """
    if ascending_probs is None:
        ascending_probs = ascending_scaled_logits.softmax(dim=-1)
    removed = nucleus_removal_mask(ascending_probs, top_p)  # (B, V), sorted order
    kept_sorted = ascending_scaled_logits.masked_fill(removed, float("-inf"))
    return torch.empty_like(kept_sorted).scatter_(-1, sorted_indices, kept_sorted)  # (B, V), vocab order


def adjusted_log_probs(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the final sampling distribution of ``softmax(logits / T)`` within the top-p nucleus.

    Args:
        logits: ``(B, V)`` unscaled logits.
        temperature: ``(B,)`` temperatures.
        top_p: ``(B,)`` nucleus masses.

    Returns:
        ``(B, V)`` float32 log-probabilities, ``-inf`` outside the nucleus.

    Example:
        >>> adjusted_log_probs(torch.tensor([[0.0, 0.0]]), torch.tensor([1.0]), torch.tensor([1.0])).exp()
        tensor([[0.5000, 0.5000]])
    """
    return torch.log_softmax(warp_logits(logits, temperature, top_p), dim=-1)
