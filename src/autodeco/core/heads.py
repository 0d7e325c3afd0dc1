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
    """:func:`probability_features` when the probabilities are already sorted ascending.

    Entropy and variance do not depend on the order, and the top tokens are the last ones, so the
    decoding step reuses the one sort that top-p needs anyway. Entropy and variance are reduced with
    dot products (the variance in two passes, mean then squared deviations), without temporaries:
    this agrees with :func:`probability_features` to float32 rounding.

    Args:
        probs: ``(B, V)`` probabilities sorted in ascending order.
        work: a ``(B, V)`` float buffer to reuse (overwritten), or None to allocate one.

    Returns:
        ``(B, 4)`` features.

    Example:
        >>> probability_features_from_sorted(torch.full((1, 4), 0.25))  # uniform over 4 tokens
        tensor([[0.2500, 1.3863, 0.0000, 1.0000]])
    """
    vocab = probs.shape[-1]
    if work is None:
        work = torch.empty_like(probs)
    top = probs[..., -TOP_MASS_TOKENS:]  # (B, 5) the most likely tokens
    torch.add(probs, ENTROPY_LOG_EPSILON, out=work).log_()  # log(p + 1e-8)
    entropy = torch.linalg.vecdot(probs, work).neg_()  # (B,)
    torch.sub(probs, probs.mean(dim=-1, keepdim=True), out=work)
    variance = torch.linalg.vecdot(work, work).div_(vocab - 1) if vocab > 1 else torch.full_like(entropy, float("nan"))
    return torch.stack([top.amax(dim=-1), entropy, variance, top.sum(dim=-1)], dim=-1)  # (B, 4)


def _features_from_probs(probs: torch.Tensor, top_probs: torch.Tensor) -> torch.Tensor:
    max_prob = top_probs.amax(dim=-1)  # (...)
    entropy = -(probs * torch.log(probs + ENTROPY_LOG_EPSILON)).sum(dim=-1)  # (...)
    variance = probs.var(dim=-1)  # (...), unbiased as torch.var's default
    top_mass = top_probs.sum(dim=-1)  # (...)
    return torch.stack([max_prob, entropy, variance, top_mass], dim=-1)  # (..., 4)
