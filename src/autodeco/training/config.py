"""Training settings: :class:`TrainConfig`, its presets (``quick`` and ``paper``) and their choices.

Every field is validated in ``__post_init__`` with an error quoting the bad value. The defaults are
the ``quick`` preset (sized for a CPU); :meth:`TrainConfig.from_preset` gives the paper's settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from autodeco.core import defaults

BAD_LINE_CHOICES = ("stop", "skip")
"""What to do with a malformed line: stop with an error naming it, or skip it and count it."""

OVERLONG_CHOICES = ("truncate", "skip")
"""What to do with a trajectory longer than ``max_length``: cut its completion, or leave it out."""

MODES = ("joint", "temperature", "top-p")
"""Which heads train: both (the paper's default), or one alone (the other stays as it is and is disabled)."""

SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules after the linear warmup: flat, or a cosine decay towards 0 at the last step."""

CONTROL_TARGETS = {"joint": ("temperature", "top-p"), "temperature": ("temperature",), "top-p": ("top-p",)}
"""``control_heads`` value -> the predictions the decoding-control ranking loss orders."""

CONTROL_TOP_P_SCALES = ("logit", "probability", "bounded")
"""Scales the decoding-control ranking loss can compare mean top-p values on."""

CONTROL_PAIRINGS = ("one", "both")
"""How many commanded copies a paired example gets: one (low or high at random) or both (a low and a high one)."""

CONTROL_TEMPERATURE_SCALES = ("linear", "log")
"""Scales the decoding-control ranking loss can compare mean temperatures on."""

DTYPES = ("float32", "bfloat16", "float16", "auto")
"""Dtypes for the base model (``auto``: the checkpoint's). The heads always train in float32."""

ADAM_BETAS = (0.9, 0.999)
"""AdamW's moment decay rates (PyTorch's and Hugging Face Trainer's defaults)."""

ADAM_EPSILON = 1e-8
"""AdamW's epsilon."""

QUICK_PRESET: dict[str, Any] = {
    "learning_rate": 1e-3,
    "schedule": "cosine",
    "warmup_steps": 2,
    "max_steps": 24,
    "num_epochs": 1.0,
    "per_device_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_length": 1024,
    "save_every": 8,
    "log_every": 1,
    "dtype": "float32",
}
"""Sized for the embedded SmolLM2-135M on a 2-core CPU: 24 steps of 4 trajectories, a few minutes.

Measured on a shared 2-core CPU (load average 4-5): a step of 4 trajectories of about 100 tokens
took 5-25 s (median about 10 s: base forward 5-8 s, top-p loss 2.5 s). With 24 synthetic
trajectories, 12 steps took the held-out DFT-weighted soft top-p NLL from 0.250 (fresh heads) to
0.079 / 0.075 / 0.075 at learning rates 5e-4 / 1e-3 / 3e-3; at 3e-3 the top-p head saturated at 1.
"""

PAPER_PRESET: dict[str, Any] = {
    "learning_rate": 5e-6,
    "schedule": "constant",
    "warmup_steps": 0,
    "max_steps": None,
    "num_epochs": 1.0,
    "per_device_batch_size": 1,
    "gradient_accumulation_steps": 4,
    "max_length": 12_000,
    "save_every": 100,
    "log_every": 10,
    "dtype": "bfloat16",
}
"""PAPER.md section 3: lr 5e-6, batch 1 per device, accumulation 4, max length 12,000, one epoch
(about 400 steps on 6K samples with 8 GPUs, ZeRO-3 in bfloat16). The paper states no schedule or
warmup; this preset keeps the learning rate constant."""

PRESETS = {"quick": QUICK_PRESET, "paper": PAPER_PRESET}


@dataclasses.dataclass
class TrainConfig:
    """How to train the heads. Defaults are the ``quick`` preset; :meth:`from_preset` gives ``paper``."""

    data: list[str]
    """JSONL files of verified trajectories (``autodeco sample`` output)."""

    output_dir: str
    """Folder for checkpoints, logs and the final heads (``output_dir/heads``)."""

    base: str | None = None
    """Base model (hub id, folder, ``embedded:...``); default: the init heads' base, else the embedded model."""

    heads: str | None = None
    """Heads checkpoint to start from; None starts from fresh heads seeded with ``seed``."""

    mode: str = "joint"
    """``joint`` trains both heads; ``temperature`` or ``top-p`` trains and enables that head only."""

    use_enhanced_features: bool = True
    """The top-p head reads the four probability features (the default of ``AutoDecoConfig`` and the official checkpoints)."""

    easy_token_drop: float = defaults.EASY_TOKEN_DROP
    """Probability of dropping a token the base model already predicts (temperature loss)."""

    dft_weighting: bool = True
    """Weight each token's loss by the base model's probability of its label."""

    steepness: float = defaults.STEEPNESS
    """Slope of the soft top-p mask."""

    learning_rate: float = QUICK_PRESET["learning_rate"]
    """Peak AdamW learning rate."""

    schedule: str = QUICK_PRESET["schedule"]
    """After the warmup: ``constant``, or ``cosine`` (decays towards 0 at the last step)."""

    warmup_steps: int = QUICK_PRESET["warmup_steps"]
    """Steps of linear warmup from ``learning_rate / warmup_steps`` up to ``learning_rate``."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay (Hugging Face Trainer's default, 0)."""

    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (Hugging Face Trainer's default); None (``--max-grad-norm none``): no clipping."""

    max_steps: int | None = QUICK_PRESET["max_steps"]
    """Optimizer steps; None: ``ceil(num_epochs * examples / global batch)``."""

    num_epochs: float = QUICK_PRESET["num_epochs"]
    """Passes over the data when ``max_steps`` is None. The data is a stream of epochs, each a new
    seeded permutation, so a fractional number or a ``max_steps`` past the end simply cycles on."""

    per_device_batch_size: int = QUICK_PRESET["per_device_batch_size"]
    """Sequences per process per forward pass."""

    gradient_accumulation_steps: int = QUICK_PRESET["gradient_accumulation_steps"]
    """Forward passes per optimizer step; global batch = per_device * processes * accumulation."""

    max_length: int = QUICK_PRESET["max_length"]
    """Most tokens per sequence (prompt + completion + EOS)."""

    save_every: int = QUICK_PRESET["save_every"]
    """Write ``checkpoint-<step>`` every this many steps."""

    keep_last: int = 2
    """Checkpoints kept (older ones are deleted after each save)."""

    log_every: int = QUICK_PRESET["log_every"]
    """Write a ``log.jsonl`` line every this many steps (and at the last one)."""

    seed: int = 0
    """Seed of the fresh heads, the data order and the easy-token drops."""

    dtype: str = QUICK_PRESET["dtype"]
    """Dtype of the base model: ``float32``, ``bfloat16``, ``float16`` or ``auto``."""

    on_bad_line: str = "stop"
    """A malformed data line: ``stop`` with an error naming it, or ``skip`` it (counted)."""

    overlong: str = "truncate"
    """A trajectory longer than ``max_length``: ``truncate`` its completion, or ``skip`` it (counted)."""

    control_share: float = 0.0
    """Decoding control (PAPER.md section 7): share of training examples, in [0, 1], paired with a copy whose
    prompt ends with a low- or high-diversity command; 0 turns the option off."""

    control_margin: float = defaults.CONTROL_MARGIN
    """Decoding control: how far (>= 0) the commanded answer's mean T and P must sit below (low) or above (high)
    the same answer's means without the command before the ranking loss is zero."""

    control_weight: float = 1.0
    """Decoding control: weight (>= 0) of the ranking loss (mean over pairs) added to the paper's losses."""

    control_heads: str = "joint"
    """Decoding control: which predictions the ranking loss orders: ``joint`` (T and P), ``temperature`` or ``top-p``."""

    control_top_p_scale: str = "logit"
    """Decoding control: rank P's mean on the ``logit`` scale (log(P / (1 - P)); its gradient does not vanish when
    the top-p head saturates near P = 1, as it does on the embedded model), as the ``probability`` itself (what
    control-eval measures; its gradient vanishes where the head saturates), or ``bounded``: gaps, margins and the
    anchor's distances in probability units, each pair's margin capped at a share (``control_top_p_room``) of the
    room its command has left (the plain mean P for a low command, 1 minus it for a high one, so every margin can be
    met), and the gradient passed to the head's logit as if P were the logit (straight through the sigmoid), so a
    saturated head still moves."""

    control_pairing: str = "one"
    """Decoding control: a paired example gets ``one`` commanded copy (low or high at random) or ``both`` (a low and a
    high one, in the same micro-batch, so that what the ranking loss asks of the two copies pulls opposite ways wherever
    the heads cannot tell the commands apart; three rows per example instead of two). On the embedded model it did not
    stop the plain prompts' values from drifting (see the control checkpoint's model card)."""

    control_top_p_margin: float | None = None
    """Decoding control: the margin (>= 0) of the top-p part, in ``control_top_p_scale`` units; None: ``control_margin``."""

    control_top_p_room: float = 0.5
    """Decoding control on the ``bounded`` P scale: the share, in (0, 1], of the room a command has left (P for a
    low command, 1 - P for a high one) that a pair's margin may ask for; 0.5 halves the distance to 0 or 1 at most."""

    control_temperature_scale: str = "linear"
    """Decoding control: rank T's mean as it is (``linear``) or its ``log``, where the margin is a ratio: margin 0.5
    asks a low-diversity command for at most exp(-0.5) = 0.61 times the plain mean T and a high one for 1.65 times."""

    control_phrasings: str | None = None
    """Decoding control: JSON file of command phrasings (``low``/``high``, each with ``train`` and ``eval`` lists);
    None: the built-in list. Training uses only the ``train`` lists."""

    control_anchor: str | None = None
    """Decoding control: heads (a folder or ``shipped:<name>``, on the same base) whose per-token T and P on the
    plain rows the trained heads are pulled towards, so that commands change the values but prompts without one keep
    the anchor's; None: no anchor. Starting from the same heads (``heads``) is the natural pairing."""

    control_anchor_weight: float = 1.0
    """Decoding control: weight (>= 0) of the anchor loss, the plain rows' mean squared distance to the anchor's
    predictions (T on ``control_temperature_scale``, P on ``control_top_p_scale``), averaged over plain rows."""

    def __post_init__(self):
        self.data = [str(path) for path in ([self.data] if isinstance(self.data, (str, os.PathLike)) else self.data)]
        if not self.data:
            raise ValueError("data is empty; give one or more JSONL files of trajectories")
        _check_choice("mode", self.mode, MODES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("on_bad_line", self.on_bad_line, BAD_LINE_CHOICES)
        _check_choice("overlong", self.overlong, OVERLONG_CHOICES)
        if not 0.0 <= self.easy_token_drop <= 1.0:
            raise ValueError(f"easy_token_drop must be a probability in [0, 1], got {self.easy_token_drop}")
        if not self.steepness > 0:
            raise ValueError(f"steepness must be > 0, got {self.steepness}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None to derive it from num_epochs), got {self.max_steps}")
        if not self.num_epochs > 0:
            raise ValueError(f"num_epochs must be > 0, got {self.num_epochs}")
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "save_every", "keep_last", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 (a prompt token and a completion token), got {self.max_length!r}")
        self._check_control()

    def _check_control(self) -> None:
        if not 0.0 <= self.control_share <= 1.0:
            raise ValueError(f"control_share must be a share in [0, 1] (0 turns decoding control off), got {self.control_share}")
        if not (math.isfinite(self.control_margin) and self.control_margin >= 0):
            raise ValueError(f"control_margin must be a finite number >= 0, got {self.control_margin}")
        if not (math.isfinite(self.control_weight) and self.control_weight >= 0):
            raise ValueError(f"control_weight must be a finite number >= 0, got {self.control_weight}")
        _check_choice("control_heads", self.control_heads, MODES)
        _check_choice("control_top_p_scale", self.control_top_p_scale, CONTROL_TOP_P_SCALES)
        _check_choice("control_temperature_scale", self.control_temperature_scale, CONTROL_TEMPERATURE_SCALES)
        _check_choice("control_pairing", self.control_pairing, CONTROL_PAIRINGS)
        if self.control_top_p_margin is not None and not (
            math.isfinite(self.control_top_p_margin) and self.control_top_p_margin >= 0
        ):
            raise ValueError(
                f"control_top_p_margin must be a finite number >= 0 (or None: control_margin), got {self.control_top_p_margin}"
            )
        if not 0.0 < self.control_top_p_room <= 1.0:
            raise ValueError(f"control_top_p_room must be a share in (0, 1], got {self.control_top_p_room}")
        if not (math.isfinite(self.control_anchor_weight) and self.control_anchor_weight >= 0):
            raise ValueError(f"control_anchor_weight must be a finite number >= 0, got {self.control_anchor_weight}")
        if not self.control_enabled:
            if self.control_anchor is not None:
                raise ValueError(
                    f"control_anchor {self.control_anchor!r} keeps the plain prompts' values while decoding control "
                    "trains, but decoding control is off; pass --control-share above 0, or leave --control-anchor out"
                )
            return
        trained = {"joint": {"temperature", "top-p"}, "temperature": {"temperature"}, "top-p": {"top-p"}}[self.mode]
        for head in sorted(set(CONTROL_TARGETS[self.control_heads]) - trained):
            other = "top-p" if head == "temperature" else "temperature"
            raise ValueError(
                f"control_heads {self.control_heads!r} ranks the {head} predictions, but mode {self.mode!r} disables the "
                f"{head} head; pass --control-heads {other} (rank only the trained head's predictions), "
                "use --mode joint, or turn decoding control off with --control-share 0"
            )
        from autodeco.training.control import load_phrasings

        load_phrasings(self.control_phrasings)  # an empty or malformed file fails here, before any model loads

    @property
    def control_margins(self) -> dict[str, float]:
        """The ranking loss's margin of each prediction, ``{"temperature": ..., "top-p": ...}``, on its own scale."""
        top_p = self.control_margin if self.control_top_p_margin is None else self.control_top_p_margin
        return {"temperature": self.control_margin, "top-p": top_p}

    @property
    def control_enabled(self) -> bool:
        """Whether decoding-control pairs are trained (a positive share)."""
        return self.control_share > 0

    @classmethod
    def from_preset(cls, name: str, **settings) -> TrainConfig:
        """A config from a named preset (``quick`` or ``paper``); ``settings`` override its values.

        Example:
            >>> TrainConfig.from_preset("paper", data=["t.jsonl"], output_dir="run").learning_rate
            5e-06
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **settings})

    def global_batch_size(self, num_processes: int) -> int:
        """Examples per optimizer step."""
        return self.per_device_batch_size * num_processes * self.gradient_accumulation_steps

    def total_steps(self, num_examples: int, num_processes: int) -> int:
        """``max_steps``, or the steps ``num_epochs`` passes take.

        Example:
            >>> TrainConfig(data=["t.jsonl"], output_dir="run", max_steps=None, per_device_batch_size=4).total_steps(10, 1)
            3
        """
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.num_epochs * num_examples / self.global_batch_size(num_processes)))


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
