"""Training data: verified trajectories (JSONL) -> token ids with completion-only labels -> batches.

Each line of a training file is one trajectory written by ``autodeco sample``::

    {"problem_id": "...", "prompt": "...", "completion": "...", "answer": "...", ...}

Only ``prompt`` (the user message, chat template not applied) and ``completion`` (the model's
answer, special tokens stripped) are needed. A trajectory becomes

    input_ids = tokens(chat_template(prompt)) + tokens(completion) + [EOS]
    labels    = [-100] * len(prompt tokens)   + tokens(completion) + [EOS]

so the loss is on the completion and its end only (PAPER.md section 3: completion-only loss).

Shapes: ``B`` batch, ``L`` padded length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from autodeco.common.jsonl import BYTE_ORDER_MARK, describe_json_error
from autodeco.common.seeds import derived_seed
from autodeco.core.losses import IGNORE_INDEX
from autodeco.training.config import BAD_LINE_CHOICES, OVERLONG_CHOICES  # noqa: F401  (re-exported)
from autodeco.training.control import ControlChoice, ControlPhrasings, append_command, control_choices

REQUIRED_FIELDS = ("prompt", "completion")
"""Fields every line must hold, as non-empty strings."""

MAX_REPORTED_BAD_LINES = 10
"""How many skipped lines :meth:`DataReport.summary` names one by one."""


class TrainingDataError(ValueError):
    """A training file is missing or malformed, or nothing is left to train on."""


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One prompt/completion pair and where it was read."""

    prompt: str
    completion: str
    location: str
    """``file:line`` (1-based) of the JSONL line it came from."""
    problem_id: str | None = None


@dataclasses.dataclass
class TrainingExample:
    """One tokenized trajectory.

    Attributes:
        input_ids: ``(L,)`` prompt, completion and EOS token ids.
        labels: ``(L,)`` the same ids, -100 on the prompt.
        location: ``file:line`` of the source line.
        prompt: the user message (chat template not applied), when known.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    location: str = ""
    prompt: str | None = None
    """The user message it was built from (decoding-control pairs append a command to it)."""

    @property
    def num_labelled(self) -> int:
        """Number of tokens the loss is computed on (completion + EOS)."""
        return int((self.labels != IGNORE_INDEX).sum())


@dataclasses.dataclass
class DataReport:
    """What reading and tokenizing the training files kept and left out."""

    lines: int = 0
    """Non-empty lines read."""
    bad_lines: list[str] = dataclasses.field(default_factory=list)
    """``file:line: reason`` of every malformed line skipped (``on_bad_line="skip"``)."""
    truncated: int = 0
    """Trajectories whose completion was cut to fit ``max_length``."""
    skipped_overlong: int = 0
    """Trajectories left out because they did not fit ``max_length``."""
    examples: int = 0
    """Trajectories kept for training."""

    def summary(self) -> str:
        """One line for the log, naming the first few skipped lines.

        Example:
            >>> DataReport(lines=3, examples=2, truncated=1, bad_lines=["a.jsonl:2: not JSON"]).summary()
            '2 of 3 trajectories kept; 1 malformed line skipped (a.jsonl:2: not JSON); 1 truncated to max_length'
        """
        parts = [f"{self.examples} of {self.lines} trajectories kept"]
        if self.bad_lines:
            shown = "; ".join(self.bad_lines[:MAX_REPORTED_BAD_LINES])
            more = f"; and {len(self.bad_lines) - MAX_REPORTED_BAD_LINES} more" if len(self.bad_lines) > MAX_REPORTED_BAD_LINES else ""
            plural = "s" if len(self.bad_lines) > 1 else ""
            parts.append(f"{len(self.bad_lines)} malformed line{plural} skipped ({shown}{more})")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        if self.skipped_overlong:
            parts.append(f"{self.skipped_overlong} longer than max_length skipped")
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------ reading


def read_trajectories(
    paths: list[str | os.PathLike], *, on_bad_line: str = "stop", report: DataReport | None = None,
    what: str = "training file",
) -> list[Trajectory]:
    """Read and validate trajectory JSONL files.

    Args:
        paths: JSONL files, read in order.
        on_bad_line: ``"stop"``: raise on the first malformed line; ``"skip"``: leave it out and
            record it in ``report.bad_lines``.
        report: filled with counts (a new one is made when None).
        what: what the files are, for messages (``"training file"``, ``"--meanshift-data file"``).

    Returns:
        The valid trajectories, in file order.

    Raises:
        TrainingDataError: a missing file, or (with ``on_bad_line="stop"``) a malformed line,
            naming ``file:line``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "train.jsonl"
        >>> _ = path.write_text('{"prompt": "1+1?", "completion": "2"}\\n')
        >>> read_trajectories([path])[0].completion
        '2'
    """
    if on_bad_line not in BAD_LINE_CHOICES:
        raise ValueError(f"on_bad_line must be one of {BAD_LINE_CHOICES}, got {on_bad_line!r}")
    report = report if report is not None else DataReport()
    trajectories = []
    for path in _existing_files(paths, what):
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                location = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise TrainingDataError(
                        f"{what} {location}: not UTF-8 text (byte 0x{raw[error.start]:02x}); is it a JSONL file "
                        "written by `autodeco sample`? Pass that file, or convert it to UTF-8"
                    ) from None
                if not line.strip():
                    continue
                report.lines += 1
                try:
                    trajectories.append(parse_trajectory(line, location))
                except TrainingDataError as error:
                    if on_bad_line == "stop":
                        raise TrainingDataError(
                            f"{error}; fix or delete that line, or pass --on-bad-line skip to leave such lines out"
                        ) from None
                    report.bad_lines.append(str(error))
    return trajectories


def parse_trajectory(line: str, location: str) -> Trajectory:
    """One JSONL line -> :class:`Trajectory`, or :class:`TrainingDataError` saying what is wrong.

    Example:
        >>> parse_trajectory('{"prompt": "Hi", "completion": "Hello"}', "t.jsonl:1").prompt
        'Hi'
    """
    try:
        record = json.loads(line.removeprefix(BYTE_ORDER_MARK))
    except (ValueError, RecursionError) as error:
        raise TrainingDataError(f"{location}: {describe_json_error(error, with_line=False)}") from None
    if not isinstance(record, dict):
        raise TrainingDataError(f"{location}: expected a JSON object, got {type(record).__name__}")
    for field in REQUIRED_FIELDS:
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            found = "missing" if field not in record else f"{value!r}"
            raise TrainingDataError(f"{location}: field {field!r} must be a non-empty string, got {found}")
    problem_id = record.get("problem_id")
    return Trajectory(record["prompt"], record["completion"], location, None if problem_id is None else str(problem_id))


def _existing_files(paths: list[str | os.PathLike], what: str = "training file") -> list[Path]:
    if not paths:
        raise TrainingDataError(f"no {what} given; pass one or more JSONL files written by `autodeco sample`")
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            raise TrainingDataError(f"{what} {str(path)!r} is a folder; pass the JSONL file(s) inside it")
        if not path.is_file():
            raise TrainingDataError(f"{what} {str(path)!r} does not exist")
        files.append(path)
    return files


def data_fingerprint(paths: list[str | os.PathLike]) -> str:
    """SHA-256 over the bytes of the training files, in order: tells whether the data changed.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "t.jsonl"
        >>> _ = path.write_text("")
        >>> data_fingerprint([path])[:12]
        'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    for path in _existing_files(paths):
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------- tokenizing


