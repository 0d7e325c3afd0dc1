"""Build an argparse parser from a plain function: its signature gives the flags, its docstring the help.

Positional parameters without a default become positional arguments (``list[str]`` takes any
number); the rest become ``--flags`` (``snake_case`` -> ``--kebab-case``); a ``bool`` flag
defaulting to False is a switch, one defaulting to True a ``--name/--no-name`` pair.

A command that takes a config dataclass is declared with :func:`config_command`: every field of
the dataclass (less those the function takes itself) becomes a flag too, named after the field,
typed by its annotation and documented by the field's own docstring, so flags and help are never
copied by hand. Only the flags the user gives reach the function (as keyword arguments), so unset
ones keep the dataclass's (or a preset's) values.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import inspect
import math
import re
import textwrap
import typing

NONE_WORDS = ("none", "None")
"""What an optional number's flag accepts for None (e.g. ``--max-grad-norm none``)."""


def config_command(
    config_class, *, exclude: tuple[str, ...] = (), flags: dict[str, str] | None = None, also: tuple = (),
):
    """Declare that the decorated command also takes ``config_class``'s fields as flags.

    Args:
        config_class: a dataclass whose fields are documented with attribute docstrings.
        exclude: fields that are not flags (set by the command itself).
        flags: field -> flag name, where a field's flag is not its kebab-case name.
        also: more config dataclasses whose fields become flags too, each in its own group (a field whose flag
            an earlier class already gives is not added again); ``autodeco train``'s objectives.
    """

    def decorate(function):
        function.__config__ = (config_class, tuple(exclude), dict(flags or {}))
        function.__also__ = tuple(also)
        return function

    return decorate


def add_command(subparsers, name: str, function, *, with_arguments: bool = True) -> None:
    """Add ``function`` as subcommand ``name`` (its flags only when ``with_arguments``: they may import more)."""
    summary, arg_help = _parse_docstring(function.__doc__ or "")
    parser = subparsers.add_parser(
        name, help=summary.splitlines()[0] if summary else None, description=summary, formatter_class=_HelpFormatter,
    )
    parser.set_defaults(_function=function)
    if not with_arguments:
        return
    hints = typing.get_type_hints(function)
    own = set()
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        own.add(parameter.name)
        _add_parameter(parser, parameter, hints.get(parameter.name, str), arg_help.get(parameter.name, ""))
    if hasattr(function, "__config__"):
        config_class, exclude, flags = function.__config__
        skip = own | set(exclude)
        for one_class in (config_class, *getattr(function, "__also__", ())):
            _add_config_fields(parser, one_class, skip=skip, flags=flags)
            skip |= {field.name for field in _flag_fields(one_class)}


def flag_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """``{destination: flag}`` of subcommand ``command`` of ``parser`` (e.g. ``{"top_p": "--top-p"}``)."""
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {
        action.dest: action.option_strings[0] if action.option_strings else action.dest
        for action in subparsers.choices[command]._actions
    }


def check_numbers(arguments: dict, flags: dict[str, str]) -> None:
    """Refuse NaN and infinity in any number flag, naming the flag (argparse's ``float`` accepts both).

    Example:
        >>> check_numbers({"top_p": float("nan")}, {"top_p": "--top-p"})
        Traceback (most recent call last):
        ValueError: --top-p must be a finite number, got nan
    """
    for name, value in arguments.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for number in values:
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"{flags.get(name, name)} must be a finite number, got {number}")


def check_at_least(flag: str, value: int | None, minimum: int = 1, *, none: str = "") -> None:
    """Refuse a count flag below ``minimum`` (``none``: what to pass instead, for flags that accept none)."""
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}{none}")


def check_choice(flag: str, value, choices) -> None:
    """Refuse a value not among ``choices`` before any work starts (and before anything is written)."""
    if value is not None and value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


@contextlib.contextmanager
def config_errors(config_class, flags: dict[str, str], *, flag_only: bool = False):
    """Re-raise a config's ValueError with the field name it starts with followed by the flag that sets it.

    ``per_device_batch_size must be >= 1`` becomes ``per_device_batch_size (--batch-size) must be >= 1``;
    with ``flag_only``, the flag replaces the field name: ``samples_per_seed must be >= 1`` becomes
    ``--samples-per-seed must be >= 1`` (for commands whose messages have always named only the flag).
    """
    try:
        yield
    except ValueError as error:
        if isinstance(error, UnicodeError):
            raise
        message = str(error)
        for field in sorted(_flag_fields(config_class), key=lambda field: -len(field.name)):
            if re.match(rf"{field.name}\b", message):
                flag = "--" + flags.get(field.name, field.name.replace("_", "-"))
                named = flag if flag_only else f"{field.name} ({flag})"
                message = named + message[len(field.name):]
                break
        raise ValueError(message) from error


