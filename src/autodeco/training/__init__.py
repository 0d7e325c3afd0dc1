"""Training the heads: verified trajectories -> tokenized examples -> the recipe -> heads checkpoint.

- ``config``: :class:`TrainConfig` (with its nested :class:`ControlConfig`), its presets (``quick`` and
  ``paper``) and their choices.
- ``data``: the training set, decoding-control partners, data order and the recipe's random draws
  (reading and tokenizing trajectories are shared with evaluation: :mod:`autodeco.data`).
- ``recipe``: :func:`train_heads`: setup -> train -> save, the loop and the optimizer step.
- ``loss_step``: one micro-batch's named loss terms, their gradients and statistics.
- ``control_losses``: decoding control's ranking loss and anchor loss.
- ``control``: which examples get a commanded copy, and which command.
- ``distributed``: ``accelerate`` processes and DeepSpeed ZeRO-3 for the frozen base.
- ``state``: the output folder: settings record, resumable checkpoints, final heads.
- ``curve``: the training log (``log.jsonl``) and its plot (``training_curve.png``).

On-policy objectives (``autodeco train --objective reward|rejection``): the heads answer training problems
themselves and learn from the verifier's scores.

- ``reward_config``: :class:`RewardConfig` and :class:`RejectionConfig` (and their shared rollout settings).
- ``on_policy``: training prompts -> K answers each with the current heads -> rewards -> teacher-forcing rows.
- ``reward``: :func:`train_with_reward`, policy gradient with a group baseline (GRPO-style) on the heads.
- ``reward_step``: its loss step (advantage-weighted soft top-p NLL, drift penalty, statistics).
- ``rejection``: :func:`train_by_rejection`, rounds of sample -> keep the verified answers -> the recipe above.
- ``reward_curve``: their log's plot (reward, mean T and P, greedy-like share).

Held-out evaluation of trained heads lives with the rest of evaluation, in
:mod:`autodeco.evaluation.heldout`. The names below are imported on first use, so reading
:class:`TrainConfig` (the command line's ``--help``, say) does not load torch.
"""

__all__ = [
    "OBJECTIVES",
    "PRESETS",
    "ControlConfig",
    "RejectionConfig",
    "RewardConfig",
    "TrainConfig",
    "TrainResult",
    "build_training_set",
    "train_by_rejection",
    "train_heads",
    "train_with_reward",
]

_LAZY = {
    "PRESETS": "autodeco.training.config",
    "ControlConfig": "autodeco.training.config",
    "TrainConfig": "autodeco.training.config",
    "build_training_set": "autodeco.training.data",
    "TrainResult": "autodeco.training.recipe",
    "train_heads": "autodeco.training.recipe",
    "OBJECTIVES": "autodeco.training.reward_config",
    "RewardConfig": "autodeco.training.reward_config",
    "RejectionConfig": "autodeco.training.reward_config",
    "train_with_reward": "autodeco.training.reward",
    "train_by_rejection": "autodeco.training.rejection",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autodeco.training' has no attribute {name!r}")
