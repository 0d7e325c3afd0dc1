"""What a ``loglikelihood`` request scores: the continuation's log-probability under one of three distributions.

Pure tensor code (torch and :mod:`autodeco.core` only). At each position the heads predict ``T`` and ``P``
(times the model_args multipliers, as in ``generate()``), and the continuation token ``y`` is scored by:

- ``soft``: ``log p~[y]``, the paper's differentiable top-p distribution (the training objective and the
  held-out NLL): ``p = softmax(l / T)``, each token keeps ``exp(-30 * relu(c - P))`` of its mass (``c``: the
  cumulative mass down to it), renormalised. Finite everywhere, so choices outside the nucleus still rank.
- ``hard``: ``log`` of the distribution ``generate()`` samples from (``softmax(l / T)`` cut to the top-P
  nucleus): ``-inf`` for a token the model would never sample.
- ``base``: ``log softmax(l)[y]``, the plain base model (what ``--model hf`` reports for the same base).

Greedy is the same in all three: T and the nucleus keep the base's most likely token on top.
"""

from __future__ import annotations

import torch

from autodeco.core.decoding import adjusted_log_probs
from autodeco.core.losses import soft_top_p_nll


def token_log_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, labels: torch.Tensor, mode: str
) -> torch.Tensor:
    """Each label's log-probability under ``mode`` (``soft``, ``hard`` or ``base``).

    Args:
        logits: ``(N, V)`` the base model's logits at the positions that predict ``labels``.
        temperature: ``(N,)`` the T used at each position (heads' value times the multiplier).
        top_p: ``(N,)`` the P used (at most 1).
        labels: ``(N,)`` the continuation's token ids.
        mode: see the module docstring.

    Returns:
        ``(N,)`` float32 log-probabilities.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.0]])
        >>> [round(token_log_probs(logits, torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([1]), mode).item(), 3)
        ...  for mode in ("base", "hard")]
        [-1.408, -inf]
    """
    if mode == "base":
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (N,)
    if mode == "hard":
        return adjusted_log_probs(logits, temperature, top_p).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (N,)
    if mode == "soft":
        return -soft_top_p_nll(logits, temperature, top_p, labels)  # (N,)
    raise ValueError(f"mode must be soft, hard or base, but is {mode!r}")


def is_greedy(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether every label is its position's most likely token (``logits``: ``(N, V)``, ``labels``: ``(N,)``).

    Example:
        >>> is_greedy(torch.tensor([[0.0, 3.0], [1.0, 0.0]]), torch.tensor([1, 0]))
        True
    """
    return bool((logits.argmax(dim=-1) == labels).all())
