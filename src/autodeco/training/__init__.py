"""Training the heads: verified trajectories -> tokenized examples -> the recipe -> heads checkpoint.

- ``config``: :class:`TrainConfig`, its presets (``quick`` and ``paper``) and their choices.
- ``data``: reading and validating trajectory JSONL, completion-only labels, batches, data order.
- ``recipe``: :func:`train_heads`: the loss step, the loop, model loading and placement.
- ``state``: the output folder: settings record, resumable checkpoints, final heads.
- ``curve``: the training log (``log.jsonl``) and its plot (``training_curve.png``).

Held-out evaluation of trained heads lives with the rest of evaluation, in
:mod:`autodeco.evaluation.heldout`.
"""

from autodeco.training.config import PRESETS, TrainConfig
from autodeco.training.data import DataReport, TrainingDataError, TrainingExample, build_training_set
from autodeco.training.recipe import TrainResult, train_heads

__all__ = [
    "PRESETS",
    "DataReport",
    "TrainConfig",
    "TrainResult",
    "TrainingDataError",
    "TrainingExample",
    "build_training_set",
    "train_heads",
]
