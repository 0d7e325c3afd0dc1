"""The training recipe: fit the two heads on the base model's own verified trajectories.

PAPER.md section 3. The base model is frozen; only the heads' parameters go to the optimizer.
The loop runs under ``accelerate`` (one process, or ``accelerate launch --num_processes N``), with
the gradient reduced by hand so that it is *exactly* the one-process gradient of the global batch:

* every random choice is a function of (seed, epoch, example index) (see ``training.data``), so a
  global batch of ``b * N * accumulation`` examples is split across processes deterministically
  and each example sees the same easy-token drop decisions however it is split;
* each micro-batch returns loss *sums* and token counts; the temperature loss and the top-p loss
  have different counts (dropped easy tokens), so their gradients are accumulated separately (in
  float64, where the order of summation does not matter), all-reduced with the counts, and
  combined as ``grad_T / count_T + grad_P / count_P``: the mean over the kept tokens of the
  whole global batch. Every process then holds the same gradient and takes the same step.
* with decoding control on (``control_share > 0``, PAPER.md section 7), a paired example's
  commanded copy rides in the same micro-batch as the plain example (rows after the plain ones);
  the paper's losses see the plain rows only, and the ranking loss's summed gradient and pair
  count are reduced like the others and added as ``grad_C / pairs``. With an anchor
  (``control_anchor``), the plain rows' distance to the anchor heads' predictions (computed on the
  same hidden states) adds ``grad_A / rows`` the same way.

No ``DistributedDataParallel`` wrapper is involved (it would average one loss per process), so a
frozen base needs no ``find_unused_parameters``. Under DeepSpeed ZeRO-3 (an ``accelerate`` config
with a DeepSpeed plugin) the frozen base is handed to DeepSpeed, which partitions its parameters
across the processes (at load time with ``zero3_init_flag: true``) and gathers each layer's
weights for its forward pass; the heads (a few MB) are not part of the DeepSpeed engine: they
stay whole on every process and follow the same path as above, so their checkpoints need no
gathering. See :func:`configure_deepspeed` and :func:`place_model`.

Around this file: ``config`` (settings, presets), ``data`` (trajectories -> batches, data order),
``state`` (the output folder, checkpoints, resume checks) and ``curve`` (the log and its plot).
A restart with the same folder resumes from the newest complete checkpoint (a run killed at any
moment resumes, and on CPU with a fixed seed ends with the same heads as an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch

from autodeco.core import losses
from autodeco.model.base_model import load_tokenizer
from autodeco.training import state
from autodeco.training.config import ADAM_BETAS, ADAM_EPSILON, TrainConfig
from autodeco.training.curve import append_log, truncate_log
from autodeco.training.data import (
    CommandedExamples,
    DataReport,
    TrainingExample,
    build_training_set,
    collate,
    collate_drop_draws,
    drop_draws,
    global_batch,
    micro_batch_slice,
    pad_token_id,
)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_heads` did."""

    output_dir: Path
    heads_dir: Path
    steps: int
    """Optimizer steps of the whole run."""
    resumed_from: int | None
    """Step of the checkpoint this invocation resumed from (None: started fresh)."""
    already_finished: bool
    """True when the folder held a finished run: nothing was done."""
    data_report: DataReport | None
    last_log: dict | None
    """The last ``log.jsonl`` row of this invocation (None when no step ran)."""
    main_process: bool = True
    """False on the other processes of a multi-process launch (they print nothing)."""


# ------------------------------------------------------------------------------------- pure pieces


def learning_rate_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warmup, then constant or cosine.

    The schedule is a pure function of the step, so resuming needs no scheduler state.

    Example:
        >>> [learning_rate_at(s, peak=1.0, warmup_steps=2, total_steps=6, schedule="cosine") for s in range(6)]
        [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627]
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def combine_gradients(
    temperature_gradient: torch.Tensor, temperature_count: float, top_p_gradient: torch.Tensor, top_p_count: float,
    control_gradient: torch.Tensor | None = None, control_pairs: float = 0.0,
    anchor_gradient: torch.Tensor | None = None, anchor_rows: float = 0.0,
) -> torch.Tensor:
    """``grad_T / count_T + grad_P / count_P (+ grad_C / pairs + grad_A / rows)``: each loss averaged over its own
    tokens (or pairs, or plain rows).

    A loss with no kept token (or no pair, or no row) contributes nothing (its summed gradient is 0 anyway).

    Example:
        >>> combine_gradients(torch.tensor([4.0]), 2, torch.tensor([3.0]), 3)
        tensor([3.])
        >>> combine_gradients(torch.tensor([4.0]), 2, torch.tensor([3.0]), 3, torch.tensor([1.0]), 4)
        tensor([3.2500])
    """
    combined = temperature_gradient / max(temperature_count, 1.0) + top_p_gradient / max(top_p_count, 1.0)
    if control_gradient is not None:
        combined = combined + control_gradient / max(control_pairs, 1.0)
    if anchor_gradient is not None:
        combined = combined + anchor_gradient / max(anchor_rows, 1.0)
    return combined


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


