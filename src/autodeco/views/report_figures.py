"""The evaluation report's figures: Pass@1 by method, the oracle search, Pass@k curves, one trace.

Each builder takes the summary (:func:`autodeco.evaluation.summary.build_summary`) and returns a
matplotlib Figure on an Agg canvas (:mod:`autodeco.common.figures`), or raises :class:`SkipPlot`
saying which data is missing. ``trace.png`` is the trace view's figure
(:func:`autodeco.views.trace_png.trace_figure`) of one AutoDeco sample. The plots show percentages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autodeco.common.figures import subplots
from autodeco.evaluation.methods import HEURISTIC_METHODS
from autodeco.evaluation.records import SampleRecord
from autodeco.evaluation.summary import ORACLE, ORACLE_CROSS_FITTED, pick_trace_record
from autodeco.sampling.traces import GenerationTrace, TokenTrace
from autodeco.views.trace_png import trace_figure

__all__ = ["PLOT_FILES", "SkipPlot", "figure_builders"]

PLOT_FILES = ("methods.png", "differences.png", "oracle.png", "pass_at_k.png", "trace.png")
"""The report's figures, in the order they are drawn and listed."""

_COLORS = {"greedy": "#7f7f7f", "default": "#1f77b4", "autodeco": "#d62728", "meanshift": "#2ca02c", ORACLE: "#9467bd",
           ORACLE_CROSS_FITTED: "#9467bd", "temperature-head": "#ff7f0e", "top-p-head": "#ff7f0e",
           "shuffle": "#e377c2", "bin-shuffle": "#e377c2"}
_GROUP_COLORS = {"heuristic": "#17becf"}
_OTHER_COLOR = "#8c564b"


class SkipPlot(Exception):
    """Raised by a figure builder when its data is missing; the message says why."""


def figure_builders(summary: dict[str, Any], records: list[SampleRecord]) -> dict[str, Callable[[], Any]]:
    """``file name -> builder`` for every figure of :data:`PLOT_FILES`; a builder may raise :class:`SkipPlot`.

    Example:
        >>> from autodeco.evaluation.summary import build_summary
        >>> builders = figure_builders(build_summary({"methods": {}}, []), [])
        >>> list(builders) == list(PLOT_FILES)
        True
    """
    return {
        "methods.png": lambda: _methods_figure(summary),
        "differences.png": lambda: _differences_figure(summary),
        "oracle.png": lambda: _oracle_figure(summary),
        "pass_at_k.png": lambda: _pass_at_k_figure(summary),
        "trace.png": lambda: _trace_figure(summary, records),
    }


