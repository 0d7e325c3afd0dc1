"""The loss step: one micro-batch -> its named loss terms -> summed gradients and statistics -> the step's gradient.

Each micro-batch returns loss *sums* and counts; the temperature loss and the top-p loss have different
counts (dropped easy tokens), so their gradients are accumulated separately (in float64, where the order
of summation does not matter), all-reduced with the counts, and combined as
``grad_T / count_T + grad_P / count_P (+ grad_C / pairs + grad_A / rows)``: each loss averaged over its own
tokens (or pairs, or rows) of the whole global batch. Every process then holds the same gradient.

The terms are listed once, in :data:`LOSS_TERMS`; the statistics reduced with the gradients
(:data:`STATISTICS`) and their places in the reduced vector follow from that table.

Shapes: ``B`` batch, ``L`` padded length, ``N`` completion positions, ``P`` trained parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

import torch

from autodeco.core import losses
from autodeco.core.defaults import IGNORE_INDEX
from autodeco.training.config import TrainConfig
from autodeco.training.control_losses import AnchorLoss, ControlLosses, anchor_loss, control_losses


@dataclasses.dataclass
class MicroBatchLosses:
    """One micro-batch's loss sums (with gradients) and the predictions on its completion tokens."""

    temperature: losses.LossSum | None
    top_p: losses.LossSum | None
    temperatures: torch.Tensor
    """``(N,)`` predicted T at the positions that predict a labelled token (detached)."""
    top_ps: torch.Tensor
    """``(N,)`` predicted P at the same positions (detached)."""
    control: ControlLosses | None = None
    """The decoding-control ranking loss of the micro-batch's pairs (None: no pair in it)."""
    anchor: AnchorLoss | None = None
    """The plain rows' distance to the anchor heads (None: no anchor)."""


def micro_batch_losses(model, batch: dict[str, torch.Tensor], config: TrainConfig, anchor=None) -> MicroBatchLosses:
    """Forward one micro-batch and compute the enabled heads' loss sums (the loss step).

    Args:
        model: an ``AutoDecoForCausalLM``.
        batch: ``input_ids``, ``attention_mask``, ``labels`` ``(B, L)`` and ``drop_draws`` ``(B, L - 1)``.
        config: the loss settings.
        anchor: the ``control_anchor`` heads (an ``AutoDecoForCausalLM`` on the same base), or None.
    """
    with top_p_head_logits(model, config) as head_logits:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    top_p_logits = head_logits.get("values")  # (B + A, L) or None
    plain = batch["drop_draws"].shape[0]  # B: the rows after them are commanded copies (decoding control)
    logits, temperature, top_p = output.logits[:plain], output.temperature[:plain], output.top_p[:plain]
    labels = batch["labels"][:plain]
    paper_labels = labels  # the paper's losses: verified answers only (not the --control-data rows)
    if "paper_rows" in batch:
        paper_labels = labels.masked_fill(~batch["paper_rows"][:, None], IGNORE_INDEX)
    temperature_sum = top_p_sum = None
    if model.config.enable_temperature_head:
        temperature_sum = losses.temperature_loss(
            logits, temperature, paper_labels, easy_token_drop=config.easy_token_drop,
            dft_weighting=config.dft_weighting, random_values=batch["drop_draws"], reduction="sum",
        )
    if model.config.enable_top_p_head:
        top_p_sum = losses.top_p_loss(
            logits, temperature, top_p, paper_labels, steepness=config.steepness,
            dft_weighting=config.dft_weighting, reduction="sum",
        )
    predicting = labels[:, 1:] != IGNORE_INDEX  # (B, L-1): positions whose next token is labelled (every plain row)
    control = (control_losses(output.temperature, output.top_p, batch, config, top_p_logits)
               if "control_rows" in batch else None)
    anchored = None
    if anchor is not None:
        with torch.no_grad():
            anchor_temperature, anchor_top_p = anchor.predict(output.head_input[:plain], logits)
        anchored = anchor_loss(temperature, top_p, anchor_temperature, anchor_top_p, labels, model.config, config,
                               None if top_p_logits is None else top_p_logits[:plain])
    return MicroBatchLosses(
        temperature_sum, top_p_sum,
        temperature[:, :-1][predicting].detach().float(), top_p[:, :-1][predicting].detach().float(), control, anchored,
    )


