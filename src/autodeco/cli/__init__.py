"""The ``autodeco`` command: a table from subcommand to a plain function (see ``_parser``)."""

from __future__ import annotations

import argparse
import sys

from autodeco.cli import checkpoints, evaluate, generate, quickstart, sample, train
from autodeco.cli._parser import add_command

COMMANDS = {
    "quickstart": quickstart.quickstart,
    "generate": generate.generate,
    "sample": sample.sample,
    "train": train.train,
    "heldout": train.heldout,
    "eval": evaluate.evaluate_command,
    "init": checkpoints.init,
    "merge": checkpoints.merge,
    "split": checkpoints.split,
    "info": checkpoints.info,
}


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 1."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``autodeco`` parser; with ``command``, only that subcommand's flags are built (the rest list their summary)."""
    parser = argparse.ArgumentParser(
        prog="autodeco", description="Language models that choose their own temperature and top-p, token by token."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, function in COMMANDS.items():
        add_command(subparsers, name, function, with_arguments=command is None or name == command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    arguments = vars(build_parser(command if command in COMMANDS else None).parse_args(argv))
    function = arguments.pop("_function")
    arguments.pop("command")
    try:
        function(**arguments)
    except (ValueError, FileNotFoundError, CommandError) as error:
        print(f"autodeco: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autodeco: interrupted", file=sys.stderr)
        return 130
    return 0