def _methods_figure(summary: dict[str, Any]):
    """Pass@1 bars with std error bars; the oracle bar hatched and labelled as test-set tuned."""
    methods = summary["methods"]
    if not methods:
        raise SkipPlot("no method has samples")
    figure, axes = subplots(1, 1, (max(5.0, 1.1 * len(methods) + 1.5), 4.0))
    axis = axes[0]
    positions = range(len(methods))
    means = [100 * method["pass_at_1"]["mean"] for method in methods]
    stds = [100 * method["pass_at_1"]["std"] for method in methods]
    bars = axis.bar(
        positions, means, yerr=stds, capsize=4, color=[_color(method["name"]) for method in methods], edgecolor="black"
    )
    for bar, method, mean in zip(bars, methods, means):
        if method["name"] == ORACLE:
            bar.set_hatch("//")
            bar.set_alpha(0.6)
        axis.annotate(f"{mean:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    labels = ["oracle\n(test-set tuned)" if method["name"] == ORACLE else _wrap(method["label"]) for method in methods]
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_ylabel("Pass@1 (%)")
    axis.set_title(f"Pass@1 by method ({summary['config'].get('dataset') or 'dataset'}; error bars: std over seeds)", fontsize=9)
    top = max(mean + std for mean, std in zip(means, stds))
    axis.set_ylim(0, max(5.0, 1.15 * top))
    return figure


def _differences_figure(summary: dict[str, Any]):
    """AutoDeco minus each method (points) with its paired bootstrap interval: right of 0, AutoDeco is better."""
    rows = [method for method in summary["methods"] if method["autodeco_minus_method"] is not None]
    if not rows:
        raise SkipPlot("no comparison with AutoDeco (AutoDeco or the other methods have no samples)")
    figure, axes = subplots(1, 1, (9.0, max(2.5, 0.45 * len(rows) + 1.4)))
    axis = axes[0]
    for position, method in enumerate(reversed(rows)):
        comparison = method["autodeco_minus_method"]
        middle, low, high = (100 * comparison[key] for key in ("mean_difference", "low", "high"))
        color = _color(method["name"])
        axis.errorbar(middle, position, xerr=[[middle - low], [high - middle]], fmt="o", color=color, capsize=3,
                      markerfacecolor="white" if method.get("selection_ignored") else color)
    axis.axvline(0.0, color="black", linewidth=0.8)
    labels = [method["label"] + (" †" if method.get("selection_ignored") else "") for method in reversed(rows)]
    axis.set_yticks(range(len(rows)), labels, fontsize=8)
    confidence = round(100 * summary["bootstrap"]["confidence"])
    axis.set_xlabel(f"AutoDeco − method, Pass@1 points ({confidence} % paired bootstrap interval)")
    axis.set_title("Right of 0: AutoDeco better; crossing 0: no significant difference"
                   + ("\n† interval ignores the oracle's selection on these problems"
                      if any(method.get("selection_ignored") for method in rows) else ""), fontsize=9)
    return figure


def _oracle_figure(summary: dict[str, Any]):
    """The paper's Figure 3: Pass@1 along the oracle's two search lines, with reference levels."""
    oracle = summary["oracle"]
    if not oracle.get("available"):
        raise SkipPlot(oracle.get("reason", "no oracle"))
    figure, axes = subplots(1, 2, (10.0, 4.0), sharey=True)
    panels = (
        (axes[0], oracle["temperature_curve"], "temperature", oracle["temperature"], "temperature T (P = 1.00)"),
        (axes[1], oracle["top_p_curve"], "top_p", oracle["top_p"], f"top-p P (T = {oracle['temperature']:.2f})"),
    )
    levels = {method["name"]: method for method in summary["methods"]}
    for axis, curve, field, chosen, xlabel in panels:
        xs = [point[field] for point in curve]
        ys = [100 * point["pass_at_1_mean"] for point in curve]
        errors = [100 * point["pass_at_1_std"] for point in curve]
        axis.errorbar(xs, ys, yerr=errors, marker="o", color=_COLORS[ORACLE], capsize=3, label="static grid")
        best = [100 * point["pass_at_1_mean"] for point in curve if point[field] == chosen]
        axis.scatter([chosen], best, s=120, facecolors="none", edgecolors="black", zorder=5, label="oracle choice")
        for name, style in (("autodeco", "-"), ("meanshift", "--"), ("greedy", ":")):
            if name in levels:
                axis.axhline(100 * levels[name]["pass_at_1"]["mean"], linestyle=style, color=_color(name), label=name)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("Pass@1 (%)")
    axes[1].legend(fontsize=8, loc="best")
    figure.suptitle("Expert-guided oracle search, tuned on the test set", fontsize=10)
    return figure


def _pass_at_k_figure(summary: dict[str, Any]):
    """Pass@k against k (log2 axis), one line per method."""
    curves = [(method, method["pass_at_k"]) for method in summary["methods"] if method["pass_at_k"]]
    if not any(len(curve) > 1 for _, curve in curves):
        raise SkipPlot("no method has more than one sample per problem")
    figure, axes = subplots(1, 1, (6.0, 4.0))
    axis = axes[0]
    all_ks = set()
    for method, curve in curves:
        ks = [int(k) for k in curve]
        all_ks.update(ks)
        style = "--" if method["name"] == ORACLE else "-"
        axis.plot(ks, [100 * value for value in curve.values()], marker="o", linestyle=style,
                  color=_color(method["name"]), label=method["label"])
    axis.set_xscale("log", base=2)
    axis.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    axis.set_xlabel("k (samples)")
    axis.set_ylabel("Pass@k (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure

def _trace_figure(summary: dict[str, Any], records: list[SampleRecord]):
    """Per-token T and P of one AutoDeco sample (see :func:`~autodeco.evaluation.summary.pick_trace_record`)."""
    record = pick_trace_record(records)
    if record is None:
        raise SkipPlot("no AutoDeco sample with per-token temperatures and top-p values")
    pieces = record.tokens or [""] * len(record.temperatures)
    trace = GenerationTrace(
        prompt=record.problem_id,
        tokens=[TokenTrace(text, temperature, top_p)
                for text, temperature, top_p in zip(pieces, record.temperatures, record.top_ps)],
        model=summary["config"].get("model") or "",
        heads_trained=True,  # the report's header names the heads; no per-figure warning
    )
    verdict = "correct" if record.correct else "incorrect"
    title = f"AutoDeco sample: problem {record.problem_id}, seed {record.seed}, sample {record.sample} ({verdict})"
    return trace_figure(trace, title=title)


def _color(name: str) -> str:
    if name in HEURISTIC_METHODS:
        return _GROUP_COLORS["heuristic"]
    return _COLORS.get(name, _OTHER_COLOR)


def _wrap(label: str, width: int = 12) -> str:
    """Breaks a long tick label at spaces."""
    words, lines = label.split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word) + 1 > width:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}".strip()
    return "\n".join(lines)
