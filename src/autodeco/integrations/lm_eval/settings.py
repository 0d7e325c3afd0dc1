"""The ``--model_args`` of ``lm_eval --model autodeco`` as one checked value, and each request's decoding plan.

No lm-eval import here: the harness hands us a dict of model_args and, per ``generate_until`` request, a dict of
gen_kwargs; these functions turn both into small typed values and say what was wrong with the name of the
model_arg or gen_kwarg to fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autodeco.core.multipliers import MultiplierError, Multipliers

ENGINES = ("hf", "vllm")
"""``engine=`` values: the Hugging Face model in this process, or vLLM with the autodeco plugin."""

LOGLIKELIHOOD_MODES = ("soft", "hard", "base")
"""``loglikelihood=`` values (what a ``loglikelihood`` request scores; see :mod:`.scoring`)."""

DEFAULT_BATCH_SIZE = 8
"""Prompts per batch when neither ``batch_size=`` nor ``--batch_size`` says otherwise, or they say ``auto``."""

DEFAULT_MAX_GEN_TOKS = 256
"""New tokens per answer when the task's gen_kwargs name no ``max_gen_toks`` (lm-eval's own default)."""

TASK_DECODING_KEYS = ("do_sample", "temperature", "top_p")
"""gen_kwargs that choose how to decode: ignored unless ``follow_task_decoding=True``."""

TASK_LENGTH_KEYS = ("until", "max_gen_toks")
"""gen_kwargs always followed: where an answer stops."""


class ModelArgsError(ValueError):
    """A model_arg (or a task's gen_kwarg) the autodeco model cannot use; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class HarnessSettings:
    """What ``--model_args`` may set (``key=value`` pairs, comma-separated).

    Example:
        >>> HarnessSettings.from_model_args({"pretrained": "runs/heads", "temperature": 0.5}).multipliers
        Multipliers(temperature=0.5, top_p=1.0)
        >>> HarnessSettings.from_model_args({"engine": "tgi"})
        Traceback (most recent call last):
        autodeco.integrations.lm_eval.settings.ModelArgsError: model_args engine must be one of hf, vllm, but is 'tgi'; pass engine=hf or engine=vllm
    """

    pretrained: str | None = None
    """Heads checkpoint: a folder (ours, official heads-only, or merged) or ``shipped:<name>``; None: the heads
    shipped for ``base`` (for the embedded default base, ``shipped:smollm2-135m-instruct``), else fresh heads."""
    base: str | None = None
    """Base model (hub id, folder, ``embedded:SmolLM2-135M-Instruct``); default: the one the heads record."""
    engine: str = "hf"
    """``hf`` (this process, batches of ``batch_size``) or ``vllm`` (vLLM's continuous batching)."""
    temperature: float = 1.0
    """Multiplier on each token's predicted temperature (``T = T_head * temperature``); 0 decodes greedily."""
    top_p: float = 1.0
    """Multiplier on each token's predicted top-p (``P = min(1, P_head * top_p)``)."""
    follow_task_decoding: bool = False
    """Decode as the task's gen_kwargs say (``do_sample: false`` or ``temperature: 0``: greedy; a task's
    ``temperature``/``top_p``: the multipliers) instead of AutoDeco's own sampling."""
    loglikelihood: str = "soft"
    """What ``loglikelihood`` requests score: ``soft`` (the heads' T and the paper's soft top-p), ``hard`` (the
    distribution generation samples from; ``-inf`` outside the nucleus) or ``base`` (the plain base model)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Prompts per forward pass or ``generate()`` call on the HF engine (``auto``: the default)."""
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
    """New tokens per answer unless the task's gen_kwargs set ``max_gen_toks``."""
    max_length: int | None = None
    """Context length for prompts and rolling windows; default: the base's (``max_position_embeddings``)."""
    seed: int = 0
    """Batch ``k`` of ``generate_until`` samples under ``torch.manual_seed(seed + k)`` (HF); row ``k`` of vLLM with
    ``seed + k``. lm-eval's global seeds are left untouched."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``, ...; default (and lm-eval's ``cuda:0`` on a machine without CUDA): CUDA when
    available, else the CPU."""
    trust_remote_code: bool = False
    """Allow the base model's own modelling code."""

    def __post_init__(self):
        _check_choice("engine", self.engine, ENGINES)
        _check_choice("loglikelihood", self.loglikelihood, LOGLIKELIHOOD_MODES)
        for name in ("follow_task_decoding", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise ModelArgsError(
                    f"model_args {name} must be True or False, but is {getattr(self, name)!r}; pass {name}=True or {name}=False"
                )
        for name in ("batch_size", "max_gen_toks"):
            _check_positive_int(name, getattr(self, name))
        if self.max_length is not None:
            _check_positive_int("max_length", self.max_length)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ModelArgsError(f"model_args seed must be an integer >= 0, but is {self.seed!r}; pass e.g. seed=0")
        self.multipliers  # noqa: B018 (checks temperature and top_p)

    @property
    def multipliers(self) -> Multipliers:
        """``temperature`` and ``top_p`` as the checked multipliers every engine takes."""
        try:
            return Multipliers(temperature=self.temperature, top_p=self.top_p)
        except MultiplierError as error:
            raise ModelArgsError(f"model_args {error}; pass e.g. {error.name}=1.0") from None

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any]) -> HarnessSettings:
        """Settings from lm-eval's parsed model_args (values already typed by lm-eval: ``0.5``, ``True``).

        ``batch_size=auto`` (or ``auto:N``) means :data:`DEFAULT_BATCH_SIZE`; lm-eval's ``max_batch_size`` is
        accepted and unused; a ``None`` value keeps the default.

        Raises:
            ModelArgsError: an unknown name (listing the known ones) or a value out of range.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        values = {name: value for name, value in model_args.items() if value is not None and name != "max_batch_size"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelArgsError(
                f"unknown model_args {', '.join(unknown)} for --model autodeco; known: {', '.join(sorted(known))}"
            )
        if isinstance(values.get("batch_size"), str) and values["batch_size"].startswith("auto"):
            values["batch_size"] = DEFAULT_BATCH_SIZE
        for name in ("pretrained", "base", "device"):
            if name in values:
                values[name] = str(values[name])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class DecodingPlan:
    """How one ``generate_until`` request is decoded: requests with equal plans share batches."""

    until: tuple[str, ...]
    """Stop sequences: the answer is cut before the first one found."""
    max_new_tokens: int
    multipliers: Multipliers
    """What ``generate()`` multiplies the heads' T and P by."""
    sample: bool
    """Sample (True) or decode greedily (False; the heads' T and P are still recorded)."""


