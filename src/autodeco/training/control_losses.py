"""The decoding-control loss terms (PAPER.md section 7): the ranking loss of commanded copies, and the anchor loss.

A paired example's commanded copy rides in the same micro-batch as the plain example (rows after the
plain ones). :func:`control_losses` orders the copy's mean T and P below (low command) or above (high)
the plain row's; :func:`anchor_loss` keeps the plain rows' values near an anchor's (``control_anchor``).
Both read their settings from ``config.control`` (:class:`autodeco.training.config.ControlConfig`).

Shapes: ``B`` plain rows, ``A`` commanded rows, ``L`` padded length.
"""

from __future__ import annotations

import dataclasses

import torch

from autodeco.core.control_losses import completion_means, ranking_loss
from autodeco.core.defaults import IGNORE_INDEX
from autodeco.training.config import TrainConfig

LOGIT_EPSILON = 1e-7
"""P is clamped to [1e-7, 1 - 1e-7] before its logit (float32 rounds a sigmoid to exactly 1 beyond a logit of ~17)."""

LOG_FLOOR = 1e-6
"""Mean temperatures are clamped to at least this before their log (``control_temperature_scale="log"``)."""


@dataclasses.dataclass
class ControlLosses:
    """The ranking loss of one micro-batch's decoding-control pairs and what it saw."""

    total: torch.Tensor
    """Scalar: ``control_weight`` x the sum over pairs of the enabled parts' hinges; carries the gradient."""
    pairs: int
    temperature_loss_sum: float
    top_p_loss_sum: float
    temperature_gap_sum: float
    """Sum over pairs of ``direction * (commanded mean T - plain mean T)`` (positive: moved as commanded)."""
    top_p_gap_sum: float
    temperature_moved: int
    """Pairs whose commanded mean T moved the commanded way."""
    top_p_moved: int
    directed_pairs: int = 0
    """Pairs with a low or high command (the gaps and moved counts are over these; the rest are neutral sentences)."""
    neutral_temperature_shift_sum: float = 0.0
    """Sum over neutral pairs of ``|copy mean T - plain mean T|`` (on ``control_temperature_scale``)."""
    neutral_top_p_shift_sum: float = 0.0
    """Sum over neutral pairs of ``|copy mean P - plain mean P|`` (on ``control_top_p_scale``)."""


@dataclasses.dataclass
class AnchorLoss:
    """The plain rows' distance to the anchor heads' predictions in one micro-batch."""

    total: torch.Tensor
    """Scalar: ``control_anchor_weight`` x the sum over plain rows of their mean squared distance; carries the gradient."""
    rows: int
    """Plain rows with at least one completion token."""


def anchor_loss(
    temperature: torch.Tensor, top_p: torch.Tensor, anchor_temperature: torch.Tensor, anchor_top_p: torch.Tensor,
    labels: torch.Tensor, heads, config: TrainConfig, top_p_logits: torch.Tensor | None = None,
) -> AnchorLoss:
    """The plain rows' distance to the anchor heads: per row, the mean over its completion positions of the squared
    differences of the trained heads' values (T on ``control_temperature_scale``, P on ``control_top_p_scale``).

    Args:
        temperature, top_p: ``(B, L)`` the trained heads' predictions on the plain rows.
        anchor_temperature, anchor_top_p: ``(B, L)`` the anchor heads' predictions on the same positions.
        labels: ``(B, L)``.
        heads: the trained model's ``AutoDecoConfig`` (only enabled heads are anchored).
        config: ``control_anchor_weight`` and the two scales.
        top_p_logits: ``(B, L)`` the trained top-p head's pre-sigmoid outputs, or None (see :func:`_on_top_p_scale`).
    """
    squared = torch.zeros_like(temperature, dtype=torch.float32)
    if heads.enable_temperature_head:
        difference = _on_temperature_scale(temperature, config) - _on_temperature_scale(anchor_temperature, config)
        squared = squared + difference.square()
    if heads.enable_top_p_head:
        trained = _on_top_p_scale(top_p, config, top_p_logits)
        squared = squared + (trained - _on_top_p_scale(anchor_top_p, config)).square()
    rows = (labels[:, 1:] != IGNORE_INDEX).any(dim=-1)  # (B,)
    total = completion_means(squared, labels)[rows].sum() * config.control.anchor_weight
    return AnchorLoss(total=total, rows=int(rows.sum()))


