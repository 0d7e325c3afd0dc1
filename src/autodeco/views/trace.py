"""Show the temperature and top-p that an AutoDeco model chose for each token.

AutoDeco heads predict a temperature ``T_t`` in (0, 2) and a top-p ``P_t`` in
(0, 1) for every generated token. This module records those values next to the
decoded token pieces (:class:`GenerationTrace`) and renders them for a person:

* :func:`format_table`: a plain-text table for the terminal,
* :func:`write_html`: a self-contained HTML page, each token coloured by T,
* :func:`write_png`: a two-panel figure in the style of Figure 5 of the paper,
* :func:`write_trace`: picks one of the above (or JSON) from the file suffix.

Colours use one diverging scale everywhere: blue for low T, white at T = 1.0,
red for high T, over the range (0, 2).

Example:
    >>> trace = GenerationTrace(
    ...     prompt="2+2=",
    ...     tokens=[TokenTrace("4", 0.3, 0.8)],
    ...     model="SmolLM2-135M-Instruct + untrained heads",
    ...     heads_trained=False,
    ... )
    >>> trace.text
    '4'

Importing this module is cheap: matplotlib is imported only by
:func:`write_png`, and nothing runs at import time.
"""

from __future__ import annotations

import functools
import html
import io
import json
import math
import os
import statistics
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autodeco.common.jsonl import write_bytes_atomic

__all__ = [
    "TokenTrace",
    "GenerationTrace",
    "temperature_color",
    "format_table",
    "write_html",
    "write_png",
    "write_json",
    "write_trace",
]

TEMPERATURE_RANGE = (0.0, 2.0)
"""The range of temperatures that the colour scale covers."""

UNTRAINED_WARNING = "heads are UNTRAINED: values are not meaningful"

# Diverging scale (ColorBrewer RdBu, with pure white at T = 1.0): (T, RGB).
_TEMPERATURE_ANCHORS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (33, 102, 172)),
    (0.5, (103, 169, 207)),
    (1.0, (255, 255, 255)),
    (1.5, (239, 138, 98)),
    (2.0, (178, 24, 43)),
)
_MISSING_COLOR = (190, 190, 190)
_DARK_TEXT = "#1a1a1a"
_LIGHT_TEXT = "#ffffff"

_TABLE_TOKEN_WIDTH = 16
_BAR_WIDTH = 12
_BAR_EIGHTHS = " ▏▎▍▌▋▊▉"

_PNG_MAX_TEXT_TOKENS = 150
_PNG_MAX_TEXT_LINES = 30
_PNG_COLUMNS = 96
_PNG_DPI = 150
_PNG_TEXT_WIDTH_INCHES = 9.0
_PNG_MARGIN_INCHES = (0.75, 0.45)  # left, right
_MONOSPACE_FONT = "DejaVu Sans Mono"  # bundled with matplotlib
_MONOSPACE_ADVANCE = 1233 / 2048  # advance width of every glyph, in em
_LINE_HEIGHT_EM = 1.75


# --------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class TokenTrace:
    """One generated token and the decoding values chosen for it.

    Attributes:
        text: The decoded token piece; may contain spaces or newlines, or be
            empty (for example a byte that only completes a character later).
        temperature: The predicted temperature T_t, expected in (0, 2).
        top_p: The predicted top-p P_t, expected in (0, 1).

    Example:
        >>> TokenTrace(" world", temperature=0.7, top_p=0.9).text
        ' world'
    """

    text: str
    temperature: float
    top_p: float

    def to_dict(self) -> dict[str, Any]:
        """Returns the token as a JSON-ready dict.

        Example:
            >>> TokenTrace("a", 1.0, 0.5).to_dict()
            {'text': 'a', 'temperature': 1.0, 'top_p': 0.5}
        """
        return {"text": self.text, "temperature": self.temperature, "top_p": self.top_p}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenTrace:
        """Builds a token from :meth:`to_dict` output.

        Example:
            >>> TokenTrace.from_dict({"text": "a", "temperature": 1, "top_p": 0.5})
            TokenTrace(text='a', temperature=1.0, top_p=0.5)
        """
        return cls(
            text=str(data["text"]),
            temperature=float(data["temperature"]),
            top_p=float(data["top_p"]),
        )


