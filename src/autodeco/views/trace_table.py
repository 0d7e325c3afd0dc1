"""A trace as a plain-text table for the terminal: token, T, top-p and a bar of T per row.

Example:
    >>> from autodeco.sampling.traces import GenerationTrace, TokenTrace
    >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
    >>> format_table(trace).splitlines()[0]
    'model: demo'
"""

from __future__ import annotations

import math

from autodeco.sampling.traces import UNTRAINED_WARNING, GenerationTrace, TokenTrace
from autodeco.views.colors import TEMPERATURE_RANGE

__all__ = ["format_table", "truncate"]

_TABLE_TOKEN_WIDTH = 16
_BAR_WIDTH = 12
_BAR_EIGHTHS = " ▏▎▍▌▋▊▉"


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
    lines.append(f"prompt: {truncate(repr(trace.prompt), 72)}")
    lines.append(
        f"{'#':>{index_width}} {'token':<{_TABLE_TOKEN_WIDTH}} {'T':>6}  {'top-p':>5}  T (0..2)"
    )
    return lines


def _table_row(index: int, token: TokenTrace, index_width: int) -> str:
    """One table row: index, escaped token, T, top-p and the T bar."""
    text = truncate(repr(token.text), _TABLE_TOKEN_WIDTH)
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


def truncate(text: str, width: int) -> str:
    """Cuts ``text`` to ``width`` characters, marking a cut with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"

