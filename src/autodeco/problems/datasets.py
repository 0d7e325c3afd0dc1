"""Problems with checkable answers: the record type, prompt templates and dataset loading.

:func:`load_problems` reads one of four kinds of ``source``:

- ``"arithmetic"``: generated word problems (:mod:`autodeco.problems.arithmetic`);
- a dataset name from ``DATASET_NAMES`` (``gsm8k``, ``math500``, ``aime25``, ...): a JSONL file
  looked up in ``data_dir`` or, when that is not given, in the folder named by the environment
  variable ``AUTODECO_DATA_DIR`` (file names in ``DATASET_FILES``);
- a path to a JSONL file, one JSON object per line, in any of the record formats below;
- a Hugging Face hub dataset, written ``hf:owner/name``, ``hf:owner/name:config``, or with a
  split, ``hf:owner/name:config@split`` (default: the ``split`` argument), e.g.
  ``hf:openai/gsm8k:main@test``. Needs the ``datasets`` package (``pip install
  autodeco[datasets]``) and network access.

Record formats, detected from each record's fields, in this order (one file holds one format: a
record in another format than the file's first one is refused, naming its line):

==============  ===========================================  =========================
format          fields                                       answer
==============  ===========================================  =========================
``gsm8k``       ``question``, ``answer`` containing ``####``  text after the last ``####``, commas removed
``competition`` ``problem``, ``gt`` (the AutoDeco paper's)    ``gt`` (JSON ints via ``str()``)
``math``        ``problem``, ``answer`` (+ ``level``,         ``answer``
                ``unique_id``; MATH / MATH-500)
``generic``     ``question``/``problem``/``prompt`` and       that field
                ``answer``/``gt``/``ground_truth``
==============  ===========================================  =========================

A ground truth must be a string or a finite number: JSON ``NaN``, ``Infinity`` and numbers too
large for a float (``1e400``, which Python reads as infinity) are refused, as are the strings
``"nan"`` and ``"inf"`` (write infinity as ``\\infty``). A UTF-8 byte-order mark is skipped.

Files are read in order and never shuffled; ``limit`` keeps the first problems.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from autodeco.common.jsonl import BYTE_ORDER_MARK, describe_json_error
from autodeco.problems.arithmetic import DEFAULT_COUNTS, DEFAULT_LEVELS, generate_problems
from autodeco.problems.problem import DataError, Problem

DATASET_FILES: dict[str, dict[str, str]] = {
    "gsm8k": {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"},
    "math500": {"test": "math500.jsonl"},
    "aime24": {"test": "aime24.jsonl"},
    "aime25": {"test": "aime25.jsonl"},
    "hmmt25": {"test": "hmmt25.jsonl"},
    "brumo25": {"test": "brumo25.jsonl"},
    "beyondaime": {"test": "beyondaime.jsonl"},
}
"""Dataset name -> split -> file name inside the data folder."""

DATASET_NAMES: tuple[str, ...] = ("arithmetic", *DATASET_FILES)
"""Every name :func:`load_problems` accepts besides file paths and ``hf:`` ids."""

DATA_DIR_VARIABLE = "AUTODECO_DATA_DIR"
"""Environment variable naming the folder that holds the dataset files."""

HUB_PREFIX = "hf:"
"""Prefix of a Hugging Face hub dataset id in ``source``."""

BAD_LINE_POLICIES = ("stop", "skip")
"""``on_bad_line`` values: raise :class:`DataError`, or skip the line and warn once."""

RECORD_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gsm8k": (("question",), ("answer",)),
    "competition": (("problem",), ("gt",)),
    "math": (("problem",), ("answer",)),
    "generic": (("question", "problem", "prompt"), ("answer", "gt", "ground_truth")),
}
"""Format -> (question fields, answer fields); the first field present is used."""

CONTENT_ID_LENGTH = 10
"""Hex digits of the question-and-answer hash in a file problem's id."""

GSM8K_MARKER = "####"
"""GSM8K solutions end with ``#### <final answer>``."""

NOT_A_NUMBER = re.compile(r"[+-]?(nan|inf|infinity)", re.IGNORECASE)
"""Ground truths refused as text: what ``str()`` makes of a non-finite float (no problem's answer is NaN)."""

