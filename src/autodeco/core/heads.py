"""The two AutoDeco heads and the probability features the top-p head reads.

Pure tensor code: imports torch only. Parameter names (``mlp.0``, ``mlp.2``) match the
released AutoDeco checkpoints, so ``temp_head.mlp.0.weight`` and friends load both ways.

Shapes: ``H`` hidden size, ``V`` vocabulary size, ``...`` any leading dimensions
(``(B,)`` while decoding, ``(B, L)`` in a teacher-forced forward).
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_WIDTH = 256
"""Width of the hidden layer of both heads (the paper's value)."""

MAX_TEMPERATURE = 2.0
"""The temperature head ends in ``2 * sigmoid``, so predictions lie in ``(0, MAX_TEMPERATURE)``."""

FEATURE_TEMPERATURE_EPSILON = 1e-8
"""Added to the temperature before scaling logits for the top-p features."""

ENTROPY_LOG_EPSILON = 1e-8
"""Added to probabilities inside the log of the entropy feature."""

NUM_PROBABILITY_FEATURES = 4
"""max probability, entropy, variance, top-5 mass."""

TOP_MASS_TOKENS = 5
"""The last probability feature sums the probabilities of this many top tokens."""


def _two_layer_mlp(in_features: int, width: int) -> nn.Sequential:
    # Indices 0 and 2 hold the weights: the names in released checkpoints depend on it.
    return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, 1), nn.Sigmoid())