def _add_parameter(parser, parameter: inspect.Parameter, hint, help_text: str) -> None:
    kind, is_list = _base_type(hint)
    flag = "--" + parameter.name.replace("_", "-")
    if parameter.default is inspect.Parameter.empty:
        parser.add_argument(parameter.name, type=kind, nargs="*" if is_list else None, help=help_text)
    elif kind is bool and parameter.default:
        parser.add_argument(flag, dest=parameter.name, action=argparse.BooleanOptionalAction, default=True, help=help_text)
    elif kind is bool:
        parser.add_argument(flag, dest=parameter.name, action="store_true", help=help_text)
    else:
        parser.add_argument(
            flag, dest=parameter.name, type=kind, nargs="+" if is_list else None,
            default=parameter.default, help=help_text,
        )


class _FlagField(typing.NamedTuple):
    name: str
    """The flag's destination: the field's name, prefixed for a nested config's field (``control_share``)."""
    default: object
    hint: object
    doc: str
    section: tuple[str, str] | None = None
    """``(title, description)`` of the nested config the field belongs to (None: a field of the config itself)."""


def _flag_fields(config_class, prefix: str = "", section: tuple[str, str] | None = None) -> list[_FlagField]:
    """The fields of ``config_class`` that are flags; a field holding a config dataclass gives its fields, prefixed.

    ``control: ControlConfig`` gives ``control_share`` (``--control-share``) and the rest: the config accepts
    those flat names (see :class:`autodeco.training.config.ControlConfig`).
    """
    hints = typing.get_type_hints(config_class)
    docs = field_docs(config_class)
    fields = []
    for field in dataclasses.fields(config_class):
        if not field.init:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            nested = (f"{field.name} settings ({hints[field.name].__name__})", docs.get(field.name, ""))
            fields += _flag_fields(hints[field.name], f"{prefix}{field.name}_", nested)
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        fields.append(_FlagField(prefix + field.name, default, hints[field.name], docs.get(field.name, ""), section))
    return fields


def _add_config_fields(parser, config_class, *, skip: set[str], flags: dict[str, str]) -> None:
    groups = {None: parser.add_argument_group(f"settings ({config_class.__name__})")}
    for field in _flag_fields(config_class):
        if field.name in skip:
            continue
        if field.section not in groups:
            title, description = field.section
            groups[field.section] = parser.add_argument_group(title, description.replace("%", "%%"))
        group = groups[field.section]
        kind, is_list = _base_type(field.hint)
        optional = type(None) in typing.get_args(field.hint)
        flag = "--" + flags.get(field.name, field.name.replace("_", "-"))
        default = field.default
        help_text = field.doc.replace("%", "%%")
        if not (default is None or default is False) and "default" not in help_text:
            help_text += f" (default: {default})"
        common = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            converter = _optional(kind) if optional and kind in (int, float) else kind
            group.add_argument(flag, type=converter, nargs="+" if is_list else None, metavar=kind.__name__.upper(), **common)


def _optional(kind):
    """A converter that reads ``none`` as None and anything else as ``kind``."""

    def convert(text: str):
        return None if text in NONE_WORDS else kind(text)

    convert.__name__ = kind.__name__
    return convert


@functools.lru_cache(maxsize=None)
def field_docs(config_class) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass whose fields are followed by a string literal, as in this project.

    Example:
        >>> from autodeco.training.config import TrainConfig
        >>> field_docs(TrainConfig)["mode"]
        'joint trains both heads; temperature or top-p trains and enables that head only.'
    """
    try:
        source = textwrap.dedent(inspect.getsource(config_class))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for statement, following in zip(body, body[1:]):
        if (
            isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            text = " ".join(inspect.cleandoc(following.value.value).split())
            docs[statement.target.id] = text.replace("``", "")
    return docs


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a parameter's default once: only when its help text does not already speak of one."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text or default is None or default is False or default is argparse.SUPPRESS
            or isinstance(action, argparse._StoreTrueAction) or not action.option_strings
        ):
            return help_text
        return f"{help_text} (default: %(default)s)"


def _base_type(hint) -> tuple[type, bool]:
    """(element type, is it a list) of an annotation like ``int``, ``str | None`` or ``list[str]``."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    if typing.get_origin(hint) in (list, tuple):
        return (arguments[0] if arguments else str), True
    if arguments:  # Optional[X] / X | None
        return _base_type(arguments[0])
    return hint, False


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its summary and ``{argument: help}``."""
    doc = inspect.cleandoc(doc)
    summary, _, rest = doc.partition("Args:")
    arg_help: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        match = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
        if match:
            current = match.group(1)
            arg_help[current] = match.group(2)
        elif current and line.strip() and line.startswith(" " * 8):
            arg_help[current] += " " + line.strip()
        elif not line.strip():
            current = None
        else:
            break
    return summary.strip(), {name: text.replace("%", "%%") for name, text in arg_help.items()}
