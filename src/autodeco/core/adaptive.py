"""Heuristic per-token temperatures and truncation samplers: the comparison methods of PAPER.md section 8.

Pure tensor code: imports torch only. Each method maps a step's raw logits ``(B, V)`` to a
:class:`WarpedStep`: the warped logits whose softmax is the sampling distribution (``-inf`` outside
its support) and the per-row temperature and top-p it used. Methods that set a temperature per
token (EDT, entropy shift, the confidence gate) then apply the usual temperature and top-p warp
(:func:`autodeco.core.decoding.warp_logits`); the truncation samplers (min-p, eta, top-n-sigma) use a
static temperature and report as "top-p" the probability mass they keep.

Entropies are in nats, of ``softmax(logits)`` of the raw (unscaled) logits unless said otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from autodeco.core.decoding import MIN_SAMPLING_TEMPERATURE, warp_logits


class WarpedStep(NamedTuple):
    """One decoding step of a method: what to sample from and the values used."""

    logits: torch.Tensor
    """``(B, V)`` float32 warped logits; their softmax is the sampling distribution (``-inf`` outside it)."""
    temperature: torch.Tensor
    """``(B,)`` temperature used (0 for a greedy step)."""
    top_p: torch.Tensor
    """``(B,)`` top-p used; for truncation samplers the probability mass they keep."""


# Per-step statistics ----------------------------------------------------------------------------


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits)`` per row; ``-inf`` logits (probability 0) contribute 0.

    Args:
        logits: ``(B, V)`` logits, any float dtype (computed in float32).

    Returns:
        ``(B,)`` float32 entropies.

    Example:
        >>> entropy(torch.tensor([[0.0, 0.0, float("-inf")], [5.0, float("-inf"), float("-inf")]]))
        tensor([0.6931, 0.0000])
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    probs = log_probs.exp()
    terms = torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs))  # 0 * -inf would be NaN
    return 0.0 - terms.sum(dim=-1)  # 0 - x: no negative zero


def edt_temperature(entropy: torch.Tensor, t0: float, n: float, theta: float) -> torch.Tensor:
    """EDT's temperature ``T = t0 * n^(theta / H)`` (arXiv 2403.14541), clamped to ``[1e-8, t0]``.

    With ``n`` in (0, 1) the power lies in (0, 1): T rises towards ``t0`` as the entropy grows and
    falls to 0 as it vanishes (H = 0 gives ``n^inf = 0``, clamped to ``MIN_SAMPLING_TEMPERATURE``).
    With ``t0 = 1, n = 0.5, theta = 1`` and ``H = 1``: ``T = 0.5``; ``H = 2``: ``T = 0.5^0.5 = 0.7071``.

    Args:
        entropy: ``(B,)`` entropies in nats.
        t0: temperature ceiling, > 0.
        n: base, in (0, 1).
        theta: exponent scale, > 0.

    Returns:
        ``(B,)`` temperatures.

    Example:
        >>> edt_temperature(torch.tensor([1.0, 2.0, 0.0]), t0=1.0, n=0.5, theta=1.0)
        tensor([5.0000e-01, 7.0711e-01, 1.0000e-08])
    """
    exponent = (theta * math.log(n)) / entropy.float()  # (B,), -inf where H = 0
    return (t0 * exponent.exp()).clamp(min=MIN_SAMPLING_TEMPERATURE, max=t0)


def entropy_shift_temperature(
    entropy: torch.Tensor,
    vocab_size: int,
    t_base: float,
    delta: float,
    mean_entropy: float,
    t_min: float,
    t_max: float,
) -> torch.Tensor:
    """``T = t_base + delta * (H / log V - mean_entropy)``, clamped to ``[t_min, t_max]``.

    ``H / log V`` is the entropy normalized to [0, 1] (``log V`` is the entropy of the uniform
    distribution over the logits' ``V`` entries). With ``V = e^2`` (``log V = 2``), ``H = 1``,
    ``t_base = 0.8``, ``delta = 1`` and ``mean_entropy = 0.3``: ``T = 0.8 + (0.5 - 0.3) = 1.0``.

    Args:
        entropy: ``(B,)`` entropies in nats.
        vocab_size: ``V``, the number of logits per row (> 1).
        t_base: temperature at the mean normalized entropy.
        delta: temperature change per unit of normalized entropy.
        mean_entropy: mean normalized entropy, in [0, 1].
        t_min, t_max: clamp range.

    Returns:
        ``(B,)`` temperatures.

    Example:
        >>> entropy_shift_temperature(torch.tensor([1.0, 0.0]), 100, 0.8, 1.0, 0.3, 0.6, 1.5)
        tensor([0.7171, 0.6000])
    """
    normalized = entropy.float() / math.log(vocab_size)  # (B,) in [0, 1]
    return (t_base + delta * (normalized - mean_entropy)).clamp(min=t_min, max=t_max)


def top_probability(logits: torch.Tensor) -> torch.Tensor:
    """The largest probability of ``softmax(logits)`` per row: ``1 / sum(exp(l - max))``.

    Example:
        >>> top_probability(torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]))
        tensor([0.5000, 0.7500])
    """
    logits = logits.float()
    return torch.exp(-torch.logsumexp(logits - logits.amax(dim=-1, keepdim=True), dim=-1))


def confidence_gate(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which rows are confident: top probability of ``softmax(logits)`` strictly above ``threshold``.

    Args:
        logits: ``(B, V)`` raw logits.
        threshold: in (0, 1).

    Returns:
        ``(B,)`` booleans, True where the step is taken greedily.

    Example:
        >>> confidence_gate(torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]), 0.6)
        tensor([False,  True])
    """
    return top_probability(logits) > threshold