class TemperatureHead(nn.Module):
    """``h -> Linear(H, 256) -> ReLU -> Linear(256, 1) -> sigmoid -> x2``.

    Example:
        >>> head = TemperatureHead(hidden_size=8)
        >>> head(torch.zeros(3, 8)).shape
        torch.Size([3])
    """

    def __init__(self, hidden_size: int, width: int = HEAD_WIDTH):
        super().__init__()
        self.mlp = _two_layer_mlp(hidden_size, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Args: hidden_states ``(..., H)``. Returns temperatures ``(...)`` in (0, 2)."""
        return self.mlp(hidden_states).squeeze(-1) * MAX_TEMPERATURE


class TopPHead(nn.Module):
    """``[h, T, features] -> Linear(H + 1 + 4, 256) -> ReLU -> Linear(256, 1) -> sigmoid``.

    Without the probability features (``use_enhanced_features=False``) the input is ``[h, T]``.

    Example:
        >>> head = TopPHead(hidden_size=8)
        >>> features = torch.zeros(3, 4)
        >>> head(torch.zeros(3, 8), torch.ones(3), features).shape
        torch.Size([3])
    """

    def __init__(self, hidden_size: int, use_enhanced_features: bool = True, width: int = HEAD_WIDTH):
        super().__init__()
        self.use_enhanced_features = use_enhanced_features
        extra = 1 + (NUM_PROBABILITY_FEATURES if use_enhanced_features else 0)
        self.mlp = _two_layer_mlp(hidden_size + extra, width)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temperature: torch.Tensor,
        probability_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict top-p.

        Args:
            hidden_states: ``(..., H)``.
            temperature: ``(...)``, the temperature head's prediction (detach it first).
            probability_features: ``(..., 4)`` from :func:`probability_features`; required when
                the head uses them, ignored otherwise.

        Returns:
            top-p values ``(...)`` in (0, 1).
        """
        parts = [hidden_states, temperature.unsqueeze(-1).to(hidden_states.dtype)]
        if self.use_enhanced_features:
            if probability_features is None:
                raise ValueError("this top-p head reads probability features; pass probability_features")
            parts.append(probability_features.to(hidden_states.dtype))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (...)


def probability_features(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """The four statistics of ``softmax(logits / (T + 1e-8))`` that the top-p head reads.

    Max probability, entropy (with ``log(p + 1e-8)``), unbiased variance over the vocabulary,
    and the total probability of the top 5 tokens, computed in float32.

    Args:
        logits: ``(..., V)`` unscaled logits.
        temperature: ``(...)`` temperatures.

    Returns:
        ``(..., 4)`` features.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
        >>> probability_features(logits, torch.ones(1))  # uniform over 4 tokens
        tensor([[0.2500, 1.3863, 0.0000, 1.0000]])
    """
    scaled_logits = logits.float() / (temperature.float().unsqueeze(-1) + FEATURE_TEMPERATURE_EPSILON)
    probs = torch.softmax(scaled_logits, dim=-1)  # (..., V)
    top_probs = probs.topk(min(TOP_MASS_TOKENS, probs.shape[-1]), dim=-1).values  # (..., 5)
    return _features_from_probs(probs, top_probs)


def probability_features_from_sorted(probs: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`probability_features` when the probabilities are already sorted ascending (the top tokens last).

    Example:
        >>> probability_features_from_sorted(torch.full((1, 4), 0.25))  # uniform over 4 tokens
        tensor([[0.2500, 1.3863, 0.0000, 1.0000]])
    """
    return _fused_features(probs, probs[..., -TOP_MASS_TOKENS:], work)


def probability_features_from_probs(probs: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`probability_features` from the probabilities themselves, in vocabulary order.

    The decoding step computes one softmax for the features and the nucleus and passes it here. Entropy
    and variance do not depend on the order and the top tokens come from :func:`top_probabilities`, so
    this equals :func:`probability_features_from_sorted` of the sorted probabilities up to the order of
    the entropy's and variance's sums.

    Args:
        probs: ``(B, V)`` probabilities.
        work: a ``(B, V)`` float buffer to reuse (overwritten), or None to allocate one.

    Returns:
        ``(B, 4)`` features.

    Example:
        >>> probability_features_from_probs(torch.tensor([[0.1, 0.6, 0.3]]))
        tensor([[0.6000, 0.8979, 0.0633, 1.0000]])
    """
    return _fused_features(probs, top_probabilities(probs), work)


TOP_SEARCH_BLOCK = 64
""":func:`top_probabilities` looks for the largest values in the blocks of this many tokens with the largest maxima."""


def top_probabilities(probs: torch.Tensor, count: int = TOP_MASS_TOKENS) -> torch.Tensor:
    """The ``count`` largest values of each row, in ascending order, several times faster than ``topk`` on CPU.

    They lie in the ``count`` blocks (of :data:`TOP_SEARCH_BLOCK` tokens) with the largest maxima: those
    blocks hold ``count`` values at least as large as any value outside them, so only ties can differ,
    and tied values are equal. One ``amax`` pass over the vocabulary, then a ``topk`` over the chosen blocks.

    Args:
        probs: ``(B, V)`` values.
        count: how many (at most ``V``).

    Returns:
        ``(B, count)`` the largest values, ascending (equal to ``probs.sort().values[:, -count:]``).

    Example:
        >>> top_probabilities(torch.tensor([[0.1, 0.4, 0.2, 0.3]]), count=2)
        tensor([[0.3000, 0.4000]])
    """
    rows, vocab = probs.shape
    count = min(count, vocab)
    if vocab % TOP_SEARCH_BLOCK or vocab < count * TOP_SEARCH_BLOCK * 4:  # small or ragged: plain topk
        return probs.topk(count, dim=-1).values.flip(-1)
    blocks = probs.reshape(rows, vocab // TOP_SEARCH_BLOCK, TOP_SEARCH_BLOCK)  # (B, V / 64, 64)
    chosen = blocks.amax(dim=-1).topk(count, dim=-1).indices  # (B, count) blocks with the largest maxima
    candidates = blocks.gather(1, chosen.unsqueeze(-1).expand(-1, -1, TOP_SEARCH_BLOCK))  # (B, count, 64)
    return candidates.reshape(rows, -1).topk(count, dim=-1).values.flip(-1)  # (B, count) ascending


def _fused_features(probs: torch.Tensor, top: torch.Tensor, work: torch.Tensor | None) -> torch.Tensor:
    """The four features from the probabilities and their ``TOP_MASS_TOKENS`` largest values (ascending).

    Entropy and variance are products summed in ``work`` (the variance in two passes, mean then squared
    deviations), with no other ``(B, V)`` temporary: this agrees with :func:`probability_features` to float32
    rounding.
    """
    vocab = probs.shape[-1]
    if work is None:
        work = torch.empty_like(probs)
    torch.add(probs, ENTROPY_LOG_EPSILON, out=work).log_().mul_(probs)  # p log(p + 1e-8)
    entropy = work.sum(dim=-1).neg_()  # (B,)
    torch.sub(probs, probs.mean(dim=-1, keepdim=True), out=work).square_()  # (p - mean)^2
    variance = work.sum(dim=-1).div_(vocab - 1) if vocab > 1 else torch.full_like(entropy, float("nan"))
    return torch.stack([top.amax(dim=-1), entropy, variance, top.sum(dim=-1)], dim=-1)  # (B, 4)


def _features_from_probs(probs: torch.Tensor, top_probs: torch.Tensor) -> torch.Tensor:
    max_prob = top_probs.amax(dim=-1)  # (...)
    entropy = -(probs * torch.log(probs + ENTROPY_LOG_EPSILON)).sum(dim=-1)  # (...)
    variance = probs.var(dim=-1)  # (...), unbiased as torch.var's default
    top_mass = top_probs.sum(dim=-1)  # (...)
    return torch.stack([max_prob, entropy, variance, top_mass], dim=-1)  # (..., 4)
