"""``autodeco train`` and ``autodeco heldout``: fit the heads (on verified trajectories, or on their own scored
answers), and evaluate them.

``--objective`` picks the recipe: ``likelihood`` (:mod:`autodeco.training.recipe`), ``reward``
(:mod:`autodeco.training.reward`) or ``rejection`` (:mod:`autodeco.training.rejection`). Multi-process:
``accelerate launch --num_processes N -m autodeco.cli train ...`` (see configs/README.md); likelihood and reward
only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autodeco.cli._parser import check_at_least, check_choice, config_command, config_errors
from autodeco.common.console import say
from autodeco.training.config import TrainConfig
from autodeco.training.reward_config import OBJECTIVES, RejectionConfig, RewardConfig, RolloutSettings

FLAGS = {"per_device_batch_size": "batch-size", "output_dir": "output", "source": "dataset"}

OWN_SETTINGS = ("data", "output_dir", "base", "heads", "seed")
"""Config fields the command takes itself (positional data, --output, --base, --heads, --seed)."""


@config_command(TrainConfig, exclude=OWN_SETTINGS, flags=FLAGS, also=(RolloutSettings, RewardConfig, RejectionConfig))
def train(
    data: list[str],
    output: str = "autodeco-train",
    objective: str = "likelihood",
    preset: str | None = None,
    base: str | None = None,
    heads: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    no_progress: bool = False,
    **settings,
):
    """Train the temperature and top-p heads: on verified trajectories (likelihood), or on their own answers.

    --objective likelihood (the paper's, the default) fits the heads to the likelihood of the DATA files'
    verified trajectories (written by `autodeco sample`). --objective reward draws K answers to training
    problems (--dataset) with the current heads at every step, scores them with the verifier, and moves the
    heads by policy gradient towards the rewarded answers (group baseline, GRPO-style). --objective rejection
    repeats --rounds times: answer every training problem with the current heads, keep the verified answers,
    run the likelihood recipe on them. Restarting with the same --output resumes; a finished run is left as
    it is. The defaults shown are the likelihood objective's; --objective reward has its own (learning rate
    5e-4, 24 steps, ...: see the RewardConfig settings), and a flag that does not apply to the chosen
    objective is refused.

    Args:
        data: JSONL files of verified trajectories (written by `autodeco sample`); --objective likelihood only.
        output: folder for checkpoints, log.jsonl, training_curve.png and the final heads (OUTPUT/heads).
        objective: likelihood (the paper's loss on DATA), reward (policy gradient on the heads' own answers)
            or rejection (iterated rejection sampling).
        preset: likelihood and rejection: quick (the embedded model on a CPU in minutes; the default) or paper
            (lr 5e-6, batch 1 x accumulation 4, max length 12000, one epoch, bfloat16).
        base: base model: hub id, local folder or embedded:SmolLM2-135M-Instruct (default: the --heads' base,
            else the embedded model).
        heads: heads checkpoint to start from, a folder or shipped:<name> (default: fresh heads seeded with --seed).
        seed: seed of fresh heads, the data order and the easy-token drops (reward and rejection: also of the
            prompts, the answers and the held-out split).
        overwrite: delete this folder's previous training files and start again.
        no_progress: no progress bar.
    """
    check_choice("--objective", objective, OBJECTIVES)
    check_objective_flags(objective, settings, data=data, preset=preset)
    if objective == "reward":
        return _train_reward(output, base, heads, seed, overwrite, not no_progress, settings)
    if objective == "rejection":
        return _train_rejection(output, preset or "quick", base, heads, seed, overwrite, not no_progress, settings)
    from autodeco.training.recipe import train_heads

    if "num_epochs" in settings and "max_steps" not in settings:
        settings["max_steps"] = None  # a number of epochs asked for: not the preset's step count
    with config_errors(TrainConfig, FLAGS):
        config = TrainConfig.from_preset(
            preset or "quick", data=list(data), output_dir=output, base=base, heads=heads, seed=seed, **settings
        )
    result = train_heads(config, overwrite=overwrite, progress=not no_progress)
    if not result.main_process:
        return result
    if not result.already_finished and result.last_log is not None:
        log = result.last_log
        say(f"trained {result.steps} steps: loss {log['loss']:.4f} (temperature {log['temperature_loss']:.4f}, "
              f"top-p {log['top_p_loss']:.4f}); mean T {log['temperature_mean']:.3f}, mean P {log['top_p_mean']:.3f}")
    say(f"heads: {result.heads_dir}")
    return result


def objective_settings(objective: str) -> set[str]:
    """The config fields (flag destinations) ``objective`` takes: its configs' fields, decoding control's under
    their flat ``control_*`` names.

    Example:
        >>> "kl_weight" in objective_settings("reward"), "kl_weight" in objective_settings("rejection")
        (True, False)
    """
    import dataclasses

    from autodeco.training.config import ControlConfig

    def names(config_class) -> set[str]:
        return {field.name for field in dataclasses.fields(config_class)} - set(OWN_SETTINGS)

    likelihood = names(TrainConfig) - {"control"} | set(ControlConfig().flat())
    return {"likelihood": likelihood, "reward": names(RewardConfig),
            "rejection": names(RejectionConfig) | likelihood}[objective]


def check_objective_flags(objective: str, settings: dict, *, data: list[str], preset: str | None) -> None:
    """Refuse flags (and trajectory files, a preset) that only another objective uses, naming them and the fix.

    Example:
        >>> check_objective_flags("likelihood", {"kl_weight": 0.1}, data=["t.jsonl"], preset=None)
        Traceback (most recent call last):
        ValueError: --kl-weight applies to --objective reward, not likelihood; drop it, or pass --objective reward
    """
    if objective != "likelihood" and data:
        raise ValueError(
            f"--objective {objective} draws its own answers to --dataset problems and reads no trajectory files "
            f"(got {', '.join(data)}); drop them, or pass --objective likelihood to train on them"
        )
    if objective == "reward" and preset is not None:
        raise ValueError(
            f"--preset {preset} sets the likelihood recipe's settings, which --objective reward does not use; drop "
            "--preset (reward has its own defaults), or pass --objective likelihood or rejection"
        )
    accepted = objective_settings(objective)
    for name in sorted(settings):
        if name in accepted:
            continue
        flag = "--" + FLAGS.get(name, name.replace("_", "-"))
        users = [other for other in OBJECTIVES if name in objective_settings(other)]
        raise ValueError(f"{flag} applies to --objective {' and '.join(users)}, not {objective}; drop it, or pass "
                         f"--objective {users[0]}")


def _train_reward(output, base, heads, seed, overwrite, progress, settings):
    from autodeco.training.reward import train_with_reward

    with config_errors(RewardConfig, FLAGS):
        config = RewardConfig(output_dir=output, base=base, heads=heads, seed=seed, **settings)
    result = train_with_reward(config, overwrite=overwrite, progress=progress)
    if not result.main_process:
        return result
    if not result.already_finished and result.last_log is not None:
        log = result.last_log
        say(f"trained {result.steps} steps: last step's reward {log['reward_mean']:.3f} ({log['signal_share']:.0%} of "
            f"prompts with signal); mean T {log['temperature_mean']:.3f}, mean P {log['top_p_mean']:.3f}, "
            f"greedy-like tokens {log['greedy_like_share']:.1%}")
    say(f"heads: {result.heads_dir}")
    return result


def _train_rejection(output, preset, base, heads, seed, overwrite, progress, settings):
    import dataclasses

    from autodeco.training.rejection import TRAJECTORIES_FILE, train_by_rejection

    rollout_names = {field.name for field in dataclasses.fields(RejectionConfig)}
    rollout = {name: value for name, value in settings.items() if name in rollout_names}
    recipe = {name: value for name, value in settings.items() if name not in rollout_names}
    if "num_epochs" in recipe and "max_steps" not in recipe:
        recipe["max_steps"] = None
    with config_errors(RejectionConfig, FLAGS):
        config = RejectionConfig(output_dir=output, seed=seed, **rollout)
    with config_errors(TrainConfig, FLAGS):
        likelihood = TrainConfig.from_preset(
            preset, data=[f"<each round's {TRAJECTORIES_FILE}>"], output_dir=output, base=base, heads=heads, seed=seed,
            **recipe,
        )
    result = train_by_rejection(config, likelihood, overwrite=overwrite, progress=progress)
    for row in result.rows:
        say(f"round {row['round']}: kept {row['kept']} of {row['answers']} answers ({row['reward_mean']:.1%}); mean T "
            f"{row['temperature_mean']:.3f}, mean P {row['top_p_mean']:.3f}; {row['train_steps']} likelihood steps")
    say(f"heads: {result.heads_dir}")
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
    from autodeco.data.trajectories import read_trajectories

    check_at_least("--max-examples", max_examples)
    check_at_least("--batch-size", batch_size)
    check_at_least("--max-length", max_length, 2)
    trajectories = read_trajectories([data], on_bad_line=on_bad_line)[:max_examples]
    if not trajectories:
        raise ValueError(f"{data!r} holds no trajectory to evaluate")
    from autodeco.model.shipped import resolve_heads_reference

    if not resolve_heads_reference(heads).exists():
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
    say(format_heldout_table(trained_report, fresh_report, data=data, seed=seed))
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
