"""Iterated rejection sampling (``autodeco train --objective rejection``): the simple rival of the reward objective.

Each round answers every training problem K times with the heads the round starts from (dynamic decoding, as
the reward objective draws: :mod:`autodeco.training.on_policy`), keeps the answers with a positive reward
(verified, and ended within ``max_new_tokens``), and runs the paper's likelihood recipe
(:func:`autodeco.training.recipe.train_heads`) on them, starting from those heads. Round 1 starts from
``--heads`` (or fresh heads seeded with ``--seed``), round n from round n - 1's trained heads.

Output folder::

    train_config.json              the settings (rollouts, rounds, the likelihood recipe's) and fingerprints
    run.lock                       held by the running process
    round-<n>/trajectories.jsonl   the round's kept answers (autodeco sample's format)
    round-<n>/sampling.json        the round's answer statistics, written last: the round's sampling is done
    round-<n>/train/               the likelihood run on them (its own checkpoints, log, curve and heads/)
    log.jsonl                      one row per finished round: reward_mean (the share kept), T and P, losses
    training_curve.png             those rows against the round
    heads/                         the last round's heads

Resuming: a finished round is skipped; a round whose sampling finished goes on with its training (which resumes
from its newest checkpoint); a round killed while sampling samples again (the same answers: the batches' seeds
are derived from (seed, round, first problem id)). One process only: the rounds' sampling is not split.

Log columns per round: ``round``, ``problems``, ``answers``, ``kept``, ``reward_mean``, ``signal_share``,
``finished_share``, ``answer_tokens``, ``temperature_mean`` and ``top_p_mean`` (the values the heads used while
sampling, over every answer token), ``sampling_seconds``, ``train_steps``, ``train_loss`` (the likelihood
recipe's last logged loss).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from pathlib import Path

from autodeco.common.jsonl import read_json, rewrite_jsonl_atomic, write_json_atomic
from autodeco.training import state
from autodeco.training.config import TrainConfig
from autodeco.training.curve import LOG_FILE
from autodeco.training.on_policy import (
    Reward,
    draw_groups,
    problems_fingerprint,
    training_problems,
    verified_reward,
)
from autodeco.training.reward_config import RejectionConfig

RECIPE = "autodeco.training.rejection"
TRAJECTORIES_FILE = "trajectories.jsonl"
SAMPLING_FILE = "sampling.json"
TRAIN_DIR = "train"
ROUND_PREFIX = "round-"


@dataclasses.dataclass
class RejectionResult:
    """What :func:`train_by_rejection` did."""

    output_dir: Path
    heads_dir: Path
    rounds: int
    already_finished: bool
    rows: list[dict]
    """One log row per round (empty when the run had already finished)."""


def train_by_rejection(
    config: RejectionConfig, likelihood: TrainConfig, *, overwrite: bool = False, progress: bool = True,
    reward: Reward | None = None,
) -> RejectionResult:
    """Run (or resume) ``config.rounds`` rounds of sample -> keep the verified answers -> likelihood recipe.

    Args:
        config: the rollouts and the number of rounds.
        likelihood: the likelihood recipe's settings for every round (its ``data`` and ``output_dir`` are replaced
            by each round's; its ``heads`` and ``base`` are round 1's starting heads and the base).
        overwrite: delete this folder's previous files (rounds included) first.
        progress: show progress bars.
        reward: ``reward(problem, text, finished) -> float``; None: 1 for a verified answer that ended, else 0.

    Raises:
        ValueError: bad problems or settings, several processes, a folder holding another run, or a round whose
            answers none was verified.
    """
    from autodeco.common.runlock import run_lock

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--objective rejection runs in one process; launch it without accelerate launch "
                         "(or use --objective reward, which splits its prompts across processes)")
    output = Path(config.output_dir)
    source = config.source if Path(config.source).expanduser().is_file() else None
    inputs = {"problems file": source, "data folder": config.data_dir, "heads": likelihood.heads,
              "base model": likelihood.base}
    with run_lock(output, "train", inputs=inputs):
        if overwrite:
            clear_rounds(output)
        problems = training_problems(config, config.seed)
        settings = run_settings(config, likelihood, problems)
        state.check_stored_settings(output, settings)
        if (output / state.HEADS_DIR / "config.json").exists():
            _say(f"training in {output} already finished ({config.rounds} rounds; heads in "
                 f"{output / state.HEADS_DIR}); nothing to do (pass --overwrite to train again)")
            return RejectionResult(output, output / state.HEADS_DIR, config.rounds, True, [])
        state.prepare_output(output, settings)
        reward = reward or verified_reward(config.scorer)
        rows, heads = [], likelihood.heads
        for number in range(1, config.rounds + 1):
            round_dir = output / f"{ROUND_PREFIX}{number}"
            sampling = sample_round(config, likelihood, round_dir, number, heads, settings["base"], problems, reward)
            trained = train_round(likelihood, round_dir, heads, settings["base"], progress)
            heads = str(round_dir / TRAIN_DIR / state.HEADS_DIR)
            rows.append({**sampling, **trained})
            rewrite_jsonl_atomic(output / LOG_FILE, rows)
            _write_curve(output)
        save_final_heads(output, heads, settings, rows)
        return RejectionResult(output, output / state.HEADS_DIR, config.rounds, False, rows)


def run_settings(config: RejectionConfig, likelihood: TrainConfig, problems) -> dict:
    """What ``train_config.json`` records: the rollout settings, the rounds, the likelihood recipe's settings."""
    from autodeco.common.fingerprint import model_reference_fingerprint, tensors_fingerprint
    from autodeco.model.checkpoint import read_checkpoint

    base = state.resolved_base(likelihood)
    recipe_settings = dataclasses.asdict(likelihood)
    for name in ("data", "output_dir", "heads", "base"):
        recipe_settings.pop(name)
    return {
        **dataclasses.asdict(config),
        "objective": "rejection",
        "likelihood": recipe_settings,
        "base": base,
        "base_fingerprint": model_reference_fingerprint(base),
        "heads": likelihood.heads,
        "heads_fingerprint": None if likelihood.heads is None else tensors_fingerprint(
            read_checkpoint(likelihood.heads).head_tensors),
        "problems": len(problems),
        "problems_fingerprint": problems_fingerprint(problems),
    }


