"""A trace as a two-panel PNG figure, in the style of Figure 5 of the paper.

Top panel: T and top-p over the token index. Bottom panel: the generated text on a character grid,
each token's box coloured by its temperature, and a colour bar. The evaluation report's
``trace.png`` is this same figure (:func:`trace_figure`).

Example:
    >>> from autodeco.sampling.traces import GenerationTrace, TokenTrace
    >>> figure = trace_figure(GenerationTrace("Hi", [TokenTrace(" there", 0.4, 0.9)], "demo", True))
    >>> len(figure.axes)  # values, text, colour bar
    3
"""

from __future__ import annotations

import functools
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodeco.common.figures import new_figure, save_png
from autodeco.sampling.traces import UNTRAINED_WARNING, GenerationTrace, TokenTrace
from autodeco.views.colors import TEMPERATURE_RANGE, matplotlib_colormap, temperature_rgb, text_color_on
from autodeco.views.trace_table import truncate

__all__ = ["DEFAULT_TITLE", "trace_figure", "write_png"]

DEFAULT_TITLE = "AutoDeco: per-token temperature and top-p"
"""The first header line of the figure."""

_PNG_MAX_TEXT_TOKENS = 150
_PNG_MAX_TEXT_LINES = 30
_PNG_COLUMNS = 96
_PNG_DPI = 150
_PNG_TEXT_WIDTH_INCHES = 9.0
_PNG_MARGIN_INCHES = (0.75, 0.45)  # left, right
_MONOSPACE_FONT = "DejaVu Sans Mono"  # bundled with matplotlib
_MONOSPACE_ADVANCE = 1233 / 2048  # advance width of every glyph, in em
_LINE_HEIGHT_EM = 1.75



@dataclass(frozen=True)
class _TextBox:
    """One piece of a token placed on the text panel's character grid."""

    line: int
    column: int
    text: str
    token_index: int


@dataclass(frozen=True)
class _TextLayout:
    """Token boxes on a character grid, and how many tokens they cover."""

    boxes: list[_TextBox]
    line_count: int
    tokens_shown: int


def write_png(trace: GenerationTrace, path: str | os.PathLike[str]) -> Path:
    """Writes a two-panel PNG figure of the trace, like Figure 5 of the paper.

    Top panel: T and top-p over the token index, with the T = 1 reference
    line. Bottom panel: the generated text, wrapped, with each token's box
    coloured by its temperature, and a colour bar. Long traces show only the
    first 150 tokens (or fewer if they need many lines) in the text panel,
    and the panel title says so. Uses the Agg canvas directly, so the user's
    matplotlib backend is left alone. The file is written atomically.

    Args:
        trace: The trace to show.
        path: Where to write the PNG.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> trace = GenerationTrace("Hi", [TokenTrace(" there", 0.4, 0.9)], "demo", True)
        >>> target = write_png(trace, os.path.join(tempfile.mkdtemp(), "trace.png"))
        >>> target.read_bytes()[:4]
        b'\\x89PNG'
    """
    return save_png(trace_figure(trace), path, dpi=_PNG_DPI)


def trace_figure(trace: GenerationTrace, *, title: str = DEFAULT_TITLE) -> Any:
    """The figure that :func:`write_png` saves, on an Agg canvas (see :func:`autodeco.common.figures.new_figure`).

    Args:
        trace: The trace to show.
        title: The first header line.

    Returns:
        A matplotlib Figure.
    """
    layout = _layout_tokens(trace.tokens[:_PNG_MAX_TEXT_TOKENS], _PNG_COLUMNS, _PNG_MAX_TEXT_LINES)
    return _build_figure(trace, layout, title)


def _display_pieces(text: str) -> list[tuple[str, bool]]:
    """Splits a token into drawable pieces: (text, line break after it).

    Newlines are shown as ``↵`` and end the line; tabs become four spaces,
    other control characters a middle dot, and characters that the monospace
    font lacks (CJK, emoji) a ``□``, so that every character fills one column.
    """
    cleaned = "".join(
        _drawable(character) for character in text.replace("\r\n", "\n").replace("\t", "    ")
    )
    parts = cleaned.split("\n")
    pieces = [(part + "↵", True) for part in parts[:-1]]
    if parts[-1]:
        pieces.append((parts[-1], False))
    return pieces


def _drawable(character: str) -> str:
    """``character`` as drawn on the one-column-per-character text grid."""
    if character == "\n":
        return character
    if not character.isprintable():
        return "·"
    if unicodedata.combining(character):
        return ""
    return character if ord(character) in _monospace_charmap() else "□"