@dataclass
class GenerationTrace:
    """A generated continuation with its per-token temperature and top-p.

    Attributes:
        prompt: The prompt the model continued.
        tokens: The generated tokens, in order.
        model: Description of the base model and heads, for example
            ``"SmolLM2-135M-Instruct + untrained heads"``.
        heads_trained: False when the heads are untrained, so that every
            rendering warns that the values are not meaningful.

    Example:
        >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
        >>> trace.summary()["temperature"]["mean"]
        0.5
    """

    prompt: str
    tokens: list[TokenTrace] = field(default_factory=list)
    model: str = ""
    heads_trained: bool = False

    @property
    def text(self) -> str:
        """The generated text: all token pieces joined.

        Example:
            >>> GenerationTrace("", [TokenTrace("a", 1, 1), TokenTrace("b", 1, 1)]).text
            'ab'
        """
        return "".join(token.text for token in self.tokens)

    def summary(self) -> dict[str, Any]:
        """Summary statistics of temperature and top-p.

        The standard deviation is the population one (0.0 for a single token).

        Returns:
            ``{"count": n, "temperature": stats, "top_p": stats}`` where
            ``stats`` has the keys ``mean``, ``std``, ``min`` and ``max``;
            for an empty trace the count is 0 and every statistic is None.

        Example:
            >>> trace = GenerationTrace("", [TokenTrace("a", 0.5, 0.9), TokenTrace("b", 1.5, 0.7)])
            >>> trace.summary()["temperature"]
            {'mean': 1.0, 'std': 0.5, 'min': 0.5, 'max': 1.5}
        """
        return {
            "count": len(self.tokens),
            "temperature": _statistics([token.temperature for token in self.tokens]),
            "top_p": _statistics([token.top_p for token in self.tokens]),
        }

    def to_dict(self) -> dict[str, Any]:
        """Returns the trace as a JSON-ready dict (see :meth:`from_dict`).

        Example:
            >>> GenerationTrace("Hi", [], "demo", True).to_dict()["model"]
            'demo'
        """
        return {
            "prompt": self.prompt,
            "model": self.model,
            "heads_trained": self.heads_trained,
            "tokens": [token.to_dict() for token in self.tokens],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationTrace:
        """Builds a trace from :meth:`to_dict` output (for example loaded JSON).

        Example:
            >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
            >>> GenerationTrace.from_dict(trace.to_dict()) == trace
            True
        """
        return cls(
            prompt=str(data["prompt"]),
            tokens=[TokenTrace.from_dict(token) for token in data.get("tokens", [])],
            model=str(data.get("model", "")),
            heads_trained=bool(data.get("heads_trained", False)),
        )


def _statistics(values: list[float]) -> dict[str, float | None]:
    """Mean, population std, min and max of ``values`` (all None if empty)."""
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "max": max(values),
    }


# --------------------------------------------------------------------------
# Colours


def _temperature_rgb(temperature: float) -> tuple[int, int, int]:
    """RGB (0-255) of ``temperature`` on the diverging scale, clamped to (0, 2)."""
    if not math.isfinite(temperature):
        return _MISSING_COLOR
    low, high = TEMPERATURE_RANGE
    value = min(max(temperature, low), high)
    for (start, start_rgb), (end, end_rgb) in zip(
        _TEMPERATURE_ANCHORS, _TEMPERATURE_ANCHORS[1:], strict=False
    ):
        if value <= end:
            fraction = (value - start) / (end - start)
            return tuple(
                round(a + (b - a) * fraction) for a, b in zip(start_rgb, end_rgb, strict=True)
            )
    return _TEMPERATURE_ANCHORS[-1][1]


def temperature_color(temperature: float) -> str:
    """Hex colour of a temperature: blue (low) - white (1.0) - red (high).

    Temperatures outside (0, 2) are clamped; NaN maps to grey.

    Example:
        >>> temperature_color(1.0)
        '#ffffff'
        >>> temperature_color(0.0), temperature_color(2.0)
        ('#2166ac', '#b2182b')
    """
    return "#{:02x}{:02x}{:02x}".format(*_temperature_rgb(temperature))


