"""One way to make and save a matplotlib figure, shared by training curves, traces and reports.

Figures are drawn on matplotlib's Agg canvas directly, so pyplot and the user's chosen backend are
left alone, and saved as PNG through :func:`~autodeco.common.jsonl.write_bytes_atomic`, so readers
never see a half-written image. matplotlib is imported inside the functions: importing this module
costs nothing.

Example:
    >>> import tempfile, os
    >>> figure, (axes,) = subplots(1, 1, (3.0, 2.0))
    >>> _ = axes.plot([0, 1], [1, 0])
    >>> save_png(figure, os.path.join(tempfile.mkdtemp(), "line.png"), dpi=50).read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

from autodeco.common.jsonl import write_bytes_atomic

__all__ = ["new_figure", "png_bytes", "save_png", "subplots"]


def new_figure(size: tuple[float, float], *, layout: str | None = None) -> Any:
    """An empty matplotlib Figure of ``size`` inches (width, height), on an Agg canvas.

    Args:
        size: ``(width, height)`` in inches.
        layout: matplotlib's layout engine (``"constrained"``, ``"tight"``) or None for none.

    Example:
        >>> new_figure((4.0, 3.0)).get_size_inches().tolist()
        [4.0, 3.0]
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def subplots(
    rows: int, columns: int, size: tuple[float, float], *, layout: str | None = "constrained", **options: Any
) -> tuple[Any, list[Any]]:
    """A Figure (see :func:`new_figure`) with a ``rows`` x ``columns`` grid of axes, flattened row by row.

    Args:
        rows, columns: the grid of axes.
        size: ``(width, height)`` in inches.
        layout: matplotlib's layout engine; default ``"constrained"``.
        **options: passed to ``Figure.subplots`` (``sharex``, ``sharey``, ...).

    Example:
        >>> figure, axes = subplots(2, 3, (6.0, 4.0))
        >>> len(axes)
        6
    """
    figure = new_figure(size, layout=layout)
    grid = figure.subplots(rows, columns, squeeze=False, **options)
    return figure, [axes for row in grid for axes in row]


def png_bytes(figure: Any, *, dpi: int) -> bytes:
    """The figure as PNG bytes on a white background.

    Warnings about glyphs missing from the font (CJK, emoji in generated text) are silenced: the
    characters are drawn as boxes.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def save_png(figure: Any, path: str | os.PathLike[str], *, dpi: int) -> Path:
    """Writes the figure to ``path`` as PNG (see :func:`png_bytes`), atomically; returns the path."""
    return write_bytes_atomic(path, png_bytes(figure, dpi=dpi))
