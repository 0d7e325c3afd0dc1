"""One run per folder: an exclusive lock on a run folder for the life of a process.

``autodeco sample``, ``train`` and ``eval`` each hold :func:`run_lock` on their output folder
while they read and write it, so a second run on the same folder fails at once instead of
interleaving its results with the first one's. The lock is ``fcntl.flock`` on the file
``run.lock`` inside the folder: the kernel drops it when the process ends, however it ends, so
a run killed with ``kill -9`` leaves no stale lock (the file stays, holding the last owner's PID
for the message; it is not a lock by itself).

The lock file is also how a run folder is known to be autodeco's: an existing, non-empty folder
without one is refused (its files are the user's, and a run writes and, with ``--overwrite``,
deletes files by name), as is a folder holding another command's run, or an output that is,
lies inside or contains one of the run's inputs (:func:`autodeco.common.folders.check_apart`).

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with run_lock(folder, "sample"):
    ...     pass  # read and write the folder here
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from autodeco.common.folders import FolderRefused, check_apart

LOCK_FILE = "run.lock"
"""The lock file inside a run folder: ``<pid> <start time> <command>`` of the holder."""


class RunFolderInUse(ValueError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str, *, option: str = "--output",
             inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of the run folder ``folder`` (created if missing) inside the ``with`` block.

    Args:
        folder: the run folder.
        command: what runs there, for the other process's message (``"sample"``, ``"train"``, ...).
        option: the flag that chose the folder, for the message.
        inputs: what the run reads, by name (data files, heads): the folder may not be, lie inside or contain one.

    Yields:
        The folder.

    Raises:
        RunFolderInUse: another process holds the lock (the message names its PID and start time).
        FolderRefused: the folder holds files autodeco did not write, or another command's run, or overlaps an input.
        ValueError: the folder cannot be created or written (a file in the way, no permission).
    """
    folder = Path(folder)
    check_apart(folder, inputs or {}, option=option)
    _check_made_by_autodeco(folder, option)
    handle = _open_lock_file(folder, option)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderInUse(
                f"{folder} is already in use by {_holder(folder)}; wait for it or choose another {option}"
            ) from None
        _check_same_command(folder, command, option)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()} {started} {command}\n".encode(), 0)
        yield folder
    finally:
        os.close(handle)  # releases the lock


def _check_made_by_autodeco(folder: Path, option: str) -> None:
    """Refuse an existing, non-empty folder without a lock file: autodeco did not make it."""
    if not folder.is_dir():
        return
    if not (folder / LOCK_FILE).exists():
        entries = sorted(entry.name for entry in folder.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise FolderRefused(
                f"{option} {str(folder)!r} already holds files autodeco did not write ({shown}); a run writes "
                "(and with --overwrite deletes) files by name there: choose a new or empty folder"
            )


def _check_same_command(folder: Path, command: str, option: str) -> None:
    """Refuse a folder that holds another command's run (checked under the lock, before it is rewritten)."""
    previous = _recorded_command(folder)
    if previous is not None and previous != command:
        raise FolderRefused(
            f"{option} {str(folder)!r} holds an `autodeco {previous}` run, not an `autodeco {command}` one; "
            "choose another folder"
        )


def _recorded_command(folder: Path) -> str | None:
    try:
        words = (folder / LOCK_FILE).read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    return words[3] if len(words) > 3 and words[0].isdigit() else None


def _open_lock_file(folder: Path, option: str) -> int:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise ValueError(f"{option} {str(folder)!r} is a file, not a folder; choose a folder path") from None
    except NotADirectoryError:
        raise ValueError(f"{option} {str(folder)!r} lies under a file, not a folder; choose a folder path") from None
    except PermissionError as error:
        raise ValueError(
            f"cannot write in {option} {str(folder)!r} ({error.strerror}); choose a folder you can write to"
        ) from None
    except OSError as error:
        raise ValueError(f"cannot use {option} {str(folder)!r} as a run folder: {error.strerror or error}") from None


def _holder(folder: Path) -> str:
    """``PID n (started ...) running autodeco <command>`` from the lock file, as far as it can be read."""
    try:
        words = (folder / LOCK_FILE).read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        words = []
    if len(words) < 3 or not words[0].isdigit():
        return "another process"
    command = f", autodeco {words[3]}" if len(words) > 3 else ""
    return f"PID {words[0]} (started {words[1]} {words[2]}{command})"
