"""Training data: trajectory files -> tokenized training examples -> batches in a seeded order.

Reading and tokenizing are shared with evaluation and live in :mod:`autodeco.data`; this module
holds what only training needs: the training set with its length policy, the decoding-control
partners of each example, and the order and randomness of the recipe.

Shapes: ``B`` batch, ``L`` padded length.
"""

from __future__ import annotations

import os

import torch

from autodeco.common.seeds import derived_seed
from autodeco.core.defaults import IGNORE_INDEX
from autodeco.data.phrasings import Command, ControlPhrasings, command_messages, command_text
from autodeco.data.tokens import TrainingExample, fit_to_length, tokenize_prompt, tokenize_trajectory
from autodeco.data.trajectories import DataReport, TrainingDataError, read_trajectories
from autodeco.training.control import ControlChoice, control_choices


def build_training_set(
    paths: list[str | os.PathLike],
    tokenizer,
    *,
    max_length: int,
    on_bad_line: str = "stop",
    overlong: str = "truncate",
    control_only: bool = False,
) -> tuple[list[TrainingExample], DataReport]:
    """Read, validate, tokenize and length-limit the training files.

    Args:
        paths: JSONL files of verified trajectories (with ``control_only``: any answers, verified or not).
        tokenizer: the base model's tokenizer (with its chat template).
        max_length: most tokens per sequence.
        on_bad_line: ``"stop"`` or ``"skip"`` (see :func:`read_trajectories`).
        overlong: ``"truncate"`` or ``"skip"`` (see :func:`fit_to_length`).
        control_only: the files are ``--control-data``: their examples are marked ``control_only`` (decoding
            control's losses only) and may hold unverified answers. Without it, a line recorded as not correct
            (``"correct": false``, from ``autodeco sample --keep all``) is refused.

    Returns:
        ``(examples, report)``.

    Raises:
        TrainingDataError: malformed input (see above), or no example left after filtering.
    """
    report = DataReport()
    examples = []
    what = "--control-data file" if control_only else "training file"
    for trajectory in read_trajectories(paths, on_bad_line=on_bad_line, report=report, what=what):
        if trajectory.correct is False and not control_only:
            raise TrainingDataError(
                f"{trajectory.location}: an answer recorded as not correct (a file of `autodeco sample --keep all`); "
                "the paper's losses learn from verified answers only: pass such files with --control-data (decoding "
                "control only), or sample with the default --keep verified"
            )
        prompt_ids, completion_ids = tokenize_trajectory(tokenizer, trajectory.prompt, trajectory.completion)
        fitted = fit_to_length(prompt_ids, completion_ids, max_length, overlong)
        if fitted is None:
            report.skipped_overlong += 1
            continue
        if len(prompt_ids) + len(completion_ids) > max_length:
            report.truncated += 1
        input_ids, labels = fitted
        examples.append(
            TrainingExample(torch.tensor(input_ids), torch.tensor(labels), trajectory.location, trajectory.prompt,
                            control_only)
        )
    report.examples = len(examples)
    if not examples:
        raise TrainingDataError(
            f"no trajectory left to train on ({report.summary()}); check the files "
            f"{[str(path) for path in paths]}, raise --max-length, or use --overlong truncate"
        )
    return examples, report


# ------------------------------------------------------------------------------- decoding control


class CommandedExamples:
    """The decoding-control partners of each training example: the same completion under commanded prompts.

    ``pairs(epoch, index)`` lists ``(choice, example)`` for each command
    :func:`~autodeco.training.control.control_choices` pairs that example with (none, one, or with
    ``both`` a low and a high one; with ``neutral`` also a neutral sentence) whose commanded prompt leaves room for a
    completion token within ``max_length``. Tokenized partners are cached per (example, command).

    Example:
        >>> from autodeco.data.phrasings import load_phrasings
        >>> pairs = CommandedExamples(None, [], load_phrasings(), share=0.0, seed=0, max_length=64)
        >>> pairs(0, 0)  # share 0: never paired (no example or tokenizer is touched)
        []
    """

    def __init__(
        self, tokenizer, examples: list[TrainingExample], phrasings: ControlPhrasings, *, share: float, seed: int,
        max_length: int, both: bool = False, neutral: bool = False,
    ):
        self.tokenizer, self.examples, self.phrasings = tokenizer, examples, phrasings
        self.share, self.seed, self.max_length, self.both, self.neutral = share, seed, max_length, both, neutral
        self._cache: dict[tuple[int, Command], TrainingExample | None] = {}

    def __call__(self, epoch: int, index: int) -> list[tuple[ControlChoice, TrainingExample]]:
        pairs = []
        choices = control_choices(self.seed, epoch, index, self.share, self.phrasings, both=self.both,
                                  neutral=self.neutral)
        for choice in choices:
            key = (index, choice.command)
            if key not in self._cache:
                self._cache[key] = commanded_example(self.tokenizer, self.examples[index], choice.command, self.max_length)
            if self._cache[key] is not None:
                pairs.append((choice, self._cache[key]))
        return pairs