@dataclasses.dataclass
class AnchorLoss:
    """The plain rows' distance to the anchor heads' predictions in one micro-batch."""

    total: torch.Tensor
    """Scalar: ``control_anchor_weight`` x the sum over plain rows of their mean squared distance; carries the gradient."""
    rows: int
    """Plain rows with at least one completion token."""


def micro_batch_losses(model, batch: dict[str, torch.Tensor], config: TrainConfig, anchor=None) -> MicroBatchLosses:
    """Forward one micro-batch and compute the enabled heads' loss sums (the loss step).

    Args:
        model: an ``AutoDecoForCausalLM``.
        batch: ``input_ids``, ``attention_mask``, ``labels`` ``(B, L)`` and ``drop_draws`` ``(B, L - 1)``.
        config: the loss settings.
        anchor: the ``control_anchor`` heads (an ``AutoDecoForCausalLM`` on the same base), or None.
    """
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    plain = batch["drop_draws"].shape[0]  # B: the rows after them are commanded copies (decoding control)
    logits, temperature, top_p = output.logits[:plain], output.temperature[:plain], output.top_p[:plain]
    labels = batch["labels"][:plain]
    temperature_sum = top_p_sum = None
    if model.config.enable_temperature_head:
        temperature_sum = losses.temperature_loss(
            logits, temperature, labels, easy_token_drop=config.easy_token_drop,
            dft_weighting=config.dft_weighting, random_values=batch["drop_draws"], reduction="sum",
        )
    if model.config.enable_top_p_head:
        top_p_sum = losses.top_p_loss(
            logits, temperature, top_p, labels, steepness=config.steepness,
            dft_weighting=config.dft_weighting, reduction="sum",
        )
    predicting = labels[:, 1:] != losses.IGNORE_INDEX  # (B, L-1): positions whose next token is labelled
    control = control_losses(output.temperature, output.top_p, batch, config) if "control_rows" in batch else None
    anchored = None
    if anchor is not None:
        with torch.no_grad():
            anchor_temperature, anchor_top_p = anchor.predict(output.head_input[:plain], logits)
        anchored = anchor_loss(temperature, top_p, anchor_temperature, anchor_top_p, labels, model.config, config)
    return MicroBatchLosses(
        temperature_sum, top_p_sum,
        temperature[:, :-1][predicting].detach().float(), top_p[:, :-1][predicting].detach().float(), control, anchored,
    )


def anchor_loss(
    temperature: torch.Tensor, top_p: torch.Tensor, anchor_temperature: torch.Tensor, anchor_top_p: torch.Tensor,
    labels: torch.Tensor, heads, config: TrainConfig,
) -> AnchorLoss:
    """The plain rows' distance to the anchor heads: per row, the mean over its completion positions of the squared
    differences of the trained heads' values (T on ``control_temperature_scale``, P on ``control_top_p_scale``).

    Args:
        temperature, top_p: ``(B, L)`` the trained heads' predictions on the plain rows.
        anchor_temperature, anchor_top_p: ``(B, L)`` the anchor heads' predictions on the same positions.
        labels: ``(B, L)``.
        heads: the trained model's ``AutoDecoConfig`` (only enabled heads are anchored).
        config: ``control_anchor_weight`` and the two scales.
    """
    squared = torch.zeros_like(temperature, dtype=torch.float32)
    if heads.enable_temperature_head:
        difference = _on_temperature_scale(temperature, config) - _on_temperature_scale(anchor_temperature, config)
        squared = squared + difference.square()
    if heads.enable_top_p_head:
        squared = squared + (_on_top_p_scale(top_p, config) - _on_top_p_scale(anchor_top_p, config)).square()
    rows = (labels[:, 1:] != losses.IGNORE_INDEX).any(dim=-1)  # (B,)
    total = losses.completion_means(squared, labels)[rows].sum() * config.control_anchor_weight
    return AnchorLoss(total=total, rows=int(rows.sum()))