# Truncation masks (True = removed) ---------------------------------------------------------------


def min_p_removal_mask(scaled_logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Tokens min-p removes: those with ``p < min_p * p_max`` under ``softmax(scaled_logits)``.

    As transformers' ``MinPLogitsWarper`` (applied after the temperature). The most likely token
    always stays (``min_p <= 1``). Probabilities ``[0.5, 0.3, 0.15, 0.05]`` with ``min_p = 0.4``:
    the threshold is ``0.2``, so the last two go.

    Args:
        scaled_logits: ``(B, V)`` temperature-scaled logits.
        min_p: in (0, 1].

    Returns:
        ``(B, V)`` booleans, True where removed.

    Example:
        >>> min_p_removal_mask(torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log(), 0.4)
        tensor([[False, False,  True,  True]])
    """
    probs = torch.softmax(scaled_logits.float(), dim=-1)  # (B, V)
    return probs < min_p * probs.amax(dim=-1, keepdim=True)


def eta_removal_mask(scaled_logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Tokens eta sampling removes: ``p < eta`` with ``eta = min(epsilon, sqrt(epsilon) * exp(-H))``.

    As transformers' ``EtaLogitsWarper``: ``H`` is the entropy of ``softmax(scaled_logits)`` and the
    most likely token always stays. Probabilities ``[0.5, 0.3, 0.15, 0.05]`` have ``H = 1.1443``;
    with ``epsilon = 0.09``: ``eta = min(0.09, 0.3 * exp(-1.1443)) = 0.0955 -> 0.09``, so only the
    last goes.

    Args:
        scaled_logits: ``(B, V)`` temperature-scaled logits.
        epsilon: in (0, 1).

    Returns:
        ``(B, V)`` booleans, True where removed.

    Example:
        >>> eta_removal_mask(torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log(), 0.09)
        tensor([[False, False, False,  True]])
    """
    scaled_logits = scaled_logits.float()
    probs = torch.softmax(scaled_logits, dim=-1)  # (B, V)
    eta = torch.clamp(math.sqrt(epsilon) * torch.exp(-entropy(scaled_logits)), max=epsilon).unsqueeze(-1)  # (B, 1)
    is_top = scaled_logits >= scaled_logits.amax(dim=-1, keepdim=True)  # (B, V)
    return (probs < eta) & ~is_top


def top_n_sigma_removal_mask(logits: torch.Tensor, n: float) -> torch.Tensor:
    """Tokens top-n-sigma removes (arXiv 2411.07641): logits below ``max - n * std``.

    ``std`` is the population standard deviation of the row's finite logits (``-inf`` entries are
    left out and stay removed). Dividing the logits by a temperature divides ``max`` and ``std``
    alike, so the mask does not depend on the temperature. Logits ``[4, 2, 0, -2]``: mean 1,
    std ``sqrt(5) = 2.236``; ``n = 1`` keeps logits ``>= 4 - 2.236 = 1.764``: the first two.

    Args:
        logits: ``(B, V)`` logits (raw or temperature-scaled).
        n: number of standard deviations, > 0.

    Returns:
        ``(B, V)`` booleans, True where removed.

    Example:
        >>> top_n_sigma_removal_mask(torch.tensor([[4.0, 2.0, 0.0, -2.0]]), 1.0)
        tensor([[False, False,  True,  True]])
    """
    logits = logits.float()
    finite = torch.isfinite(logits)  # (B, V)
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)  # (B, 1)
    values = logits.masked_fill(~finite, 0.0)
    mean = values.sum(dim=-1, keepdim=True) / count  # (B, 1)
    variance = ((values - mean).square() * finite).sum(dim=-1, keepdim=True) / count  # (B, 1)
    threshold = logits.amax(dim=-1, keepdim=True) - n * variance.sqrt()  # (B, 1)
    return ~(logits >= threshold)  # -inf and NaN entries are removed too


