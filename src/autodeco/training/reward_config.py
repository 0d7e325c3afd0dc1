"""Settings of on-policy training: :class:`RewardConfig` (``--objective reward``) and :class:`RejectionConfig`
(``--objective rejection``). Imports no torch, so ``autodeco train --help`` stays fast.

Both draw answers from the model with its current heads on training-split problems (what ``autodeco sample``
reads: the built-in arithmetic problems, a named dataset or a ``{problem, gt}`` JSONL file), score them with the
verifier, and train the heads from the scores: by policy gradient (reward), or by the likelihood recipe on the
verified answers, round after round (rejection). Every field is validated in ``__post_init__`` with an error
that starts with the field's name and quotes the bad value.
"""

from __future__ import annotations

import dataclasses
import math

from autodeco.core import defaults
from autodeco.training.config import DTYPES, MODES

OBJECTIVES = ("likelihood", "reward", "rejection")
"""What ``autodeco train`` fits the heads to: the paper's likelihood of given verified answers (the default),
the reward of their own answers (policy gradient), or iterated rejection sampling (sample, keep the verified
answers, likelihood recipe, repeat)."""

REWARD_DEFAULTS = {"learning_rate": 5e-4, "max_steps": 24, "save_every": 8, "log_every": 1}
"""Sized for the embedded SmolLM2-135M: 24 steps of 8 prompts x 8 answers of up to 32 tokens. Not tuned: the
learning rate is half the quick likelihood preset's, because a policy-gradient estimate is noisier."""


@dataclasses.dataclass
class RolloutSettings:
    """Which problems the model answers during training, how many answers each, and how they are scored.

    Shared by both on-policy objectives (their fields are flags of ``autodeco train``).
    """

    source: str = "arithmetic"
    """Problems: ``arithmetic``, a known name (``gsm8k``, ...), a JSONL path of ``{problem, gt}`` records or ``hf:...``;
    only their training split is used (as autodeco sample), less the held-out share."""

    limit: int | None = 160
    """How many problems of the training split to draw prompts from (None, ``--limit none``: all)."""

    data_dir: str | None = None
    """Folder holding dataset files for known names (default: $AUTODECO_DATA_DIR)."""

    heldout_fraction: float = 0.1
    """Share of questions left out as held-out, chosen exactly as autodeco sample chooses them (same seed, same
    questions), so heads trained here never see the questions of that run's heldout.jsonl."""

    answers_per_prompt: int = 8
    """Answers drawn per prompt with the current heads (K, at least 2: the group baseline compares them)."""

    max_new_tokens: int | None = None
    """Most tokens per answer (None: 32 for arithmetic, 1024 for other datasets); an answer with no end token
    within it is cut off and counts as wrong (like eval's --scoring strict)."""

    rollout_batch_size: int = 16
    """Prompts per generation batch (each with answers_per_prompt rows)."""

    scorer: str = "math-verify"
    """Answer checker: math-verify (symbolic) or exact (the paper's string match)."""

    def _check_rollouts(self) -> None:
        from autodeco.problems.answers import SCORERS

        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(f"limit must be >= 1 (or None for every problem), got {self.limit}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if isinstance(self.answers_per_prompt, bool) or self.answers_per_prompt < 2:
            raise ValueError(
                f"answers_per_prompt must be >= 2 (the group baseline compares a prompt's answers), got "
                f"{self.answers_per_prompt}; pass 2 or more (8 is the default)"
            )
        if self.max_new_tokens is None:
            from autodeco.problems import default_max_new_tokens

            self.max_new_tokens = default_max_new_tokens(self.source)
        _check_count("max_new_tokens", self.max_new_tokens)
        _check_count("rollout_batch_size", self.rollout_batch_size)
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {list(SCORERS)}, got {self.scorer!r}")


@dataclasses.dataclass
class RewardConfig(RolloutSettings):
    """Policy-gradient training of the heads on the reward of their own answers (``--objective reward``)."""

    output_dir: str = "autodeco-train"
    """Folder for checkpoints, log.jsonl, training_curve.png and the final heads (output_dir/heads)."""

    base: str | None = None
    """Base model; default: the init heads' base, else the embedded model."""

    heads: str | None = None
    """Heads to start from (a folder or shipped:<name>); None: fresh heads seeded with ``seed``."""

    mode: str = "joint"
    """joint trains both heads; temperature or top-p trains and enables that head only."""

    use_enhanced_features: bool = True
    """Fresh heads: the top-p head reads the four probability features."""

    prompts_per_step: int = 8
    """Prompts per optimizer step (each answered answers_per_prompt times)."""

    normalize_advantages: bool = True
    """Divide each answer's advantage (reward minus its group's mean) by the group's reward std (GRPO); off: the
    plain difference."""

    kl_weight: float = 0.0
    """Weight (>= 0) of a penalty keeping the heads near the starting heads: per answer token, (log T - log T0)^2
    + (P - P0)^2 against the starting heads' values on the same token, averaged over answer tokens; 0: off."""

    steepness: float = defaults.STEEPNESS
    """Slope of the soft top-p mask through which the gradient reaches P."""

    learning_rate: float = REWARD_DEFAULTS["learning_rate"]
    """AdamW learning rate (constant)."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""

    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this; None: no clipping."""

    max_steps: int = REWARD_DEFAULTS["max_steps"]
    """Optimizer steps."""

    forward_batch_size: int = 16
    """Answers per teacher-forced forward pass (the loss step); lower it if memory runs out."""

    save_every: int = REWARD_DEFAULTS["save_every"]
    """Write checkpoint-<step> every this many steps."""

    keep_last: int = 2
    """Checkpoints kept."""

    log_every: int = REWARD_DEFAULTS["log_every"]
    """Write a log.jsonl row every this many steps (and at the last one)."""

    seed: int = 0
    """Seed of fresh heads, the prompt order and the rollouts (and of the held-out split)."""

    dtype: str = "float32"
    """Dtype of the base model."""

    def __post_init__(self):
        self._check_rollouts()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        _check_count("prompts_per_step", self.prompts_per_step)
        _check_non_negative("kl_weight", self.kl_weight, "0 turns the penalty off")
        if not (math.isfinite(self.steepness) and self.steepness > 0):
            raise ValueError(f"steepness must be > 0, got {self.steepness}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        _check_non_negative("weight_decay", self.weight_decay, "0 is none")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}")
        if self.max_steps is None:
            raise ValueError("max_steps must be a number of steps (--objective reward has no epochs), got None")
        for name in ("max_steps", "forward_batch_size", "save_every", "keep_last", "log_every"):
            _check_count(name, getattr(self, name))


@dataclasses.dataclass
class RejectionConfig(RolloutSettings):
    """Iterated rejection sampling (``--objective rejection``): each round answers every training problem with the
    current heads, keeps the verified answers and runs the likelihood recipe on them from the current heads.

    The likelihood recipe's own settings (learning rate, steps per round, batch size, ...) are those of
    :class:`~autodeco.training.config.TrainConfig`, given as ``likelihood``.
    """

    output_dir: str = "autodeco-train"
    """Folder holding round-<n>/ (the round's trajectories.jsonl and its likelihood run in train/), log.jsonl
    and the last round's heads (output_dir/heads)."""

    rounds: int = 2
    """Rounds of sample -> keep the verified answers -> likelihood training."""

    seed: int = 0
    """Seed of the rollouts (and of the held-out split)."""

    def __post_init__(self):
        self._check_rollouts()
        _check_count("rounds", self.rounds)


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_non_negative(name: str, value: float, meaning: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 ({meaning}), got {value}")
