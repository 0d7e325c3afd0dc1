"""Folders written atomically: built beside their target, then swapped in.

:func:`staged_folder` is the one way the package writes a folder that must never be seen half
written (heads checkpoints, training checkpoints, the converted embedded model). The new folder
is built as ``.NAME.autodeco-staging.<pid>.<random>`` beside ``NAME``; when the block ends without
error it replaces ``NAME`` in two renames (the old folder goes to ``.NAME.autodeco-old.<pid>.*``
first). A writer killed at any moment leaves either the old folder or the new one at ``NAME``,
or, killed between the two renames, the old one in its hidden backup, which the next write to (or
:func:`recover_interrupted_swap` of) ``NAME`` moves back. Hidden folders whose writer is dead are
removed. The files get the user's usual permissions (umask).

Nothing the user owns is lost by a write (the rule every writer of the package follows):

- a folder autodeco did not make is never replaced: writing into an existing, non-empty folder
  without autodeco's record of its files (:data:`MANIFEST`) is refused before anything is written
  (:class:`FolderRefused`), because swapping in a new folder would take the user's files with it;
- in a folder autodeco made, files the user added since are carried into the new folder (hard links,
  nothing copied) and survive the swap; one that would be overwritten by a file of the new write is
  refused, naming it;
- an output equal to, inside, or containing one of the write's inputs (the heads or the base it
  reads, the data of a run) is refused before anything is written (:func:`check_apart`).

Checkpoints written before the record existed are recognised by their ``config.json`` (an autodeco
checkpoint or export): the files a checkpoint is made of, and an export's links, count as autodeco's,
any other as the user's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

STAGING_TAG = "autodeco-staging"
BACKUP_TAG = "autodeco-old"
"""Hidden folders beside a target while it is written: ``.NAME.<tag>.<writer pid>.<random>``."""


MANIFEST = ".autodeco-files.json"
"""autodeco's record of the files it wrote into a folder: ``{"written_by": "autodeco", "files": [...]}``."""

LEGACY_CHECKPOINT_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                           "training_state.json", "tokenizer*", "special_tokens_map.json", "chat_template*",
                           "vocab.json", "merges.txt")
"""Names that count as autodeco's in a checkpoint written before :data:`MANIFEST` existed."""