def _on_temperature_scale(values: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Temperatures on ``control_temperature_scale``: as they are, or their log (floored at ``LOG_FLOOR``); float32."""
    values = values.float()
    return values.clamp(min=LOG_FLOOR).log() if config.control_temperature_scale == "log" else values


def _on_top_p_scale(values: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Top-p values on ``control_top_p_scale``; float32.

    ``logit``: their logit (taken in float64, clamped by ``LOGIT_EPSILON``). ``probability``: as they are.
    ``bounded``: as they are, but with the logit's gradient (a straight-through step over the head's sigmoid: the
    derivative with respect to the head's pre-sigmoid output is 1, not ``P (1 - P)``, which vanishes near P = 1).
    """
    if config.control_top_p_scale == "probability":
        return values.float()
    logits = torch.logit(values.double(), eps=LOGIT_EPSILON).float()
    if config.control_top_p_scale == "logit":
        return logits
    return values.float().detach() + (logits - logits.detach())


def _top_p_margins(plain_means: torch.Tensor, directions: torch.Tensor, margin: float, config: TrainConfig):
    """The P margin of each pair: ``margin``, or on the ``bounded`` scale at most ``control_top_p_room`` times the
    room its command has left (the plain mean for a low command, ``1 -`` it for a high one); ``(A,)`` or a float."""
    if config.control_top_p_scale != "bounded":
        return margin
    room = torch.where(directions < 0, plain_means, 1.0 - plain_means).detach()
    return torch.clamp(room * config.control_top_p_room, min=0.0, max=margin)


def control_losses(temperature: torch.Tensor, top_p: torch.Tensor, batch: dict, config: TrainConfig) -> ControlLosses | None:
    """The ranking loss of the commanded rows against their plain rows (teacher-forced means over the completion).

    Args:
        temperature, top_p: ``(B + A, L)`` the heads' predictions for the plain and the commanded rows.
        batch: with ``labels`` ``(B + A, L)``, ``control_rows`` ``(A,)`` (the plain row of each
            commanded row ``B + a``) and ``control_directions`` ``(A,)`` (-1 low, +1 high).
        config: ``control_margin``, ``control_top_p_margin``, ``control_weight``, ``control_heads``,
            ``control_top_p_scale``, ``control_temperature_scale``.

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
    targets = CONTROL_TARGETS[config.control_heads]
    top_p = _on_top_p_scale(top_p, config)  # logit by default: no vanishing gradient where the head saturates
    margins = config.control_margins
    parts = {}
    for name, values in (("temperature", temperature), ("top-p", top_p)):
        command_means = losses.completion_means(values[plain:].float(), labels[plain:])  # (A,)
        plain_means = losses.completion_means(values[:plain].float(), labels[:plain])[rows]  # (A,)
        if name == "temperature":  # the log of each mean on the log scale: a ratio
            command_means = _on_temperature_scale(command_means, config)
            plain_means = _on_temperature_scale(plain_means, config)
        margin = margins[name] if name == "temperature" else _top_p_margins(plain_means, directions, margins[name], config)
        hinge = losses.ranking_loss(command_means, plain_means, directions.float(), margin=margin)
        gap = directions.float() * (command_means - plain_means).detach()  # (A,)
        parts[name] = (hinge, gap)
    total = sum(parts[name][0].sum() for name in targets) * config.control_weight
    return ControlLosses(
        total=total, pairs=int(rows.numel()),
        temperature_loss_sum=float(parts["temperature"][0].detach().sum()),
        top_p_loss_sum=float(parts["top-p"][0].detach().sum()),
        temperature_gap_sum=float(parts["temperature"][1].sum()), top_p_gap_sum=float(parts["top-p"][1].sum()),
        temperature_moved=int((parts["temperature"][1] > 0).sum()), top_p_moved=int((parts["top-p"][1] > 0).sum()),
    )


STATISTICS = (
    "temperature_loss_sum", "kept_tokens", "top_p_loss_sum", "top_p_tokens",
    "temperature_sum", "temperature_square_sum", "top_p_sum", "top_p_square_sum", "positions",
    "control_loss_sum", "control_pairs", "control_temperature_loss_sum", "control_top_p_loss_sum",
    "control_temperature_gap_sum", "control_top_p_gap_sum", "control_temperature_moved", "control_top_p_moved",
    "anchor_loss_sum", "anchor_rows",
)
"""The per-step sums reduced across processes with the gradients (float64)."""


def accumulate_gradients(
    model, parameters: list[torch.Tensor], micro_batches: list[dict], config: TrainConfig, anchor=None
):
    """Summed gradients of each loss and the statistics over this process's micro-batches.

    Returns:
        ``(temperature_gradient (P,), top_p_gradient (P,), control_gradient (P,), anchor_gradient (P,),
        statistics (len(STATISTICS),))``, float64, with ``P`` the number of trained parameters
        (``control_gradient`` is 0 without decoding control, ``anchor_gradient`` without an anchor).
    """
    size = sum(parameter.numel() for parameter in parameters)
    device = parameters[0].device
    temperature_gradient = torch.zeros(size, dtype=torch.float64, device=device)
    top_p_gradient = torch.zeros(size, dtype=torch.float64, device=device)
    control_gradient = torch.zeros(size, dtype=torch.float64, device=device)
    anchor_gradient = torch.zeros(size, dtype=torch.float64, device=device)
    statistics = torch.zeros(len(STATISTICS), dtype=torch.float64, device=device)
    slot = {name: index for index, name in enumerate(STATISTICS)}
    for batch in micro_batches:
        result = micro_batch_losses(model, batch, config, anchor)
        later = [result.top_p is not None, result.control is not None, result.anchor is not None]  # still to differentiate
        if result.temperature is not None:
            temperature_gradient += _flat_gradient(result.temperature.total, parameters, retain_graph=any(later))
            statistics[slot["temperature_loss_sum"]] += result.temperature.total.detach().double()
            statistics[slot["kept_tokens"]] += result.temperature.count.double()
        if result.top_p is not None:
            top_p_gradient += _flat_gradient(result.top_p.total, parameters, retain_graph=any(later[1:]))
            statistics[slot["top_p_loss_sum"]] += result.top_p.total.detach().double()
            statistics[slot["top_p_tokens"]] += result.top_p.count.double()
        if result.control is not None:
            control = result.control
            control_gradient += _flat_gradient(control.total, parameters, retain_graph=later[2])
            for name, value in (
                ("control_loss_sum", float(control.total.detach())), ("control_pairs", control.pairs),
                ("control_temperature_loss_sum", control.temperature_loss_sum),
                ("control_top_p_loss_sum", control.top_p_loss_sum),
                ("control_temperature_gap_sum", control.temperature_gap_sum), ("control_top_p_gap_sum", control.top_p_gap_sum),
                ("control_temperature_moved", control.temperature_moved), ("control_top_p_moved", control.top_p_moved),
            ):
                statistics[slot[name]] += value
        if result.anchor is not None:
            anchor_gradient += _flat_gradient(result.anchor.total, parameters, retain_graph=False)
            statistics[slot["anchor_loss_sum"]] += float(result.anchor.total.detach())
            statistics[slot["anchor_rows"]] += result.anchor.rows
        temperatures, top_ps = result.temperatures.double(), result.top_ps.double()
        statistics[slot["temperature_sum"]] += temperatures.sum()
        statistics[slot["temperature_square_sum"]] += temperatures.square().sum()
        statistics[slot["top_p_sum"]] += top_ps.sum()
        statistics[slot["top_p_square_sum"]] += top_ps.square().sum()
        statistics[slot["positions"]] += temperatures.numel()
    return temperature_gradient, top_p_gradient, control_gradient, anchor_gradient, statistics


def _flat_gradient(loss: torch.Tensor, parameters: list[torch.Tensor], retain_graph: bool) -> torch.Tensor:
    if not loss.requires_grad:
        return torch.zeros(sum(parameter.numel() for parameter in parameters), dtype=torch.float64, device=loss.device)
    gradients = torch.autograd.grad(loss, parameters, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([
        (gradient if gradient is not None else torch.zeros_like(parameter)).reshape(-1).double()
        for gradient, parameter in zip(gradients, parameters)
    ])


def step_metrics(statistics: torch.Tensor, *, control: bool = False, anchor: bool = False) -> dict[str, float]:
    """Losses, token counts and the mean/std of T and P from the reduced statistics of one step.

    With ``control``, ``loss`` includes the weighted ranking loss, logged on its own as ``control_loss``
    next to its unweighted parts, the pair count, the mean gaps ``direction * (commanded - plain)``
    of T and P, and the shares of pairs that moved the commanded way. With ``anchor``, ``loss`` also
    includes the weighted anchor loss (per plain row), logged as ``anchor_loss``.
    """
    values = dict(zip(STATISTICS, statistics.tolist()))
    positions = max(values["positions"], 1.0)
    temperature_loss = values["temperature_loss_sum"] / max(values["kept_tokens"], 1.0)
    top_p_loss = values["top_p_loss_sum"] / max(values["top_p_tokens"], 1.0)
    temperature_mean, top_p_mean = values["temperature_sum"] / positions, values["top_p_sum"] / positions
    pairs = max(values["control_pairs"], 1.0)
    option_metrics = {  # decoding control's (and the anchor's) own metrics
        "control_loss": values["control_loss_sum"] / pairs,
        "control_pairs": int(values["control_pairs"]),
        "control_temperature_loss": values["control_temperature_loss_sum"] / pairs,
        "control_top_p_loss": values["control_top_p_loss_sum"] / pairs,
        "control_temperature_gap": values["control_temperature_gap_sum"] / pairs,
        "control_top_p_gap": values["control_top_p_gap_sum"] / pairs,
        "control_temperature_moved": values["control_temperature_moved"] / pairs,
        "control_top_p_moved": values["control_top_p_moved"] / pairs,
    } if control else {}
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


# ------------------------------------------------------------------------------------------ recipe


def train_heads(config: TrainConfig, *, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume training) the heads as ``config`` says; see the module docstring.

    Args:
        config: the settings.
        overwrite: delete this recipe's files in ``config.output_dir`` first and start again.
        progress: show a progress bar (on the main process).

    Raises:
        ValueError: bad data (before any model is loaded), or an output folder holding a run with
            different settings (naming them).

    Example:
        >>> config = TrainConfig(data=["trajectories.jsonl"], output_dir="run", max_steps=50)  # doctest: +SKIP
        >>> train_heads(config).heads_dir  # doctest: +SKIP
        PosixPath('run/heads')
    """
    accelerator = make_accelerator()
    configure_deepspeed(accelerator, config)
    data = {"training data" if len(config.data) == 1 else f"training data file {index}": path
            for index, path in enumerate(config.data, start=1)}
    inputs = {**data, "heads": config.heads,
              "anchor heads": config.control_anchor, "base model": config.base}
    with state.run_folder_lock(Path(config.output_dir), accelerator, inputs):  # one run per folder
        return _train_locked(config, accelerator, overwrite=overwrite, progress=progress)


def _train_locked(config: TrainConfig, accelerator, *, overwrite: bool, progress: bool) -> TrainResult:
    output = Path(config.output_dir)
    heads_dir = output / state.HEADS_DIR
    if overwrite and accelerator.is_main_process:
        state.clear_output(output)
    accelerator.wait_for_everyone()
    settings = state.run_settings(config, accelerator.num_processes)
    state.check_stored_settings(output, settings)
    finished = state.finished_steps(output)
    if finished is not None:
        _say(accelerator, f"training in {output} already finished ({finished} steps; heads in {heads_dir}); "
                          "nothing to do (pass --overwrite to train again)")
        return TrainResult(output, heads_dir, finished, None, True, None, None, accelerator.is_main_process)

    tokenizer = load_tokenizer(settings["base"])
    examples, report = build_training_set(
        config.data, tokenizer, max_length=config.max_length, on_bad_line=config.on_bad_line, overlong=config.overlong
    )
    _say(accelerator, f"data: {report.summary()}")
    total_steps = config.total_steps(len(examples), accelerator.num_processes)
    control = None
    if config.control_enabled:
        from autodeco.training.control import load_phrasings

        phrasings = load_phrasings(config.control_phrasings)
        control = CommandedExamples(
            tokenizer, examples, phrasings, share=config.control_share, seed=config.seed, max_length=config.max_length,
            both=config.control_pairing == "both",
        )
        room = (f", at most {config.control_top_p_room:g} of the room left"
                if config.control_top_p_scale == "bounded" else "")
        _say(accelerator, f"decoding control: {config.control_share:.0%} of examples paired with "
                          f"{'a low and a high command' if config.control_pairing == 'both' else 'a command'} from "
                          f"{phrasings.source} (margins: T {config.control_margins['temperature']} on the "
                          f"{config.control_temperature_scale} scale, P {config.control_margins['top-p']} on the "
                          f"{config.control_top_p_scale} scale{room}; weight {config.control_weight}, "
                          f"ranking {config.control_heads})")

    with base_loading(accelerator):
        model = load_model(config, settings["base"])
    partitioned_while_loading = is_partitioned(model.llm)  # zero3_init_flag: true
    model = place_model(model, accelerator, config)
    if accelerator.is_main_process:  # only now: a bad base or init heads leaves no record behind
        state.prepare_output(output, {**settings, "num_examples": len(examples), "total_steps": total_steps})
    if uses_deepspeed(accelerator):
        _say(accelerator, partition_summary(model, accelerator, partitioned_while_loading))
    anchor = load_anchor(config, model, accelerator.device) if config.control_anchor is not None else None
    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPSILON, weight_decay=config.weight_decay
    )
    start_step = 0
    checkpoint = state.latest_checkpoint(output)
    if checkpoint is not None:
        start_step = state.restore_checkpoint(checkpoint, model, optimizer)
        _say(accelerator, f"resuming from {checkpoint} (step {start_step} of {total_steps})")
    if accelerator.is_main_process:
        truncate_log(output, start_step)  # lines a killed run wrote after its last checkpoint
    last_log = run_loop(
        model, optimizer, parameters, examples, tokenizer, config, accelerator,
        start_step=start_step, total_steps=total_steps, progress=progress, control=control, anchor=anchor,
    )
    if accelerator.is_main_process:
        state.save_final_heads(model, output, settings, report, total_steps, last_log)
        _say(accelerator, f"heads written to {heads_dir}")
    accelerator.wait_for_everyone()
    resumed_from = start_step if checkpoint is not None else None
    return TrainResult(
        output, heads_dir, total_steps, resumed_from, False, report, last_log, accelerator.is_main_process
    )