def commanded_example(
    tokenizer, example: TrainingExample, command: Command | str, max_length: int,
) -> TrainingExample | None:
    """``example`` under a commanded prompt (the command placed as its ``placement`` says; a plain string is appended):
    the same completion tokens, a longer prompt.

    Returns:
        The new example (its completion cut to fit ``max_length`` if needed), or None when not
        even the commanded prompt and one completion token fit.

    Raises:
        ValueError: the example does not know its prompt (it was not built by :func:`build_training_set`).
    """
    if example.prompt is None:
        raise ValueError(f"training example {example.location or '(unnamed)'} records no prompt to add a command to")
    completion_ids = example.labels[example.labels != IGNORE_INDEX].tolist()
    prompt_ids = tokenize_prompt(tokenizer, command_messages(example.prompt, command))
    fitted = fit_to_length(prompt_ids, completion_ids, max_length)
    if fitted is None:
        return None
    return TrainingExample(torch.tensor(fitted[0]), torch.tensor(fitted[1]), example.location,
                           command_text(example.prompt, command), example.control_only)


# ------------------------------------------------------------------------------ order and randomness
# Everything random in training is a pure function of (seed, epoch, example index), so any
# split of a global batch across processes and accumulation steps sees the same numbers, and
# a resumed run needs no more than the step number to carry on exactly (seeds: autodeco.common.seeds).


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of example indices for one epoch: ``(num_examples,)``.

    Example:
        >>> sorted(epoch_order(5, seed=0, epoch=0).tolist())
        [0, 1, 2, 3, 4]
    """
    generator = torch.Generator().manual_seed(derived_seed("order", seed, epoch))
    return torch.randperm(num_examples, generator=generator)


def global_batch(step: int, global_batch_size: int, num_examples: int, seed: int) -> list[tuple[int, int]]:
    """``(epoch, example index)`` of the examples in optimizer step ``step`` (0-based).

    The data is a stream of epochs, each a fresh permutation; step ``s`` takes stream positions
    ``s * G ... (s + 1) * G - 1``, so a global batch may straddle two epochs.

    Example:
        >>> [epoch for epoch, _ in global_batch(step=1, global_batch_size=3, num_examples=4, seed=0)]
        [0, 1, 1]
    """
    positions = range(step * global_batch_size, (step + 1) * global_batch_size)
    orders: dict[int, list[int]] = {}
    batch = []
    for position in positions:
        epoch = position // num_examples
        if epoch not in orders:
            orders[epoch] = epoch_order(num_examples, seed, epoch).tolist()
        batch.append((epoch, orders[epoch][position % num_examples]))
    return batch


def micro_batch_slice(
    batch: list, *, micro_step: int, process_index: int, num_processes: int, per_device_batch_size: int
) -> list:
    """The part of a global batch one process handles in one accumulation micro-step.

    The global batch is laid out micro-step by micro-step, process by process:
    micro-step ``k`` on process ``r`` takes items ``(k * N + r) * b ... (k * N + r + 1) * b - 1``.

    Example:
        >>> micro_batch_slice(list(range(8)), micro_step=1, process_index=0, num_processes=2, per_device_batch_size=2)
        [4, 5]
    """
    start = (micro_step * num_processes + process_index) * per_device_batch_size
    return batch[start : start + per_device_batch_size]


def drop_draws(seed: int, epoch: int, example_index: int, length: int) -> torch.Tensor:
    """Uniform draws ``(length - 1,)`` for one example's easy-token drop decisions.

    Seeded by (seed, epoch, example index), so they do not depend on batching.

    Example:
        >>> torch.equal(drop_draws(0, 0, 3, 6), drop_draws(0, 0, 3, 6))
        True
    """
    generator = torch.Generator().manual_seed(derived_seed("drop", seed, epoch, example_index))
    return torch.rand(max(length - 1, 0), generator=generator)


def collate_drop_draws(draws: list[torch.Tensor], width: int) -> torch.Tensor:
    """Stack per-example draws into ``(B, width - 1)``; padding gets 1.0 (never dropped, never labelled)."""
    values = torch.ones(len(draws), max(width - 1, 0))  # (B, L-1)
    for row, draw in enumerate(draws):
        values[row, : draw.shape[0]] = draw
    return values