@dataclasses.dataclass(frozen=True)
class TaskDecoding:
    """What a task's gen_kwargs asked for, and what the autodeco model made of it (for its one-time notices)."""

    plan: DecodingPlan
    asked: dict[str, Any]
    """The task's decoding gen_kwargs (``do_sample``, ``temperature``, ``top_p``) as given."""
    ignored: tuple[str, ...]
    """Other gen_kwargs, which the autodeco model does not apply."""


def plan_decoding(gen_kwargs: dict[str, Any], settings: HarnessSettings) -> TaskDecoding:
    """The decoding plan for a request's gen_kwargs under ``settings``.

    By default the task's ``do_sample``/``temperature``/``top_p`` are ignored and AutoDeco samples with the
    heads' values times the model_args multipliers; with ``follow_task_decoding=True`` ``do_sample: false`` or
    ``temperature: 0`` decodes greedily and a task's ``temperature``/``top_p`` replace the multipliers.

    Example:
        >>> stock = {"until": ["Question:"], "do_sample": False, "temperature": 0.0}
        >>> plan_decoding(stock, HarnessSettings()).plan.sample
        True
        >>> plan_decoding(stock, HarnessSettings(follow_task_decoding=True)).plan.sample
        False
    """
    until = gen_kwargs.get("until", [])
    until = (until,) if isinstance(until, str) else tuple(until or ())
    if not all(isinstance(stop, str) and stop for stop in until):
        raise ModelArgsError(f"the task's gen_kwargs until must be a list of non-empty strings, but is {until!r}")
    max_new_tokens = gen_kwargs.get("max_gen_toks", settings.max_gen_toks)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ModelArgsError(f"the task's gen_kwargs max_gen_toks must be an integer >= 1, but is {max_new_tokens!r}")
    asked = {key: gen_kwargs[key] for key in TASK_DECODING_KEYS if key in gen_kwargs}
    ignored = tuple(sorted(set(gen_kwargs) - set(TASK_DECODING_KEYS) - set(TASK_LENGTH_KEYS) - {"autodeco"}))
    multipliers, sample = settings.multipliers, not settings.multipliers.greedy
    if settings.follow_task_decoding:
        temperature = asked.get("temperature", multipliers.temperature)
        top_p = asked.get("top_p", multipliers.top_p)
        try:
            multipliers = Multipliers(temperature=temperature, top_p=top_p)
        except MultiplierError as error:
            raise ModelArgsError(f"the task's gen_kwargs {error} (follow_task_decoding=True applies it)") from None
        sample = asked.get("do_sample", True) is not False and not multipliers.greedy
    plan = DecodingPlan(until=until, max_new_tokens=max_new_tokens, multipliers=multipliers, sample=sample)
    return TaskDecoding(plan=plan, asked=asked, ignored=ignored)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ModelArgsError(
            f"model_args {name} must be one of {', '.join(choices)}, but is {value!r}; pass "
            + " or ".join(f"{name}={choice}" for choice in choices)
        )


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelArgsError(f"model_args {name} must be an integer >= 1, but is {value!r}; pass e.g. {name}=8")
