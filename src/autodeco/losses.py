"""Label-free training losses for the temperature and top-p heads (PAPER.md section 3).

Pure tensor code: imports torch only. Both losses take the base model's logits and the heads'
predictions at every position, shift them inside (position t predicts token t + 1), ignore
labels equal to -100, and average over the kept tokens.

Shapes: ``B`` batch, ``L`` sequence length, ``V`` vocabulary, ``N`` kept tokens.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Labels equal to this are not trained on (prompt tokens, padding)."""

EASY_TOKEN_DROP = 0.6
"""Probability of dropping a token whose base-model argmax already equals the label."""

STEEPNESS = 30.0
"""Slope ``alpha`` of the soft top-p mask ``exp(-alpha * relu(c - P))``."""

MIN_LOSS_TEMPERATURE = 1e-2
"""The temperature loss divides logits by ``max(T, 0.01)``."""

MIN_SOFT_TOP_P_TEMPERATURE = 1e-8
"""The top-p loss divides logits by ``max(T, 1e-8)``."""

RENORMALIZE_EPSILON = 1e-9
"""Added to the masked mass before renormalising and to the probability inside the log."""


def temperature_loss(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    labels: torch.Tensor,
    *,
    easy_token_drop: float = EASY_TOKEN_DROP,
    dft_weighting: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``logits / max(T, 0.01)`` with easy-token dropping and DFT weighting.

    Args:
        logits: ``(B, L, V)`` base-model logits (no gradient needed).
        temperature: ``(B, L)`` predicted temperatures.
        labels: ``(B, L)`` input token ids, -100 where not trained.
        easy_token_drop: probability of dropping a token the base model already ranks first.
        dft_weighting: multiply each token's loss by the base probability of its label.
        generator: random generator for the drop decisions (``torch.rand`` of shape ``(B, L - 1)``).

    Returns:
        Scalar mean loss over the kept tokens (0 if none is kept).

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
        >>> loss = temperature_loss(logits, torch.ones(1, 2), torch.tensor([[0, 0]]), easy_token_drop=0.0)
        >>> round(loss.item(), 4)  # -log(softmax([2, 0])[0]) * softmax([2, 0])[0]
        0.1125
    """
    if not 0.0 <= easy_token_drop <= 1.0:
        raise ValueError(f"easy_token_drop must be a probability in [0, 1], got {easy_token_drop}")
    shift_logits, shift_temperature, shift_labels = _shift(logits, temperature, labels)
    valid = shift_labels != IGNORE_INDEX  # (B, L-1)
    with torch.no_grad():
        base_argmax = shift_logits.argmax(dim=-1)  # (B, L-1)
        easy = base_argmax == shift_labels.clamp(min=0)
        # Drawn for every position, kept or not, so a seeded generator gives the same stream as the reference.
        random_values = torch.rand(shift_labels.shape, generator=generator, device=generator_device(generator, labels))
        dropped = (random_values.to(labels.device) < easy_token_drop) & valid & easy
    kept = valid & ~dropped  # (B, L-1)
    if not kept.any():
        return temperature.sum() * 0.0
    kept_logits = shift_logits[kept].float()  # (N, V)
    kept_temperature = shift_temperature[kept].float().clamp(min=MIN_LOSS_TEMPERATURE)  # (N,)
    kept_labels = shift_labels[kept]  # (N,)
    token_losses = torch.nn.functional.cross_entropy(
        kept_logits / kept_temperature.unsqueeze(-1), kept_labels, reduction="none"
    )  # (N,)
    if dft_weighting:
        token_losses = token_losses * label_probability(kept_logits, kept_labels)
    return token_losses.mean()


def top_p_loss(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    labels: torch.Tensor,
    *,
    steepness: float = STEEPNESS,
    dft_weighting: bool = True,
) -> torch.Tensor:
    """Negative log-likelihood of the label under the soft top-p distribution, DFT-weighted.

    The gradient reaches both ``top_p`` and ``temperature`` (T is not detached).

    Args:
        logits: ``(B, L, V)`` base-model logits.
        temperature: ``(B, L)`` predicted temperatures.
        top_p: ``(B, L)`` predicted top-p values.
        labels: ``(B, L)`` input token ids, -100 where not trained.
        steepness: slope of the soft mask.
        dft_weighting: multiply each token's loss by the base probability of its label.

    Returns:
        Scalar mean loss over the labelled tokens (0 if there are none).

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
        >>> loss = top_p_loss(logits, torch.ones(1, 2), torch.ones(1, 2), torch.tensor([[0, 0]]), dft_weighting=False)
        >>> round(loss.item(), 4)  # top_p = 1 masks nothing: -log softmax([2, 0])[0]
        0.1269
    """
    if steepness <= 0:
        raise ValueError(f"steepness must be > 0, got {steepness}")
    shift_logits, shift_temperature, shift_labels = _shift(logits, temperature, labels)
    shift_top_p = top_p[:, :-1]
    valid = shift_labels != IGNORE_INDEX  # (B, L-1)
    if not valid.any():
        return (temperature.sum() + top_p.sum()) * 0.0
    valid_logits = shift_logits[valid].float()  # (N, V)
    valid_labels = shift_labels[valid]  # (N,)
    token_losses = soft_top_p_nll(
        valid_logits, shift_temperature[valid].float(), shift_top_p[valid].float(), valid_labels, steepness
    )  # (N,)
    if dft_weighting:
        token_losses = token_losses * label_probability(valid_logits, valid_labels)
    return token_losses.mean()


def soft_top_p_nll(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    labels: torch.Tensor,
    steepness: float = STEEPNESS,
) -> torch.Tensor:
    """Per-token ``-log p~[y]`` of the differentiable top-p distribution.

    ``p = softmax(l / max(T, 1e-8))``; sorted descending with cumulative sums ``c``, each token
    keeps ``m = exp(-steepness * relu(c - P))`` of its mass; ``p~ = p * m / (sum(p * m) + 1e-9)``.
    With ``p = [0.5, 0.3, 0.2]`` and ``P = 0.8``: ``c = [0.5, 0.8, 1.0]``, so the first two keep
    all their mass and the last keeps ``exp(-30 * 0.2) = 0.0025`` of it.

    Args:
        logits: ``(N, V)``; temperature, top_p: ``(N,)``; labels: ``(N,)``.

    Returns:
        ``(N,)`` negative log-likelihoods.
    """
    scaled_logits = logits / temperature.clamp(min=MIN_SOFT_TOP_P_TEMPERATURE).unsqueeze(-1)  # (N, V)
    probs = scaled_logits.softmax(dim=-1)
    sorted_probs, sorted_indices = probs.sort(dim=-1, descending=True)  # (N, V)
    cumulative_probs = sorted_probs.cumsum(dim=-1)
    soft_mask = torch.exp(-steepness * torch.relu(cumulative_probs - top_p.unsqueeze(-1)))  # (N, V), sorted order
    kept_mass = (sorted_probs * soft_mask).sum(dim=-1)  # (N,)
    label_rank = (sorted_indices == labels.unsqueeze(-1)).float().argmax(dim=-1, keepdim=True)  # (N, 1)
    label_kept = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1) * soft_mask.gather(-1, label_rank).squeeze(-1)
    return -torch.log(label_kept / (kept_mass + RENORMALIZE_EPSILON) + RENORMALIZE_EPSILON)


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The DFT weight ``softmax(l)[y]`` at temperature 1, detached. logits ``(N, V)``, labels ``(N,)`` -> ``(N,)``."""
    with torch.no_grad():
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).exp()


def generator_device(generator: torch.Generator | None, fallback: torch.Tensor) -> torch.device:
    """The device random numbers are drawn on: the generator's own, else the tensor's."""
    return generator.device if generator is not None else fallback.device


def _shift(
    logits: torch.Tensor, temperature: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (batch, length, vocabulary), got {tuple(logits.shape)}")
    if temperature.shape != labels.shape or labels.shape != logits.shape[:2]:
        raise ValueError(
            "temperature and labels must have shape (batch, length) matching the logits "
            f"{tuple(logits.shape[:2])}, got {tuple(temperature.shape)} and {tuple(labels.shape)}"
        )
    return logits[:, :-1], temperature[:, :-1], labels[:, 1:]