def _text_color_on(rgb: tuple[int, int, int]) -> str:
    """Dark or light text colour, whichever reads better on ``rgb``."""
    red, green, blue = (channel / 255 for channel in rgb)
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return _LIGHT_TEXT if luminance < 0.45 else _DARK_TEXT


def _matplotlib_colormap() -> Any:
    """The temperature scale as a matplotlib colormap over (0, 1)."""
    from matplotlib.colors import LinearSegmentedColormap

    low, high = TEMPERATURE_RANGE
    stops = [
        ((value - low) / (high - low), tuple(channel / 255 for channel in rgb))
        for value, rgb in _TEMPERATURE_ANCHORS
    ]
    return LinearSegmentedColormap.from_list("autodeco_temperature", stops)


# --------------------------------------------------------------------------
# Terminal table


def format_table(trace: GenerationTrace, max_rows: int | None = None) -> str:
    """Formats a trace as a plain-text table for the terminal.

    Each row shows the token index, the token (repr-escaped, so a newline reads
    ``\\n``, truncated to 16 characters), T, top-p and a bar of T on a 0..2
    scale. A header names the model and warns when the heads are untrained; a
    footer summarises T and top-p.

    Args:
        trace: The trace to show.
        max_rows: Show at most this many token rows, then a line
            ``... N more tokens``. None shows every token.

    Returns:
        The table, lines joined by newlines (no trailing newline).

    Raises:
        ValueError: If ``max_rows`` is negative.

    Example:
        >>> trace = GenerationTrace("Hi", [TokenTrace("!\\n", 0.5, 0.9)], "demo", True)
        >>> print(format_table(trace))  # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
        model: demo
        prompt: 'Hi'
          # token                  T  top-p  T (0..2)
          0 '!\\n'             0.500  0.900  ███
        tokens: 1  T: 0.500 ± 0.000 (min-max 0.500-0.500)  top-p: 0.900 ± 0.000 (min-max ...)
    """
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be >= 0 or None, got {max_rows}")
    shown = trace.tokens if max_rows is None else trace.tokens[:max_rows]
    index_width = max(3, len(str(len(trace.tokens))))
    lines = _table_header(trace, index_width)
    lines += [_table_row(index, token, index_width) for index, token in enumerate(shown)]
    if not trace.tokens:
        lines.append("(no tokens)")
    elif len(shown) < len(trace.tokens):
        lines.append(f"... {len(trace.tokens) - len(shown)} more tokens")
    lines.append(_table_footer(trace))
    return "\n".join(lines)


def _table_header(trace: GenerationTrace, index_width: int) -> list[str]:
    """Model line, optional warning, prompt line and column titles."""
    lines = [f"model: {trace.model or '(unknown)'}"]
    if not trace.heads_trained:
        lines.append(f"WARNING: {UNTRAINED_WARNING}")
    lines.append(f"prompt: {_truncate(repr(trace.prompt), 72)}")
    lines.append(
        f"{'#':>{index_width}} {'token':<{_TABLE_TOKEN_WIDTH}} {'T':>6}  {'top-p':>5}  T (0..2)"
    )
    return lines


def _table_row(index: int, token: TokenTrace, index_width: int) -> str:
    """One table row: index, escaped token, T, top-p and the T bar."""
    text = _truncate(repr(token.text), _TABLE_TOKEN_WIDTH)
    bar = _bar(token.temperature, TEMPERATURE_RANGE[1], _BAR_WIDTH)
    row = (
        f"{index:>{index_width}} {text:<{_TABLE_TOKEN_WIDTH}} "
        f"{token.temperature:>6.3f}  {token.top_p:>5.3f}  {bar}"
    )
    return row.rstrip()


def _table_footer(trace: GenerationTrace) -> str:
    """The summary line: count, then mean ± std and min-max of T and top-p."""
    summary = trace.summary()
    if summary["count"] == 0:
        return "tokens: 0"
    parts = [f"tokens: {summary['count']}"]
    for label, key in (("T", "temperature"), ("top-p", "top_p")):
        values = summary[key]
        parts.append(
            f"{label}: {values['mean']:.3f} ± {values['std']:.3f} "
            f"(min-max {values['min']:.3f}-{values['max']:.3f})"
        )
    return "  ".join(parts)


