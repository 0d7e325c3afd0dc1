"""Standard output carries what a command is for; everything else goes to standard error.

A command's results (answers, tables, the server's URL, where a report is) are what a user pipes
into another program, so nothing else may land between them: not our progress lines, and not the
chatter of the libraries a command imports (DeepSpeed, for one, logs to standard output when it is
imported). :func:`results_only_on_stdout` sends everything printed to ``sys.stdout`` during a
command to standard error instead, libraries' loggers created meanwhile included, and :func:`say`
writes a result to the real standard output.

Example:
    >>> with results_only_on_stdout():
    ...     print("chatter")  # goes to standard error
    ...     say("the answer")
    the answer
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

_results: TextIO | None = None
"""Where :func:`say` writes inside :func:`results_only_on_stdout` (the standard output it found)."""


def say(*values: object, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
    """Print a command's result: to standard output, even while other output is sent to standard error."""
    print(*values, sep=sep, end=end, file=_results or sys.stdout, flush=flush)


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """Inside the block, ``print`` and anything else writing to ``sys.stdout`` goes to standard error; :func:`say` does not."""
    global _results
    previous = _results
    _results = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _results = previous