@contextlib.contextmanager
def top_p_head_logits(model, config: TrainConfig):
    """While a forward runs inside it, catch the top-p head's pre-sigmoid outputs ``(B, L)`` into the yielded dict's
    ``values`` (left empty unless decoding control ranks P on the ``bounded`` scale, the one place they are used).

    The bounded scale passes the ranking and anchor gradients to these outputs directly: through P's sigmoid they
    would vanish wherever float32 rounds P to exactly 1, where a saturated head sits.
    """
    caught: dict[str, torch.Tensor] = {}
    head = getattr(getattr(model, "module", model), "top_p_head", None)  # under DDP or DeepSpeed: the wrapped model
    if not (config.control_enabled and config.control.top_p_scale == "bounded" and head is not None):
        yield caught
        return
    last_linear = head.mlp[2]  # Linear(256, 1), before the sigmoid (see autodeco.core.heads)

    def keep(module, inputs, output):
        caught["values"] = output.squeeze(-1)  # (B, L)

    handle = last_linear.register_forward_hook(keep)
    try:
        yield caught
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------- the loss terms


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One loss of the recipe: where a micro-batch's result holds it, what it adds to the step's statistics, what it is averaged over.

    The step's gradient is the sum over terms of ``summed gradient / max(count, 1)``, where ``count`` is
    the reduced value of the statistic named ``count``.
    """

    name: str
    part: Callable[[MicroBatchLosses], Any]
    """The term's result in a micro-batch (with a ``total`` carrying the gradient), or None when it has none."""
    statistics: tuple[str, ...]
    """Names of the sums the term adds to the step's statistics, in :data:`STATISTICS` order."""
    values: Callable[[Any], tuple]
    """The term's result -> its contribution to each of ``statistics`` (same order)."""
    count: str
    """The statistic its summed gradient is divided by (its tokens, pairs or rows)."""


def _loss_sum_values(part: losses.LossSum) -> tuple[torch.Tensor, torch.Tensor]:
    return part.total.detach().double(), part.count.double()


def _control_values(part: ControlLosses) -> tuple:
    return (
        float(part.total.detach()), part.pairs, part.temperature_loss_sum, part.top_p_loss_sum,
        part.temperature_gap_sum, part.top_p_gap_sum, part.temperature_moved, part.top_p_moved,
        part.directed_pairs, part.neutral_temperature_shift_sum, part.neutral_top_p_shift_sum,
    )


def _anchor_values(part: AnchorLoss) -> tuple[float, int]:
    return float(part.total.detach()), part.rows


LOSS_TERMS = (
    LossTerm("temperature", attrgetter("temperature"), ("temperature_loss_sum", "kept_tokens"),
             _loss_sum_values, count="kept_tokens"),
    LossTerm("top_p", attrgetter("top_p"), ("top_p_loss_sum", "top_p_tokens"), _loss_sum_values,
             count="top_p_tokens"),
    LossTerm("control", attrgetter("control"), (
        "control_loss_sum", "control_pairs", "control_temperature_loss_sum", "control_top_p_loss_sum",
        "control_temperature_gap_sum", "control_top_p_gap_sum", "control_temperature_moved", "control_top_p_moved",
        "control_directed_pairs", "control_neutral_temperature_shift_sum", "control_neutral_top_p_shift_sum",
    ), _control_values, count="control_pairs"),
    LossTerm("anchor", attrgetter("anchor"), ("anchor_loss_sum", "anchor_rows"), _anchor_values,
             count="anchor_rows"),
)
"""The recipe's losses, in the order their gradients are taken (the paper's two, then decoding control's two)."""

PREDICTION_STATISTICS = ("temperature_sum", "temperature_square_sum", "top_p_sum", "top_p_square_sum", "positions")
"""Sums over the completion positions of the predicted T and P (for their logged mean and spread)."""

STATISTICS = tuple(name for term in LOSS_TERMS for name in term.statistics) + PREDICTION_STATISTICS
"""The per-step sums reduced across processes with the gradients (float64), named; their places follow from the terms."""


def pack(gradients: list[torch.Tensor], statistics: torch.Tensor) -> torch.Tensor:
    """One vector to all-reduce: the terms' summed gradients, then the statistics.

    Args:
        gradients: one ``(P,)`` gradient per :data:`LOSS_TERMS` entry.
        statistics: ``(len(STATISTICS),)``.

    Returns:
        ``(len(LOSS_TERMS) * P + len(STATISTICS),)``.
    """
    return torch.cat([*gradients, statistics])


