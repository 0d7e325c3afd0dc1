"""``autodeco train`` and ``autodeco heldout``: fit the heads on verified trajectories, and evaluate them.

Multi-process: ``accelerate launch --num_processes N -m autodeco.cli train ...`` (see configs/README.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train(
    data: list[str],
    output: str = "autodeco-train",
    preset: str = "quick",
    base: str | None = None,
    heads: str | None = None,
    mode: str = "joint",
    learning_rate: float | None = None,
    max_steps: int | None = None,
    num_epochs: float | None = None,
    batch_size: int | None = None,
    gradient_accumulation_steps: int | None = None,
    max_length: int | None = None,
    warmup_steps: int | None = None,
    schedule: str | None = None,
    weight_decay: float | None = None,
    save_every: int | None = None,
    keep_last: int | None = None,
    log_every: int | None = None,
    dtype: str | None = None,
    easy_token_drop: float | None = None,
    steepness: float | None = None,
    no_dft_weighting: bool = False,
    basic_features: bool = False,
    seed: int = 0,
    on_bad_line: str = "stop",
    overlong: str = "truncate",
    overwrite: bool = False,
    no_progress: bool = False,
):
    """Train the temperature and top-p heads on the base model's own verified trajectories.

    Restarting with the same --output resumes from the newest checkpoint; a finished run is left
    as it is. Flags left unset take the preset's value.

    Args:
        data: JSONL files of verified trajectories (written by `autodeco sample`).
        output: folder for checkpoints, log.jsonl, training_curve.png and the final heads (OUTPUT/heads).
        preset: quick (the embedded model on a CPU in minutes) or paper (lr 5e-6, batch 1 x accumulation 4, max length 12000, one epoch).
        base: base model: hub id, local folder or embedded:SmolLM2-135M-Instruct (default: the --heads' base, else the embedded model).
        heads: heads checkpoint to start from (default: fresh heads seeded with --seed).
        mode: joint (both heads), temperature or top-p (train and enable that head only).
        learning_rate: peak AdamW learning rate.
        max_steps: optimizer steps (quick preset: 24; paper preset: one epoch).
        num_epochs: passes over the data (used when --max-steps is not given; overrides the quick preset's step count).
        batch_size: sequences per process per forward pass.
        gradient_accumulation_steps: forward passes per optimizer step.
        max_length: most tokens per trajectory (prompt + completion + EOS).
        warmup_steps: steps of linear learning-rate warmup.
        schedule: after the warmup: constant or cosine.
        weight_decay: AdamW weight decay.
        save_every: write a checkpoint every this many steps.
        keep_last: checkpoints to keep.
        log_every: write a log.jsonl line every this many steps.
        dtype: base model dtype: float32, bfloat16, float16 or auto.
        easy_token_drop: probability of dropping an easy token from the temperature loss (paper: 0.6).
        steepness: slope of the soft top-p mask (paper: 30).
        no_dft_weighting: do not weight token losses by the base probability of the label.
        basic_features: the top-p head reads only the hidden state and T (no probability features).
        seed: seed of fresh heads, the data order and the easy-token drops.
        on_bad_line: a malformed data line: stop (error naming file:line) or skip (counted).
        overlong: a trajectory longer than --max-length: truncate its completion, or skip it.
        overwrite: delete this folder's previous training files and start again.
        no_progress: no progress bar.
    """
    from autodeco.training.config import PRESETS, TrainConfig
    from autodeco.training.recipe import train_heads

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    explicit = {
        "learning_rate": learning_rate, "max_steps": max_steps, "num_epochs": num_epochs,
        "per_device_batch_size": batch_size, "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_length": max_length, "warmup_steps": warmup_steps, "schedule": schedule, "weight_decay": weight_decay,
        "save_every": save_every, "keep_last": keep_last, "log_every": log_every, "dtype": dtype,
        "easy_token_drop": easy_token_drop, "steepness": steepness,
    }
    overrides = {name: value for name, value in explicit.items() if value is not None}
    if num_epochs is not None and max_steps is None:
        overrides["max_steps"] = None  # a number of epochs asked for: not the preset's step count
    config = TrainConfig.from_preset(
        preset, data=list(data), output_dir=output, base=base, heads=heads, mode=mode, seed=seed,
        on_bad_line=on_bad_line, overlong=overlong, dft_weighting=not no_dft_weighting,
        use_enhanced_features=not basic_features, **overrides,
    )
    result = train_heads(config, overwrite=overwrite, progress=not no_progress)
    if not result.main_process:
        return result
    if not result.already_finished and result.last_log is not None:
        log = result.last_log
        print(f"trained {result.steps} steps: loss {log['loss']:.4f} (temperature {log['temperature_loss']:.4f}, "
              f"top-p {log['top_p_loss']:.4f}); mean T {log['temperature_mean']:.3f}, mean P {log['top_p_mean']:.3f}")
    print(f"heads: {result.heads_dir}")
    return result


def heldout(
    heads: str,
    data: str,
    base: str | None = None,
    batch_size: int = 4,
    max_length: int | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    on_bad_line: str = "stop",
    no_grid: bool = False,
    json_output: str | None = None,
):
    """Compare trained heads with fresh heads and the best static (T, P) on held-out trajectories.

    Teacher-forced on the completion tokens: the soft top-p NLL (DFT-weighted: the training
    objective; and unweighted), the static grid T 0.1..1.5 x P 0.1..1.0, the mean predicted T and P
    (the MeanShift operating point), and the correlation of T with the base model's entropy.

    Args:
        heads: trained heads checkpoint folder.
        data: held-out trajectories JSONL (e.g. heldout.jsonl from `autodeco sample`).
        base: base model (default: the one the heads record).
        batch_size: sequences per forward pass.
        max_length: truncate longer trajectories to this many tokens (default: no limit).
        max_examples: evaluate only the first this many trajectories.
        seed: seed of the fresh heads compared against.
        on_bad_line: a malformed data line: stop or skip.
        no_grid: skip the static (T, P) grid search.
        json_output: also write the full report (both models, the grid) to this JSON file.
    """
    from autodeco.evaluation.heldout import heldout_report
    from autodeco.model.base_model import load_tokenizer
    from autodeco.model.modeling import AutoDecoForCausalLM
    from autodeco.training.data import read_trajectories

    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    trajectories = read_trajectories([data], on_bad_line=on_bad_line)[:max_examples]
    if not trajectories:
        raise ValueError(f"{data!r} holds no trajectory to evaluate")
    if not Path(heads).exists():
        raise FileNotFoundError(f"heads checkpoint {heads!r} does not exist")
    trained = AutoDecoForCausalLM.from_pretrained(heads, base_model=base)
    reference = base or trained.config.base_model_name_or_path
    if reference is None:
        raise ValueError(f"{heads!r} does not record its base model; pass --base")
    tokenizer = load_tokenizer(reference)
    fresh = AutoDecoForCausalLM.from_base(
        trained.llm, enable_temperature_head=trained.config.enable_temperature_head,
        enable_top_p_head=trained.config.enable_top_p_head,
        use_enhanced_features=trained.config.use_enhanced_features, seed=seed,
    )
    grid = {} if not no_grid else {"grid_temperatures": (), "grid_top_ps": ()}
    trained_report = heldout_report(trained, tokenizer, trajectories, batch_size=batch_size, max_length=max_length, **grid)
    fresh_report = heldout_report(
        fresh, tokenizer, trajectories, batch_size=batch_size, max_length=max_length, grid_temperatures=(), grid_top_ps=()
    )
    print(format_heldout_table(trained_report, fresh_report, data=data, seed=seed))
    if json_output is not None:
        Path(json_output).parent.mkdir(parents=True, exist_ok=True)
        Path(json_output).write_text(json.dumps(
            {"heads": heads, "data": data, "trained": trained_report, "fresh": fresh_report, "fresh_seed": seed}, indent=2
        ) + "\n")
        print(f"report written to {json_output}", file=sys.stderr)
    return trained_report, fresh_report


def format_heldout_table(trained: dict, fresh: dict, *, data: str = "", seed: int = 0) -> str:
    """The held-out comparison as a small Markdown table plus the MeanShift point and correlations."""
    lines = [
        f"held-out: {trained['num_examples']} trajectories, {trained['num_tokens']} completion tokens {data}".rstrip(),
        "",
        "| decoding | soft top-p NLL, DFT-weighted (objective) | soft top-p NLL | T mean ± std | P mean ± std |",
        "|---|---|---|---|---|",
    ]
    for name, report in (("trained heads", trained), (f"fresh heads (seed {seed})", fresh)):
        heads = report["heads"]
        lines.append(
            f"| {name} | {heads['nll_dft']:.4f} | {heads['nll']:.4f} | {heads['temperature_mean']:.3f} ± "
            f"{heads['temperature_std']:.3f} | {heads['top_p_mean']:.3f} ± {heads['top_p_std']:.3f} |"
        )
    if "best_static" in trained:
        temperatures, top_ps = trained["static_grid"]["temperatures"], trained["static_grid"]["top_ps"]
        for metric in ("nll_dft", "nll"):
            best = trained["best_static"][metric]
            row, column = temperatures.index(best["temperature"]), top_ps.index(best["top_p"])
            values = {key: trained["static_grid"][key][row][column] for key in ("nll_dft", "nll")}
            label = "DFT-weighted" if metric == "nll_dft" else "unweighted"
            lines.append(
                f"| best static by {label} NLL: T={best['temperature']:.1f} P={best['top_p']:.1f} | "
                f"{values['nll_dft']:.4f} | {values['nll']:.4f} | {best['temperature']:.1f} | {best['top_p']:.1f} |"
            )
    correlation = trained["temperature_entropy_correlation"]
    lines += [
        "",
        (f"MeanShift operating point (mean predicted T, P): T={trained['heads']['temperature_mean']:.3f}, "
         f"P={trained['heads']['top_p_mean']:.3f}"),
        f"predicted T vs base entropy at T=1: Pearson {correlation['pearson']:.3f}, Spearman {correlation['spearman']:.3f}",
    ]
    return "\n".join(lines)