def _bar(value: float, maximum: float, width: int) -> str:
    """A bar of unicode blocks, ``width`` characters for ``maximum``."""
    if not math.isfinite(value):
        return ""
    eighths = round(min(max(value / maximum, 0.0), 1.0) * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_BAR_EIGHTHS[rest] if rest else "")


def _truncate(text: str, width: int) -> str:
    """Cuts ``text`` to ``width`` characters, marking a cut with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------
# HTML

_HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 60em; padding: 0 1em; color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.model { color: #444; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.5em 0.8em;
           border-radius: 4px; font-weight: bold; }
.prompt, .generation { white-space: pre-wrap; word-wrap: break-word;
           border: 1px solid #ccc; border-radius: 4px; padding: 0.8em; }
.prompt { background: #f6f6f6; font-family: ui-monospace, monospace; }
.generation { font-family: ui-monospace, "DejaVu Sans Mono", monospace; line-height: 1.9; }
.token { border-radius: 2px; box-shadow: inset 0 0 0 0.5px rgba(0,0,0,0.15); }
.legend { margin: 1em 0; max-width: 30em; }
.legend-bar { height: 1em; border: 1px solid #999; border-radius: 2px; }
.legend-labels { display: flex; justify-content: space-between; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.token-text { font-family: ui-monospace, monospace; text-align: left; }
"""


def write_html(trace: GenerationTrace, path: str | os.PathLike[str]) -> Path:
    """Writes a self-contained HTML page showing the trace.

    The page has the model line, an untrained-heads warning when it applies,
    the prompt, the generated text with each token's background coloured by
    its temperature (tooltip: T and top-p), a colour legend, summary
    statistics and a collapsible per-token table. No scripts and no external
    resources. The file is written atomically.

    Args:
        trace: The trace to show.
        path: Where to write the page.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> trace = GenerationTrace("Hi", [TokenTrace("<b>", 1.8, 0.9)], "demo", True)
        >>> target = write_html(trace, os.path.join(tempfile.mkdtemp(), "trace.html"))
        >>> "&lt;b&gt;" in target.read_text(encoding="utf-8")
        True
    """
    return write_bytes_atomic(path, _html_page(trace).encode("utf-8"))


def _html_page(trace: GenerationTrace) -> str:
    """The full HTML document for ``trace``."""
    escape = html.escape
    title = f"AutoDeco trace: {trace.model}" if trace.model else "AutoDeco trace"
    warning = (
        f'<p class="warning">Warning: {escape(UNTRAINED_WARNING)} '
        "(the temperature and top-p heads have not been trained).</p>\n"
        if not trace.heads_trained
        else ""
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n<body>\n"
        "<h1>AutoDeco: per-token temperature and top-p</h1>\n"
        f'<p class="model">Model: {escape(trace.model or "(unknown)")}</p>\n'
        f"{warning}"
        f'<h2>Prompt</h2>\n<div class="prompt">{escape(trace.prompt)}</div>\n'
        "<h2>Generated text, each token coloured by its temperature</h2>\n"
        f'<div class="generation">{_html_tokens(trace.tokens)}</div>\n'
        f"{_html_legend()}"
        f"<h2>Summary</h2>\n{_html_summary_table(trace)}"
        f"{_html_token_table(trace.tokens)}"
        "</body>\n</html>\n"
    )


def _html_tokens(tokens: list[TokenTrace]) -> str:
    """One coloured ``<span>`` per token, with T and top-p as tooltip."""
    if not tokens:
        return "<em>(no tokens generated)</em>"
    spans = []
    for index, token in enumerate(tokens):
        rgb = _temperature_rgb(token.temperature)
        tooltip = f"token {index}: T = {token.temperature:.3f}, top-p = {token.top_p:.3f}"
        spans.append(
            f'<span class="token" style="background-color: {temperature_color(token.temperature)}; '
            f'color: {_text_color_on(rgb)}" title="{html.escape(tooltip)}" '
            f'data-temperature="{token.temperature:.6g}" data-top-p="{token.top_p:.6g}">'
            f"{html.escape(token.text)}</span>"
        )
    return "".join(spans)


