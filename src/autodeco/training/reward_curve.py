"""The on-policy objectives' plot: ``log.jsonl`` -> ``training_curve.png`` (reward, mean T and P, greedy-like share).

The log's rows are written by :mod:`autodeco.training.reward` (one per logged step) and
:mod:`autodeco.training.rejection` (one per round); the x axis is the column that counts them.
"""

from __future__ import annotations

from pathlib import Path

from autodeco.common.figures import save_png, subplots
from autodeco.training.curve import CURVE_FILE, read_log

PANELS = (
    ("reward", (("reward_mean", "mean reward"), ("signal_share", "groups with signal"))),
    ("predicted T and P (answer tokens)", (("temperature_mean", "mean T"), ("top_p_mean", "mean P"))),
    ("greedy-like tokens", (("greedy_like_share", "share greedy-like"), ("finished_share", "answers ended"))),
)
"""Each panel's title and the ``(column, label)`` pairs it plots (columns a log lacks are left out)."""

SHARE_PANELS = ("reward", "greedy-like tokens")
"""Panels of shares in [0, 1], drawn on that range."""


def write_reward_curve(output: Path, x: str = "step") -> Path | None:
    """Plot the log's reward, mean T and P and greedy-like share against ``x`` into ``training_curve.png`` (atomic).

    Returns:
        The PNG's path, or None when the log is empty.
    """
    rows = [row for row in read_log(output) if x in row]
    if not rows:
        return None
    steps = [row[x] for row in rows]
    figure, axes = subplots(1, len(PANELS), (15, 4), layout=None)
    for panel, (title, columns) in zip(axes, PANELS):
        for column, label in columns:
            if all(column in row for row in rows):
                panel.plot(steps, [row[column] for row in rows], marker="o" if len(rows) < 20 else None, label=label)
        panel.set(xlabel=x, title=title)
        if title in SHARE_PANELS:
            panel.set_ylim(-0.02, 1.02)
        if panel.get_legend_handles_labels()[0]:
            panel.legend()
    figure.tight_layout()
    return save_png(figure, Path(output) / CURVE_FILE, dpi=100)