def kept_mass(scaled_logits: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Probability mass of ``softmax(scaled_logits)`` that a truncation keeps.

    Example:
        >>> kept_mass(torch.tensor([[0.5, 0.3, 0.2]]).log(), torch.tensor([[False, False, True]]))
        tensor([0.8000])
    """
    probs = torch.softmax(scaled_logits.float(), dim=-1)  # (B, V)
    return probs.masked_fill(removed, 0.0).sum(dim=-1)


# Methods: raw logits -> warped logits and the values used -----------------------------------------


def _full(logits: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full(logits.shape[:-1], float(value), dtype=torch.float32, device=logits.device)  # (B,)


def edt_logits(logits: torch.Tensor, t0: float, n: float, theta: float, top_p: float = 1.0) -> WarpedStep:
    """EDT: the temperature :func:`edt_temperature` of the raw entropy, then the static top-p ``top_p``.

    Args:
        logits: ``(B, V)`` raw logits.
        t0, n, theta: see :func:`edt_temperature`.
        top_p: static nucleus mass in (0, 1].

    Example:
        >>> step = edt_logits(torch.tensor([[0.0, 0.0, 0.0]]), t0=1.0, n=0.5, theta=1.0)
        >>> step.temperature  # H = log 3 = 1.0986: T = 0.5^(1/1.0986)
        tensor([0.5321])
        >>> step.logits.softmax(-1)  # equal logits stay uniform at any temperature
        tensor([[0.3333, 0.3333, 0.3333]])
    """
    temperature = edt_temperature(entropy(logits), t0, n, theta)  # (B,)
    top_p = _full(logits, top_p)
    return WarpedStep(warp_logits(logits, temperature, top_p), temperature, top_p)


def entropy_shift_logits(
    logits: torch.Tensor,
    t_base: float,
    delta: float,
    mean_entropy: float,
    t_min: float,
    t_max: float,
    top_p: float = 1.0,
) -> WarpedStep:
    """Entropy shift: :func:`entropy_shift_temperature` with ``V = logits.shape[-1]``, then the static top-p.

    Example:
        >>> step = entropy_shift_logits(torch.tensor([[0.0, 0.0]]), 0.8, 0.5, 0.2, 0.1, 2.0)
        >>> step.temperature  # H / log 2 = 1: T = 0.8 + 0.5 * (1 - 0.2)
        tensor([1.2000])
    """
    temperature = entropy_shift_temperature(
        entropy(logits), logits.shape[-1], t_base, delta, mean_entropy, t_min, t_max
    )  # (B,)
    top_p = _full(logits, top_p)
    return WarpedStep(warp_logits(logits, temperature, top_p), temperature, top_p)


def greedy_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax puts all mass on the first most likely token: 0 there, ``-inf`` elsewhere.

    Example:
        >>> greedy_logits(torch.tensor([[1.0, 3.0, 3.0]]))
        tensor([[-inf, 0., -inf]])
    """
    warped = torch.full(logits.shape, float("-inf"), dtype=torch.float32, device=logits.device)  # (B, V)
    return warped.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 0.0)