@functools.lru_cache(maxsize=1)
def _monospace_charmap() -> frozenset[int]:
    """Code points that the monospace font used for the text panel can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=_MONOSPACE_FONT))
    return frozenset(FT2Font(path).get_charmap())


def _layout_tokens(tokens: list[TokenTrace], columns: int, max_lines: int) -> _TextLayout:
    """Places tokens on a ``columns``-wide grid, wrapping between tokens.

    A token wider than the rest of a line moves to the next line; one wider
    than a whole line is split. Runs of newlines share one blank line (one
    ``↵`` each) instead of filling the panel with empty lines. Tokens that
    would need more than ``max_lines`` lines are left out.
    """
    boxes: list[_TextBox] = []
    cursor = _Cursor(line=0, column=0, on_blank_line=False)
    tokens_shown = 0
    for index, token in enumerate(tokens):
        token_boxes, next_cursor = _place_token(index, token.text, cursor, columns)
        if any(box.line >= max_lines for box in token_boxes):
            break
        boxes += token_boxes
        cursor, tokens_shown = next_cursor, index + 1
    line_count = max([box.line + 1 for box in boxes] + [1])
    return _TextLayout(boxes=boxes, line_count=line_count, tokens_shown=tokens_shown)


@dataclass(frozen=True)
class _Cursor:
    """Where the next piece goes; ``on_blank_line``: the line holds only ``↵`` marks."""

    line: int
    column: int
    on_blank_line: bool


def _place_token(
    index: int, text: str, cursor: _Cursor, columns: int
) -> tuple[list[_TextBox], _Cursor]:
    """Boxes for one token starting at ``cursor``, and the cursor after it."""
    boxes = []
    for piece, breaks_line in _display_pieces(text):
        is_blank_mark = piece == "↵" and (cursor.column == 0 or cursor.on_blank_line)
        if cursor.on_blank_line and not is_blank_mark:
            cursor = _Cursor(cursor.line + 1, 0, False)
        while piece:
            if cursor.column + len(piece) > columns and cursor.column > 0:
                cursor = _Cursor(cursor.line + 1, 0, False)
                continue
            chunk, piece = piece[:columns], piece[columns:]
            boxes.append(
                _TextBox(line=cursor.line, column=cursor.column, text=chunk, token_index=index)
            )
            cursor = _Cursor(cursor.line, cursor.column + len(chunk), cursor.on_blank_line)
        if is_blank_mark:
            cursor = _Cursor(cursor.line, cursor.column, True)
        elif breaks_line:
            cursor = _Cursor(cursor.line + 1, 0, False)
    return boxes, cursor


def _build_figure(trace: GenerationTrace, layout: _TextLayout, title: str) -> Any:
    """The matplotlib Figure: header, value plot, token text and colour bar."""
    header = _png_header_lines(trace, title)
    left, right = _PNG_MARGIN_INCHES
    line_height = _png_font_size() * _LINE_HEIGHT_EM / 72
    heights = {  # inches, from the top down
        "header": 0.55 + 0.26 * len(header),  # includes room for the legend
        "plot": 2.3,
        "gap": 0.95,
        "text": layout.line_count * line_height + 0.1,
        "gap_colorbar": 0.25,
        "colorbar": 0.15,
        "bottom": 0.55,
    }
    width = left + _PNG_TEXT_WIDTH_INCHES + right
    height = sum(heights.values())
    figure = new_figure((width, height))
    _draw_header(figure, header, height)
    top = heights["header"]
    plot_axes = figure.add_axes(
        _axes_rect(left, top, _PNG_TEXT_WIDTH_INCHES, heights["plot"], width, height)
    )
    _plot_values(plot_axes, trace, layout.tokens_shown)
    top += heights["plot"] + heights["gap"]
    text_axes = figure.add_axes(
        _axes_rect(left, top, _PNG_TEXT_WIDTH_INCHES, heights["text"], width, height)
    )
    _draw_token_text(text_axes, trace, layout)
    top += heights["text"] + heights["gap_colorbar"]
    colorbar_width = _PNG_TEXT_WIDTH_INCHES * 0.5
    colorbar_axes = figure.add_axes(
        _axes_rect(
            left + (_PNG_TEXT_WIDTH_INCHES - colorbar_width) / 2,
            top,
            colorbar_width,
            heights["colorbar"],
            width,
            height,
        )
    )
    _draw_colorbar(figure, colorbar_axes)
    return figure


def _axes_rect(
    left: float, top: float, width: float, height: float, figure_width: float, figure_height: float
) -> list[float]:
    """Axes rectangle in figure fractions, from inches measured from the top left."""
    return [
        left / figure_width,
        1 - (top + height) / figure_height,
        width / figure_width,
        height / figure_height,
    ]


def _png_font_size() -> float:
    """Font size (points) at which one monospace character fills one grid column."""
    return _PNG_TEXT_WIDTH_INCHES * 72 / _PNG_COLUMNS / _MONOSPACE_ADVANCE


def _png_header_lines(trace: GenerationTrace, title: str) -> list[tuple[str, dict[str, Any]]]:
    """Title, model, optional warning and prompt lines with their text styles."""
    lines = [
        (title, {"fontsize": 13, "fontweight": "bold"}),
        (f"model: {trace.model or '(unknown)'}", {"fontsize": 10, "color": "#333333"}),
    ]
    if not trace.heads_trained:
        lines.append(
            (
                f"WARNING: {UNTRAINED_WARNING}",
                {"fontsize": 10, "fontweight": "bold", "color": "#c00000"},
            )
        )
    lines.append(
        (f"prompt: {truncate(repr(trace.prompt), 110)}", {"fontsize": 10, "color": "#333333"})
    )
    return lines


def _draw_header(figure: Any, lines: list[tuple[str, dict[str, Any]]], height: float) -> None:
    """Draws the header lines at the top left of the figure."""
    left = _PNG_MARGIN_INCHES[0] / (figure.get_figwidth())
    for number, (text, style) in enumerate(lines):
        top = 0.18 + 0.26 * number
        figure.text(left, 1 - top / height, text, va="top", ha="left", parse_math=False, **style)


def _plot_values(axes: Any, trace: GenerationTrace, tokens_shown: int) -> None:
    """Top panel: T and top-p over the token index, T = 1 reference line."""
    from matplotlib.ticker import MaxNLocator

    count = len(trace.tokens)
    axes.axhline(1.0, color="#888888", linestyle=":", linewidth=1, label="T = 1")
    axes.set_ylim(0, 2.05)
    axes.set_ylabel("value")
    axes.set_xlabel("token index")
    axes.grid(axis="y", color="#eeeeee")
    if count == 0:
        axes.set_xlim(-0.5, 0.5)
        axes.set_xticks([])
        axes.text(
            0.5,
            0.5,
            "no tokens generated",
            transform=axes.transAxes,
            ha="center",
            va="center",
            bbox={"facecolor": "white", "edgecolor": "none"},
        )
        return
    indices = range(count)
    marker = "o" if count <= 80 else None
    axes.plot(
        indices,
        [token.temperature for token in trace.tokens],
        color="#222222",
        linewidth=1.4,
        marker=marker,
        markersize=3,
        label="temperature T",
    )
    axes.plot(
        indices,
        [token.top_p for token in trace.tokens],
        color="#1b9e77",
        linewidth=1.4,
        marker=marker,
        markersize=3,
        label="top-p",
    )
    axes.set_xlim(-0.5, max(count - 0.5, 0.5))
    if count <= 10:
        axes.set_xticks(range(count))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if tokens_shown < count:
        axes.axvspan(
            tokens_shown - 0.5,
            count - 0.5,
            color="#999999",
            alpha=0.12,
            linewidth=0,
            label="not in text panel",
        )
    axes.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, frameon=False, fontsize=9)


def _draw_token_text(axes: Any, trace: GenerationTrace, layout: _TextLayout) -> None:
    """Bottom panel: the wrapped text, each token's box coloured by T."""
    from matplotlib.patches import Rectangle

    axes.set_xlim(0, _PNG_COLUMNS)
    axes.set_ylim(layout.line_count + 0.05, -0.05)
    axes.set_axis_off()
    title = "Generated text, each token coloured by its temperature"
    if layout.tokens_shown < len(trace.tokens):
        title += f" (first {layout.tokens_shown} of {len(trace.tokens)} tokens shown)"
    axes.set_title(title, loc="left", fontsize=10, parse_math=False)
    if not trace.tokens:
        axes.text(
            0, 0.5, "(no tokens generated)", va="center", ha="left", fontsize=10, style="italic"
        )
        return
    font_size = _png_font_size()
    for box in layout.boxes:
        rgb = temperature_rgb(trace.tokens[box.token_index].temperature)
        face = tuple(channel / 255 for channel in rgb)
        axes.add_patch(
            Rectangle(
                (box.column, box.line + 0.08),
                len(box.text),
                0.84,
                facecolor=face,
                edgecolor="#bbbbbb",
                linewidth=0.4,
            )
        )
        axes.text(
            box.column,
            box.line + 0.5,
            box.text,
            ha="left",
            va="center_baseline",
            fontsize=font_size,
            family=_MONOSPACE_FONT,
            color=text_color_on(rgb),
            parse_math=False,
        )


def _draw_colorbar(figure: Any, axes: Any) -> None:
    """A horizontal colour bar of the temperature scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(*TEMPERATURE_RANGE), cmap=matplotlib_colormap())
    colorbar = figure.colorbar(mappable, cax=axes, orientation="horizontal")
    colorbar.set_ticks([0, 0.5, 1.0, 1.5, 2.0])
    colorbar.set_label("temperature T (blue: low, white: 1.0, red: high)", fontsize=9)
    colorbar.ax.tick_params(labelsize=9)


