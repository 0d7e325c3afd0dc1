"""The inverse-temperature test: does token-level temperature beat one static mean temperature?

Write ``beta = 1 / T`` for the inverse temperature and ``z`` for one position's logits. The
log-probability of the gold token ``y`` at inverse temperature ``beta`` is

    ``f(beta) = log softmax(beta * z)[y] = beta * z_y - logsumexp(beta * z)``,

whose derivatives, under ``q = softmax(beta * z)``, are

    ``f'(beta) = z_y - E_q[z] = g``   and   ``f''(beta) = -Var_q[z] = -v <= 0``,

so ``f`` is concave in ``beta``. Against a single static inverse temperature ``beta_bar`` (the mean
of the heads' ``beta_t``), the heads' own ``beta_t = beta_bar + delta_t`` changes the gold token's
log-probability by, to second order,

    ``predicted_t = g_t * delta_t - 0.5 * v_t * delta_t ** 2``

(``g_t``, ``v_t`` taken at ``beta_bar``), while the exact change is

    ``measured_t = f_t(beta_t) - f_t(beta_bar)``.

Variation pays only where ``delta_t`` has the sign of ``g_t`` (sharpen where the gold token is
above the mean logit, flatten where it is below) by enough to beat the variance penalty.

Top-p plays no part here: this is about temperature alone. Everything is computed in float64.
Pure tensor code: imports torch only.

Shapes: ``N`` tokens, ``V`` vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["InverseTemperatureTerms", "gold_log_prob", "gold_slope_and_curvature", "inverse_temperature_terms",
           "predicted_gain"]


class InverseTemperatureTerms(NamedTuple):
    """Per-token terms of the inverse-temperature test, each ``(N,)`` float64."""

    delta: torch.Tensor
    """``beta_t - beta_bar``: the heads' inverse temperature minus the static one."""
    slope: torch.Tensor
    """``g = z_y - E_q[z]`` under ``q = softmax(beta_bar * z)``: ``d/dbeta log p(y)`` at ``beta_bar``."""
    variance: torch.Tensor
    """``v = Var_q[z]``: minus the second derivative of ``log p(y)`` at ``beta_bar``."""
    predicted: torch.Tensor
    """``g * delta - 0.5 * v * delta ** 2``: the second-order gain."""
    measured: torch.Tensor
    """``log softmax(beta_t z)_y - log softmax(beta_bar z)_y``: the exact gain."""


def gold_log_prob(logits: torch.Tensor, labels: torch.Tensor, inverse_temperature: torch.Tensor | float) -> torch.Tensor:
    """``log softmax(beta * z)[y]`` per row, in float64.

    Args:
        logits: ``(N, V)`` logits ``z`` (``-inf`` allowed for tokens that can never appear).
        labels: ``(N,)`` gold token ids ``y``.
        inverse_temperature: ``(N,)`` tensor or a number ``beta > 0`` (a Python float keeps float64 precision).

    Returns:
        ``(N,)`` float64 log-probabilities of the gold tokens.

    Example:
        >>> gold_log_prob(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), 3.0).exp()
        tensor([0.5000], dtype=torch.float64)
    """
    beta = torch.as_tensor(inverse_temperature, dtype=torch.float64, device=logits.device).expand(labels.shape)
    log_probs = torch.log_softmax(beta[:, None] * logits.double(), dim=-1)  # (N, V)
    return log_probs.gather(-1, labels[:, None]).squeeze(-1)


def gold_slope_and_curvature(
    logits: torch.Tensor, labels: torch.Tensor, inverse_temperature: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``g = z_y - E_q[z]`` and ``v = Var_q[z]`` under ``q = softmax(beta * z)``, per row, in float64.

    ``g`` is the first derivative of :func:`gold_log_prob` in ``beta`` and ``-v`` the second.

    Args:
        logits: ``(N, V)`` logits ``z`` (``-inf`` entries have ``q = 0`` and are left out).
        labels: ``(N,)`` gold token ids ``y``.
        inverse_temperature: ``(N,)`` tensor or a number ``beta > 0``.

    Returns:
        ``(g, v)``, each ``(N,)`` float64.

    Example:
        >>> # z = [2, 0] at beta = 0 (uniform q): E[z] = 1, Var[z] = 1; gold token 0 -> g = 2 - 1 = 1.
        >>> slope, variance = gold_slope_and_curvature(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), 0.0)
        >>> slope.item(), variance.item()
        (1.0, 1.0)
    """
    z = logits.double()  # (N, V)
    beta = torch.as_tensor(inverse_temperature, dtype=torch.float64, device=logits.device).expand(labels.shape)
    q = torch.softmax(beta[:, None] * z, dim=-1)  # (N, V)
    finite_z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))  # 0 * -inf would be NaN
    mean = (q * finite_z).sum(dim=-1)  # (N,) E_q[z]
    centred = torch.where(q > 0, finite_z - mean[:, None], torch.zeros_like(z))  # (N, V)
    variance = (q * centred * centred).sum(dim=-1)  # (N,) Var_q[z]
    slope = finite_z.gather(-1, labels[:, None]).squeeze(-1) - mean
    return slope, variance


def predicted_gain(slope: torch.Tensor, variance: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Second-order change of ``log p(y)`` when ``beta`` moves by ``delta``: ``g * delta - 0.5 * v * delta ** 2``.

    Example:
        >>> predicted_gain(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.5]))  # 0.5 - 0.25
        tensor([0.2500])
    """
    return slope * delta - 0.5 * variance * delta * delta


def inverse_temperature_terms(
    logits: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor, mean_inverse_temperature: float
) -> InverseTemperatureTerms:
    """Every per-token term of the test for the heads' temperatures against one static inverse temperature.

    Args:
        logits: ``(N, V)`` base logits ``z`` at the positions predicting ``labels``.
        labels: ``(N,)`` gold (verified) token ids.
        temperature: ``(N,)`` the heads' temperatures ``T_t > 0`` (``beta_t = 1 / T_t``).
        mean_inverse_temperature: ``beta_bar``, the static inverse temperature to compare against
            (the mean of ``1 / T_t`` over all diagnosed tokens).

    Returns:
        :class:`InverseTemperatureTerms` of ``(N,)`` float64 tensors.

    Example:
        >>> logits, labels = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
        >>> # beta_bar = 1.25; sharper (T 0.5) where the gold token leads, flatter (T 2) where it trails: both gain.
        >>> terms = inverse_temperature_terms(logits, labels, torch.tensor([0.5, 2.0]), 1.25)
        >>> terms.delta.tolist(), bool((terms.measured > 0).all()), bool((terms.predicted > 0).all())
        ([0.75, -0.75], True, True)
    """
    if not mean_inverse_temperature > 0:
        raise ValueError(f"mean_inverse_temperature must be > 0, got {mean_inverse_temperature}")
    beta = 1.0 / temperature.double()  # (N,)
    delta = beta - mean_inverse_temperature
    slope, variance = gold_slope_and_curvature(logits, labels, mean_inverse_temperature)
    measured = gold_log_prob(logits, labels, beta) - gold_log_prob(logits, labels, mean_inverse_temperature)
    return InverseTemperatureTerms(delta, slope, variance, predicted_gain(slope, variance, delta), measured)
