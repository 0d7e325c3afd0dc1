"""Rejection sampling: the base model answers problems; its verified-correct answers become the training set.

This is the label-free supervision of PAPER.md section 3: nobody labels temperatures, the model's
own correct trajectories are the data. Output folder::

    sample_config.json   the settings and the base's fingerprint (a restart with other ones is refused)
    trajectories.jsonl   accepted answers for training: prompt, completion, answer, source, seed, ...
    heldout.jsonl        accepted answers of held-out problems (for held-out NLL and MeanShift); a problem is
                         held out by its normalised question text, so copies of one question share a split
    progress.jsonl       one line per finished problem (attempts, accepted): what a restart skips
    stats.json           acceptance statistics
    run.lock             held by the running process (a second run on the folder is refused)

Appends are durable per batch, so a killed run loses at most the batch in flight; a restart drops
any answers of unfinished problems and carries on. Problem ids follow content, so a restart after
lines were inserted samples the new problems only, and one after an answer was edited is refused.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path

from autodeco.common.fingerprint import model_reference_fingerprint
from autodeco.common.jsonl import (
    append_jsonl,
    check_resume_config,
    read_jsonl_tolerant,
    rewrite_jsonl_atomic,
    write_json_atomic,
)
from autodeco.common.runlock import run_lock
from autodeco.common.seeds import derived_seed
from autodeco.problems.problem import question_key
from autodeco.sampling.config import SampleConfig

TRAIN_FILE = "trajectories.jsonl"
HELDOUT_FILE = "heldout.jsonl"
PROGRESS_FILE = "progress.jsonl"
CONFIG_FILE = "sample_config.json"
STATS_FILE = "stats.json"


@dataclasses.dataclass
class SampleStats:
    """Acceptance statistics of a sampling run."""

    problems: int
    attempts: int
    accepted: int
    problems_with_an_accepted_answer: int
    by_difficulty: dict[str, dict[str, int]]
    train_trajectories: int
    heldout_trajectories: int
    seconds_this_run: float
    new_tokens_this_run: int
    duplicate_questions: int = 0
    """Problems whose question (normalised) an earlier problem of the data already asks: kept in its split."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.attempts if self.attempts else 0.0

    def table(self) -> str:
        """Acceptance by difficulty as a small Markdown table."""
        lines = ["| difficulty | problems | attempts | accepted | rate |", "|---|---|---|---|---|"]
        for level, row in sorted(self.by_difficulty.items()):
            rate = row["accepted"] / row["attempts"] if row["attempts"] else 0.0
            lines.append(f"| {level} | {row['problems']} | {row['attempts']} | {row['accepted']} | {rate:.1%} |")
        lines.append(f"| all | {self.problems} | {self.attempts} | {self.accepted} | {self.acceptance_rate:.1%} |")
        return "\n".join(lines)


HELDOUT_KEY = "normalised question"
"""What the held-out split is keyed by (recorded in ``sample_config.json``: runs split otherwise are not resumed)."""


def is_heldout(question: str, fraction: float, seed: int) -> bool:
    """Whether a question belongs to the held-out share: stable, and the same for every copy of it.

    Keyed by :func:`~autodeco.problems.problem.question_key`, not by the problem's id or place, so a
    question that appears twice in the data (with other spacing or case, or another answer) never
    lands in both ``heldout.jsonl`` and the training data.

    Example:
        >>> is_heldout("What is 2 + 2?", 0.5, 0) == is_heldout("what is  2 + 2? ", 0.5, 0)
        True
    """
    return fraction > 0 and (derived_seed("heldout", seed, question_key(question)) % 10_000) < fraction * 10_000


def duplicate_questions(problems) -> int:
    """How many problems ask a question (normalised) that an earlier problem in the list already asks.

    Example:
        >>> from autodeco.problems import Problem
        >>> problems = [Problem(f"p:{i}", text, "1", "demo", "generic") for i, text in enumerate(["A?", "B?", "a? "])]
        >>> duplicate_questions(problems)
        1
    """
    return len(problems) - len({question_key(problem.question) for problem in problems})


