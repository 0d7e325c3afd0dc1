"""Training the heads: verified trajectories -> tokenized examples -> the recipe -> heads checkpoint.

- ``config``: :class:`TrainConfig`, its presets (``quick`` and ``paper``) and their choices.
- ``data``: reading and validating trajectory JSONL, completion-only labels, batches, data order.
- ``recipe``: :func:`train_heads`: the loss step, the loop, model loading and placement.
- ``state``: the output folder: settings record, resumable checkpoints, final heads.
- ``curve``: the training log (``log.jsonl``) and its plot (``training_curve.png``).

Held-out evaluation of trained heads lives with the rest of evaluation, in
:mod:`autodeco.evaluation.heldout`. The names below are imported on first use, so reading
:class:`TrainConfig` (the command line's ``--help``, say) does not load torch.
"""

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

_LAZY = {
    "PRESETS": "autodeco.training.config",
    "TrainConfig": "autodeco.training.config",
    "DataReport": "autodeco.training.data",
    "TrainingDataError": "autodeco.training.data",
    "TrainingExample": "autodeco.training.data",
    "build_training_set": "autodeco.training.data",
    "TrainResult": "autodeco.training.recipe",
    "train_heads": "autodeco.training.recipe",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autodeco.training' has no attribute {name!r}")