def tokenize_trajectory(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-rendered prompt and of the completion followed by EOS.

    The prompt is rendered with the tokenizer's chat template (generation prompt included) and
    tokenized without extra special tokens when a template applies (the template writes them);
    the completion is tokenized on its own, without special tokens, and EOS is appended.

    Returns:
        ``(prompt_ids, completion_ids)``; the completion ids end with ``tokenizer.eos_token_id``.

    Raises:
        TrainingDataError: when the tokenizer has no EOS token.
    """
    if tokenizer.eos_token_id is None:
        raise TrainingDataError("the tokenizer has no eos_token; the trajectories' end cannot be marked")
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenize_prompt(tokenizer, prompt), list(completion_ids)


def tokenize_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of the chat-rendered prompt (generation prompt included), as :func:`tokenize_trajectory` makes them."""
    from autodeco.sampling.inference import render_prompt

    has_template = bool(getattr(tokenizer, "chat_template", None))
    rendered = render_prompt(tokenizer, prompt)
    return list(tokenizer(rendered, add_special_tokens=not has_template)["input_ids"])


def fit_to_length(
    prompt_ids: list[int], completion_ids: list[int], max_length: int, overlong: str = "truncate"
) -> tuple[list[int], list[int]] | None:
    """Apply the length limit: keep the whole prompt and cut the completion, or give up.

    Args:
        prompt_ids, completion_ids: from :func:`tokenize_trajectory`.
        max_length: most tokens in the sequence.
        overlong: ``"truncate"`` cuts the completion (dropping EOS too); ``"skip"`` returns None.

    Returns:
        ``(input_ids, labels)``, or None when the sequence must be left out: it is too long and
        ``overlong="skip"``, or not even the prompt plus one completion token fits.

    Example:
        >>> fit_to_length([5, 6], [7, 8, 2], max_length=4)
        ([5, 6, 7, 8], [-100, -100, 7, 8])
        >>> fit_to_length([5, 6, 7, 8], [9, 2], max_length=4) is None
        True
    """
    if overlong not in OVERLONG_CHOICES:
        raise ValueError(f"overlong must be one of {OVERLONG_CHOICES}, got {overlong!r}")
    if len(prompt_ids) + len(completion_ids) > max_length:
        if overlong == "skip" or len(prompt_ids) + 1 > max_length:
            return None
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def build_training_set(
    paths: list[str | os.PathLike],
    tokenizer,
    *,
    max_length: int,
    on_bad_line: str = "stop",
    overlong: str = "truncate",
) -> tuple[list[TrainingExample], DataReport]:
    """Read, validate, tokenize and length-limit the training files.

    Args:
        paths: JSONL files of verified trajectories.
        tokenizer: the base model's tokenizer (with its chat template).
        max_length: most tokens per sequence.
        on_bad_line: ``"stop"`` or ``"skip"`` (see :func:`read_trajectories`).
        overlong: ``"truncate"`` or ``"skip"`` (see :func:`fit_to_length`).

    Returns:
        ``(examples, report)``.

    Raises:
        TrainingDataError: malformed input (see above), or no example left after filtering.
    """
    report = DataReport()
    examples = []
    for trajectory in read_trajectories(paths, on_bad_line=on_bad_line, report=report):
        prompt_ids, completion_ids = tokenize_trajectory(tokenizer, trajectory.prompt, trajectory.completion)
        fitted = fit_to_length(prompt_ids, completion_ids, max_length, overlong)
        if fitted is None:
            report.skipped_overlong += 1
            continue
        if len(prompt_ids) + len(completion_ids) > max_length:
            report.truncated += 1
        input_ids, labels = fitted
        examples.append(
            TrainingExample(torch.tensor(input_ids), torch.tensor(labels), trajectory.location, trajectory.prompt)
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
    ``both`` a low and a high one) whose commanded prompt leaves room for a completion token within
    ``max_length``. Tokenized partners are cached per (example, phrasing).

    Example:
        >>> from autodeco.training.control import load_phrasings
        >>> pairs = CommandedExamples(None, [], load_phrasings(), share=0.0, seed=0, max_length=64)
        >>> pairs(0, 0)  # share 0: never paired (no example or tokenizer is touched)
        []
    """

    def __init__(
        self, tokenizer, examples: list[TrainingExample], phrasings: ControlPhrasings, *, share: float, seed: int,
        max_length: int, both: bool = False,
    ):
        self.tokenizer, self.examples, self.phrasings = tokenizer, examples, phrasings
        self.share, self.seed, self.max_length, self.both = share, seed, max_length, both
        self._cache: dict[tuple[int, str], TrainingExample | None] = {}

    def __call__(self, epoch: int, index: int) -> list[tuple[ControlChoice, TrainingExample]]:
        pairs = []
        for choice in control_choices(self.seed, epoch, index, self.share, self.phrasings, both=self.both):
            key = (index, choice.phrasing)
            if key not in self._cache:
                self._cache[key] = commanded_example(self.tokenizer, self.examples[index], choice.phrasing, self.max_length)
            if self._cache[key] is not None:
                pairs.append((choice, self._cache[key]))
        return pairs


def commanded_example(tokenizer, example: TrainingExample, command: str, max_length: int) -> TrainingExample | None:
    """``example`` with ``command`` appended to its prompt: the same completion tokens, a longer prompt.

    Returns:
        The new example (its completion cut to fit ``max_length`` if needed), or None when not
        even the commanded prompt and one completion token fit.

    Raises:
        ValueError: the example does not know its prompt (it was not built by :func:`build_training_set`).
    """
    if example.prompt is None:
        raise ValueError(f"training example {example.location or '(unnamed)'} records no prompt to append a command to")
    completion_ids = example.labels[example.labels != IGNORE_INDEX].tolist()
    prompt_ids = tokenize_prompt(tokenizer, append_command(example.prompt, command))
    fitted = fit_to_length(prompt_ids, completion_ids, max_length)
    if fitted is None:
        return None
    return TrainingExample(torch.tensor(fitted[0]), torch.tensor(fitted[1]), example.location, append_command(example.prompt, command))


# ------------------------------------------------------------------------------------------ batches


def collate(examples: list[TrainingExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into one batch.

    Returns:
        ``input_ids`` ``(B, L)`` (``pad_token_id`` after the end), ``attention_mask`` ``(B, L)``,
        ``labels`` ``(B, L)`` (-100 after the end).

    Example:
        >>> batch = collate([TrainingExample(torch.tensor([4, 5, 2]), torch.tensor([-100, 5, 2])),
        ...                  TrainingExample(torch.tensor([4, 2]), torch.tensor([-100, 2]))], pad_token_id=0)
        >>> batch["input_ids"].tolist(), batch["labels"][1].tolist()
        ([[4, 5, 2], [4, 2, 0]], [-100, 2, -100])
    """
    width = max(example.input_ids.shape[0] for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, L)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, L)
    for row, example in enumerate(examples):
        length = example.input_ids.shape[0]
        input_ids[row, :length] = example.input_ids
        labels[row, :length] = example.labels
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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