def run_loop(
    model, optimizer, parameters, examples, tokenizer, config, accelerator, *, start_step, total_steps, progress,
    control: CommandedExamples | None = None, anchor=None,
):
    """The training loop: for each step, build this process's micro-batches, reduce the gradient, step."""
    from tqdm.auto import tqdm

    model.train()
    global_size = config.global_batch_size(accelerator.num_processes)
    bar = tqdm(total=total_steps, initial=start_step, desc="training heads", unit="step",
               disable=not (progress and accelerator.is_main_process))
    last_log = None
    for step in range(start_step, total_steps):
        micro_batches = local_micro_batches(examples, step, config, accelerator, pad_token_id(tokenizer), control)
        learning_rate = learning_rate_at(
            step, peak=config.learning_rate, warmup_steps=config.warmup_steps, total_steps=total_steps,
            schedule=config.schedule,
        )
        started = time.perf_counter()
        metrics = optimizer_step(model, optimizer, parameters, micro_batches, config, accelerator, learning_rate, anchor)
        metrics["step_seconds"] = round(time.perf_counter() - started, 4)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", T=f"{metrics['temperature_mean']:.3f}", P=f"{metrics['top_p_mean']:.3f}")
        done = step + 1
        if done % config.log_every == 0 or done == total_steps:
            last_log = {"step": done, "epoch": round(done * global_size / len(examples), 4), "learning_rate": learning_rate, **metrics}
            if accelerator.is_main_process:
                append_log(Path(config.output_dir), last_log)
        if done % config.save_every == 0 and done < total_steps and accelerator.is_main_process:
            state.save_checkpoint(Path(config.output_dir), done, model, optimizer, config, examples_seen=done * global_size)
    bar.close()
    return last_log


