"""A trace as a self-contained HTML page: each token's background coloured by its temperature.

Example:
    >>> from autodeco.sampling.traces import GenerationTrace, TokenTrace
    >>> "<!DOCTYPE html>" in html_page(GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True))
    True
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from autodeco.common.jsonl import write_bytes_atomic
from autodeco.sampling.traces import UNTRAINED_WARNING, GenerationTrace, TokenTrace
from autodeco.views.colors import (
    TEMPERATURE_ANCHORS,
    TEMPERATURE_RANGE,
    temperature_color,
    temperature_rgb,
    text_color_on,
)

__all__ = ["html_page", "write_html"]

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
    return write_bytes_atomic(path, html_page(trace).encode("utf-8"))


def html_page(trace: GenerationTrace) -> str:
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
        rgb = temperature_rgb(token.temperature)
        tooltip = f"token {index}: T = {token.temperature:.3f}, top-p = {token.top_p:.3f}"
        spans.append(
            f'<span class="token" style="background-color: {temperature_color(token.temperature)}; '
            f'color: {text_color_on(rgb)}" title="{html.escape(tooltip)}" '
            f'data-temperature="{token.temperature:.6g}" data-top-p="{token.top_p:.6g}">'
            f"{html.escape(token.text)}</span>"
        )
    return "".join(spans)


def _html_legend() -> str:
    """A gradient bar with the temperature scale's labels."""
    low, high = TEMPERATURE_RANGE
    stops = ", ".join(
        f"{temperature_color(value)} {100 * (value - low) / (high - low):g}%"
        for value, _ in TEMPERATURE_ANCHORS
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

