"""Build an argparse parser from a plain function: its signature gives the flags, its docstring the help.

Positional parameters without a default become positional arguments (``list[str]`` takes any
number); the rest become ``--flags`` (``snake_case`` -> ``--kebab-case``); a ``bool`` flag
defaulting to False is a switch.
"""

from __future__ import annotations

import argparse
import inspect
import re
import typing


def add_command(subparsers, name: str, function) -> None:
    """Add ``function`` as subcommand ``name``."""
    summary, arg_help = _parse_docstring(function.__doc__ or "")
    parser = subparsers.add_parser(
        name, help=summary.splitlines()[0] if summary else None, description=summary,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(function)
    for parameter in inspect.signature(function).parameters.values():
        _add_parameter(parser, parameter, hints.get(parameter.name, str), arg_help.get(parameter.name, ""))
    parser.set_defaults(_function=function)


def _add_parameter(parser, parameter: inspect.Parameter, hint, help_text: str) -> None:
    kind, is_list = _base_type(hint)
    flag = "--" + parameter.name.replace("_", "-")
    if parameter.default is inspect.Parameter.empty:
        parser.add_argument(parameter.name, type=kind, nargs="*" if is_list else None, help=help_text)
    elif kind is bool:
        parser.add_argument(flag, dest=parameter.name, action="store_true", help=help_text)
    else:
        parser.add_argument(
            flag, dest=parameter.name, type=kind, nargs="+" if is_list else None,
            default=parameter.default, help=help_text,
        )


def _base_type(hint) -> tuple[type, bool]:
    """(element type, is it a list) of an annotation like ``int``, ``str | None`` or ``list[str]``."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    if typing.get_origin(hint) is list:
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
