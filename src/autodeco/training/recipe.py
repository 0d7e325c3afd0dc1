"""The training recipe: fit the two heads on the base model's own verified trajectories.

PAPER.md section 3. The base model is frozen; only the heads' parameters go to the optimizer. The recipe
reads as three steps: :func:`setup` (data, model, optimizer, resume point), :func:`train` (the loop) and
:func:`save` (the final heads); :func:`train_heads` runs them under a lock on the output folder.

The loop runs under ``accelerate`` (one process, or ``accelerate launch --num_processes N``; the launch and
DeepSpeed ZeRO-3 are set up in :mod:`autodeco.training.distributed`), with the gradient reduced by hand so
that it is *exactly* the one-process gradient of the global batch:

* every random choice is a function of (seed, epoch, example index) (see ``training.data``), so a
  global batch of ``b * N * accumulation`` examples is split across processes deterministically
  and each example sees the same easy-token drop decisions however it is split;
* each micro-batch returns each loss term's sum and count (:mod:`autodeco.training.loss_step`); their
  gradients are accumulated separately in float64, all-reduced with the counts, and each averaged over its
  own count, so every process holds the same gradient and takes the same step;
* with decoding control on (``control_share > 0``, PAPER.md section 7), a paired example's commanded copy
  rides in the same micro-batch as the plain example (rows after the plain ones); the paper's losses see the
  plain rows only, and the ranking loss (and the anchor loss) are terms of their own
  (:mod:`autodeco.training.control_losses`).

Around this file: ``config`` (settings, presets), ``data`` (trajectories -> batches, data order),
``state`` (the output folder, checkpoints, resume checks) and ``curve`` (the log and its plot).
A restart with the same folder resumes from the newest complete checkpoint (a run killed at any
moment resumes, and on CPU with a fixed seed ends with the same heads as an uninterrupted run).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

from autodeco.data.tokens import TrainingExample, collate, pad_token_id
from autodeco.data.trajectories import DataReport
from autodeco.model.base_model import load_tokenizer
from autodeco.training import state
from autodeco.training.config import ADAM_BETAS, ADAM_EPSILON, TrainConfig
from autodeco.training.curve import append_log, truncate_log
from autodeco.training.data import (
    CommandedExamples,
    build_training_set,
    collate_drop_draws,
    drop_draws,
    global_batch,
    micro_batch_slice,
)
from autodeco.training.distributed import (
    base_loading,
    configure_deepspeed,
    is_partitioned,
    make_accelerator,
    partition_summary,
    place_model,
    uses_deepspeed,
)
from autodeco.training.loss_step import accumulate_gradients, mean_gradient, pack, step_metrics, unpack


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
              "anchor heads": config.control.anchor, "base model": config.base}
    with state.run_folder_lock(Path(config.output_dir), accelerator, inputs):  # one run per folder
        return _train_locked(config, accelerator, overwrite=overwrite, progress=progress)


@dataclasses.dataclass
class Run:
    """What :func:`setup` prepares for :func:`train` and :func:`save`."""

    output: Path
    settings: dict
    """The run's recorded settings (:func:`autodeco.training.state.run_settings`)."""
    tokenizer: object
    examples: list[TrainingExample]
    report: DataReport
    total_steps: int
    model: object
    """The ``AutoDecoForCausalLM`` being trained, placed on this process's device."""
    parameters: list[torch.Tensor]
    """The trained heads' parameters (the optimizer's)."""
    optimizer: torch.optim.Optimizer
    start_step: int
    """The first step to run: 0, or the step of the checkpoint resumed from."""
    resumed_from: Path | None
    """The checkpoint resumed from, if any."""
    control: CommandedExamples | None = None
    """The decoding-control partners of the examples (None: decoding control off)."""
    anchor: object | None = None
    """The ``control_anchor`` heads (None: no anchor)."""


def _train_locked(config: TrainConfig, accelerator, *, overwrite: bool, progress: bool) -> TrainResult:
    """Check the folder's record, then setup -> train -> save (or nothing, for a finished run)."""
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

    run = setup(config, accelerator, settings)
    last_log = train(run, config, accelerator, progress=progress)
    save(run, accelerator, last_log)
    resumed_from = run.start_step if run.resumed_from is not None else None
    return TrainResult(
        output, heads_dir, run.total_steps, resumed_from, False, run.report, last_log, accelerator.is_main_process
    )


def setup(config: TrainConfig, accelerator, settings: dict) -> Run:
    """Read the data, load and place the model, build the optimizer, and restore the newest checkpoint if any."""
    output = Path(config.output_dir)
    tokenizer = load_tokenizer(settings["base"])
    examples, report = build_training_set(
        config.data, tokenizer, max_length=config.max_length, on_bad_line=config.on_bad_line, overlong=config.overlong
    )
    _say(accelerator, f"data: {report.summary()}")
    if config.control.data:
        more, more_report = build_training_set(
            config.control.data, tokenizer, max_length=config.max_length, on_bad_line=config.on_bad_line,
            overlong=config.overlong, control_only=True,
        )
        _say(accelerator, f"decoding-control data (no paper losses): {more_report.summary()}")
        examples = examples + more
    total_steps = config.total_steps(len(examples), accelerator.num_processes)
    control = _commanded_examples(config, accelerator, tokenizer, examples) if config.control_enabled else None

    with base_loading(accelerator):
        model = load_model(config, settings["base"])
    partitioned_while_loading = is_partitioned(model.llm)  # zero3_init_flag: true
    model = place_model(model, accelerator, config)
    if accelerator.is_main_process:  # only now: a bad base or init heads leaves no record behind
        state.prepare_output(output, {**settings, "num_examples": len(examples), "total_steps": total_steps})
    if uses_deepspeed(accelerator):
        _say(accelerator, partition_summary(model, accelerator, partitioned_while_loading))
    anchor = load_anchor(config, model, accelerator.device) if config.control.anchor is not None else None
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
    return Run(output, settings, tokenizer, examples, report, total_steps, model, parameters, optimizer, start_step,
               checkpoint, control, anchor)


