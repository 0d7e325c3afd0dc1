"""The diagnosis on disk: ``diagnose.json``, ``diagnose.md``, ``tokens.jsonl`` and three figures, each written atomically.

Renders :func:`autodeco.evaluation.diagnose.summarise_diagnosis`' summary (tables and verdict)
and :func:`autodeco.evaluation.diagnose.diagnose_tokens`' per-token values (figures and
``tokens.jsonl``). Figures are drawn on matplotlib's Agg canvas (:mod:`autodeco.common.figures`);
a scatter shows at most :data:`MAX_POINTS` tokens, drawn at random with a fixed seed.

Example:
    >>> import tempfile, torch
    >>> from autodeco.evaluation.diagnose import TOKEN_COLUMNS, summarise_diagnosis
    >>> tokens = {name: torch.rand(6, dtype=torch.float64) for name in TOKEN_COLUMNS}
    >>> tokens |= {"example": torch.tensor([0, 0, 1, 1, 2, 2]), "mean_inverse_temperature": torch.tensor(1.0),
    ...            "mean_temperature": torch.tensor(1.0)}
    >>> paths = write_diagnose_report(tempfile.mkdtemp(), summarise_diagnosis(tokens, resamples=20), tokens)
    >>> sorted(paths)
    ['delta_vs_slope.png', 'diagnose.json', 'diagnose.md', 'gains.png', 'temperature.png', 'tokens.jsonl']
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autodeco.common.figures import save_png, subplots
from autodeco.common.jsonl import write_json_atomic, write_text_atomic
from autodeco.evaluation.diagnose import QUANTILES, TOKEN_COLUMNS

__all__ = ["FIGURE_CAPTIONS", "MAX_POINTS", "render_diagnosis", "write_diagnose_report"]

MAX_POINTS = 20000
"""Most tokens drawn in a scatter plot (a fixed-seed random subset beyond that)."""

ENTROPY_BINS = 10
"""Equal-width bins of the base entropy for the binned mean of T."""

FIGURE_CAPTIONS = {
    "delta_vs_slope.png": "delta = 1/T_t - mean(1/T) against g = z_gold - E[z]: shaded quadrants are where they agree "
                          "(variation can only pay there)",
    "gains.png": "Second-order predicted gain against the exact measured gain per token (nats), with y = x",
    "temperature.png": "Predicted T and P, and T against the base model's entropy (binned means ± std)",
}
"""The caption of each figure in ``diagnose.md``, in drawing order."""

_PNG_DPI = 120
_AGREE_COLOR, _DISAGREE_COLOR, _POINT_COLOR = "#2ca02c", "#d62728", "#1f77b4"


def write_diagnose_report(
    out_dir: str | os.PathLike[str], summary: dict[str, Any], tokens: dict[str, torch.Tensor]
) -> dict[str, Path]:
    """Write the figures, ``tokens.jsonl`` (one line per token), ``diagnose.json`` and ``diagnose.md``, each atomically.

    Args:
        out_dir: folder to write into (created if needed).
        summary: from :func:`~autodeco.evaluation.diagnose.summarise_diagnosis` (with any extra keys, e.g. ``run``).
        tokens: from :func:`~autodeco.evaluation.diagnose.diagnose_tokens`.

    Returns:
        ``file name -> path`` of every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, build in _figure_builders(summary, tokens).items():
        written[name] = save_png(build(), out / name, dpi=_PNG_DPI)
    written["tokens.jsonl"] = write_text_atomic(out / "tokens.jsonl", _token_lines(tokens))
    full_summary = dict(summary, files=sorted([*written, "diagnose.json", "diagnose.md"]))
    written["diagnose.json"] = write_json_atomic(out / "diagnose.json", full_summary)
    written["diagnose.md"] = write_text_atomic(out / "diagnose.md", render_diagnosis(full_summary, figures=True))
    return written


# ------------------------------------------------------------------------------------------ Markdown


