"""Small, safe file helpers: atomic writes and append-only JSONL with durable batches."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Readers never see a half-written file. A new file gets mode 0644; an existing file keeps its mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows as JSON lines and make them durable (flush + fsync) before returning."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as file:
        file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        file.flush()
        os.fsync(file.fileno())


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by :func:`append_jsonl`; a torn last line (a killed writer) is dropped.

    A bad line anywhere else means the file was edited or corrupted: ValueError naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = read_utf8(path).split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            is_last = all(not rest.strip() for rest in lines[number:])
            if is_last:
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}); fix or delete that line") from None
    return rows


def read_utf8(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file; bytes that are not UTF-8 give a ValueError naming the file and the line.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "binary.jsonl"
        >>> _ = path.write_bytes(b'{"a": 1}\\n\\xff\\n')
        >>> read_utf8(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: .../binary.jsonl:2: not UTF-8 text (byte 0xff); is it a text (JSONL) file? ...
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); is it a text (JSONL) file? "
            "Pass the file written by autodeco, or convert it to UTF-8"
        ) from None


def rewrite_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Replace a JSONL file's content with ``rows``, atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def check_resume_config(path: str | os.PathLike, current: dict, *, what: str, fix: str) -> bool:
    """Compare a run folder's stored configuration with the current one before resuming.

    Args:
        path: the stored configuration file (JSON).
        current: the configuration of this invocation (JSON-serialisable).
        what: a name for the run in messages, e.g. ``"sampling run"``.
        fix: what the user can do instead, e.g. ``"choose another --output or pass --overwrite"``.

    Returns:
        True when a stored configuration exists and matches (resume), False when there is none (fresh run).

    Raises:
        ValueError: naming every differing setting with its stored and current values.
    """
    path = Path(path)
    if not path.exists():
        return False
    stored = json.loads(read_utf8(path))
    differing = differing_settings(stored, current, stored_label="there")
    if differing:
        raise ValueError(
            f"{path.parent} holds a {what} with a different configuration ({'; '.join(differing)}); {fix}"
        )
    return True


def differing_settings(stored: dict, current: dict, *, stored_label: str) -> list[str]:
    """``"key: <stored> <stored_label>, <current> now"`` for every key whose values differ.

    ``current`` is normalised through JSON first (tuples become lists), as it was when stored.

    Example:
        >>> differing_settings({"seed": 0, "lr": 1}, {"seed": 1, "lr": 1}, stored_label="there")
        ['seed: 0 there, 1 now']
    """
    current = json.loads(json.dumps(current))
    return [
        f"{key}: {stored.get(key)!r} {stored_label}, {current.get(key)!r} now"
        for key in sorted(set(stored) | set(current))
        if stored.get(key) != current.get(key)
    ]
