"""Per-row temperature and top-p: the final sampling distribution of a decoding step.

Pure tensor code: imports torch only. Top-p follows Hugging Face's ``TopPLogitsWarper``
exactly (ascending sort, drop the tokens whose cumulative probability from the bottom is at
most ``1 - top_p``, always keep the most likely token), but with one ``top_p`` per row.

This is the code ``generate()`` runs at every step (:func:`autodeco.model.generation.dynamic_step`):
:func:`sort_ascending` (a radix sort on CPU for large vocabularies) and the in-place
:func:`warp_sorted_logits`. The plain reference they are tested against lives in ``tests/reference.py``.
"""

from __future__ import annotations

import math

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

    The same code as every decoding step of ``generate()``: one sort (:func:`sort_ascending`), a
    division, a softmax and :func:`warp_sorted_logits`.

    Args:
        logits: ``(B, V)`` unscaled logits (not modified).
        temperature: ``(B,)`` temperatures (> 0; clamped to at least ``MIN_SAMPLING_TEMPERATURE``).
        top_p: ``(B,)`` nucleus masses in (0, 1].

    Returns:
        ``(B, V)`` float32 logits whose softmax is the sampling distribution; ``-inf`` outside the nucleus.

    Example:
        >>> warp_logits(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0.5]), torch.tensor([0.5]))
        tensor([[4., -inf, -inf]])
    """
    sorted_logits, sorted_indices = sort_ascending(logits.float())  # (B, V) ascending, a fresh tensor
    scaled = sorted_logits.div_(temperature.float().clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1))
    return warp_sorted_logits(scaled, sorted_indices, top_p.float())


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


RADIX_SORT_MIN_VOCAB = 32768
"""torch sorts a 1-D integer tensor of at least this many entries (its ``GRAIN_SIZE``) with a radix sort."""

_FLOAT32_MAGNITUDE_BITS = 0x7FFFFFFF
_FLOAT32_INFINITY_BITS = 0x7F800000


def sort_ascending(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.sort(dim=-1)`` for ``(B, V)`` float32 logits, several times faster on CPU for large vocabularies.

    torch sorts a 2-D float tensor with a comparison sort (about 3.7 ms for one row of 49,152 logits on a
    2-core x86 VM), but a 1-D integer tensor of 32,768 entries or more with a radix sort (about 0.25 ms
    there). Each row's logits are mapped to int32 keys in the same order (``-0.0`` and ``0.0`` equal,
    NaN last, as torch orders them) and radix-sorted; the sorted values are gathered back. The values
    equal ``logits.sort()``'s and the indices ``logits.sort(stable=True)``'s: equal logits come in
    vocabulary order (torch's default sort leaves their order unspecified).
    Elsewhere (GPU, small vocabularies, other dtypes) this is ``logits.sort(dim=-1)``.
    """
    rows, vocab = logits.shape
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or vocab < RADIX_SORT_MIN_VOCAB:
        return logits.sort(dim=-1)
    logits = logits.contiguous()
    bits = logits.view(torch.int32)
    magnitude = bits & _FLOAT32_MAGNITUDE_BITS
    keys = torch.where(bits < 0, magnitude.neg(), magnitude)  # float order; -0.0 -> 0 like 0.0
    keys.masked_fill_(magnitude > _FLOAT32_INFINITY_BITS, _FLOAT32_MAGNITUDE_BITS)  # every NaN last
    values = torch.empty_like(logits)
    indices = torch.empty((rows, vocab), dtype=torch.long)
    sorted_keys = torch.empty(vocab, dtype=torch.int32)
    for row in range(rows):
        torch.sort(keys[row], stable=True, out=(sorted_keys, indices[row]))  # 1-D integer: radix sort
        torch.index_select(logits[row], 0, indices[row], out=values[row])
    return values, indices


NUCLEUS_TAIL_MAX_FRACTION = 0.25
"""Scatter only the sorted tail that holds every row's nucleus when it is at most this fraction of the vocabulary."""


def warp_sorted_logits(
    scaled: torch.Tensor,
    sorted_indices: torch.Tensor,
    top_p: torch.Tensor,
    probs: torch.Tensor | None = None,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`autodeco.core.decoding.warp_sorted_logits`, overwriting ``scaled`` and ``work`` instead of allocating.

    The cumulative probabilities ascend, so the tokens that :func:`~autodeco.core.decoding.nucleus_removal_mask`
    removes are a prefix of each sorted row, whose length a binary search finds. When every row's nucleus
    lies in the last ``NUCLEUS_TAIL_MAX_FRACTION`` of the sorted vocabulary, only that tail is masked and
    scattered into a ``-inf`` buffer; otherwise the whole tensor is. The result is the same either way.
    """
    vocab = scaled.shape[-1]
    if probs is None:
        probs = scaled.softmax(dim=-1)
    if work is None:
        work = torch.empty_like(probs)
    cumulative = torch.cumsum(probs, dim=-1, out=work)  # (B, V), non-decreasing
    threshold = (1 - top_p).unsqueeze(-1)  # (B, 1)
    removed_counts = torch.searchsorted(cumulative, threshold, right=True).clamp_(max=vocab - 1)  # (B, 1)
    first, total = torch.cat(
        [removed_counts.amin(dim=0).double(), cumulative[:, -1].sum(0, keepdim=True, dtype=torch.float64)]
    ).tolist()
    tail_start = int(first)
    if vocab - tail_start <= NUCLEUS_TAIL_MAX_FRACTION * vocab and not math.isnan(total):  # NaN: the search is invalid
        tail = scaled[:, tail_start:]  # (B, K) holds every row's nucleus
        positions = torch.arange(tail_start, vocab, device=scaled.device)  # (K,) sorted positions
        tail.masked_fill_(positions < removed_counts, float("-inf"))
        return work.fill_(float("-inf")).scatter_(-1, sorted_indices[:, tail_start:], tail)
    removed = cumulative <= threshold  # (B, V), exactly nucleus_removal_mask
    removed[..., -1] = False
    scaled.masked_fill_(removed, float("-inf"))
    return work.scatter_(-1, sorted_indices, scaled)  # sorted_indices is a permutation: every entry is written
