"""One run per folder: an exclusive lock on a run folder for the life of a process.

``autodeco sample``, ``train`` and ``eval`` each hold :func:`run_lock` on their output folder
while they read and write it, so a second run on the same folder fails at once instead of
interleaving its results with the first one's. The lock is ``fcntl.flock`` on the file
``run.lock`` inside the folder: the kernel drops it when the process ends, however it ends, so
a run killed with ``kill -9`` leaves no stale lock (the file stays, holding the last owner's PID
for the message; it is not a lock by itself).

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
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "run.lock"
"""The lock file inside a run folder: ``<pid> <start time> <command>`` of the holder."""


class RunFolderInUse(ValueError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str, *, option: str = "--output") -> Iterator[Path]:
    """Hold the exclusive lock of the run folder ``folder`` (created if missing) inside the ``with`` block.

    Args:
        folder: the run folder.
        command: what runs there, for the other process's message (``"sample"``, ``"train"``, ...).
        option: the flag that chose the folder, for the message.

    Yields:
        The folder.

    Raises:
        RunFolderInUse: another process holds the lock (the message names its PID and start time).
        ValueError: the folder cannot be created or written (a file in the way, no permission).
    """
    folder = Path(folder)
    handle = _open_lock_file(folder, option)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderInUse(
                f"{folder} is already in use by {_holder(folder)}; wait for it or choose another {option}"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()} {started} {command}\n".encode(), 0)
        yield folder
    finally:
        os.close(handle)  # releases the lock


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
