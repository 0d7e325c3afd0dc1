"""The decoding-control report: ``control.json``, ``control.md`` and ``control.png``, each written atomically.

Renders the dict of :func:`autodeco.evaluation.control.control_evaluation`: a table like the
paper's Table 4 (mean T and P without and with commands, and the share of questions that moved
the commanded way), the diversity and accuracy changes with paired intervals, the goal check, and a
plot of every question's mean T and P without against with a command.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from autodeco.common.figures import save_png, subplots
from autodeco.common.jsonl import write_bytes_atomic, write_text_atomic

__all__ = ["control_figure", "control_markdown", "control_table", "same_answer_table", "write_control_report"]

_PNG_DPI = 120
_COLORS = {"low": "#2c7bb6", "high": "#d7191c"}


def _interval(entry: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    return (f"{entry['mean'] * scale:+.{digits}f} [{entry['low'] * scale:+.{digits}f}, "
            f"{entry['high'] * scale:+.{digits}f}]")


def _moved(entry: dict[str, Any], word: str) -> str:
    return f"{entry['moved']:.0%} {word}".replace("%", " %")


def control_table(result: dict[str, Any]) -> str:
    """The headline table (Markdown): mean T and P per prompt kind and the share of questions moved.

    Example:
        >>> entry = lambda w, c, m: {"without": w, "with": c, "moved": m, "difference": {"mean": c - w, "low": c - w, "high": c - w}}
        >>> result = {"num_questions": 2, "baseline": {"temperature": 0.5, "top_p": 0.9}, "directions": {
        ...     kind: {"temperature": entry(0.5, t, 1.0), "top_p": entry(0.9, p, 0.5)}
        ...     for kind, t, p in (("low", 0.4, 0.8), ("high", 0.6, 0.95))}}
        >>> print(control_table(result).splitlines()[3])
        | low diversity | 0.400 (100 % lower) | -0.100 [-0.100, -0.100] | 0.800 (50 % lower) | -0.100 [-0.100, -0.100] |
    """
    lines = [
        f"| command (N = {result['num_questions']}) | mean T | T change [95 % CI] | mean P | P change [95 % CI] |",
        "|---|---|---|---|---|",
        f"| none (baseline) | {result['baseline']['temperature']:.3f} | – | {result['baseline']['top_p']:.3f} | – |",
    ]
    for kind, word in (("low", "lower"), ("high", "higher")):
        entry = result["directions"][kind]
        cells = [f"{entry[m]['with']:.3f} ({_moved(entry[m], word)}) | {_interval(entry[m]['difference'])}"
                 for m in ("temperature", "top_p")]
        lines.append(f"| {kind} diversity | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def same_answer_table(result: dict[str, Any]) -> str | None:
    """The heads' own reaction (Markdown): T and P on the plain answers teacher-forced under each command.

    None when the result has no such measurement.

    Example:
        >>> entry = lambda w, c, m: {"without": w, "with": c, "moved": m, "difference": {"mean": c - w, "low": c - w, "high": c - w}}
        >>> same = {kind: {"temperature": entry(0.5, t, 1.0), "top_p": entry(0.9, p, 0.75)}
        ...         for kind, t, p in (("low", 0.4, 0.8), ("high", 0.6, 0.95))}
        >>> print(same_answer_table({"num_questions": 4, "same_answer": {**same, "generated_gap": 1e-6}}).splitlines()[2])
        | low diversity | 100 % lower | -0.100 [-0.100, -0.100] | 75 % lower | -0.100 [-0.100, -0.100] |
    """
    same = result.get("same_answer")
    if same is None:
        return None
    lines = [
        f"| command (N = {result['num_questions']}, same tokens) | T moved | T change [95 % CI] | P moved "
        "| P change [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for kind, word in (("low", "lower"), ("high", "higher")):
        cells = [f"{_moved(same[kind][measure], word)} | {_interval(same[kind][measure]['difference'])}"
                 for measure in ("temperature", "top_p")]
        lines.append(f"| {kind} diversity | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _behaviour_table(result: dict[str, Any]) -> str:
    conditions = result["conditions"]
    lines = [
        "| prompt | distinct answers (of K) | distinct-n ratio | accuracy (%) |",
        "|---|---|---|---|",
    ]
    for condition in ("none", "low", "high"):
        values = conditions[condition]
        lines.append(
            f"| {condition} | {values['distinct_answers']['mean']:.2f} | {values['distinct_ngrams']['mean']:.3f} | "
            f"{values['accuracy']['mean'] * 100:.1f} [{values['accuracy']['interval']['low'] * 100:.1f}, "
            f"{values['accuracy']['interval']['high'] * 100:.1f}] |"
        )
    lines += ["", "| change with the command [paired 95 % CI] | distinct answers | distinct-n ratio | accuracy (points) |",
              "|---|---|---|---|"]
    for kind in ("low", "high"):
        entry = result["directions"][kind]
        lines.append(
            f"| {kind} − none | {_interval(entry['distinct_answers']['difference'], digits=2)} | "
            f"{_interval(entry['distinct_ngrams']['difference'])} | {_interval(entry['accuracy']['difference'], 100, 1)} |"
        )
    return "\n".join(lines)


def control_markdown(result: dict[str, Any], plot: str | None = "control.png") -> str:
    """The whole report as Markdown (``control.md``)."""
    settings = result.get("settings", {})
    goal = result["goal"]
    parts = [
        "# Natural-language control of decoding",
        "",
        f"Heads: `{settings.get('heads')}` ({settings.get('model', '')}). "
        f"{result['num_questions']} questions of {settings.get('dataset')} ({settings.get('split')} split), "
        f"K = {settings.get('samples')} answers per question and prompt, at most {settings.get('max_new_tokens')} "
        f"new tokens, seed {settings.get('seed')} (the same for the paired runs). Commands appended to the prompt, "
        f"from the phrasing file's eval lists (never used in training): {settings.get('phrasings')}.",
        "",
        "Means of the per-token T and P over every generated answer token (as `generate()` records them), "
        "per question, then over questions; the share of questions whose mean moved the commanded way is in brackets.",
        "",
        control_table(result),
    ]
    same = same_answer_table(result)
    if same is not None:
        parts += [
            "",
            "## The heads alone, on the same tokens",
            "",
            "A command also changes what the model writes, and a mean over other tokens can move for that reason "
            "alone. Here each question's plain answers are teacher-forced after the plain and the commanded prompts, "
            "so both means cover identical tokens and only the heads' reaction to the command differs "
            "(teacher-forced plain means match the generated ones within "
            f"{result['same_answer']['generated_gap']:.1e}).",
            "",
            same,
        ]
    parts += [
        "",
        "## What the model writes",
        "",
        f"Diversity across the K answers of a question: distinct final answers, and distinct token "
        f"{settings.get('distinct_ngram', 2)}-grams over all of them. Accuracy: share of correct answers.",
        "",
        _behaviour_table(result),
    ]
    comparison = result.get("comparison")
    if comparison is not None:
        parts += [
            "",
            f"Accuracy without a command: these heads {comparison['accuracy_without_command'] * 100:.1f} %, "
            f"`{settings.get('compare_heads')}` {comparison['compare_accuracy_without_command'] * 100:.1f} % "
            f"(mean T {comparison['compare_temperature']:.3f}, P {comparison['compare_top_p']:.3f}); difference "
            f"{_interval(comparison['difference'], 100, 1)} points (paired bootstrap over questions, same seeds).",
        ]
    parts += ["", "## Goal check", "", "| criterion | measured | met |", "|---|---|---|"]
    parts += [f"| {item['criterion']} | {item['value']:.3f} | {'yes' if item['met'] else 'no'} |" for item in goal["criteria"]]
    parts += ["", f"All criteria met: **{'yes' if goal['met'] else 'no'}**."]
    if plot:
        parts += ["", f"![per-question T and P without vs with a command]({plot})"]
    phrasings = settings.get("eval_phrasings")
    if phrasings:
        parts += ["", "## Commands used", ""]
        parts += [f"- {kind}: " + "; ".join(f"“{text}”" for text in texts) for kind, texts in phrasings.items()]
    return "\n".join(parts) + "\n"


def control_figure(result: dict[str, Any]):
    """Two panels (T, P): each question's mean without a command (x) against with one (y), per command kind."""
    figure, axes_list = subplots(1, 2, (9.0, 4.4))
    questions = result["questions"]
    for axes, measure, label in zip(axes_list, ("temperature", "top_p"), ("T", "P")):
        values = []
        for kind in ("low", "high"):
            xs = [question["heads"]["none"][measure] for question in questions]
            ys = [question["heads"][kind][measure] for question in questions]
            values += xs + ys
            moved = result["directions"][kind][measure]["moved"]
            axes.scatter(xs, ys, s=14, alpha=0.7, color=_COLORS[kind], label=f"{kind} diversity ({moved:.0%} moved)")
        finite = [value for value in values if math.isfinite(value)] or [0.0, 1.0]
        low, high = min(finite), max(finite)
        pad = max((high - low) * 0.05, 1e-3)
        axes.plot([low - pad, high + pad], [low - pad, high + pad], color="#777777", linewidth=1, linestyle="--")
        axes.set_xlabel(f"mean {label} without a command")
        axes.set_ylabel(f"mean {label} with the command")
        axes.set_title(f"per-question mean {label} (N = {len(questions)})")
        axes.legend(loc="upper left", fontsize=8)
    return figure


def write_control_report(out_dir: str | os.PathLike[str], result: dict[str, Any]) -> dict[str, Path]:
    """Write ``control.json``, ``control.png`` and ``control.md`` into ``out_dir`` (each atomically).

    Returns:
        ``file name -> path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"control.json": write_bytes_atomic(out / "control.json", (json.dumps(result, indent=2) + "\n").encode())}
    written["control.png"] = save_png(control_figure(result), out / "control.png", dpi=_PNG_DPI)
    written["control.md"] = write_text_atomic(out / "control.md", control_markdown(result, "control.png"))
    return written
