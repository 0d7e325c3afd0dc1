"""Training settings: :class:`TrainConfig`, its presets (``quick`` and ``paper``) and their choices.

Every field is validated in ``__post_init__`` with an error quoting the bad value. The defaults are
the ``quick`` preset (sized for a CPU); :meth:`TrainConfig.from_preset` gives the paper's settings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

from autodeco.core import defaults
from autodeco.data.trajectories import BAD_LINE_CHOICES, OVERLONG_CHOICES

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


CONTROL_PREFIX = "control_"
"""How a :class:`ControlConfig` field is named among the training settings: its flag (``--control-share``), its key
in a run's recorded settings and in configs written before the fields were nested (``control_share``)."""


@dataclasses.dataclass
class ControlConfig:
    """Decoding control (PAPER.md section 7): commanded copies of training examples and the losses that pair them.

    Each field ``name`` is the flag ``--control-<name>`` of ``autodeco train`` and the key ``control_<name>`` of a
    run's recorded settings; errors name that key. Off unless ``share`` is above 0.
    """

    share: float = 0.0
    """Share of training examples, in [0, 1], paired with a copy whose prompt ends with a low- or high-diversity
    command; 0 turns decoding control off."""

    margin: float = defaults.CONTROL_MARGIN
    """How far (>= 0) the commanded answer's mean T and P must sit below (low) or above (high) the same answer's
    means without the command before the ranking loss is zero."""

    weight: float = 1.0
    """Weight (>= 0) of the ranking loss (mean over pairs) added to the paper's losses."""

    heads: str = "joint"
    """Which predictions the ranking loss orders: ``joint`` (T and P), ``temperature`` or ``top-p``."""

    top_p_scale: str = "logit"
    """Rank P's mean on the ``logit`` scale (log(P / (1 - P)); its gradient does not vanish when the top-p head
    saturates near P = 1, as it does on the embedded model), as the ``probability`` itself (what control-eval
    measures; its gradient vanishes where the head saturates), or ``bounded``: gaps, margins and the anchor's
    distances in probability units, each pair's margin capped at a share (``top_p_room``) of the room its command
    has left (the plain mean P for a low command, 1 minus it for a high one, so every margin can be met), and the
    gradient passed to the head's logit as if P were the logit (straight through the sigmoid), so a saturated head
    still moves."""

    pairing: str = "one"
    """A paired example gets ``one`` commanded copy (low or high at random) or ``both`` (a low and a high one, in the
    same micro-batch, so that what the ranking loss asks of the two copies pulls opposite ways wherever the heads
    cannot tell the commands apart; three rows per example instead of two). On the embedded model it did not stop
    the plain prompts' values from drifting (see the control checkpoint's model card)."""

    top_p_margin: float | None = None
    """The margin (>= 0) of the top-p part, in ``top_p_scale`` units; None: ``margin``."""

    top_p_room: float = 0.5
    """On the ``bounded`` P scale: the share, in (0, 1], of the room a command has left (P for a low command,
    1 - P for a high one) that a pair's margin may ask for; 0.5 halves the distance to 0 or 1 at most."""

    temperature_scale: str = "linear"
    """Rank T's mean as it is (``linear``) or its ``log``, where the margin is a ratio: margin 0.5 asks a
    low-diversity command for at most exp(-0.5) = 0.61 times the plain mean T and a high one for 1.65 times."""

    phrasings: str | None = None
    """JSON file of command phrasings (``low``/``high``, each with ``train`` and ``eval`` lists); None: the
    built-in list. Training uses only the ``train`` lists."""

    anchor: str | None = None
    """Heads (a folder or ``shipped:<name>``, on the same base) whose per-token T and P on the plain rows the
    trained heads are pulled towards, so that commands change the values but prompts without one keep the
    anchor's; None: no anchor. Starting from the same heads (``heads`` of the training settings) is the natural
    pairing."""

    anchor_weight: float = 1.0
    """Weight (>= 0) of the anchor loss, the plain rows' mean squared distance to the anchor's predictions (T on
    ``temperature_scale``, P on ``top_p_scale``), averaged over plain rows."""

    neutral: bool = False
    """Pair every paired example also with a copy under a neutral sentence (the phrasing file's ``neutral`` training
    families: a remark of a command's length that asks nothing of the decoding), whose mean T and P must stay at the
    plain example's (loss ``relu(|copy mean - plain mean| - neutral_tolerance)`` per pair, weighted like the ranking
    loss). Teaches the heads
    that text after a question is not a command by itself."""

    neutral_tolerance: float = 0.02
    """How far (>= 0) a neutral copy's mean T and P may sit from the plain example's before the neutral loss acts
    (on ``temperature_scale`` and ``top_p_scale``; 0.02 on the log scale is a 2 % change of T). Below it the loss
    and its gradient are zero: without this dead zone the loss pushes with full strength on differences of 1e-6,
    whose sign is noise, and on the embedded model it drove P to saturation."""

    data: list[str] = dataclasses.field(default_factory=list)
    """More JSONL files of answers used by decoding control only (plain rows for the anchor and commanded copies for
    the ranking and neutral losses; the paper's losses never see them), e.g. ``autodeco sample --keep all`` on
    questions of another kind, so that the heads do not learn to follow commands on one shape of question only.
    Their answers need not be verified."""

    def __post_init__(self):
        self.data = [str(path) for path in ([self.data] if isinstance(self.data, (str, os.PathLike)) else self.data)]
        if self.data and not self.share > 0:
            raise ValueError(
                f"control_data {self.data} is used by decoding control only, but decoding control is off; pass "
                "--control-share above 0, or leave --control-data out"
            )
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"control_share must be a share in [0, 1] (0 turns decoding control off), got {self.share}")
        _check_non_negative("control_margin", self.margin)
        _check_non_negative("control_weight", self.weight)
        _check_choice("control_heads", self.heads, MODES)
        _check_choice("control_top_p_scale", self.top_p_scale, CONTROL_TOP_P_SCALES)
        _check_choice("control_temperature_scale", self.temperature_scale, CONTROL_TEMPERATURE_SCALES)
        _check_choice("control_pairing", self.pairing, CONTROL_PAIRINGS)
        if self.top_p_margin is not None and not (math.isfinite(self.top_p_margin) and self.top_p_margin >= 0):
            raise ValueError(
                f"control_top_p_margin must be a finite number >= 0 (or None: control_margin), got {self.top_p_margin}"
            )
        if not 0.0 < self.top_p_room <= 1.0:
            raise ValueError(f"control_top_p_room must be a share in (0, 1], got {self.top_p_room}")
        _check_non_negative("control_anchor_weight", self.anchor_weight)
        _check_non_negative("control_neutral_tolerance", self.neutral_tolerance)
        if not self.enabled and self.anchor is not None:
            raise ValueError(
                f"control_anchor {self.anchor!r} keeps the plain prompts' values while decoding control "
                "trains, but decoding control is off; pass --control-share above 0, or leave --control-anchor out"
            )

    @property
    def enabled(self) -> bool:
        """Whether decoding-control pairs are trained (a positive share)."""
        return self.share > 0

    @property
    def margins(self) -> dict[str, float]:
        """The ranking loss's margin of each prediction, ``{"temperature": ..., "top-p": ...}``, on its own scale."""
        top_p = self.margin if self.top_p_margin is None else self.top_p_margin
        return {"temperature": self.margin, "top-p": top_p}

    def flat(self) -> dict[str, Any]:
        """The settings under their flat keys, as runs record them.

        Example:
            >>> ControlConfig(share=0.5).flat()["control_share"]
            0.5
        """
        return {CONTROL_PREFIX + name: value for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_flat(cls, settings: dict[str, Any], base: ControlConfig | None = None) -> ControlConfig:
        """A config from flat ``control_*`` keys (flags, or configs written before the fields were nested) over ``base``.

        Raises:
            TypeError: a key names no decoding-control setting.

        Example:
            >>> ControlConfig.from_flat({"control_share": 0.3, "control_pairing": "both"}).pairing
            'both'
        """
        names = {field.name for field in dataclasses.fields(cls)}
        values = {}
        for key, value in settings.items():
            name = key.removeprefix(CONTROL_PREFIX)
            if name not in names:
                raise TypeError(f"{key!r} is no decoding-control setting; use one of {sorted(CONTROL_PREFIX + n for n in names)}")
            values[name] = value
        return dataclasses.replace(base, **values) if base is not None else cls(**values)


def _accepts_flat_control_keys(config_class):
    """Let ``config_class(control_share=0.3, ...)`` mean ``config_class(control=ControlConfig(share=0.3), ...)``.

    The ``--control-*`` flags and configs written before the control settings were nested give flat keys;
    they are gathered into the nested :class:`ControlConfig` (over ``control`` when that is given too).
    """
    generated = config_class.__init__

    @functools.wraps(generated)
    def __init__(self, *args, **settings):
        flat = {key: settings.pop(key) for key in list(settings) if key.startswith(CONTROL_PREFIX)}
        if flat:
            settings["control"] = ControlConfig.from_flat(flat, settings.get("control"))
        generated(self, *args, **settings)

    config_class.__init__ = __init__
    return config_class


@_accepts_flat_control_keys
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

    control: ControlConfig = dataclasses.field(default_factory=ControlConfig)
    """Decoding control (PAPER.md section 7): train the heads to follow low- and high-diversity commands appended to
    the prompt; off unless ``--control-share`` is above 0."""

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
        """What decoding control asks of the rest of the settings; then its phrasing file, before any model loads."""
        if not isinstance(self.control, ControlConfig):
            raise ValueError(f"control must be a ControlConfig, got {type(self.control).__name__}")
        if not self.control.enabled:
            return
        trained = {"joint": {"temperature", "top-p"}, "temperature": {"temperature"}, "top-p": {"top-p"}}[self.mode]
        for head in sorted(set(CONTROL_TARGETS[self.control.heads]) - trained):
            other = "top-p" if head == "temperature" else "temperature"
            raise ValueError(
                f"control_heads {self.control.heads!r} ranks the {head} predictions, but mode {self.mode!r} disables the "
                f"{head} head; pass --control-heads {other} (rank only the trained head's predictions), "
                "use --mode joint, or turn decoding control off with --control-share 0"
            )
        from autodeco.data.phrasings import load_phrasings

        load_phrasings(self.control.phrasings)  # an empty or malformed file fails here, before any model loads

    @property
    def control_enabled(self) -> bool:
        """Whether decoding-control pairs are trained (a positive ``control.share``)."""
        return self.control.enabled

    @property
    def control_margins(self) -> dict[str, float]:
        """The ranking loss's margin of each prediction (``control.margins``), ``{"temperature": ..., "top-p": ...}``."""
        return self.control.margins

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


def _check_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