class FolderRefused(ValueError):
    """A write that would delete or overwrite something autodeco did not write."""


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, *, inputs: Mapping[str, str | os.PathLike | None] | None = None,
                  option: str = "the output folder") -> Iterator[Path]:
    """Yield an empty folder to fill; on success it replaces ``target`` atomically, on error it is removed.

    Args:
        target: the folder to write.
        inputs: what the write reads, by name (``{"heads": ..., "base model": ...}``): ``target`` may be
            none of them, nor lie inside or contain one.
        option: how the user named ``target``, for messages (``"--out"``).

    Raises:
        FolderRefused: ``target`` overlaps an input, holds files autodeco did not write, or the new files
            would overwrite one of the user's (checked before the block runs where possible).

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
    check_apart(target, inputs or {}, option=option)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(target)
    remove_stale_staging(target.parent)
    users = users_entries(target, option=option)
    staging = hidden_folder(target, STAGING_TAG)
    try:
        yield staging
        written = sorted(entry.name for entry in staging.iterdir())
        _refuse_overwrites(target, users, written, option)
        (staging / MANIFEST).write_text(json.dumps({"written_by": "autodeco", "files": written}, indent=1) + "\n")
        apply_umask(staging)
        _carry_over(target, staging, users)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_apart(output: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], *,
                option: str = "the output folder") -> None:
    """Refuse an output that is, lies inside, or contains one of ``inputs`` (paths that do not exist are skipped).

    Raises:
        FolderRefused: naming the input and the fix.

    Example:
        >>> import tempfile
        >>> heads = Path(tempfile.mkdtemp())
        >>> check_apart(heads / "export", {"heads": heads})
        Traceback (most recent call last):
        ...
        autodeco.common.folders.FolderRefused: ...
    """
    out = Path(output).expanduser().resolve()
    for what, path in inputs.items():
        if path is None or not isinstance(path, (str, os.PathLike)) or not Path(path).expanduser().exists():
            continue
        source = Path(path).expanduser().resolve()
        if out == source:
            relation = "is"
        elif source in out.parents:
            relation = "lies inside"
        elif out in source.parents:
            relation = "contains"
        else:
            continue
        raise FolderRefused(
            f"{option} {os.fspath(output)!r} {relation} the {what} ({source}), which this command reads; writing "
            f"there could destroy it: choose a folder outside it"
        )


def users_entries(folder: Path, *, option: str = "the output folder") -> list[str]:
    """Names in an existing ``folder`` that autodeco did not write (they must survive a rewrite).

    Raises:
        FolderRefused: ``folder`` is not empty and autodeco did not make it.
    """
    if not folder.is_dir():
        return []
    entries = sorted(entry.name for entry in folder.iterdir() if _writer(entry, STAGING_TAG) is None
                     and _writer(entry, BACKUP_TAG) is None)
    if not entries:
        return []
    ours = _autodeco_files(folder)
    if ours is None:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise FolderRefused(
            f"{option} {str(folder)!r} already holds files autodeco did not write ({shown}); autodeco replaces only "
            "folders it made, so that nothing of yours is lost: choose a new or empty folder"
        )
    return [name for name in entries if name not in ours and name != MANIFEST]


def _autodeco_files(folder: Path) -> set[str] | None:
    """The names autodeco wrote in ``folder`` (its manifest, or a pre-manifest checkpoint's files), or None."""
    try:
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if isinstance(record, dict) and isinstance(record.get("files"), list):
            return {name for name in record["files"] if isinstance(name, str)}
    except (OSError, ValueError, RecursionError):
        pass
    if not _is_autodeco_checkpoint(folder / "config.json"):
        return None
    return {entry.name for entry in folder.iterdir()  # an export's links to its base's files are ours too
            if entry.is_symlink() or any(entry.match(pattern) for pattern in LEGACY_CHECKPOINT_FILES)}


def _is_autodeco_checkpoint(config: Path) -> bool:
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(fields, dict):
        return False
    architectures = fields.get("architectures") if isinstance(fields.get("architectures"), list) else []
    return (fields.get("model_type") == "autodeco" or isinstance(fields.get("autodeco"), dict)
            or any(isinstance(name, str) and name.startswith("AutoDeco") for name in architectures))


def _refuse_overwrites(target: Path, users: list[str], written: list[str], option: str) -> None:
    clash = sorted(set(users) & set(written))
    if clash:
        raise FolderRefused(
            f"{option} {str(target)!r} holds {', '.join(clash)}, which autodeco did not write and would now "
            "overwrite; move them away or choose another folder"
        )


def _carry_over(target: Path, staging: Path, names: list[str]) -> None:
    """Hard-link the user's entries of ``target`` into ``staging`` (same disk: nothing is copied)."""
    for name in names:
        source, destination = target / name, staging / name
        if source.is_symlink() or not source.is_dir():
            _link(source, destination)
        else:
            shutil.copytree(source, destination, symlinks=True, copy_function=_link)


def _link(source, destination) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:  # a file system without hard links: a copy
        shutil.copy2(source, destination)


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
    inside = _is_working_folder(target)
    backup = hidden_folder(target, BACKUP_TAG)
    os.replace(target, backup / _PREVIOUS)
    # A kill here leaves the old folder in the backup only: recover_interrupted_swap restores it.
    os.replace(staging, target)
    if inside:  # save_pretrained("."): stay in the folder by its name, not in the old one about to be deleted
        os.chdir(target)
    shutil.rmtree(backup, ignore_errors=True)


def _is_working_folder(folder: Path) -> bool:
    try:
        return os.path.samefile(folder, os.getcwd())
    except OSError:
        return False


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