def sample_round(
    config: RejectionConfig, likelihood: TrainConfig, round_dir: Path, number: int, heads: str | None, base: str,
    problems, reward: Reward,
) -> dict:
    """Answer every problem with the round's starting heads, keep the rewarded answers (a finished round: read them)."""
    if (round_dir / SAMPLING_FILE).exists():
        return read_json(round_dir / SAMPLING_FILE, what="round statistics",
                         fix="delete the round's folder to sample it again")
    import torch

    from autodeco.model.base_model import end_token_ids, load_tokenizer
    from autodeco.sampling.rollouts import HFRollouts
    from autodeco.training.recipe import load_model

    started = time.perf_counter()
    tokenizer = load_tokenizer(base)
    model = load_model(dataclasses.replace(likelihood, heads=heads, base=base), base)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    groups = draw_groups(
        HFRollouts(model, tokenizer), tokenizer, problems, answers=config.answers_per_prompt,
        max_new_tokens=config.max_new_tokens, batch_size=config.rollout_batch_size,
        seed_parts=("rejection rollouts", config.seed, number), reward=reward,
        end_ids=end_token_ids(model.llm, tokenizer),
    )
    del model
    kept = [
        {"problem_id": group.problem.id, "prompt": group.problem.prompt(), "completion": completion.text,
         "answer": group.problem.answer, "source": group.problem.source, "difficulty": group.problem.difficulty,
         "round": number, "sample": index, "reward": value, "num_tokens": completion.num_tokens}
        for group in groups
        for index, (completion, value) in enumerate(zip(group.completions, group.rewards))
        if value > 0 and completion.text.strip()
    ]
    statistics = round_statistics(groups, number, len(kept), time.perf_counter() - started)
    if not kept:
        raise ValueError(
            f"round {number}: none of the {statistics['answers']} answers was verified, so there is nothing to train "
            "on; raise --answers-per-prompt or --max-new-tokens, use easier problems, or start from better --heads"
        )
    round_dir.mkdir(parents=True, exist_ok=True)
    rewrite_jsonl_atomic(round_dir / TRAJECTORIES_FILE, kept)
    write_json_atomic(round_dir / SAMPLING_FILE, statistics)  # last: marks the round's sampling as done
    return statistics


