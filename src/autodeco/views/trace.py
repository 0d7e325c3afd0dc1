"""Write a trace in the format its file name asks for: ``.html``, ``.png`` or ``.json``.

The renderings themselves live in :mod:`~autodeco.views.trace_table` (terminal),
:mod:`~autodeco.views.trace_html` and :mod:`~autodeco.views.trace_png`; the data and its JSON in
:mod:`autodeco.sampling.traces`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autodeco.sampling.traces import GenerationTrace, write_json
from autodeco.views.trace_html import write_html
from autodeco.views.trace_png import write_png

__all__ = ["write_trace"]

_WRITERS: dict[str, Callable[[GenerationTrace, Any], Path]] = {
    ".html": write_html,
    ".json": write_json,
    ".png": write_png,
}


def write_trace(trace: GenerationTrace, path: str | os.PathLike[str]) -> Path:
    """Writes the trace in the format named by the file suffix.

    Args:
        trace: The trace to write.
        path: A path ending in ``.html``, ``.png`` or ``.json`` (any case).

    Returns:
        The path written.

    Raises:
        ValueError: If the suffix is not one of the supported ones.

    Example:
        >>> import tempfile, os
        >>> from autodeco.sampling.traces import TokenTrace
        >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
        >>> write_trace(trace, os.path.join(tempfile.mkdtemp(), "t.json")).suffix
        '.json'
    """
    suffix = Path(path).suffix.lower()
    writer = _WRITERS.get(suffix)
    if writer is None:
        supported = ", ".join(sorted(_WRITERS))
        raise ValueError(
            f"unsupported trace file suffix {suffix or '(none)'!r} in {os.fspath(path)!r}; "
            f"supported: {supported}"
        )
    return writer(trace, path)