def render_diagnosis(summary: dict[str, Any], *, figures: bool = False) -> str:
    """The diagnosis in Markdown: verdict, per-token table, correlations, the inverse-temperature test.

    Args:
        summary: from :func:`~autodeco.evaluation.diagnose.summarise_diagnosis`.
        figures: add the figures (the ``diagnose.md`` file); without them it is the terminal table.
    """
    test = summary["inverse_temperature_test"]
    confidence = round(100 * summary["bootstrap"]["confidence"])
    measured = test["measured_gain"]
    run = summary.get("run", {})
    lines = ["# AutoDeco diagnosis: token-level temperature, or just a better mean?", ""]
    if run:
        lines += [f"Heads `{run.get('heads')}` on `{run.get('data')}`; base `{run.get('base')}`.", ""]
    lines += [
        f"{summary['num_trajectories']} trajectories, {summary['num_tokens']} completion tokens, "
        "teacher-forced" + (f"; {run['seconds']:.1f} s." if "seconds" in run else "."),
        "",
        "## Verdict",
        "",
        f"**{_sentence(test['verdict_text'])}** Measured gain {measured['mean']:+.5f} nats per token "
        f"[{confidence} % CI {measured['interval'][0]:+.5f}, {measured['interval'][1]:+.5f}], bootstrap over trajectories.",
        "",
        f"Alignment: {test['alignment_text']}.",
        "",
        f"Note: {test['top_p']}.",
        "",
        "## Per-token values",
        "",
        "| value | mean | std | " + " | ".join(f"q{round(100 * level)}" for level in QUANTILES) + " |",
        "|---|---|---|" + "---|" * len(QUANTILES),
    ]
    labels = {"temperature": "T (predicted)", "top_p": "P (predicted)", "entropy": "base entropy, nats (T = 1)",
              "top_probability": "base top probability (T = 1)", "nucleus_size": "nucleus size, tokens (final T, P)"}
    for name, label in labels.items():
        values = summary["per_token"][name]
        quantiles = " | ".join(_number(values["quantiles"][str(level)]) for level in QUANTILES)
        lines.append(f"| {label} | {_number(values['mean'])} | {_number(values['std'])} | {quantiles} |")
    lines += ["", "| correlation | Pearson | Spearman |", "|---|---|---|"]
    pairs = {"temperature_entropy": "T vs base entropy", "temperature_top_probability": "T vs base top probability",
             "top_p_entropy": "P vs base entropy"}
    for name, label in pairs.items():
        correlation = summary["correlations"][name]
        lines.append(f"| {label} | {_correlation(correlation['pearson'])} | {_correlation(correlation['spearman'])} |")
    lines += _test_lines(test, confidence)
    if figures:
        lines += ["", "## Figures", ""]
        for name, caption in FIGURE_CAPTIONS.items():
            lines += [f"**{caption}**", "", f"![{caption}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _test_lines(test: dict[str, Any], confidence: int) -> list[str]:
    beta, share = test["mean_inverse_temperature"], test["sign_agreement"]
    lines = [
        "",
        "## The inverse-temperature test",
        "",
        f"beta_t = 1/T_t; static beta_bar = mean(beta_t) = {beta:.4f}, i.e. T = {test['static_temperature']:.4f} "
        f"(the mean T, MeanShift's temperature, is {test['mean_temperature']:.4f}); delta_t = beta_t - beta_bar "
        f"(std {test['delta']['std']:.4f}). Gains are log-probabilities of the verified token (nats), "
        "token-level temperature minus the static one.",
        "",
        f"| gain | mean per token | {confidence} % CI | mean sum per trajectory | {confidence} % CI |",
        "|---|---|---|---|---|",
    ]
    rows = {"predicted_gain": "predicted, g·delta − ½·v·delta² (static T = 1/beta_bar)",
            "measured_gain": "measured, exact (static T = 1/beta_bar)",
            "measured_gain_vs_mean_temperature": "measured, exact (static T = mean T)"}
    for name, label in rows.items():
        gain = test[name]
        total = gain["per_trajectory_sum"]
        lines.append(f"| {label} | {gain['mean']:+.5f} | {_interval(gain['interval'])} | {total['mean']:+.4f} | "
                     f"{_interval(total['interval'])} |")
    correlation = test["delta_slope_correlation"]
    agreement = "–" if share["share"] is None else f"{100 * share['share']:.1f} %"
    lines += [
        "",
        "| quantity | value |",
        "|---|---|",
        f"| first-order term, mean g·delta | {test['first_order_term']:+.5f} |",
        f"| second-order term, mean −½·v·delta² | {test['second_order_term']:+.5f} |",
        f"| delta vs g: Pearson / Spearman | {_correlation(correlation['pearson'])} / "
        f"{_correlation(correlation['spearman'])} |",
        f"| delta and g of the same sign | {agreement} of {share['counted']} tokens (50 % = unrelated; "
        f"{share['left_out']} with delta or g = 0 left out) |",
        f"| predicted vs measured: Pearson | {_correlation(test['predicted_measured_correlation']['pearson'])} |",
    ]
    return lines


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _correlation(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _interval(interval: list[float]) -> str:
    return f"[{interval[0]:+.5f}, {interval[1]:+.5f}]"


def _token_lines(tokens: dict[str, torch.Tensor]) -> str:
    columns = {name: tokens[name].tolist() for name in TOKEN_COLUMNS}
    rows = []
    for index in range(len(columns["example"])):
        row = {"trajectory": columns["example"][index]}
        row |= {name: float(f"{columns[name][index]:.7g}") for name in TOKEN_COLUMNS if name != "example"}
        rows.append(json.dumps(row) + "\n")
    return "".join(rows)


# ------------------------------------------------------------------------------------------- figures


def _figure_builders(summary: dict[str, Any], tokens: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    shown = _subset(tokens["delta"].numel())
    return {
        "delta_vs_slope.png": lambda: _delta_slope_figure(summary, tokens, shown),
        "gains.png": lambda: _gains_figure(summary, tokens, shown),
        "temperature.png": lambda: _temperature_figure(summary, tokens),
    }


def _subset(count: int) -> torch.Tensor:
    if count <= MAX_POINTS:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(0))[:MAX_POINTS]


def _scatter_note(shown: torch.Tensor, total: int) -> str:
    return f"{total} tokens" if shown.numel() == total else f"{shown.numel()} of {total} tokens, drawn at random"


def _delta_slope_figure(summary, tokens, shown):
    test = summary["inverse_temperature_test"]
    delta, slope = tokens["delta"][shown].tolist(), tokens["slope"][shown].tolist()
    figure, (axis,) = subplots(1, 1, (6.0, 5.0))
    axis.scatter(delta, slope, s=6, alpha=0.35, color=_POINT_COLOR, linewidths=0)
    x_low, x_high = axis.get_xlim()
    y_low, y_high = axis.get_ylim()
    x_low, x_high = min(x_low, -1e-3), max(x_high, 1e-3)
    y_low, y_high = min(y_low, -1e-3), max(y_high, 1e-3)
    for (left, right), (bottom, top), color in (
        ((0, x_high), (0, y_high), _AGREE_COLOR), ((x_low, 0), (y_low, 0), _AGREE_COLOR),
        ((x_low, 0), (0, y_high), _DISAGREE_COLOR), ((0, x_high), (y_low, 0), _DISAGREE_COLOR),
    ):
        axis.fill_between([left, right], bottom, top, color=color, alpha=0.08, linewidth=0)
    axis.set_xlim(x_low, x_high)
    axis.set_ylim(y_low, y_high)
    axis.axhline(0, color="black", linewidth=0.7)
    axis.axvline(0, color="black", linewidth=0.7)
    share = test["sign_agreement"]["share"]
    agreement = "undefined" if share is None else f"{100 * share:.1f} %"
    axis.text(0.98, 0.98, "agree: sharpen", transform=axis.transAxes, ha="right", va="top", color=_AGREE_COLOR, fontsize=8)
    axis.text(0.02, 0.02, "agree: flatten", transform=axis.transAxes, ha="left", va="bottom", color=_AGREE_COLOR,
              fontsize=8)
    axis.set_xlabel("delta = 1/T_t − mean(1/T)   (> 0: sharper than the mean)")
    axis.set_ylabel("g = z_gold − E_q[z]   (> 0: sharpening helps)")
    axis.set_title(f"Same sign on {agreement} of tokens (50 % = unrelated); {_scatter_note(shown, len(tokens['delta']))}",
                   fontsize=9)
    return figure


def _gains_figure(summary, tokens, shown):
    test = summary["inverse_temperature_test"]
    predicted, measured = tokens["predicted_gain"][shown], tokens["measured_gain"][shown]
    figure, (axis,) = subplots(1, 1, (6.0, 5.0))
    axis.scatter(predicted.tolist(), measured.tolist(), s=6, alpha=0.35, color=_POINT_COLOR, linewidths=0)
    low = float(torch.minimum(predicted.min(), measured.min())) if shown.numel() else -1.0
    high = float(torch.maximum(predicted.max(), measured.max())) if shown.numel() else 1.0
    axis.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--", label="y = x")
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.axvline(0, color="grey", linewidth=0.5)
    axis.set_xlabel("predicted gain, g·delta − ½·v·delta² (nats)")
    axis.set_ylabel("measured gain, exact (nats)")
    pearson = test["predicted_measured_correlation"]["pearson"]
    axis.set_title(f"Pearson {_correlation(pearson)}; mean measured {test['measured_gain']['mean']:+.4f}, "
                   f"predicted {test['predicted_gain']['mean']:+.4f}\n{_scatter_note(shown, len(tokens['delta']))}",
                   fontsize=9)
    axis.legend(fontsize=8, loc="upper left")
    return figure


def _temperature_figure(summary, tokens):
    test = summary["inverse_temperature_test"]
    figure, axes = subplots(1, 3, (13.0, 4.0))
    temperature, top_p, entropy = tokens["temperature"], tokens["top_p"], tokens["entropy"]
    axes[0].hist(temperature.tolist(), bins=40, color=_POINT_COLOR, alpha=0.8)
    axes[0].axvline(test["mean_temperature"], color="black", linestyle="--", label=f"mean T {test['mean_temperature']:.3f}")
    axes[0].axvline(test["static_temperature"], color=_DISAGREE_COLOR, linestyle=":",
                    label=f"1/mean(1/T) {test['static_temperature']:.3f}")
    axes[0].set_xlabel("predicted T")
    axes[0].set_ylabel("tokens")
    axes[0].legend(fontsize=8)
    axes[1].hist(top_p.tolist(), bins=40, color="#ff7f0e", alpha=0.8)
    axes[1].axvline(summary["per_token"]["top_p"]["mean"], color="black", linestyle="--",
                    label=f"mean P {summary['per_token']['top_p']['mean']:.3f}")
    axes[1].set_xlabel("predicted P")
    axes[1].legend(fontsize=8)
    centres, means, stds = _binned_means(entropy, temperature)
    axes[2].errorbar(centres, means, yerr=stds, marker="o", capsize=3, color=_POINT_COLOR)
    axes[2].set_xlabel("base entropy at T = 1 (nats), equal-width bins")
    axes[2].set_ylabel("mean predicted T (± std)")
    correlation = summary["correlations"]["temperature_entropy"]
    axes[2].set_title(f"T vs entropy: Pearson {_correlation(correlation['pearson'])}, "
                      f"Spearman {_correlation(correlation['spearman'])}",
                      fontsize=9)
    for axis in axes:
        axis.grid(alpha=0.3)
    return figure


def _binned_means(x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Centres of :data:`ENTROPY_BINS` equal-width bins of ``x`` and the mean and std of ``y`` in each non-empty bin."""
    low, high = float(x.min()), float(x.max())
    width = (high - low) / ENTROPY_BINS or 1.0
    bins = ((x - low) / width).long().clamp(max=ENTROPY_BINS - 1)  # (N,)
    centres, means, stds = [], [], []
    for index in range(ENTROPY_BINS):
        values = y[bins == index].double()
        if values.numel():
            centres.append(low + (index + 0.5) * width)
            means.append(float(values.mean()))
            stds.append(float(values.std()) if values.numel() > 1 else 0.0)
    return centres, means, stds
