"""Views: traces and evaluation reports rendered for people.

- :mod:`~autodeco.views.colors`: the temperature colour scale (blue low, white at 1.0, red high).
- :mod:`~autodeco.views.trace_table`, :mod:`~autodeco.views.trace_html`,
  :mod:`~autodeco.views.trace_png`: one trace as a terminal table, an HTML page, a PNG figure;
  :mod:`~autodeco.views.trace` picks one from the file suffix.
- :mod:`~autodeco.views.report_markdown`, :mod:`~autodeco.views.report_figures`,
  :mod:`~autodeco.views.report`: an evaluation summary as ``report.md`` and figures.

The data shown (:class:`~autodeco.sampling.traces.GenerationTrace`, the evaluation summary) is
made by earlier layers; the trace types are re-exported here for convenience. Importing this
package is cheap: matplotlib is imported only when a figure is drawn.
"""

from autodeco.sampling.traces import UNTRAINED_WARNING, GenerationTrace, TokenTrace, write_json
from autodeco.views.colors import temperature_color
from autodeco.views.report import write_report
from autodeco.views.report_markdown import headline_table, render_markdown
from autodeco.views.trace import write_trace
from autodeco.views.trace_html import write_html
from autodeco.views.trace_png import write_png
from autodeco.views.trace_table import format_table

__all__ = [
    "UNTRAINED_WARNING",
    "GenerationTrace",
    "TokenTrace",
    "format_table",
    "headline_table",
    "render_markdown",
    "temperature_color",
    "write_html",
    "write_json",
    "write_png",
    "write_report",
    "write_trace",
]