def sample_trajectories(
    config: SampleConfig, output: str | Path, *, overwrite: bool = False, progress: bool = True, rollouts=None
):
    """Run (or resume) rejection sampling into the folder ``output``; returns :class:`SampleStats`.

    ``rollouts`` makes the rollout engine from the loaded model (``rollouts(loaded)``, an object with
    ``prefill`` and ``complete`` such as :class:`autodeco.engines.vllm.VllmRollouts`); None: Hugging Face's.

    Everything is checked before anything is written (the problems, the stored run's settings and
    problems, the base model), and the folder is locked for the run (see :mod:`autodeco.common.runlock`).

    Raises:
        ValueError: bad data or settings, a folder holding another run or problems that changed, or
            a folder in use by another process.
    """
    from autodeco.problems import load_problems
    from autodeco.problems.answers import score

    output = Path(output)
    problems = load_problems(
        config.source, split=config.split, limit=config.limit, seed=config.seed, data_dir=config.data_dir
    )
    with run_lock(output, "sample", inputs={"dataset": config.source, "data folder": config.data_dir,
                                            "base model": config.base}):
        if overwrite:
            for name in (TRAIN_FILE, HELDOUT_FILE, PROGRESS_FILE, CONFIG_FILE, STATS_FILE):
                (output / name).unlink(missing_ok=True)
        record = _run_record(config, problems)
        fix = "choose another output folder or pass --overwrite to start again"
        resuming = check_resume_config(output / CONFIG_FILE, record, what="sampling run", fix=fix)
        finished = _finished_problems(output)
        _check_same_problems(output, finished, problems)
        todo = [problem for problem in problems if problem.id not in finished]
        loaded = _load_base(config) if todo else None  # a bad base fails here, before anything is written
        if not resuming:
            write_json_atomic(output / CONFIG_FILE, record)
        _drop_unfinished(output, finished)
        started, new_tokens = time.perf_counter(), 0
        if todo:
            new_tokens = _sample_missing(config, loaded, output, todo, score, progress, rollouts)
        stats = _statistics(output, problems, time.perf_counter() - started, new_tokens)
        write_json_atomic(output / STATS_FILE, {**dataclasses.asdict(stats), "acceptance_rate": stats.acceptance_rate})
    return stats


def _run_record(config: SampleConfig, problems) -> dict:
    """What ``sample_config.json`` records: the settings and the base model's fingerprint.

    The problems are not compared as a whole (a resume may add problems: inserted lines, a larger
    limit); :func:`_check_same_problems` refuses one whose finished problems changed.
    """
    settings = {key: value for key, value in dataclasses.asdict(config).items() if key != "engine"}  # engines mix
    if settings["keep"] == "verified":  # recorded as before the setting existed, so older runs still resume
        del settings["keep"]
    return {**settings, "base_fingerprint": model_reference_fingerprint(config.base), "heldout_key": HELDOUT_KEY}


def _finished_problems(output: Path) -> dict[str, dict]:
    """Problems a previous run finished (``progress.jsonl``), by id."""
    return {row["problem_id"]: row for row in read_jsonl_tolerant(output / PROGRESS_FILE)}


def _check_same_problems(output: Path, finished: dict[str, dict], problems) -> None:
    """Refuse to resume when problems the stored run finished are no longer in the data.

    Problem ids follow content (question and answer), so an edited answer or question shows up
    here as a finished problem that no longer exists; its answers would otherwise stay in the
    training set, checked against the old answer.
    """
    current = {problem.id for problem in problems}
    gone = [problem_id for problem_id in finished if problem_id not in current]
    if gone:
        shown = ", ".join(map(repr, gone[:3])) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
        raise ValueError(
            f"{output} holds answers to {len(gone)} problem(s) that are no longer in the data ({shown}): a question "
            "or an answer was edited, or lines were removed or moved past --limit, so the stored answers were "
            "checked against other problems; choose another output folder or pass --overwrite to start again"
        )


def _drop_unfinished(output: Path, finished: dict[str, dict]) -> None:
    """Drop answers written for unfinished problems (a killed batch) and a torn last progress line."""
    for name in (TRAIN_FILE, HELDOUT_FILE):
        if (output / name).exists():
            kept = [row for row in read_jsonl_tolerant(output / name) if row["problem_id"] in finished]
            rewrite_jsonl_atomic(output / name, kept)
    if (output / PROGRESS_FILE).exists():
        rewrite_jsonl_atomic(output / PROGRESS_FILE, list(finished.values()))