def _html_legend() -> str:
    """A gradient bar with the temperature scale's labels."""
    low, high = TEMPERATURE_RANGE
    stops = ", ".join(
        f"{temperature_color(value)} {100 * (value - low) / (high - low):g}%"
        for value, _ in _TEMPERATURE_ANCHORS
    )
    labels = ["0.0 (low T)", "0.5", "1.0", "1.5", "2.0 (high T)"]
    return (
        '<div class="legend"><div>Temperature colour scale</div>\n'
        f'<div class="legend-bar" style="background: linear-gradient(to right, {stops})"></div>\n'
        '<div class="legend-labels">'
        + "".join(f"<span>{label}</span>" for label in labels)
        + "</div></div>\n"
    )


def _html_summary_table(trace: GenerationTrace) -> str:
    """Count, mean, std, min and max of T and top-p as an HTML table."""
    summary = trace.summary()
    rows = [f'<tr><th>tokens</th><td colspan="4">{summary["count"]}</td></tr>']
    rows.append("<tr><th></th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>")
    for label, key in (("temperature T", "temperature"), ("top-p", "top_p")):
        cells = "".join(
            f"<td>{_format_optional(summary[key][name])}</td>"
            for name in ("mean", "std", "min", "max")
        )
        rows.append(f"<tr><th>{label}</th>{cells}</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>\n"


def _html_token_table(tokens: list[TokenTrace]) -> str:
    """A collapsible table of every token's T and top-p."""
    if not tokens:
        return ""
    rows = "\n".join(
        f'<tr><td>{index}</td><td class="token-text">{html.escape(repr(token.text))}</td>'
        f"<td>{token.temperature:.3f}</td><td>{token.top_p:.3f}</td></tr>"
        for index, token in enumerate(tokens)
    )
    return (
        "<details><summary>Per-token values</summary>\n<table>\n"
        "<tr><th>#</th><th>token</th><th>T</th><th>top-p</th></tr>\n"
        f"{rows}\n</table>\n</details>\n"
    )


def _format_optional(value: float | None) -> str:
    """``value`` with three decimals, or an em dash for None."""
    return "—" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------
# PNG


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    layout = _layout_tokens(trace.tokens[:_PNG_MAX_TEXT_TOKENS], _PNG_COLUMNS, _PNG_MAX_TEXT_LINES)
    figure = _build_figure(trace, layout)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=_PNG_DPI, facecolor="white")
    return write_bytes_atomic(path, buffer.getvalue())


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


def _build_figure(trace: GenerationTrace, layout: _TextLayout) -> Any:
    """The matplotlib Figure: header, value plot, token text and colour bar."""
    from matplotlib.figure import Figure

    header = _png_header_lines(trace)
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
    figure = Figure(figsize=(width, height))
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


def _png_header_lines(trace: GenerationTrace) -> list[tuple[str, dict[str, Any]]]:
    """Title, model, optional warning and prompt lines with their text styles."""
    lines = [
        ("AutoDeco: per-token temperature and top-p", {"fontsize": 13, "fontweight": "bold"}),
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
        (f"prompt: {_truncate(repr(trace.prompt), 110)}", {"fontsize": 10, "color": "#333333"})
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
        rgb = _temperature_rgb(trace.tokens[box.token_index].temperature)
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
            color=_text_color_on(rgb),
            parse_math=False,
        )


def _draw_colorbar(figure: Any, axes: Any) -> None:
    """A horizontal colour bar of the temperature scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(*TEMPERATURE_RANGE), cmap=_matplotlib_colormap())
    colorbar = figure.colorbar(mappable, cax=axes, orientation="horizontal")
    colorbar.set_ticks([0, 0.5, 1.0, 1.5, 2.0])
    colorbar.set_label("temperature T (blue: low, white: 1.0, red: high)", fontsize=9)
    colorbar.ax.tick_params(labelsize=9)


# --------------------------------------------------------------------------
# Files


def write_json(trace: GenerationTrace, path: str | os.PathLike[str]) -> Path:
    """Writes the trace as JSON (see :meth:`GenerationTrace.from_dict`), atomically.

    Example:
        >>> import tempfile, os
        >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
        >>> target = write_json(trace, os.path.join(tempfile.mkdtemp(), "trace.json"))
        >>> GenerationTrace.from_dict(json.loads(target.read_text(encoding="utf-8"))) == trace
        True
    """
    text = json.dumps(trace.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


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
