"""Small, safe file helpers: atomic writes, append-only JSONL with durable batches, and JSON reading.

JSON files that users hand autodeco are read with :func:`read_json` (JSONL lines with :func:`parse_json`,
or ``json.loads`` and :func:`describe_json_error` where a reader collects bad lines), so that bad
content (not JSON, not UTF-8, nested deeper than Python parses, an integer too long to convert) is
one ValueError naming the file, never a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

BYTE_ORDER_MARK = "\ufeff"
"""What some editors put at the start of a UTF-8 file; skipped when reading JSON."""


class JsonContentError(ValueError):
    """A JSON file or line could not be read: the message names where, what was wrong and what to do."""


def parse_json(text: str, where: str, fix: str = "fix or replace it", *, with_line: bool = True):
    """``json.loads(text)``, with every way it can fail turned into a :class:`JsonContentError` naming ``where``.

    Args:
        text: the JSON text (a leading byte-order mark is skipped).
        where: the file (and line) in messages, e.g. ``"data.jsonl:3"``.
        fix: what the user can do, ending the message.
        with_line: name the line of a JSON error (False for one line of a JSONL file: its column only).

    Example:
        >>> parse_json("[" * 100_000, "deep.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        autodeco.common.jsonl.JsonContentError: deep.json: JSON nested too deeply to read (...); fix or replace it
    """
    try:
        return json.loads(text.removeprefix(BYTE_ORDER_MARK))
    except (ValueError, RecursionError) as error:
        raise JsonContentError(f"{where}: {describe_json_error(error, with_line=with_line)}; {fix}") from None


def describe_json_error(error: ValueError | RecursionError, *, with_line: bool = True) -> str:
    """What went wrong in ``json.loads``, in words; ``with_line=False`` for one line of a JSONL file (column only).

    Example:
        >>> try:
        ...     json.loads('{"a": }')
        ... except ValueError as error:
        ...     describe_json_error(error), describe_json_error(error, with_line=False)
        ('not valid JSON (Expecting value at line 1 column 7)', 'not valid JSON (Expecting value at column 7)')
    """
    if isinstance(error, json.JSONDecodeError):
        place = f"line {error.lineno} column {error.colno}" if with_line else f"column {error.colno}"
        return f"not valid JSON ({error.msg} at {place})"
    if isinstance(error, RecursionError):
        return "JSON nested too deeply to read (arrays or objects inside each other thousands of levels deep)"
    return f"JSON that cannot be read ({error})"  # e.g. an integer of more digits than Python converts


def read_json(path: str | os.PathLike, *, what: str = "JSON file", fix: str = "fix or replace it"):
    """The content of a JSON file; any failure to read it is a ValueError naming the file.

    Args:
        path: the file.
        what: what the file is, for messages (``"checkpoint config"``).
        fix: what the user can do, ending the message.

    Raises:
        JsonContentError: not UTF-8, not valid JSON, nested too deeply, ...
        OSError: the file cannot be opened (missing, a folder, no permission).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "config.json"
        >>> _ = path.write_text('{"a": 1}')
        >>> read_json(path)
        {'a': 1}
    """
    where = f"{what} {os.fspath(path)}"
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonContentError(f"{where}: not UTF-8 text (byte 0x{data[error.start]:02x}); {fix}") from None
    return parse_json(text, where, fix)


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
            rows.append(parse_json(line, f"{path}:{number}", "fix or delete that line", with_line=False))
        except JsonContentError:
            if all(not rest.strip() for rest in lines[number:]):  # the last line: torn by a killed writer
                break
            raise
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
    stored = read_json(path, what=what, fix=fix)
    if not isinstance(stored, dict):
        raise JsonContentError(f"{what} {path}: holds a JSON {type(stored).__name__}, not an object; {fix}")
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