_ACCEPTED = (
    'accepted records: {"question", "answer" ending in "#### <n>"} (GSM8K), {"problem", "gt"} (AutoDeco), '
    '{"problem", "answer"} (MATH), or any of question/problem/prompt with any of answer/gt/ground_truth'
)


ANSWER_LENGTHS = {"arithmetic": 32}
"""Default generation limit (new tokens) per dataset: arithmetic answers are one short line."""

DEFAULT_ANSWER_LENGTH = 1024
"""Default generation limit for every other dataset (worked solutions)."""


def default_max_new_tokens(source: str) -> int:
    """The generation limit to use for ``source`` when the user gives none.

    Example:
        >>> default_max_new_tokens("arithmetic"), default_max_new_tokens("gsm8k")
        (32, 1024)
    """
    return ANSWER_LENGTHS.get(source, DEFAULT_ANSWER_LENGTH)


# Loading ---------------------------------------------------------------------------------------


def load_problems(
    source: str,
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    on_bad_line: str = "stop",
    levels: tuple[int, ...] | None = None,
) -> list[Problem]:
    """Load problems from a generator, a named dataset, a JSONL file or the hub (see the module docstring).

    Args:
        source: ``"arithmetic"``, a name in ``DATASET_NAMES``, a JSONL path, or ``hf:owner/name[:config][@split]``.
        split: ``"train"`` or ``"test"`` for arithmetic and gsm8k, ``"test"`` for the other names,
            the hub split for ``hf:`` ids; ignored for file paths.
        limit: keep the first ``limit`` problems (file order; for arithmetic the default is
            ``DEFAULT_COUNTS[split]``, 2000 train / 200 test).
        seed: arithmetic only: the generator's seed. Files are never shuffled.
        data_dir: folder holding the named datasets' files (default: ``$AUTODECO_DATA_DIR``).
        on_bad_line: ``"stop"`` raises :class:`DataError` at a malformed line or record;
            ``"skip"`` skips such lines and warns once with their count and the first one.
        levels: keep only problems whose difficulty is in ``levels`` (arithmetic levels, MATH
            levels); for arithmetic also the level mix (see :func:`generate_problems`).

    Returns:
        The problems, in file (or generation) order.

    Raises:
        ValueError: bad arguments, or an unknown name that is not a file (the message lists the names).
        FileNotFoundError: a named dataset's file is not in the data folder.
        DataError: bad lines (``on_bad_line="stop"``) or no problems at all.
        ImportError: an ``hf:`` source without the ``datasets`` package.

    Example:
        >>> problems = load_problems("arithmetic", split="test", limit=3, levels=(1,))
        >>> [problem.difficulty for problem in problems], problems[0].id
        ([1, 1, 1], 'arithmetic/test/0')
    """
    _check_arguments(source, split, limit, on_bad_line, levels)
    if source == "arithmetic":

        count = limit if limit is not None else DEFAULT_COUNTS.get(split, 1)
        return generate_problems(split, count, seed=seed, levels=levels or DEFAULT_LEVELS)
    if source.startswith(HUB_PREFIX):
        where, problems = source, _load_hub(source, split, on_bad_line)
    elif source in DATASET_FILES:
        path = dataset_path(source, split, data_dir)
        where, problems = str(path), read_jsonl(path, source=source, on_bad_line=on_bad_line)
    elif Path(source).expanduser().is_file():
        path = Path(source).expanduser()
        where, problems = str(path), read_jsonl(path, source=source, on_bad_line=on_bad_line)
    else:
        raise ValueError(
            f"unknown dataset {source!r}: not one of {', '.join(DATASET_NAMES)}, not an existing file, and not a "
            f"hub id ({HUB_PREFIX}owner/name[:config][@split]); check the name or the path"
        )
    if levels is not None:
        problems = _filter_levels(problems, levels, where)
    return problems[:limit] if limit is not None else problems


