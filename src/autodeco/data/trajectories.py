"""Trajectory files: the JSONL format ``autodeco sample`` writes, read and validated line by line.

Each line of a trajectory file is one verified answer::

    {"problem_id": "...", "prompt": "...", "completion": "...", "answer": "...", ...}

Only ``prompt`` (the user message, chat template not applied) and ``completion`` (the model's
answer, special tokens stripped) are needed. Training reads these files to learn the heads;
evaluation reads them as held-out data, for MeanShift and for the diagnosis.

This module imports no torch (the training config checks its choices against it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from autodeco.common.jsonl import BYTE_ORDER_MARK, describe_json_error

BAD_LINE_CHOICES = ("stop", "skip")
"""What to do with a malformed line: stop with an error naming it, or skip it and count it."""

OVERLONG_CHOICES = ("truncate", "skip")
"""What to do with a trajectory longer than ``max_length``: cut its completion, or leave it out."""

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
    correct: bool | None = None
    """Whether the answer was verified correct: ``autodeco sample --keep all`` records it (None: not recorded, as in
    the verified-only files ``autodeco sample`` writes by default, where every answer is correct)."""


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
    correct = record.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise TrainingDataError(f"{location}: field 'correct' must be true or false, got {correct!r}")
    return Trajectory(record["prompt"], record["completion"], location, None if problem_id is None else str(problem_id),
                      correct)


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