def round_statistics(groups, number: int, kept: int, seconds: float) -> dict:
    """A round's answer statistics (its log row's first columns)."""
    answers = sum(len(group.rewards) for group in groups)
    completions = [completion for group in groups for completion in group.completions]
    temperatures = [value for completion in completions for value in completion.temperatures or []]
    top_ps = [value for completion in completions for value in completion.top_ps or []]
    return {
        "round": number,
        "problems": len(groups),
        "answers": answers,
        "kept": kept,
        "reward_mean": sum(sum(group.rewards) for group in groups) / max(answers, 1),
        "signal_share": sum(len(set(group.rewards)) > 1 for group in groups) / max(len(groups), 1),
        "finished_share": sum(sum(group.finished) for group in groups) / max(answers, 1),
        "answer_tokens": sum(completion.num_tokens for completion in completions) / max(answers, 1),
        "temperature_mean": _mean(temperatures),
        "top_p_mean": _mean(top_ps),
        "sampling_seconds": round(seconds, 2),
    }


def train_round(likelihood: TrainConfig, round_dir: Path, heads: str | None, base: str, progress: bool) -> dict:
    """The likelihood recipe on the round's kept answers, from the round's starting heads (resumes if killed)."""
    from autodeco.model.checkpoint import read_checkpoint
    from autodeco.training.recipe import train_heads

    round_config = dataclasses.replace(
        likelihood, data=[str(round_dir / TRAJECTORIES_FILE)], output_dir=str(round_dir / TRAIN_DIR), heads=heads,
        base=base,
    )
    result = train_heads(round_config, progress=progress)
    final = read_checkpoint(result.heads_dir).config.training or {}
    last = final.get("final") or {}
    return {"train_steps": result.steps, "train_loss": last.get("loss", math.nan)}


def save_final_heads(output: Path, heads: str, settings: dict, rows: list[dict]) -> Path:
    """The last round's heads as ``heads/``, with this recipe's training record."""
    from autodeco.model.checkpoint import read_checkpoint, write_checkpoint

    contents = read_checkpoint(heads)
    record = {"recipe": RECIPE, "objective": "rejection", "rounds": len(rows), "settings": settings,
              "steps": sum(row["train_steps"] for row in rows), "final": rows[-1] if rows else None}
    final_config = dataclasses.replace(contents.config, trained=True, training=record)
    folder = write_checkpoint(output / state.HEADS_DIR, final_config, contents.head_tensors)
    _write_curve(output)
    _say(f"heads written to {folder}")
    return folder


def clear_rounds(output: Path) -> None:
    """``--overwrite``: the recipe's files (:func:`autodeco.training.state.clear_output`) and every ``round-<n>/``."""
    state.clear_output(output)
    if output.is_dir():
        for folder in output.glob(ROUND_PREFIX + "*"):
            if folder.is_dir() and folder.name[len(ROUND_PREFIX):].isdigit():
                shutil.rmtree(folder, ignore_errors=True)


def _write_curve(output: Path) -> None:
    from autodeco.training.reward_curve import write_reward_curve

    write_reward_curve(output, x="round")


def _mean(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else math.nan


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
