"""Folders written atomically: built beside their target, then swapped in.

:func:`staged_folder` is the one way the package writes a folder that must never be seen half
written (heads checkpoints, training checkpoints, the converted embedded model). The new folder
is built as ``.NAME.autodeco-staging.<pid>.<random>`` beside ``NAME``; when the block ends without
error it replaces ``NAME`` in two renames (the old folder goes to ``.NAME.autodeco-old.<pid>.*``
first). A writer killed at any moment leaves either the old folder or the new one at ``NAME``,
or, killed between the two renames, the old one in its hidden backup, which the next write to (or
:func:`recover_interrupted_swap` of) ``NAME`` moves back. Hidden folders whose writer is dead are
removed. The files get the user's usual permissions (umask).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

STAGING_TAG = "autodeco-staging"
BACKUP_TAG = "autodeco-old"
"""Hidden folders beside a target while it is written: ``.NAME.<tag>.<writer pid>.<random>``."""


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it replaces ``target`` atomically, on error it is removed.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "run"
        >>> with staged_folder(target) as folder:
        ...     _ = (folder / "a.txt").write_text("done")
        >>> (target / "a.txt").read_text()
        'done'
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(17, "a file is in the way of a folder to write", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(target)
    remove_stale_staging(target.parent)
    staging = hidden_folder(target, STAGING_TAG)
    try:
        yield staging
        apply_umask(staging)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def hidden_folder(target: Path, tag: str) -> Path:
    """A new folder ``.NAME.<tag>.<pid>.<random>`` beside ``target``, created with the user's umask."""
    folder = target.parent / f".{target.name}.{tag}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        folder.mkdir()
    except OSError as error:  # name the folder the user asked for, not our hidden one
        raise type(error)(error.errno, error.strerror, str(target)) from None
    return folder


def apply_umask(folder: Path) -> None:
    """Give the folder and its files the modes a plain ``mkdir``/``open`` would (0755/0644 under umask 022).

    ``save_file`` and friends may create files 0600; what we write is meant to be shared like any file.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def remove_stale_staging(parent: Path, name: str | None = None) -> list[Path]:
    """Remove staging folders in ``parent`` left by a killed writer (ours by name, writer no longer running).

    With ``name``, only those of the target ``name``.
    """
    removed = []
    if not parent.is_dir():
        return removed
    for folder in parent.glob(f".{glob.escape(name)}.{STAGING_TAG}.*" if name else ".*"):
        pid = _writer(folder, STAGING_TAG)
        if pid is not None and folder.is_dir() and not _is_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def recover_interrupted_swap(target: Path) -> None:
    """Finish a swap cut short by a kill.

    :func:`_swap_in` moves the old folder to ``.NAME.autodeco-old.PID.*/previous`` and then the new one
    into place. Killed between the two renames, ``NAME`` is missing: the old folder is moved back (with a
    warning) and the unfinished new one deleted. Killed after both, the leftover backup is deleted.
    Folders whose writer still runs are left alone.
    """
    target = Path(target).expanduser()
    parent = target.parent
    if not parent.is_dir():
        return
    prefix = f".{target.name}.{BACKUP_TAG}."
    for backup in sorted(parent.glob(f"{glob.escape(prefix)}*")):
        pid = _writer(backup, BACKUP_TAG)
        if pid is None or not backup.is_dir() or _is_alive(pid) or not backup.name.startswith(prefix):
            continue
        previous = backup / _PREVIOUS
        if not target.exists() and previous.is_dir():
            os.replace(previous, target)
            warnings.warn(
                f"restored the checkpoint {str(target)!r} from {backup.name}: an earlier save was killed while "
                "swapping it in",
                stacklevel=2,
            )
        shutil.rmtree(backup, ignore_errors=True)
    remove_stale_staging(parent, name=target.name)


_PREVIOUS = "checkpoint"
"""Name of the old folder inside its backup."""


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    backup = hidden_folder(target, BACKUP_TAG)
    os.replace(target, backup / _PREVIOUS)
    # A kill here leaves the old folder in the backup only: recover_interrupted_swap restores it.
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


def _writer(folder: Path, tag: str) -> int | None:
    """The writer's pid recorded in a hidden folder's name, or None when the name is not ours."""
    parts = folder.name.rsplit(".", 3)
    if len(parts) != 4 or parts[1] != tag or not parts[2].isdigit() or not folder.name.startswith("."):
        return None
    return int(parts[2])


def _is_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