def optimizer_step(model, optimizer, parameters, micro_batches, config, accelerator, learning_rate, anchor=None) -> dict:
    """Accumulate, all-reduce and combine the gradient, clip it, and take one AdamW step."""
    gradients = accumulate_gradients(model, parameters, micro_batches, config, anchor)
    size = gradients[0].numel()
    packed = accelerator.reduce(torch.cat(gradients), reduction="sum")
    values = dict(zip(STATISTICS, packed[4 * size :].tolist()))
    gradient = combine_gradients(
        packed[:size], values["kept_tokens"], packed[size : 2 * size], values["top_p_tokens"],
        packed[2 * size : 3 * size], values["control_pairs"], packed[3 * size : 4 * size], values["anchor_rows"],
    )
    offset = 0
    for parameter in parameters:
        parameter.grad = gradient[offset : offset + parameter.numel()].view_as(parameter).to(parameter.dtype)
        offset += parameter.numel()
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_metrics(packed[4 * size :], control=config.control_enabled, anchor=anchor is not None)


def local_micro_batches(
    examples, step: int, config: TrainConfig, accelerator, pad_id: int, control: CommandedExamples | None = None
) -> list[dict]:
    """This process's share of global batch ``step``: one padded batch per accumulation micro-step."""
    batch = global_batch(step, config.global_batch_size(accelerator.num_processes), len(examples), config.seed)
    return [
        make_micro_batch(examples, micro_batch_slice(
            batch, micro_step=micro_step, process_index=accelerator.process_index,
            num_processes=accelerator.num_processes, per_device_batch_size=config.per_device_batch_size,
        ), pad_id, config.seed, accelerator.device, control)
        for micro_step in range(config.gradient_accumulation_steps)
    ]


