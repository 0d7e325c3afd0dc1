"""The sample record: one line of ``samples.jsonl`` per generated completion, and the setting keys.

An evaluation runs several decoding *settings* on the same problems: ``greedy``, ``autodeco``
(the heads, dynamic) and static ``(T, P)`` pairs named by :func:`static_setting`. Every
completion becomes one :class:`SampleRecord`; :class:`RecordWriter` appends them durably so a
killed run can resume, and :func:`read_records` reads them back, ignoring a half-written last line.

Example:
    >>> static_setting(0.7, 1.0)
    'T=0.70,P=1.00'
    >>> parse_static_setting("T=0.70,P=1.00")
    (0.7, 1.0)
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

from autodeco.common.jsonl import describe_json_error
from autodeco.sampling.settings import AUTODECO, GREEDY, parse_static_setting, static_setting

__all__ = [
    "AUTODECO",
    "GREEDY",
    "RecordWriter",
    "SampleRecord",
    "parse_static_setting",
    "read_records",
    "static_setting",
]

_TAIL_CHUNK = 1 << 16
"""Bytes read at a time from the end of a file when looking for its last line."""


@dataclasses.dataclass
class SampleRecord:
    """One generated completion and its verdict: one line of ``samples.jsonl``.

    Example:
        >>> record = SampleRecord("gsm8k-7", "T=1.00,P=1.00", seed=0, sample=3, text="... \\\\boxed{4}",
        ...                       extracted="4", correct=True, num_tokens=12)
        >>> SampleRecord.from_dict(json.loads(record.to_json())) == record
        True
        >>> record.key
        ('gsm8k-7', 'T=1.00,P=1.00', 0, 3)
    """

    problem_id: str
    """Identifier of the problem within the dataset."""

    setting: str
    """``"greedy"``, ``"autodeco"``, a :func:`static_setting` key or a method key (``DecodingSetting.key``)."""

    seed: int
    """Sampling seed (greedy: 0)."""

    sample: int
    """Index of this completion within ``(problem, setting, seed)``."""

    text: str
    """The completion."""

    extracted: str | None
    """The answer extracted from the completion, None if none was found."""

    correct: bool
    """Whether the extracted answer matched the reference."""

    num_tokens: int
    """Number of generated tokens."""

    temperature_mean: float | None = None
    """Mean per-token temperature (static: the static value; greedy: None)."""

    temperature_std: float | None = None
    """Standard deviation of the per-token temperatures (static: 0)."""

    top_p_mean: float | None = None
    """Mean per-token top-p (static: the static value; greedy: None)."""

    top_p_std: float | None = None
    """Standard deviation of the per-token top-p values (static: 0)."""

    temperatures: list[float] | None = None
    """Per-token temperatures, autodeco records only."""

    top_ps: list[float] | None = None
    """Per-token top-p values, autodeco records only."""

    tokens: list[str] | None = None
    """Per-token text pieces, autodeco records only (for a trace plot)."""

    entropies: list[float] | None = None
    """Per-token entropy (nats) of the base model's next-token distribution at T = 1: AutoDeco records (the
    bin-shuffle control bins by it) and the heuristics' tuning records."""

    finished: bool | None = None
    """Whether the completion ended with an end-of-sequence token (False: cut off at the token limit;
    None: not recorded, in records written before this field existed)."""

    def __post_init__(self):
        parse_static_setting(self.setting)  # raises on an unknown setting
        for name in ("seed", "sample", "num_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SampleRecord.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.correct, bool):
            raise ValueError(f"SampleRecord.correct must be True or False, got {self.correct!r}")
        if self.finished is not None and not isinstance(self.finished, bool):
            raise ValueError(f"SampleRecord.finished must be True, False or None, got {self.finished!r}")
        lengths = {
            name: len(getattr(self, name))
            for name in ("temperatures", "top_ps", "tokens", "entropies")
            if getattr(self, name) is not None
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"SampleRecord per-token lists must have one entry per token, got lengths {lengths} "
                f"for problem {self.problem_id!r}, setting {self.setting!r}"
            )

    @property
    def key(self) -> tuple[str, str, int, int]:
        """``(problem_id, setting, seed, sample)``: identifies the record when resuming."""
        return (self.problem_id, self.setting, self.seed, self.sample)

    def to_json(self) -> str:
        """The record as one line of JSON (no trailing newline; newlines in text are escaped)."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        """Builds a record from a parsed JSON line; unknown keys are ignored (newer writers).

        Raises:
            ValueError: naming the missing fields, or a field with a bad value.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a sample record must be a JSON object, got {type(data).__name__}")
        fields = {field.name: field for field in dataclasses.fields(cls)}
        required = [
            name for name, field in fields.items()
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"sample record lacks the field(s) {missing}")
        return cls(**{name: value for name, value in data.items() if name in fields})


class RecordWriter:
    """Appends sample records to a JSONL file, durably, one batch at a time.

    Each :meth:`write_many` call writes one line per record, then flushes and ``fsync``s, so
    a killed run loses at most the batch in flight. On opening, a half-written or unreadable
    last line left by a killed run is cut off (with a warning), so appended lines never
    follow a broken one.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "samples.jsonl")
        >>> record = SampleRecord("p1", GREEDY, 0, 0, "4", "4", True, 1)
        >>> with RecordWriter(path) as writer:
        ...     writer.write_many([record])
        >>> read_records(path) == [record]
        True
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_last_line(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write_many(self, records: list[SampleRecord]) -> None:
        """Appends ``records`` (one line each), then flushes and fsyncs the file."""
        if self._handle.closed:
            raise ValueError(f"RecordWriter for {self.path} is closed; open a new one to append")
        self._handle.write("".join(record.to_json() + "\n" for record in records))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def write(self, record: SampleRecord) -> None:
        """Appends one record durably (same as ``write_many([record])``)."""
        self.write_many([record])

    def close(self) -> None:
        """Closes the file (safe to call twice)."""
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_records(path: str | os.PathLike[str]) -> list[SampleRecord]:
    """Reads every record of a ``samples.jsonl`` file, in file order.

    Blank lines are skipped. A corrupt *last* line (a run killed mid-write) is ignored with a
    warning; a corrupt line anywhere else means the file is damaged and raises.

    Args:
        path: the JSONL file.

    Returns:
        The records.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and line number of a corrupt line before the last.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "samples.jsonl")
        >>> line = SampleRecord("p1", GREEDY, 0, 0, "4", "4", True, 1).to_json()
        >>> _ = open(path, "w").write(line + "\\n" + line[:20])  # killed mid-write
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     len(read_records(path))
        1
    """
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [(number, line) for number, line in enumerate(handle, start=1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(_parse_line(line))
        except ValueError as error:
            if position == len(lines) - 1:
                warnings.warn(
                    f"{path}: ignoring unreadable last line {number} ({error}); a run was probably "
                    "killed while writing it, and resuming will redo that sample",
                    stacklevel=2,
                )
                break
            raise ValueError(
                f"{path} line {number} is not a valid sample record ({error}); only the last line may be "
                "damaged by a killed run, so this file is corrupt: delete or fix that line"
            ) from error
    return records


def _parse_line(line: str) -> SampleRecord:
    """One JSONL line as a record; ValueError (json errors included) if it is not one."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as error:
        raise ValueError(describe_json_error(error, with_line=False)) from None
    try:
        return SampleRecord.from_dict(data)
    except TypeError as error:
        raise ValueError(str(error)) from error


def _repair_last_line(path: Path) -> None:
    """Cuts a half-written or unreadable last line off ``path`` and ends a good one with a newline."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        start, last_line = _last_line(handle)
        if not last_line.strip():
            return
        try:
            _parse_line(last_line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            warnings.warn(
                f"{path}: removing unreadable last line ({error}) before appending; that sample will be redone",
                stacklevel=3,
            )
            handle.truncate(start)
            return
        if not last_line.endswith(b"\n"):
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")


def _last_line(handle) -> tuple[int, bytes]:
    """Byte offset and content of the last line of a binary file (ignoring its final newline)."""
    size = handle.seek(0, os.SEEK_END)
    end = size - 1 if size else 0  # a final newline belongs to the last line
    position = end
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        handle.seek(start)
        newline = handle.read(position - start).rfind(b"\n")
        if newline >= 0:
            position = start + newline + 1
            break
        position = start
    handle.seek(position)
    return position, handle.read(size - position)