def dataset_path(name: str, split: str = "test", data_dir: str | os.PathLike | None = None) -> Path:
    """The file of a named dataset: ``data_dir`` (or ``$AUTODECO_DATA_DIR``) / ``DATASET_FILES[name][split]``.

    Raises:
        ValueError: an unknown name or a split the dataset does not have.
        FileNotFoundError: no folder given, or the file is not in it; the message says where it
            looked and how to fix it.

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "gsm8k_train.jsonl").write_text('{"question": "1 + 1?", "answer": "#### 2"}')
        >>> dataset_path("gsm8k", "train", folder) == folder / "gsm8k_train.jsonl"
        True
    """
    if name not in DATASET_FILES:
        raise ValueError(f"unknown dataset {name!r}; file datasets are {', '.join(DATASET_FILES)}")
    files = DATASET_FILES[name]
    if split not in files:
        raise ValueError(f"dataset {name!r} has the splits {tuple(files)}, got split={split!r}")
    folder = data_dir if data_dir is not None else os.environ.get(DATA_DIR_VARIABLE)
    fixes = (
        f"pass data_dir=... (or set {DATA_DIR_VARIABLE}) to the folder holding {files[split]}, pass the file's path "
        f"as the source, or load from the hub with a '{HUB_PREFIX}owner/name' source (pip install "
        f"autodeco[datasets]; needs network; e.g. hf:openai/gsm8k:main, hf:HuggingFaceH4/MATH-500)"
    )
    if not folder:
        raise FileNotFoundError(
            f"no data folder for dataset {name!r}: data_dir is not given and ${DATA_DIR_VARIABLE} is not set; {fixes}"
        )
    path = Path(folder).expanduser() / files[split]
    if not path.is_file():
        origin = "data_dir" if data_dir is not None else f"${DATA_DIR_VARIABLE}"
        raise FileNotFoundError(f"dataset {name!r} not found: looked for {str(path)!r} (from {origin}); {fixes}")
    return path


def read_jsonl(path: str | os.PathLike, *, source: str | None = None, on_bad_line: str = "stop") -> list[Problem]:
    """Problems from a JSONL file in one format (that of its first valid record); blank lines are ignored.

    Ids follow content, not line numbers: ``<file name>:<hash of question and answer>`` (a second
    identical record gets ``#2``, ...), or the record's ``unique_id`` in MATH format. Inserting or
    moving lines keeps every other problem's id; editing a question or an answer changes its id.

    Raises:
        DataError: a malformed line or record (``on_bad_line="stop"``), or no problems.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as file:
        ...     _ = file.write('{"problem": "1 + 1?", "gt": 2}\\n')
        >>> [(problem.answer, problem.template) for problem in read_jsonl(file.name)]
        [('2', 'competition')]
    """
    path = Path(path)
    with path.open("rb") as file:
        numbered = ((number, line) for number, line in _text_lines(file, path) if line.strip())
        return _problems_from_records(
            _json_lines(numbered, path.name), where=str(path), id_prefix=path.name,
            source=source or str(path), on_bad_line=on_bad_line,
        )  # fmt: skip


def record_format(record: dict[str, Any]) -> str | None:
    """The format of a record from its fields (see the module docstring), or None if none fits.

    Example:
        >>> record_format({"question": "q", "answer": "work\\n#### 7"}), record_format({"problem": "p", "gt": 3})
        ('gsm8k', 'competition')
    """
    if _has_text(record, "question") and isinstance(record.get("answer"), str) and GSM8K_MARKER in record["answer"]:
        return "gsm8k"
    if _has_text(record, "problem") and "gt" in record:
        return "competition"
    if _has_text(record, "problem") and "answer" in record:
        return "math"
    question_fields, answer_fields = RECORD_FORMATS["generic"]
    if any(_has_text(record, name) for name in question_fields) and any(name in record for name in answer_fields):
        return "generic"
    return None


def problem_from_record(record: dict[str, Any], format_name: str, *, id: str, source: str) -> Problem:
    """Convert one record of a known format.

    Raises:
        DataError: a required field is missing or has the wrong type (message without location).

    Example:
        >>> problem_from_record({"question": "q", "answer": "so\\n#### 1,200"}, "gsm8k", id="f:1", source="f").answer
        '1200'
    """
    question_fields, answer_fields = RECORD_FORMATS[format_name]
    question_field = next((name for name in question_fields if name in record), None)
    answer_field = next((name for name in answer_fields if name in record), None)
    if question_field is None or answer_field is None:
        raise DataError(
            f"record has the fields {sorted(record)}, but this file is in {format_name} format, which needs one of "
            f"{list(question_fields)} and one of {list(answer_fields)}"
        )
    question = record[question_field]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"field {question_field!r} must be a non-empty string, got {question!r}")
    answer = _answer_text(record[answer_field], answer_field)
    if format_name == "gsm8k":
        answer = _gsm8k_final_answer(answer)
    if NOT_A_NUMBER.fullmatch(answer):
        raise DataError(
            f"the ground truth ({answer_field!r}) is {answer!r}, which is no answer a model can give; "
            "write infinity as \\infty, and fix or remove a record whose answer is NaN"
        )
    difficulty = _level(record.get("level")) if format_name == "math" else None
    own_id = record.get("unique_id") if format_name == "math" else None
    return Problem(str(own_id) if own_id else id, question, answer, source, format_name, difficulty)