def make_micro_batch(
    examples, items: list[tuple[int, int]], pad_id: int, seed: int, device, control: CommandedExamples | None = None
) -> dict[str, torch.Tensor]:
    """Collate ``(epoch, index)`` items into a padded batch with their easy-token draws, on ``device``.

    With ``control``, each command it pairs an item with adds a commanded copy as a row after the
    ``B`` plain rows, and the batch gains ``control_rows`` ``(A,)`` (each copy's plain row) and
    ``control_directions`` ``(A,)`` (-1 low, +1 high). ``drop_draws`` stays ``(B, L - 1)``.
    """
    chosen: list[TrainingExample] = [examples[index] for _, index in items]
    pairs = [(row, pair) for row, (epoch, index) in enumerate(items) for pair in control(epoch, index)] if control is not None else []
    batch = collate(chosen + [example for _, (_, example) in pairs], pad_id)
    draws = [drop_draws(seed, epoch, index, examples[index].input_ids.shape[0]) for epoch, index in items]
    batch["drop_draws"] = collate_drop_draws(draws, batch["input_ids"].shape[1])
    if control is not None:
        batch["control_rows"] = torch.tensor([row for row, _ in pairs], dtype=torch.long)
        batch["control_directions"] = torch.tensor([choice.direction for _, (choice, _) in pairs], dtype=torch.float32)
    return {name: tensor.to(device) for name, tensor in batch.items()}