def confidence_gated_logits(
    logits: torch.Tensor, threshold: float, temperature: float, top_p: float = 1.0
) -> WarpedStep:
    """Greedy on rows whose top probability exceeds ``threshold`` (recorded T = 0), else ``(temperature, top_p)``.

    The recorded top-p is ``top_p`` on every row (a greedy step keeps the whole mass of its one-token
    distribution, whatever the top-p).

    Example:
        >>> step = confidence_gated_logits(torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]), 0.6, 1.0)
        >>> step.temperature
        tensor([1., 0.])
        >>> step.logits.softmax(-1)
        tensor([[0.5000, 0.5000],
                [1.0000, 0.0000]])
    """
    gate = confidence_gate(logits, threshold)  # (B,)
    top_p = _full(logits, top_p)
    sampled = warp_logits(logits, _full(logits, temperature), top_p)  # (B, V)
    warped = torch.where(gate.unsqueeze(-1), greedy_logits(logits), sampled)
    return WarpedStep(warped, _full(logits, temperature).masked_fill(gate, 0.0), top_p)


def _truncated(logits: torch.Tensor, temperature: float, mask_of_scaled) -> WarpedStep:
    scaled = logits.float() / temperature  # (B, V)
    removed = mask_of_scaled(scaled)  # (B, V)
    warped = scaled.masked_fill(removed, float("-inf"))
    return WarpedStep(warped, _full(logits, temperature), kept_mass(scaled, removed))


def min_p_logits(logits: torch.Tensor, temperature: float, min_p: float) -> WarpedStep:
    """Temperature, then :func:`min_p_removal_mask` on the scaled logits; top-p = the mass kept.

    Example:
        >>> step = min_p_logits(torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log(), 1.0, 0.4)
        >>> step.logits.softmax(-1), step.top_p
        (tensor([[0.6250, 0.3750, 0.0000, 0.0000]]), tensor([0.8000]))
    """
    return _truncated(logits, temperature, lambda scaled: min_p_removal_mask(scaled, min_p))


def eta_logits(logits: torch.Tensor, temperature: float, epsilon: float) -> WarpedStep:
    """Temperature, then :func:`eta_removal_mask` on the scaled logits; top-p = the mass kept.

    Example:
        >>> eta_logits(torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log(), 1.0, 0.09).top_p
        tensor([0.9500])
    """
    return _truncated(logits, temperature, lambda scaled: eta_removal_mask(scaled, epsilon))


def top_n_sigma_logits(logits: torch.Tensor, temperature: float, n: float) -> WarpedStep:
    """Temperature, then :func:`top_n_sigma_removal_mask` (temperature invariant); top-p = the mass kept.

    Example:
        >>> step = top_n_sigma_logits(torch.tensor([[4.0, 2.0, 0.0, -2.0]]), 2.0, 1.0)
        >>> step.logits  # scaled by 1/2; the mask is that of the raw logits
        tensor([[2., 1., -inf, -inf]])
    """
    return _truncated(logits, temperature, lambda scaled: top_n_sigma_removal_mask(scaled, n))