def _commanded_examples(config: TrainConfig, accelerator, tokenizer, examples) -> CommandedExamples:
    """Decoding control's pairing of the examples with commanded copies, announced in the log."""
    from autodeco.data.phrasings import NEUTRAL, load_phrasings
    from autodeco.training.control import training_families

    phrasings = load_phrasings(config.control.phrasings)
    if config.control.neutral:  # fail before the model loads, not at the first neutral pair
        training_families(phrasings, NEUTRAL)
    room = f", at most {config.control.top_p_room:g} of the room left" if config.control.top_p_scale == "bounded" else ""
    _say(accelerator, f"decoding control: {config.control.share:.0%} of examples paired with "
                      f"{'a low and a high command' if config.control.pairing == 'both' else 'a command'}"
                      f"{' and a neutral sentence' if config.control.neutral else ''} from "
                      f"{phrasings.source} (margins: T {config.control.margins['temperature']} on the "
                      f"{config.control.temperature_scale} scale, P {config.control.margins['top-p']} on the "
                      f"{config.control.top_p_scale} scale{room}; weight {config.control.weight}, "
                      f"ranking {config.control.heads})")
    return CommandedExamples(
        tokenizer, examples, phrasings, share=config.control.share, seed=config.seed, max_length=config.max_length,
        both=config.control.pairing == "both", neutral=config.control.neutral,
    )


def train(run: Run, config: TrainConfig, accelerator, *, progress: bool) -> dict | None:
    """The loop from ``run.start_step`` to the last step; returns the last ``log.jsonl`` record."""
    return run_loop(
        run.model, run.optimizer, run.parameters, run.examples, run.tokenizer, config, accelerator,
        start_step=run.start_step, total_steps=run.total_steps, progress=progress, control=run.control, anchor=run.anchor,
    )


def save(run: Run, accelerator, last_log: dict | None) -> None:
    """Write the final heads (main process), then wait for every process."""
    if accelerator.is_main_process:
        state.save_final_heads(run.model, run.output, run.settings, run.report, run.total_steps, last_log)
        _say(accelerator, f"heads written to {run.output / state.HEADS_DIR}")
    accelerator.wait_for_everyone()


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
    *gradients, statistics = accumulate_gradients(model, parameters, micro_batches, config, anchor)
    reduced = accelerator.reduce(pack(gradients, statistics), reduction="sum")  # the same sums on every process
    reduced_gradients, reduced_statistics = unpack(reduced, gradients[0].numel())
    gradient = mean_gradient(reduced_gradients, reduced_statistics)  # (P,)
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
    return step_metrics(reduced_statistics, control=config.control_enabled, anchor=anchor is not None,
                        neutral=config.control_enabled and config.control.neutral)


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
    ``control_directions`` ``(A,)`` (-1 low, +1 high, 0 neutral). ``drop_draws`` stays ``(B, L - 1)``. When an item is
    a ``--control-data`` example, the batch gains ``paper_rows`` ``(B,)``: False on those rows, which the paper's
    losses leave out.
    """
    chosen: list[TrainingExample] = [examples[index] for _, index in items]
    pairs = [(row, pair) for row, (epoch, index) in enumerate(items) for pair in control(epoch, index)] if control is not None else []
    batch = collate(chosen + [example for _, (_, example) in pairs], pad_id)
    draws = [drop_draws(seed, epoch, index, examples[index].input_ids.shape[0]) for epoch, index in items]
    batch["drop_draws"] = collate_drop_draws(draws, batch["input_ids"].shape[1])
    if any(example.control_only for example in chosen):  # --control-data rows: decoding control's losses only
        batch["paper_rows"] = torch.tensor([not example.control_only for example in chosen], dtype=torch.bool)
    if control is not None:
        batch["control_rows"] = torch.tensor([row for row, _ in pairs], dtype=torch.long)
        batch["control_directions"] = torch.tensor([choice.direction for _, (choice, _) in pairs], dtype=torch.float32)
    return {name: tensor.to(device) for name, tensor in batch.items()}


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

    anchor = AutoDecoForCausalLM.from_pretrained(config.control.anchor, base_model=model.llm)
    for head, flag in (("temperature", "enable_temperature_head"), ("top-p", "enable_top_p_head")):
        if getattr(model.config, flag) and not getattr(anchor.config, flag):
            raise ValueError(
                f"the anchor heads {config.control.anchor!r} disable the {head} head that this run trains, so they "
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


def _say(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)