# ------------------------------------------------------------------------------------------- setup


def make_accelerator():
    """An ``Accelerator`` for this launch; several processes on a machine without a GPU use CPU and gloo.

    ``accelerate launch --multi_gpu --num_processes N`` (or ``configs/accelerate/cpu_2proc.yaml``)
    starts N processes with torchrun; on a machine without a GPU accelerate would leave each of
    them alone (as if ``ACCELERATE_USE_CPU`` were unset), so the CPU backend is asked for here.
    Under DeepSpeed without a GPU, accelerate would also leave the process-group backend unset and
    count one process while DeepSpeed counts N; asking for gloo makes both count N.
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from accelerate.utils.environment import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    without_gpu = several and not torch.cuda.is_available()
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and without_gpu:
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(cpu=without_gpu)


def uses_deepspeed(accelerator) -> bool:
    """Whether this launch runs under a DeepSpeed plugin (``distributed_type: DEEPSPEED``)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


@contextlib.contextmanager
def base_loading(accelerator):
    """Load the base as the DeepSpeed plugin's ``zero3_init_flag`` says (outside DeepSpeed: nothing to do).

    accelerate registers the DeepSpeed config with transformers whatever the flag, and transformers
    then always builds the model inside ``deepspeed.zero.Init`` (partitioned while loading). With
    ``zero3_init_flag: false`` the registration is lifted while the base loads, so that each process
    loads it whole and DeepSpeed partitions it when it takes it, as the flag promises.
    """
    plugin = accelerator.state.deepspeed_plugin if uses_deepspeed(accelerator) else None
    if plugin is None or plugin.zero3_init_flag:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def deepspeed_precision(deepspeed_config: dict) -> str | None:
    """The dtype DeepSpeed computes the base in: ``bfloat16``, ``float16``, ``float32``, or None when left to accelerate.

    Example:
        >>> deepspeed_precision({"bf16": {"enabled": True}}), deepspeed_precision({}), deepspeed_precision({"fp16": {"enabled": "auto"}})
        ('bfloat16', 'float32', None)
    """
    enabled = {name: deepspeed_config.get(name, {}).get("enabled", False) for name in ("bf16", "fp16")}
    if "auto" in enabled.values():
        return None
    if enabled["bf16"]:
        return "bfloat16"
    return "float16" if enabled["fp16"] else "float32"


def configure_deepspeed(accelerator, config: TrainConfig) -> None:
    """Write this run's batch and clipping settings into the DeepSpeed config, and check its precision.

    The recipe accumulates and reduces the heads' gradients itself, so DeepSpeed sees one
    micro-batch per step. Gradient clipping is set explicitly (``max_grad_norm``, or 0.0 for none):
    DeepSpeed clips at 1.0 unless told otherwise, and accelerate drops a falsy ``gradient_clipping``
    from its own config. (The heads are clipped by the recipe; the engine holds no trained parameter.)

    Raises:
        ValueError: the DeepSpeed config computes in another dtype than ``config.dtype``.
    """
    if not uses_deepspeed(accelerator):
        return
    deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
    precision = deepspeed_precision(deepspeed_config)
    if precision is not None and config.dtype not in ("auto", precision):
        source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the DeepSpeed config"
        raise ValueError(
            f"the DeepSpeed config {source} computes the base in {precision} but the training dtype is "
            f"{config.dtype!r}; pass --dtype {precision}, or change bf16/fp16 'enabled' in the DeepSpeed config"
        )
    deepspeed_config["train_micro_batch_size_per_gpu"] = config.per_device_batch_size
    deepspeed_config["gradient_accumulation_steps"] = 1  # accumulation is done here, by hand
    deepspeed_config["train_batch_size"] = config.per_device_batch_size * accelerator.num_processes
    deepspeed_config["gradient_clipping"] = 0.0 if config.max_grad_norm is None else float(config.max_grad_norm)