# Helpers ---------------------------------------------------------------------------------------


def _check_arguments(source, split, limit, on_bad_line, levels) -> None:
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a dataset name, a file path or an hf: id, got {source!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string such as 'test' or 'train', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an integer >= 1, got {limit!r}")
    if on_bad_line not in BAD_LINE_POLICIES:
        raise ValueError(f"on_bad_line must be one of {BAD_LINE_POLICIES}, got {on_bad_line!r}")
    if levels is not None and (
        not isinstance(levels, (tuple, list))
        or not levels
        or not all(isinstance(level, int) and not isinstance(level, bool) for level in levels)
    ):
        raise ValueError(f"levels must be None or a non-empty tuple of integers such as (1, 2), got {levels!r}")
    if source == "arithmetic" and split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for arithmetic problems, got {split!r}")


def _text_lines(file, path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a file opened in binary mode; a line that is not UTF-8 is a DataError naming it."""
    for number, raw in enumerate(file, start=1):
        try:
            text = raw.decode("utf-8")
            yield number, text.removeprefix(BYTE_ORDER_MARK) if number == 1 else text
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}, line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the "
                "line); is this a JSONL file? Pass a UTF-8 JSONL file with one JSON object per line"
            ) from None


def content_id(prefix: str, question: str, answer: str, seen: dict[str, int]) -> str:
    """``<prefix>:<short hash of question and answer>``, with ``#n`` for the n-th identical problem.

    ``seen`` counts the ids handed out so far in this file (updated in place).

    Example:
        >>> seen = {}
        >>> first, again = content_id("f", "1 + 1?", "2", seen), content_id("f", "1 + 1?", "2", seen)
        >>> again == first + "#2", first.startswith("f:"), len(first)
        (True, True, 12)
    """
    digest = hashlib.sha256(json.dumps([question, answer], ensure_ascii=False).encode("utf-8")).hexdigest()
    base = f"{prefix}:{digest[:CONTENT_ID_LENGTH]}"
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}#{seen[base]}"


def _json_lines(numbered_lines: Iterable[tuple[int, str]], name: str) -> Iterator[tuple[int, Any]]:
    """``(line number, record)``; a line that is not JSON yields a DataError in place of its record."""
    for number, line in numbered_lines:
        try:
            yield number, json.loads(line)
        except (ValueError, RecursionError) as error:
            yield number, DataError(describe_json_error(error, with_line=False))


def _problems_from_records(
    records: Iterable[tuple[int, Any]], *, where: str, id_prefix: str, source: str, on_bad_line: str
) -> list[Problem]:
    problems: list[Problem] = []
    detected: str | None = None
    skipped: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    own_ids: dict[str, int] = {}
    first_line = 0
    for number, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object ({{...}}), got a JSON {_json_type(record)}")
            own_format = record_format(record)
            if detected is None:
                if own_format is None:
                    raise DataError(_no_format(record))
                detected, first_line = own_format, number
            problem = problem_from_record(record, detected, id=f"{id_prefix}:{number}", source=source)
            if own_format != detected:
                raise DataError(
                    f"this record is in {own_format or 'no known'} format but the file's first record (line "
                    f"{first_line}) is in {detected} format; the format decides how an answer is read (GSM8K's "
                    "'#### <n>'), so a file holds one: put the records of each format in a file of their own"
                )
            if problem.id == f"{id_prefix}:{number}":  # no id of its own (MATH's unique_id): one from its content
                problem = dataclasses.replace(problem, id=content_id(id_prefix, problem.question, problem.answer, seen))
            else:  # a repeated unique_id gets #2, #3, ... like a repeated question
                own_ids[problem.id] = own_ids.get(problem.id, 0) + 1
                if own_ids[problem.id] > 1:
                    problem = dataclasses.replace(problem, id=f"{problem.id}#{own_ids[problem.id]}")
            problems.append(problem)
        except DataError as error:
            if on_bad_line == "stop":
                raise DataError(
                    f"{where}, line {number}: {error}; {_ACCEPTED}. "
                    "Fix the line, or pass on_bad_line='skip' to skip bad lines"
                ) from None
            skipped.append((number, str(error)))
    if skipped:
        first_line, first_problem = skipped[0]
        warnings.warn(
            f"skipped {len(skipped)} bad line(s) in {where}; the first is line {first_line}: {first_problem}",
            stacklevel=4,
        )
    if not problems:
        raise DataError(f"{where} holds no problems ({len(skipped)} bad lines skipped); {_ACCEPTED}")
    return problems


def _has_text(record: dict[str, Any], name: str) -> bool:
    return isinstance(record.get(name), str)


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _no_format(record: dict[str, Any]) -> str:
    """Why a record fits no format: a question field that is not text, or fields no format uses."""
    question_fields, _ = RECORD_FORMATS["generic"]
    for name in question_fields:
        if name in record and not isinstance(record[name], str):
            return f"field {name!r} must be a non-empty string, got {record[name]!r}"
    return f"record has the fields {sorted(record)}, which fit no known format"


def _answer_text(value: Any, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"field {field!r} must be a string or a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(
            f"field {field!r} is {value!r}, not a finite number (JSON NaN or Infinity, or a number too large for a "
            "float, such as 1e400); write a huge ground truth as a string (\"1e400\"), and fix or remove a NaN one"
        )
    text = value.strip() if isinstance(value, str) else str(value)
    if not text:
        raise DataError(f"field {field!r} is empty")
    return text


def _gsm8k_final_answer(solution: str) -> str:
    if GSM8K_MARKER not in solution:
        raise DataError(f"GSM8K answer has no '{GSM8K_MARKER} <final answer>' line: {solution[-60:]!r}")
    final = solution.rsplit(GSM8K_MARKER, 1)[1].strip().replace(",", "")
    if not final:
        raise DataError(f"GSM8K answer has nothing after '{GSM8K_MARKER}'")
    return final


def _level(value: Any) -> int | None:
    # MATH-500 stores 3, the original MATH "Level 3"; anything else ("Level ?") is no level.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().rsplit(" ", 1)[-1].isdigit():
        return int(value.strip().rsplit(" ", 1)[-1])
    return None


def _filter_levels(problems: list[Problem], levels: tuple[int, ...], where: str) -> list[Problem]:
    if any(problem.difficulty is None for problem in problems):
        raise ValueError(
            f"levels={levels!r} needs problems with levels, but {where} has problems without one "
            "(only arithmetic and MATH-style records have levels); drop the levels argument"
        )
    kept = [problem for problem in problems if problem.difficulty in levels]
    if not kept:
        found = sorted({problem.difficulty for problem in problems})
        raise DataError(f"{where} has no problems at levels {levels!r}; its levels are {found}")
    return kept


def parse_hub_id(source: str, default_split: str = "test") -> tuple[str, str | None, str]:
    """``hf:owner/name[:config][@split]`` -> ``(name, config or None, split)``.

    Example:
        >>> parse_hub_id("hf:openai/gsm8k:main@train")
        ('openai/gsm8k', 'main', 'train')
        >>> parse_hub_id("hf:HuggingFaceH4/MATH-500")
        ('HuggingFaceH4/MATH-500', None, 'test')
    """
    if not source.startswith(HUB_PREFIX):
        raise ValueError(f"hub ids start with {HUB_PREFIX!r}, got {source!r}")
    rest = source[len(HUB_PREFIX) :]
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name or "/" not in name:
        raise ValueError(f"hub ids look like {HUB_PREFIX}owner/name[:config][@split], got {source!r}")
    return name, config or None, split or default_split


def _load_hub(source: str, split: str, on_bad_line: str) -> list[Problem]:
    name, config, hub_split = parse_hub_id(source, split)
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"loading {source!r} needs the 'datasets' package and network access: pip install 'autodeco[datasets]' "
            "(or download the data as JSONL and pass its path)"
        ) from None
    rows = datasets.load_dataset(name, config, split=hub_split)
    label = f"{name}@{hub_split}"
    return _problems_from_records(
        ((number, dict(row)) for number, row in enumerate(rows, start=1)),
        where=f"{source} (row numbers 1-based)", id_prefix=label, source=source, on_bad_line=on_bad_line,
    )  # fmt: skip
