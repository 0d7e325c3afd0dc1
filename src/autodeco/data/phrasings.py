"""Decoding commands (PAPER.md section 7): the phrasings of low- and high-diversity commands, and how one is appended.

A *low-diversity* command ("Please answer as certain as possible.") asks for lower T and P, a
*high-diversity* one ("I hope the answers can be more innovative and diverse.") for higher ones.
Training pairs examples with commanded copies (:mod:`autodeco.training.control`); ``autodeco
control-eval`` measures what a command changes (:mod:`autodeco.evaluation.control`).

The phrasings come from a JSON file (built in: ``control_phrasings.json`` beside this module)::

    {"low":  {"train": ["...", ...], "eval": ["...", ...]},
     "high": {"train": ["...", ...], "eval": ["...", ...]}}

Training draws only from the ``train`` lists, evaluation only from the ``eval`` lists, and the two
must share no phrasing.

This module imports no torch (the training config validates phrasing files with it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from autodeco.common.jsonl import BYTE_ORDER_MARK, describe_json_error

LOW = "low"
HIGH = "high"
DIRECTIONS = {LOW: -1, HIGH: 1}
"""Command kind -> sign of the change it asks for in T and P."""

PHRASING_SPLITS = ("train", "eval")
"""Each kind's phrasings are split into those training draws from and those evaluation uses."""

BUILTIN_PHRASINGS = Path(__file__).with_name("control_phrasings.json")
"""The phrasing file shipped with the package."""

COMMAND_SEPARATOR = "\n"
"""Put between a prompt and the command appended to it."""


class ControlPhrasingsError(ValueError):
    """A phrasing file is missing, empty or malformed."""


@dataclasses.dataclass(frozen=True)
class ControlPhrasings:
    """The command phrasings of both kinds, split into training and evaluation lists."""

    train: dict[str, tuple[str, ...]]
    """``{"low": (...), "high": (...)}``: the phrasings training draws from."""
    eval: dict[str, tuple[str, ...]]
    """``{"low": (...), "high": (...)}``: the phrasings evaluation uses (never used in training)."""
    source: str
    """The file they were read from."""
    fingerprint: str
    """SHA-256 of that file's bytes (recorded with a training run)."""


def load_phrasings(path: str | os.PathLike | None = None) -> ControlPhrasings:
    """Read and check a phrasing file (None: the built-in one).

    Raises:
        ControlPhrasingsError: the file is missing, empty, not JSON, lacks a list, holds an empty or
            non-text phrasing, or uses a phrasing in both its ``train`` and ``eval`` lists (each
            message names the file and the place, and says what to fix).

    Example:
        >>> phrasings = load_phrasings()
        >>> len(phrasings.train["low"]) > 0 and not set(phrasings.train["high"]) & set(phrasings.eval["high"])
        True
    """
    file = Path(path).expanduser() if path is not None else BUILTIN_PHRASINGS
    where = f"control phrasing file {str(file)!r}"
    if file.is_dir():
        raise ControlPhrasingsError(f"{where} is a folder; pass the JSON file itself")
    if not file.is_file():
        raise ControlPhrasingsError(f"{where} does not exist; pass a JSON file with 'low' and 'high' lists")
    raw = file.read_bytes()
    if not raw.strip():
        raise ControlPhrasingsError(
            f"{where} is empty; it must hold {{\"low\": {{\"train\": [...], \"eval\": [...]}}, \"high\": {{...}}}}"
        )
    try:
        record = json.loads(raw.decode("utf-8").removeprefix(BYTE_ORDER_MARK))
    except UnicodeDecodeError:
        raise ControlPhrasingsError(f"{where} is not valid JSON (not UTF-8); fix it or pass another file") from None
    except (ValueError, RecursionError) as error:
        raise ControlPhrasingsError(f"{where} is {describe_json_error(error)}; fix it or pass another file") from None
    if not isinstance(record, dict):
        raise ControlPhrasingsError(f"{where} must hold a JSON object with 'low' and 'high', got {type(record).__name__}")
    lists: dict[str, dict[str, tuple[str, ...]]] = {split: {} for split in PHRASING_SPLITS}
    for kind in DIRECTIONS:
        splits = record.get(kind)
        if not isinstance(splits, dict):
            found = "missing" if kind not in record else type(splits).__name__
            raise ControlPhrasingsError(
                f"{where}: {kind!r} must be an object with 'train' and 'eval' lists of phrasings, got {found}"
            )
        for split in PHRASING_SPLITS:
            lists[split][kind] = _phrasing_list(splits.get(split), f"{where}: {kind}.{split}", split in splits)
        shared = {_normalised(text) for text in lists["train"][kind]} & {_normalised(text) for text in lists["eval"][kind]}
        if shared:
            raise ControlPhrasingsError(
                f"{where}: {kind}.train and {kind}.eval share {sorted(shared)[0]!r}; evaluation must use phrasings "
                "never seen in training: remove it from one of the lists"
            )
    return ControlPhrasings(lists["train"], lists["eval"], str(file), hashlib.sha256(raw).hexdigest())


def _phrasing_list(value, where: str, present: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        found = "missing" if not present else repr(value)
        raise ControlPhrasingsError(f"{where} must be a non-empty list of phrasings (strings), got {found}")
    for index, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise ControlPhrasingsError(f"{where}[{index}] must be a non-empty string, got {text!r}")
    return tuple(text.strip() for text in value)


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def append_command(prompt: str, command: str) -> str:
    """The user message with a decoding command at its end.

    Example:
        >>> append_command("What is 2 + 2?", "Please answer as certain as possible.")
        'What is 2 + 2?\\nPlease answer as certain as possible.'
    """
    return f"{prompt.rstrip()}{COMMAND_SEPARATOR}{command}"