def load_model(config: TrainConfig, base: str):
    """The base with fresh heads (seeded) or the init heads, enabled as ``config.mode`` says."""
    from autodeco.model.modeling import AutoDecoForCausalLM

    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    if config.heads is None:
        model = AutoDecoForCausalLM.from_base(
            base, use_enhanced_features=config.use_enhanced_features, dtype=dtype, seed=config.seed
        )
    else:
        model = AutoDecoForCausalLM.from_pretrained(config.heads, base_model=base, dtype=dtype)
        if model.config.use_enhanced_features != config.use_enhanced_features:
            raise ValueError(
                f"the heads in {config.heads!r} have use_enhanced_features={model.config.use_enhanced_features} but "
                f"the training settings say {config.use_enhanced_features}; make them agree"
            )
    model.config.enable_temperature_head = config.mode in ("joint", "temperature")
    model.config.enable_top_p_head = config.mode in ("joint", "top-p")
    model.config.trained = False
    return model


def load_anchor(config: TrainConfig, model, device):
    """The ``control_anchor`` heads on the trained model's base (shared, not loaded again), frozen, on ``device``.

    Raises:
        ValueError: the anchor disables a head this run trains.
        CheckpointError: the anchor is missing, corrupt, or made for another base.
    """
    from autodeco.model.modeling import AutoDecoForCausalLM

    anchor = AutoDecoForCausalLM.from_pretrained(config.control_anchor, base_model=model.llm)
    for head, flag in (("temperature", "enable_temperature_head"), ("top-p", "enable_top_p_head")):
        if getattr(model.config, flag) and not getattr(anchor.config, flag):
            raise ValueError(
                f"the anchor heads {config.control_anchor!r} disable the {head} head that this run trains, so they "
                f"predict no {head} to keep; choose anchor heads trained with both heads, or leave --control-anchor out"
            )
    anchor.temp_head.to(device).requires_grad_(False).eval()
    anchor.top_p_head.to(device).requires_grad_(False).eval()
    return anchor


def trainable_parameters(model) -> list[torch.Tensor]:
    """The enabled heads' parameters (the base and any disabled head stay frozen)."""
    modules = []
    if model.config.enable_temperature_head:
        modules.append(model.temp_head)
    if model.config.enable_top_p_head:
        modules.append(model.top_p_head)
    for head in (model.temp_head, model.top_p_head):
        head.requires_grad_(head in modules)
    return [parameter for module in modules for parameter in module.parameters()]


def place_model(model, accelerator, config: TrainConfig):
    """Put the model on this process's device; under DeepSpeed, let ZeRO partition the frozen base.

    Only ``model.llm`` goes into the DeepSpeed engine (with no optimizer: ZeRO-3 then partitions
    the parameters and gathers them around each module's forward). The heads stay outside it.
    """
    if uses_deepspeed(accelerator):
        engine = accelerator.prepare(model.llm)
        object.__setattr__(model, "_deepspeed_engine", engine)  # keep it alive without registering a submodule
        model.temp_head.to(accelerator.device)
        model.top_p_head.to(accelerator.device)
        return model
    return model.to(accelerator.device)


def is_partitioned(module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned any of ``module``'s parameters (they carry a ``ds_id``)."""
    return any(hasattr(parameter, "ds_id") for parameter in module.parameters())


def partition_summary(model, accelerator, partitioned_while_loading: bool) -> str:
    """One line on how ZeRO-3 split the base: tensors partitioned, the values each process holds, clipping.

    A partitioned parameter is an empty tensor outside its module's forward pass; its shard is in
    ``ds_tensor``. Parameters below ``stage3_param_persistence_threshold`` may stay whole everywhere.
    """
    parameters = list(model.llm.parameters())
    partitioned = [parameter for parameter in parameters if hasattr(parameter, "ds_id") and parameter.numel() == 0]
    total = sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in parameters)
    held = sum(parameter.ds_tensor.numel() for parameter in partitioned) + sum(
        parameter.numel() for parameter in parameters if parameter.numel() > 0
    )
    counts = torch.tensor([len(partitioned), held], dtype=torch.float64, device=accelerator.device)
    gathered = accelerator.gather(counts.unsqueeze(0)).reshape(-1, 2)  # (processes, 2)
    per_process = ", ".join(f"{int(values)}" for values in gathered[:, 1].tolist())
    when = "while loading (zero3_init_flag)" if partitioned_while_loading else "after loading"
    return (
        f"ZeRO-3: base partitioned {when} across {accelerator.num_processes} processes: "
        f"{int(gathered[:, 0].min())} of {len(parameters)} tensors partitioned, "
        f"values held per process [{per_process}] of {total}; "
        f"DeepSpeed gradient_clipping {model._deepspeed_engine.gradient_clipping()}"
    )


def _say(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)
