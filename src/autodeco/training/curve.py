"""The training log and its plot: ``log.jsonl`` (one row per logged step) -> ``training_curve.png``.

A row holds the step, epoch, learning rate, the losses, kept and labelled token counts, the mean and
std of the predicted T and P on completion tokens, and the step's wall time. A resumed run first cuts
the log back to its checkpoint's step (:func:`truncate_log`), so the log reads as one run.
"""

from __future__ import annotations

import os
from pathlib import Path

from autodeco.common.figures import save_png, subplots
from autodeco.common.jsonl import append_jsonl, read_jsonl_tolerant, rewrite_jsonl_atomic

LOG_FILE = "log.jsonl"
CURVE_FILE = "training_curve.png"


def append_log(output: Path, row: dict) -> None:
    """Append one row to ``log.jsonl``."""
    append_jsonl(output / LOG_FILE, [row])


def truncate_log(output: Path, step: int) -> None:
    """Drop log lines after ``step`` (and a torn last line)."""
    if (output / LOG_FILE).exists():
        rewrite_jsonl_atomic(output / LOG_FILE, [row for row in read_jsonl_tolerant(output / LOG_FILE) if row["step"] <= step])


def read_log(output: str | os.PathLike) -> list[dict]:
    """The rows of ``log.jsonl`` (a torn last line is ignored)."""
    return read_jsonl_tolerant(Path(output) / LOG_FILE)


def write_training_curve(output: Path) -> Path | None:
    """Plot losses and mean +- std of T and P against the step into ``training_curve.png`` (atomic)."""
    rows = read_log(output)
    if not rows:
        return None
    steps = [row["step"] for row in rows]
    figure, (loss_axes, value_axes) = subplots(1, 2, (11, 4), layout=None)
    for key, label in (("loss", "total"), ("temperature_loss", "temperature"), ("top_p_loss", "top-p")):
        loss_axes.plot(steps, [row[key] for row in rows], label=label)
    loss_axes.set(xlabel="step", ylabel="loss", title="training losses")
    loss_axes.legend()
    for name, label in (("temperature", "T"), ("top_p", "P")):
        means = [row[f"{name}_mean"] for row in rows]
        stds = [row[f"{name}_std"] for row in rows]
        value_axes.plot(steps, means, label=f"mean {label}")
        value_axes.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.25)
    value_axes.set(xlabel="step", ylabel="value", title="predicted T and P (mean ± std, completion tokens)")
    value_axes.legend()
    figure.tight_layout()
    return save_png(figure, output / CURVE_FILE, dpi=100)
