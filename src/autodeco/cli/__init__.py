"""The ``autodeco`` command: a table from subcommand to a plain function (see ``_parser``)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback

from autodeco.cli import checkpoints, control, evaluate, generate, quickstart, sample, serve, train
from autodeco.cli._parser import add_command, check_numbers, flag_names
from autodeco.cli.diagnose import diagnose
from autodeco.common.console import results_only_on_stdout

COMMANDS = {
    "quickstart": quickstart.quickstart,
    "generate": generate.generate,
    "sample": sample.sample,
    "train": train.train,
    "heldout": train.heldout,
    "diagnose": diagnose,
    "eval": evaluate.evaluate_command,
    "control-eval": control.control_eval,
    "init": checkpoints.init,
    "merge": checkpoints.merge,
    "split": checkpoints.split,
    "info": checkpoints.info,
    "serve": serve.serve,
    "export-vllm": checkpoints.export_vllm,
    "export-hub": checkpoints.export_hub,
}


INTERNAL_ERROR_STATUS = 70
"""Exit status of a bug in autodeco (sysexits' EX_SOFTWARE): apart from user errors (1) and usage errors (2)."""


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


OS_ERROR_HINTS = {
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only: choose a path on a writable disk",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EEXIST: "a file is in the way: remove it, or choose another path",
    errno.EISDIR: "this is a folder: give a file's path",
    errno.ENOSPC: "the disk is full: free some space, or choose a path on another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some space, or choose a path on another disk",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ENOENT: "check the path",
    errno.EPIPE: "the output was closed before autodeco finished writing it",
}
"""What to do about an operating-system error, by its errno."""


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error: the path, what went wrong, what to do.

    Example:
        >>> describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/out/run.json"))
        "cannot use '/out/run.json': Permission denied (check the permissions, or choose another path)"
    """
    if error.errno is None or error.strerror is None:
        return str(error)  # raised by us with a message of its own
    hint = OS_ERROR_HINTS.get(error.errno, "check the path and the disk")
    if error.filename is None:
        return f"{error.strerror} ({hint})"
    paths = repr(os.fsdecode(error.filename))
    if error.filename2 is not None:
        paths += f" -> {os.fsdecode(error.filename2)!r}"
    return f"cannot use {paths}: {error.strerror} ({hint})"


def check_utf8_arguments(argv: list[str]) -> None:
    """Refuse an argument that is not UTF-8 text (Python hands such bytes over as lone surrogates)."""
    for index, word in enumerate(argv, start=1):
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(word) if isinstance(word, str) else word
            raise CommandError(
                f"argument {index} is not UTF-8 text ({raw!r}); pass text encoded in UTF-8 "
                "(e.g. convert it with iconv -t UTF-8)"
            ) from None


def main(argv: list[str] | None = None) -> int:
    """Run one ``autodeco`` command; user errors print one line and return 1, bugs a traceback and a plea to report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_utf8_arguments(argv)
    except CommandError as error:
        print(f"autodeco: error: {error}", file=sys.stderr)
        return 1
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    arguments = vars(parser.parse_args(argv))
    function = arguments.pop("_function")
    flags = flag_names(parser, arguments.pop("command"))
    try:
        check_numbers(arguments, flags)
        with results_only_on_stdout():  # libraries' chatter goes to stderr: stdout carries only the results
            function(**arguments)
    except (ValueError, CommandError) as error:
        print(f"autodeco: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"autodeco: error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autodeco: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("autodeco: internal error: this is a bug in autodeco, not in what you typed; please report it "
              "to the autodeco maintainers with the traceback above and the command you ran", file=sys.stderr)
        return INTERNAL_ERROR_STATUS
    return 0
