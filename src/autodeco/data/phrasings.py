"""Decoding commands (PAPER.md section 7): phrasing families of low, high and neutral commands, and where one goes.

A *low* command ("Please answer as certain as possible.") asks for lower T and P, a *high* one
("I hope the answers can be more innovative and diverse.") for higher ones, and a *neutral*
sentence ("This question was written on a rainy afternoon.") is a control: as long as a command,
it asks for nothing, and must move neither. Training pairs examples with commanded copies
(:mod:`autodeco.training.control`); ``autodeco control-eval`` measures what a command changes
(:mod:`autodeco.evaluation.control`).

Phrasings come in *families*: a few wordings of one idea in one style, language and placement.
Families, not single phrasings, are split into training and evaluation, so evaluation wording
shares no family (and, by the choice of the built-in file's families, no construction) with
training wording: it measures whether control follows commands in a user's own words.

A command is placed ``after`` the question (appended to the user message, the paper's form),
``before`` it (prepended to the user message) or in a ``system`` message
(:func:`command_messages`).

The file (built in: ``control_phrasings.json`` beside this module), version 2::

    {"description": "...", "version": 2,
     "families": [
       {"name": "direct-certain", "kind": "low", "split": "train", "placement": "after",
        "language": "en", "style": "direct",
        "phrasings": ["Please answer as certain as possible.", "..."]},
       ...]}

Each family holds a unique ``name``; ``kind``: ``low``, ``high`` or ``neutral``; ``split``:
``train`` or ``eval``; ``placement``: ``after`` (the default), ``before`` or ``system``;
``language`` (default ``en``); ``style`` (free text, default empty); and ``phrasings``, a non-empty
list of texts. Other keys are refused (a typo must not pass silently). No phrasing (compared
ignoring case and spacing) may be in both a train and an eval family, nor in families of two kinds;
``low`` and ``high`` each need at least one train and one eval family; neutral families are optional.

The version-1 file still loads: ``{"low": {"train": [...], "eval": [...]}, "high": {...}}``
becomes four families, ``low-train``, ``low-eval``, ``high-train``, ``high-eval`` (placement
``after``, language ``en``, style ``list``).

This module imports no torch (the training config validates phrasing files with it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from autodeco.common.jsonl import BYTE_ORDER_MARK, describe_json_error

LOW, HIGH, NEUTRAL = "low", "high", "neutral"
DIRECTIONS = {LOW: -1, HIGH: 1}
"""Command kind -> sign of the change it asks for in T and P (the kinds that are commands)."""

KIND_DIRECTIONS = {LOW: -1, HIGH: 1, NEUTRAL: 0}
"""Every kind -> the sign of the change it asks for; a neutral sentence asks for none."""

KINDS = (LOW, HIGH, NEUTRAL)
"""The kinds a phrasing family may have."""

PLACEMENTS = ("after", "before", "system")
"""Where a command goes: appended after the question, put before it, or in a system message."""

PHRASING_SPLITS = ("train", "eval")
"""Families are split into those training draws from and those evaluation uses."""

BUILTIN_PHRASINGS = Path(__file__).with_name("control_phrasings.json")
"""The phrasing file shipped with the package."""

COMMAND_SEPARATOR = "\n"
"""Put between a prompt and the command next to it."""

FORMAT_VERSION = 2
"""The phrasing-file format this module writes about (version 1 still loads)."""

FAMILY_DEFAULTS = {"placement": "after", "language": "en", "style": ""}
"""Values of a family's optional keys when the file leaves them out."""

FAMILY_KEYS = ("name", "kind", "split", "placement", "language", "style", "phrasings")
"""The keys a family may hold."""

_FILE_KEYS = ("description", "version", "families")
_FORMAT_HINT = '{"version": 2, "families": [{"name": ..., "kind": ..., "split": ..., "phrasings": [...]}, ...]}'


