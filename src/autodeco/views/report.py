"""The evaluation report on disk: ``summary.json``, ``report.md`` and the figures, each written atomically.

:func:`write_report` renders a summary from :func:`autodeco.evaluation.summary.build_summary`;
``autodeco eval`` and the quickstart hand it to :func:`autodeco.evaluation.runner.evaluate`.
matplotlib is imported only when a figure is drawn, and only its Agg canvas is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autodeco.common.figures import save_png
from autodeco.common.jsonl import write_bytes_atomic
from autodeco.evaluation.records import SampleRecord
from autodeco.views.report_figures import SkipPlot, figure_builders
from autodeco.views.report_markdown import render_markdown

__all__ = ["write_report"]

_PNG_DPI = 120


def write_report(out_dir: str | os.PathLike[str], summary: dict[str, Any], records: list[SampleRecord]) -> dict[str, Path]:
    """Writes ``summary.json``, ``report.md`` and the four figures, each atomically.

    A figure whose data is missing (no oracle grid, no AutoDeco samples, ...) is skipped;
    ``summary.json`` gets a ``plots`` entry (``name -> "written"`` or ``"skipped: reason"``) and
    ``report.md`` lists the reason instead of the image.

    Args:
        out_dir: folder to write into (created if needed).
        summary: from :func:`~autodeco.evaluation.summary.build_summary`.
        records: the sample records (the trace figure reads one AutoDeco sample's per-token values).

    Returns:
        ``file name -> path`` of every file written (skipped figures are absent).

    Example:
        >>> import tempfile
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> from autodeco.evaluation.summary import build_summary
        >>> records = [SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)]
        >>> paths = write_report(tempfile.mkdtemp(), build_summary({"methods": {"greedy": GREEDY}}, records), records)
        >>> sorted(paths)  # greedy alone: one sample per problem, so no Pass@k curve and no oracle
        ['methods.png', 'report.md', 'summary.json']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}
    for name, build in figure_builders(summary, records).items():
        try:
            figure = build()
        except SkipPlot as reason:
            plots[name] = f"skipped: {reason}"
            continue
        written[name] = save_png(figure, out / name, dpi=_PNG_DPI)
        plots[name] = "written"
    full_summary = dict(summary, plots=plots)
    written["summary.json"] = write_bytes_atomic(out / "summary.json", (json.dumps(full_summary, indent=2) + "\n").encode())
    written["report.md"] = write_bytes_atomic(out / "report.md", render_markdown(full_summary, plots).encode())
    return written