def _load_base(config: SampleConfig):
    from autodeco.sampling.inference import load_for_generation

    return load_for_generation(None, config.base, seed=config.seed)


def _sample_missing(config: SampleConfig, loaded, output: Path, todo, score, progress: bool, rollouts=None) -> int:
    from tqdm.auto import tqdm

    from autodeco.sampling.inference import render_prompt
    from autodeco.sampling.rollouts import HFRollouts

    tokenizer = loaded.tokenizer
    engine = rollouts(loaded) if rollouts is not None else HFRollouts(loaded.model, tokenizer)
    bar = tqdm(total=len(todo), desc="sampling", unit="problem", disable=not progress)
    accepted_total = attempts_total = new_tokens = 0
    for start in range(0, len(todo), config.batch_size):
        problems = todo[start : start + config.batch_size]
        batch = engine.prefill([render_prompt(tokenizer, problem.prompt()) for problem in problems])
        seed = derived_seed("sample", config.seed, problems[0].id)
        completions = engine.complete(
            batch, config.setting,
            num_samples=config.num_samples, max_new_tokens=config.max_new_tokens, seed=seed,
        )
        rows = {TRAIN_FILE: [], HELDOUT_FILE: []}
        finished = []
        for problem, samples in zip(problems, completions):
            accepted = 0
            for index, completion in enumerate(samples):
                new_tokens += completion.num_tokens
                extracted, correct = score(completion.text, problem.answer, config.scorer)
                if not correct and config.keep == "verified":
                    continue
                accepted += bool(correct)
                held_out = is_heldout(problem.question, config.heldout_fraction, config.seed)
                target = HELDOUT_FILE if held_out else TRAIN_FILE
                row = _trajectory(problem, completion, extracted, seed, index)
                if config.keep == "all":
                    row["correct"] = bool(correct)
                rows[target].append(row)
            finished.append(
                {"problem_id": problem.id, "attempts": len(samples), "accepted": accepted,
                 "difficulty": problem.difficulty}
            )
            accepted_total, attempts_total = accepted_total + accepted, attempts_total + len(samples)
        for name, new_rows in rows.items():
            append_jsonl(output / name, new_rows)
        append_jsonl(output / PROGRESS_FILE, finished)  # last: a problem counts as done only once its answers are safe
        bar.update(len(problems))
        bar.set_postfix(accepted=f"{accepted_total}/{attempts_total}")
    bar.close()
    return new_tokens


def _trajectory(problem, completion, extracted, seed: int, index: int) -> dict:
    return {
        "problem_id": problem.id,
        "prompt": problem.prompt(),
        "completion": completion.text,
        "answer": problem.answer,
        "extracted": extracted,
        "source": problem.source,
        "difficulty": problem.difficulty,
        "seed": seed,
        "sample": index,
        "num_tokens": completion.num_tokens,
    }


def _statistics(output: Path, problems, seconds: float, new_tokens: int) -> SampleStats:
    wanted = {problem.id for problem in problems}
    progress = [row for row in read_jsonl_tolerant(output / PROGRESS_FILE) if row["problem_id"] in wanted]
    by_difficulty: dict[str, dict[str, int]] = defaultdict(lambda: {"problems": 0, "attempts": 0, "accepted": 0})
    for row in progress:
        level = by_difficulty[str(row.get("difficulty") if row.get("difficulty") is not None else "-")]
        level["problems"] += 1
        level["attempts"] += row["attempts"]
        level["accepted"] += row["accepted"]
    return SampleStats(
        problems=len(progress),
        attempts=sum(row["attempts"] for row in progress),
        accepted=sum(row["accepted"] for row in progress),
        problems_with_an_accepted_answer=sum(1 for row in progress if row["accepted"] > 0),
        by_difficulty=dict(by_difficulty),
        train_trajectories=len(read_jsonl_tolerant(output / TRAIN_FILE)),
        heldout_trajectories=len(read_jsonl_tolerant(output / HELDOUT_FILE)),
        seconds_this_run=round(seconds, 2),
        new_tokens_this_run=new_tokens,
        duplicate_questions=duplicate_questions(problems),
    )