def unpack(packed: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pack`'s vector back into ``(len(LOSS_TERMS), P)`` gradients and ``(len(STATISTICS),)`` statistics.

    Example:
        >>> gradients, statistics = unpack(pack([torch.ones(2)] * len(LOSS_TERMS), torch.zeros(len(STATISTICS))), 2)
        >>> tuple(gradients.shape), tuple(statistics.shape) == (len(STATISTICS),)
        ((4, 2), True)
    """
    terms = len(LOSS_TERMS)
    return packed[: terms * size].view(terms, size), packed[terms * size :]


def mean_gradient(gradients: torch.Tensor, statistics: torch.Tensor) -> torch.Tensor:
    """The step's gradient from the reduced sums: each term's summed gradient over its own count, added up.

    Args:
        gradients: ``(len(LOSS_TERMS), P)`` summed gradients, in :data:`LOSS_TERMS` order.
        statistics: ``(len(STATISTICS),)`` the reduced statistics.

    Returns:
        ``(P,)`` the gradient: ``grad_T / count_T + grad_P / count_P + grad_C / pairs + grad_A / rows``.
    """
    values = dict(zip(STATISTICS, statistics.tolist()))
    return sum_of_means((gradients[index], values[term.count]) for index, term in enumerate(LOSS_TERMS))


def sum_of_means(gradients_and_counts: Iterable[tuple[torch.Tensor | None, float]]) -> torch.Tensor:
    """``sum of gradient / max(count, 1)`` over the pairs, in their order, leaving out None gradients.

    A loss with no kept token (or no pair, or no row) contributes nothing (its summed gradient is 0 anyway).

    Example:
        >>> sum_of_means([(torch.tensor([4.0]), 2), (torch.tensor([3.0]), 3), (None, 0)])
        tensor([3.])
    """
    combined = None
    for gradient, count in gradients_and_counts:
        if gradient is None:
            continue
        mean = gradient / max(count, 1.0)
        combined = mean if combined is None else combined + mean
    return combined


def accumulate_gradients(
    model, parameters: list[torch.Tensor], micro_batches: list[dict], config: TrainConfig, anchor=None
):
    """Summed gradients of each loss term and the statistics over this process's micro-batches.

    Returns:
        ``(temperature_gradient (P,), top_p_gradient (P,), control_gradient (P,), anchor_gradient (P,),
        statistics (len(STATISTICS),))``: one gradient per :data:`LOSS_TERMS` entry, float64, with ``P``
        the number of trained parameters (a term absent from every micro-batch leaves its gradient 0).
    """
    size = sum(parameter.numel() for parameter in parameters)
    device = parameters[0].device
    gradients = [torch.zeros(size, dtype=torch.float64, device=device) for _ in LOSS_TERMS]
    statistics = torch.zeros(len(STATISTICS), dtype=torch.float64, device=device)
    slot = {name: index for index, name in enumerate(STATISTICS)}
    for batch in micro_batches:
        result = micro_batch_losses(model, batch, config, anchor)
        parts = [term.part(result) for term in LOSS_TERMS]
        for index, (term, part) in enumerate(zip(LOSS_TERMS, parts)):
            if part is None:
                continue
            later = any(other is not None for other in parts[index + 1 :])  # still to differentiate
            gradients[index] += _flat_gradient(part.total, parameters, retain_graph=later)
            for name, value in zip(term.statistics, term.values(part)):
                statistics[slot[name]] += value
        temperatures, top_ps = result.temperatures.double(), result.top_ps.double()
        statistics[slot["temperature_sum"]] += temperatures.sum()
        statistics[slot["temperature_square_sum"]] += temperatures.square().sum()
        statistics[slot["top_p_sum"]] += top_ps.sum()
        statistics[slot["top_p_square_sum"]] += top_ps.square().sum()
        statistics[slot["positions"]] += temperatures.numel()
    return (*gradients, statistics)


def combine_gradients(
    temperature_gradient: torch.Tensor, temperature_count: float, top_p_gradient: torch.Tensor, top_p_count: float,
    control_gradient: torch.Tensor | None = None, control_pairs: float = 0.0,
    anchor_gradient: torch.Tensor | None = None, anchor_rows: float = 0.0,
) -> torch.Tensor:
    """``grad_T / count_T + grad_P / count_P (+ grad_C / pairs + grad_A / rows)``: each loss averaged over its own
    tokens (or pairs, or plain rows).

    Example:
        >>> combine_gradients(torch.tensor([4.0]), 2, torch.tensor([3.0]), 3)
        tensor([3.])
        >>> combine_gradients(torch.tensor([4.0]), 2, torch.tensor([3.0]), 3, torch.tensor([1.0]), 4)
        tensor([3.2500])
    """
    return sum_of_means([
        (temperature_gradient, temperature_count), (top_p_gradient, top_p_count),
        (control_gradient, control_pairs), (anchor_gradient, anchor_rows),
    ])


def _flat_gradient(loss: torch.Tensor, parameters: list[torch.Tensor], retain_graph: bool) -> torch.Tensor:
    """``(P,)`` float64: the gradient of ``loss`` with respect to ``parameters``, flattened (zeros without a graph)."""
    if not loss.requires_grad:
        return torch.zeros(sum(parameter.numel() for parameter in parameters), dtype=torch.float64, device=loss.device)
    gradients = torch.autograd.grad(loss, parameters, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([
        (gradient if gradient is not None else torch.zeros_like(parameter)).reshape(-1).double()
        for gradient, parameter in zip(gradients, parameters)
    ])


def step_metrics(
    statistics: torch.Tensor, *, control: bool = False, anchor: bool = False, neutral: bool = False,
) -> dict[str, float]:
    """Losses, token counts and the mean/std of T and P from the reduced statistics of one step.

    With ``control``, ``loss`` includes the weighted ranking loss, logged on its own as ``control_loss``
    next to its unweighted parts, the pair count, the mean gaps ``direction * (commanded - plain)``
    of T and P, and the shares of pairs that moved the commanded way. With ``anchor``, ``loss`` also
    includes the weighted anchor loss (per plain row), logged as ``anchor_loss``. With ``neutral`` (neutral sentences
    paired too), the gaps and shares are over the low/high pairs, and the mean absolute shift of a neutral copy's T and P
    is logged (``control_neutral_*_shift``).
    """
    values = dict(zip(STATISTICS, statistics.tolist()))
    positions = max(values["positions"], 1.0)
    temperature_loss = values["temperature_loss_sum"] / max(values["kept_tokens"], 1.0)
    top_p_loss = values["top_p_loss_sum"] / max(values["top_p_tokens"], 1.0)
    temperature_mean, top_p_mean = values["temperature_sum"] / positions, values["top_p_sum"] / positions
    pairs = max(values["control_pairs"], 1.0)
    directed = max(values["control_directed_pairs"], 1.0) if neutral else pairs  # runs without neutral: as before
    option_metrics = {  # decoding control's (and the anchor's) own metrics
        "control_loss": values["control_loss_sum"] / pairs,
        "control_pairs": int(values["control_pairs"]),
        "control_temperature_loss": values["control_temperature_loss_sum"] / pairs,
        "control_top_p_loss": values["control_top_p_loss_sum"] / pairs,
        "control_temperature_gap": values["control_temperature_gap_sum"] / directed,
        "control_top_p_gap": values["control_top_p_gap_sum"] / directed,
        "control_temperature_moved": values["control_temperature_moved"] / directed,
        "control_top_p_moved": values["control_top_p_moved"] / directed,
    } if control else {}
    if control and neutral:
        neutral_pairs = max(values["control_pairs"] - values["control_directed_pairs"], 1.0)
        option_metrics["control_neutral_temperature_shift"] = values["control_neutral_temperature_shift_sum"] / neutral_pairs
        option_metrics["control_neutral_top_p_shift"] = values["control_neutral_top_p_shift_sum"] / neutral_pairs
    if anchor:
        option_metrics["anchor_loss"] = values["anchor_loss_sum"] / max(values["anchor_rows"], 1.0)
    return {
        "loss": temperature_loss + top_p_loss + option_metrics.get("control_loss", 0.0) + option_metrics.get("anchor_loss", 0.0),
        "temperature_loss": temperature_loss,
        "top_p_loss": top_p_loss,
        "kept_tokens": int(values["kept_tokens"]),
        "labelled_tokens": int(values["positions"]),
        "temperature_mean": temperature_mean,
        "temperature_std": math.sqrt(max(values["temperature_square_sum"] / positions - temperature_mean**2, 0.0)),
        "top_p_mean": top_p_mean,
        "top_p_std": math.sqrt(max(values["top_p_square_sum"] / positions - top_p_mean**2, 0.0)),
        **option_metrics,
    }