def _on_temperature_scale(values: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Temperatures on ``control_temperature_scale``: as they are, or their log (floored at ``LOG_FLOOR``); float32."""
    values = values.float()
    return values.clamp(min=LOG_FLOOR).log() if config.control.temperature_scale == "log" else values


def _on_top_p_scale(values: torch.Tensor, config: TrainConfig, head_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Top-p values on ``control_top_p_scale``; float32.

    ``logit``: their logit (taken in float64, clamped by ``LOGIT_EPSILON``). ``probability``: as they are.
    ``bounded``: as they are, but with the logit's gradient (a straight-through step over the head's sigmoid: the
    derivative with respect to the head's pre-sigmoid output is 1, not ``P (1 - P)``, which vanishes near P = 1).
    With ``head_logits`` (the top-p head's pre-sigmoid outputs at the same positions,
    :func:`~autodeco.training.loss_step.top_p_head_logits`) the step goes to them directly; without, through the
    logit of P, whose gradient is zero where float32 rounds P to exactly 1 (a head output beyond about 17).
    """
    if config.control.top_p_scale == "probability":
        return values.float()
    if config.control.top_p_scale == "bounded" and head_logits is not None:
        logits = head_logits.float()
        return values.float().detach() + (logits - logits.detach())
    logits = torch.logit(values.double(), eps=LOGIT_EPSILON).float()
    if config.control.top_p_scale == "logit":
        return logits
    return values.float().detach() + (logits - logits.detach())


def _top_p_margins(plain_means: torch.Tensor, directions: torch.Tensor, margin: float, config: TrainConfig):
    """The P margin of each pair: ``margin``, or on the ``bounded`` scale at most ``control_top_p_room`` times the
    room its command has left (the plain mean for a low command, ``1 -`` it for a high one); ``(A,)`` or a float."""
    if config.control.top_p_scale != "bounded":
        return margin
    room = torch.where(directions < 0, plain_means, 1.0 - plain_means).detach()
    return torch.clamp(room * config.control.top_p_room, min=0.0, max=margin)


def control_losses(
    temperature: torch.Tensor, top_p: torch.Tensor, batch: dict, config: TrainConfig,
    top_p_logits: torch.Tensor | None = None,
) -> ControlLosses | None:
    """The ranking loss of the commanded rows against their plain rows (teacher-forced means over the completion).

    Args:
        temperature, top_p: ``(B + A, L)`` the heads' predictions for the plain and the commanded rows.
        batch: with ``labels`` ``(B + A, L)``, ``control_rows`` ``(A,)`` (the plain row of each
            commanded row ``B + a``) and ``control_directions`` ``(A,)`` (-1 low, +1 high, 0 a neutral sentence:
            its loss is ``relu(|copy mean - plain mean| - control_neutral_tolerance)``, the plain side detached, so
            the sentence must not move the values).
        config: ``control_margin``, ``control_top_p_margin``, ``control_weight``, ``control_heads``,
            ``control_top_p_scale``, ``control_temperature_scale``.
        top_p_logits: ``(B + A, L)`` the top-p head's pre-sigmoid outputs, or None (see :func:`_on_top_p_scale`).

    The gaps and hinges of P are on ``control_top_p_scale`` (logit units by default; on the ``bounded`` scale each
    pair's margin is capped by :func:`_top_p_margins`), those of T on ``control_temperature_scale`` (the mean itself by
    default, or its log).
    """
    from autodeco.training.config import CONTROL_TARGETS

    rows, directions = batch["control_rows"], batch["control_directions"]
    if rows.numel() == 0:
        return None
    plain = temperature.shape[0] - rows.shape[0]
    labels = batch["labels"]
    targets = CONTROL_TARGETS[config.control.heads]
    top_p = _on_top_p_scale(top_p, config, top_p_logits)  # logit by default: no vanishing gradient where the head saturates
    margins = config.control.margins
    directed = directions != 0  # (A,) low/high commands; the others are neutral sentences
    signs = torch.where(directed, directions, torch.ones_like(directions)).float()  # a placeholder sign for neutral rows
    parts = {}
    for name, values in (("temperature", temperature), ("top-p", top_p)):
        command_means = completion_means(values[plain:].float(), labels[plain:])  # (A,)
        plain_means = completion_means(values[:plain].float(), labels[:plain])[rows]  # (A,)
        if name == "temperature":  # the log of each mean on the log scale: a ratio
            command_means = _on_temperature_scale(command_means, config)
            plain_means = _on_temperature_scale(plain_means, config)
        margin = margins[name] if name == "temperature" else _top_p_margins(plain_means, signs, margins[name], config)
        hinge = ranking_loss(command_means, plain_means, signs, margin=margin)
        shift = (command_means - plain_means.detach()).abs()  # a neutral sentence must leave the mean where it was
        loss = torch.where(directed, hinge, torch.relu(shift - config.control.neutral_tolerance))
        gap = torch.where(directed, directions.float() * (command_means - plain_means).detach(), 0.0)  # (A,)
        parts[name] = (loss, gap, shift.detach()[~directed])
    total = sum(parts[name][0].sum() for name in targets) * config.control.weight
    return ControlLosses(
        total=total, pairs=int(rows.numel()),
        temperature_loss_sum=float(parts["temperature"][0].detach().sum()),
        top_p_loss_sum=float(parts["top-p"][0].detach().sum()),
        temperature_gap_sum=float(parts["temperature"][1].sum()), top_p_gap_sum=float(parts["top-p"][1].sum()),
        temperature_moved=int((parts["temperature"][1] > 0).sum()), top_p_moved=int((parts["top-p"][1] > 0).sum()),
        directed_pairs=int(directed.sum()),
        neutral_temperature_shift_sum=float(parts["temperature"][2].sum()),
        neutral_top_p_shift_sum=float(parts["top-p"][2].sum()),
    )