class ControlPhrasingsError(ValueError):
    """A phrasing file is missing, empty or malformed."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One decoding command: its text, what it asks for and where it goes.

    Example:
        >>> Command("Be exact.", kind=LOW).direction
        -1
        >>> Command("Filed on Monday.", kind=NEUTRAL, placement="before").direction
        0
    """

    text: str
    """What is written next to the question."""
    kind: str = LOW
    """``low``, ``high`` or ``neutral``."""
    family: str = ""
    """The name of the family it comes from (empty for a command given as text)."""
    placement: str = "after"
    """``after`` the question, ``before`` it, or in a ``system`` message."""

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"a command's text must be a non-empty string, got {self.text!r}")
        if self.kind not in KINDS:
            raise ValueError(f"a command's kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"a command's placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")

    @property
    def direction(self) -> int:
        """-1 (lower T and P), +1 (higher) or 0 (neutral: leave them)."""
        return KIND_DIRECTIONS[self.kind]


@dataclasses.dataclass(frozen=True)
class PhrasingFamily:
    """A few wordings of one command in one style, language and placement; split as a whole.

    Raises:
        ControlPhrasingsError: a field holds a value outside its choices, or ``phrasings`` is empty
            or holds an empty text (the message names the field, the value and the choices).

    Example:
        >>> family = PhrasingFamily("terse-exact", LOW, "train", "after", "en", "terse", ("Be exact.", "Stay focused."))
        >>> [command.text for command in family.commands()]
        ['Be exact.', 'Stay focused.']
        >>> family.commands()[0]
        Command(text='Be exact.', kind='low', family='terse-exact', placement='after')
    """

    name: str
    """Unique within a file, e.g. ``terse-exact``."""
    kind: str
    """``low``, ``high`` or ``neutral``."""
    split: str
    """``train`` (training draws from it) or ``eval`` (only evaluation uses it)."""
    placement: str
    """``after``, ``before`` or ``system``: where its commands go."""
    language: str
    """The language its phrasings are written in, e.g. ``en``, ``fr``."""
    style: str
    """Free text: ``terse``, ``polite``, ``negated``, ``role``...; for reports."""
    phrasings: tuple[str, ...]
    """The texts (at least one; a list is taken as a tuple, each text stripped of outer spaces)."""

    def __post_init__(self):
        _check_text("name", self.name)
        _check_choice("kind", self.kind, KINDS)
        _check_choice("split", self.split, PHRASING_SPLITS)
        _check_choice("placement", self.placement, PLACEMENTS)
        _check_text("language", self.language)
        if not isinstance(self.style, str):
            raise ControlPhrasingsError(f"'style' must be a string, got {self.style!r}")
        if not isinstance(self.phrasings, (tuple, list)) or not self.phrasings:
            found = _as_listed(self.phrasings)
            raise ControlPhrasingsError(f"'phrasings' must be a non-empty list of texts, got {found!r}")
        for index, text in enumerate(self.phrasings):
            if not isinstance(text, str) or not text.strip():
                raise ControlPhrasingsError(f"phrasings[{index}] must be a non-empty string, got {text!r}")
        object.__setattr__(self, "phrasings", tuple(text.strip() for text in self.phrasings))  # frozen: set once, here

    def commands(self) -> tuple[Command, ...]:
        """Its phrasings as commands, in file order."""
        return tuple(Command(text, self.kind, self.name, self.placement) for text in self.phrasings)


@dataclasses.dataclass(frozen=True)
class ControlPhrasings:
    """The phrasing families of a file, checked as a whole.

    Raises:
        ControlPhrasingsError: two families share a name; a phrasing is in a train and an eval
            family, or in families of two kinds; ``low`` or ``high`` lacks a train or an eval
            family (each message names the file, the families and the fix).

    Example:
        >>> phrasings = load_phrasings()
        >>> [family.name for family in phrasings.families_for("train", LOW)][:2]
        ['certain-direct', 'careful-conservative']
        >>> phrasings.commands("train", LOW)[0]
        Command(text='Please answer as certain as possible.', kind='low', family='certain-direct', placement='after')
        >>> phrasings.train["low"][0]
        'Please answer as certain as possible.'
    """

    families: tuple[PhrasingFamily, ...]
    """In file order (a list is taken as a tuple)."""
    source: str
    """The file they were read from."""
    fingerprint: str
    """SHA-256 of that file's bytes (recorded with a training run)."""

    def __post_init__(self):
        where = f"control phrasing file {self.source!r}"
        if isinstance(self.families, list):
            object.__setattr__(self, "families", tuple(self.families))  # frozen: set once, here
        if not isinstance(self.families, tuple) or not self.families:
            raise ControlPhrasingsError(f"{where} holds no phrasing family; add families ({_FORMAT_HINT})")
        first_named: dict[str, int] = {}
        holders: dict[str, list[int]] = {}  # normalised text -> the families holding it, by index
        for index, family in enumerate(self.families):
            if family.name in first_named:
                raise ControlPhrasingsError(
                    f"{where}: {_family_label(index, family.name)} repeats the name of "
                    f"{_family_label(first_named[family.name], family.name)}; give each family its own name"
                )
            first_named[family.name] = index
            for text in family.phrasings:
                holding = holders.setdefault(_normalised(text), [])
                for other in holding:
                    self._check_apart(where, other, index, text)
                if index not in holding:
                    holding.append(index)
        self._check_coverage(where)

    def _check_apart(self, where: str, first: int, second: int, text: str) -> None:
        """Refuse a text held by a train and an eval family, or by families of two kinds."""
        for field, why in (("split", "evaluation must use phrasings never seen in training"),
                           ("kind", "one phrasing cannot ask for two different things")):
            values = [getattr(self.families[index], field) for index in (first, second)]
            if values[0] != values[1]:
                raise ControlPhrasingsError(
                    f"{where}: {_family_label(first, self.families[first].name)} ({values[0]}) and "
                    f"{_family_label(second, self.families[second].name)} ({values[1]}) share {text!r}; "
                    f"{why}: remove it from one of them"
                )

    def _check_coverage(self, where: str):
        for kind in DIRECTIONS:
            for split in PHRASING_SPLITS:
                if self.families_for(split, kind):
                    continue
                present = [family.name for family in self.families if family.kind == kind]
                has = f"its {kind} families: {', '.join(map(repr, present))}" if present else f"it has no {kind} family"
                raise ControlPhrasingsError(
                    f"{where} has no {split} family of kind {kind!r} ({has}); add one with "
                    f'"kind": "{kind}", "split": "{split}" (training draws from train families, evaluation '
                    "uses eval ones)"
                )

    def families_for(self, split: str, kind: str) -> tuple[PhrasingFamily, ...]:
        """The families of one split and kind, in file order.

        Example:
            >>> len(load_phrasings().families_for("eval", NEUTRAL)) > 0
            True
        """
        _check_argument("split", split, PHRASING_SPLITS)
        _check_argument("kind", kind, KINDS)
        return tuple(family for family in self.families if family.split == split and family.kind == kind)

    def commands(self, split: str, kind: str) -> tuple[Command, ...]:
        """Every command of the families of one split and kind, in file order.

        Example:
            >>> {command.kind for command in load_phrasings().commands("eval", HIGH)}
            {'high'}
        """
        return tuple(command for family in self.families_for(split, kind) for command in family.commands())

    @property
    def train(self) -> dict[str, tuple[str, ...]]:
        """``{"low": (...), "high": (...)}``: the texts of the train families, every placement (as in version 1)."""
        return self._texts("train")

    @property
    def eval(self) -> dict[str, tuple[str, ...]]:
        """``{"low": (...), "high": (...)}``: the texts of the eval families (never used in training)."""
        return self._texts("eval")

    def _texts(self, split: str) -> dict[str, tuple[str, ...]]:
        return {
            kind: tuple(text for family in self.families_for(split, kind) for text in family.phrasings)
            for kind in DIRECTIONS
        }


def load_phrasings(path: str | os.PathLike | None = None) -> ControlPhrasings:
    """Read and check a phrasing file (None: the built-in one); version 2 or version 1 (see the module).

    Raises:
        ControlPhrasingsError: the file is missing, empty, not JSON, or breaks a rule of the format:
            an unknown key, a kind, split or placement outside its choices, a repeated family name,
            an empty phrasing list or text, a phrasing in both splits, a missing train or eval family
            for ``low`` or ``high`` (each message names the file, the family and what to fix).

    Example:
        >>> phrasings = load_phrasings()
        >>> train = {command.text for kind in ("low", "high") for command in phrasings.commands("train", kind)}
        >>> evaluation = {command.text for kind in ("low", "high") for command in phrasings.commands("eval", kind)}
        >>> len(train) > 0 and not train & evaluation
        True
    """
    file = Path(path).expanduser() if path is not None else BUILTIN_PHRASINGS
    where = f"control phrasing file {str(file)!r}"
    raw = _read(file, where)
    try:
        record = json.loads(raw.decode("utf-8").removeprefix(BYTE_ORDER_MARK))
    except UnicodeDecodeError:
        raise ControlPhrasingsError(f"{where} is not valid JSON (not UTF-8); fix it or pass another file") from None
    except (ValueError, RecursionError) as error:
        raise ControlPhrasingsError(f"{where} is {describe_json_error(error)}; fix it or pass another file") from None
    if not isinstance(record, dict):
        raise ControlPhrasingsError(f"{where} must hold a JSON object, {_FORMAT_HINT}, got {type(record).__name__}")
    if _version(record, where) == 2:
        families = _families(record, where)
    else:
        families = _version_1_families(record, where)
    return ControlPhrasings(families, str(file), hashlib.sha256(raw).hexdigest())


def _read(file: Path, where: str) -> bytes:
    if file.is_dir():
        raise ControlPhrasingsError(f"{where} is a folder; pass the JSON file itself")
    if not file.is_file():
        raise ControlPhrasingsError(f"{where} does not exist; pass a JSON phrasing file ({_FORMAT_HINT})")
    raw = file.read_bytes()
    if not raw.strip():
        raise ControlPhrasingsError(f"{where} is empty; it must hold {_FORMAT_HINT}")
    return raw


def _version(record: dict, where: str) -> int:
    """2 for a file with ``families`` or ``"version": 2``; 1 for the old ``low``/``high`` lists."""
    version = record.get("version", 2 if "families" in record else 1)
    if version not in (1, 2) or isinstance(version, bool):
        raise ControlPhrasingsError(
            f"{where}: version {version!r} is not a phrasing-file version this autodeco reads; write 2"
        )
    if version == 1 and "families" in record:
        raise ControlPhrasingsError(f"{where} says version 1 but holds 'families' (version 2); write \"version\": 2")
    return version


def _families(record: dict, where: str) -> tuple[PhrasingFamily, ...]:
    unknown = [key for key in record if key not in _FILE_KEYS]
    if unknown:
        raise ControlPhrasingsError(
            f"{where}: unknown key {unknown[0]!r}; a version-2 file holds only {', '.join(_FILE_KEYS)}"
        )
    entries = record.get("families")
    if not isinstance(entries, list) or not entries:
        found = "missing" if "families" not in record else repr(entries)
        raise ControlPhrasingsError(f"{where}: 'families' must be a non-empty list of families, got {found}")
    return tuple(_family(entry, index, where) for index, entry in enumerate(entries))


def _family(entry, index: int, where: str) -> PhrasingFamily:
    name = entry.get("name") if isinstance(entry, dict) else None
    place = f"{where}: {_family_label(index, name)}"
    if not isinstance(entry, dict):
        raise ControlPhrasingsError(
            f"{place} must be an object with name, kind, split and phrasings, got {type(entry).__name__}"
        )
    unknown = [key for key in entry if key not in FAMILY_KEYS]
    if unknown:
        raise ControlPhrasingsError(
            f"{place}: unknown key {unknown[0]!r}; a family holds only {', '.join(FAMILY_KEYS)}"
        )
    missing = [key for key in FAMILY_KEYS if key not in entry and key not in FAMILY_DEFAULTS]
    if missing:
        raise ControlPhrasingsError(f"{place} lacks {missing[0]!r}; every family needs name, kind, split and phrasings")
    try:
        return PhrasingFamily(**{**FAMILY_DEFAULTS, **entry})
    except ControlPhrasingsError as error:
        raise ControlPhrasingsError(f"{place}: {error}") from None


def _version_1_families(record: dict, where: str) -> tuple[PhrasingFamily, ...]:
    families = []
    for kind in DIRECTIONS:
        splits = record.get(kind)
        if not isinstance(splits, dict):
            found = "missing" if kind not in record else type(splits).__name__
            raise ControlPhrasingsError(
                f"{where}: {kind!r} must be an object with 'train' and 'eval' lists of phrasings, got {found} "
                f"(a version-1 file; the current format is {_FORMAT_HINT})"
            )
        lists = {
            split: _phrasing_list(splits.get(split), f"{where}: {kind}.{split}", split in splits)
            for split in PHRASING_SPLITS
        }
        shared = {_normalised(text) for text in lists["train"]} & {_normalised(text) for text in lists["eval"]}
        if shared:
            raise ControlPhrasingsError(
                f"{where}: {kind}.train and {kind}.eval share {sorted(shared)[0]!r}; evaluation must use phrasings "
                "never seen in training: remove it from one of the lists"
            )
        families += [
            PhrasingFamily(f"{kind}-{split}", kind, split, "after", "en", "list", lists[split]) for split in PHRASING_SPLITS
        ]
    return tuple(families)


def _phrasing_list(value, where: str, present: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        found = "missing" if not present else repr(value)
        raise ControlPhrasingsError(f"{where} must be a non-empty list of phrasings (strings), got {found}")
    for index, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise ControlPhrasingsError(f"{where}[{index}] must be a non-empty string, got {text!r}")
    return tuple(text.strip() for text in value)


def _family_label(index: int, name) -> str:
    return f"families[{index}] ({name!r})" if isinstance(name, str) and name.strip() else f"families[{index}] (no name)"


def _check_text(field: str, value) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ControlPhrasingsError(f"{field!r} must be a non-empty string, got {value!r}")


def _check_choice(field: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ControlPhrasingsError(f"{field!r} must be one of {', '.join(choices)}, got {value!r}")


def _check_argument(field: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}, got {value!r}")


def _as_listed(value):
    """A tuple shown as the JSON list it came from (for error messages)."""
    return list(value) if isinstance(value, tuple) else value


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


def command_messages(prompt: str, command: Command | str | None) -> list[dict[str, str]]:
    """The chat messages of a prompt with a command in its place (a text is placed ``after``).

    Example:
        >>> command_messages("What is 2 + 2?", None)
        [{'role': 'user', 'content': 'What is 2 + 2?'}]
        >>> command_messages("What is 2 + 2?", "Be exact.")
        [{'role': 'user', 'content': 'What is 2 + 2?\\nBe exact.'}]
        >>> command_messages("What is 2 + 2?", Command("Be exact.", placement="before"))
        [{'role': 'user', 'content': 'Be exact.\\nWhat is 2 + 2?'}]
        >>> command_messages("What is 2 + 2?", Command("You are a precise calculator.", placement="system"))
        [{'role': 'system', 'content': 'You are a precise calculator.'}, {'role': 'user', 'content': 'What is 2 + 2?'}]
    """
    if command is None:
        return [{"role": "user", "content": prompt}]
    if isinstance(command, str):
        command = Command(command)
    if not isinstance(command, Command):
        raise TypeError(f"a command must be a Command, a text or None, got {type(command).__name__}")
    if command.placement == "system":
        return [{"role": "system", "content": command.text}, {"role": "user", "content": prompt}]
    if command.placement == "before":
        return [{"role": "user", "content": f"{command.text}{COMMAND_SEPARATOR}{prompt}"}]
    return [{"role": "user", "content": append_command(prompt, command.text)}]


def command_text(prompt: str, command: Command | str | None) -> str:
    """The prompt and command as one string: for records, and tokenizers without a chat template.

    Example:
        >>> command_text("What is 2 + 2?", Command("You are a precise calculator.", placement="system"))
        'You are a precise calculator.\\nWhat is 2 + 2?'
        >>> command_text("What is 2 + 2?", "Be exact.") == append_command("What is 2 + 2?", "Be exact.")
        True
    """
    return COMMAND_SEPARATOR.join(message["content"] for message in command_messages(prompt, command))


def append_command(prompt: str, command: str) -> str:
    """The user message with a decoding command at its end.

    Example:
        >>> append_command("What is 2 + 2?", "Please answer as certain as possible.")
        'What is 2 + 2?\\nPlease answer as certain as possible.'
    """
    return f"{prompt.rstrip()}{COMMAND_SEPARATOR}{command}"
