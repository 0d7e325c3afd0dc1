"""The comparison methods inside Hugging Face's ``generate()``: logits processors that warp and record.

Each method of :data:`~autodeco.sampling.settings.METHOD_KINDS` becomes a *step*: a function from
a decoding step's raw logits ``(B, V)`` and their entropies ``(B,)`` to a
:class:`~autodeco.core.adaptive.WarpedStep` (warped logits, temperature and top-p used).
:class:`SettingLogitsProcessor` runs the step inside ``generate()`` and records, per row and step,
the temperature, the top-p (for truncation samplers: the probability mass kept) and the base entropy
H (nats, of ``softmax`` of the logits it receives). :func:`generate_with_setting` runs the base's own
``generate()`` with that processor as the only change: sampling at ``temperature=1, top_p=1, top_k=0``,
so no transformers warper acts after it.

:class:`EntropyRecorder` only records the entropies (for AutoDeco's own rows, whose per-token
values feed the shuffle controls' pools).

Example (a tiny random model; any :class:`~autodeco.model.modeling.AutoDecoForCausalLM` works):
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from autodeco.model.modeling import AutoDecoForCausalLM
    >>> from autodeco.sampling.settings import DecodingSetting
    >>> _ = torch.manual_seed(0)
    >>> llm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                    num_attention_heads=2, num_key_value_heads=1, eos_token_id=2))
    >>> model = AutoDecoForCausalLM.from_base(llm, seed=0)
    >>> prompt = torch.tensor([[5, 6, 7]])
    >>> output = generate_with_setting(model, prompt, torch.ones_like(prompt), DecodingSetting.min_p(1.0, 0.1),
    ...                                max_new_tokens=3)
    >>> output.sequences.shape, output.temperatures.shape, output.top_ps.shape, output.entropies.shape
    (torch.Size([1, 6]), torch.Size([1, 3]), torch.Size([1, 3]), torch.Size([1, 3]))
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from autodeco.core import adaptive
from autodeco.core.adaptive import WarpedStep, entropy
from autodeco.core.decoding import warp_logits
from autodeco.core.dynamic import blank_after_end, dynamic_step
from autodeco.model.generation import capture_output_head_input, check_decoding_mode, generate_with_base
from autodeco.sampling.settings import (
    COMPARISON_METHODS,
    METHOD_KINDS,
    POOL_KINDS,
    TEMPERATURE_HEAD,
    USES_HEADS,
    USES_POOLS,
    DecodingSetting,
)

Step = Callable[[torch.Tensor, torch.Tensor], WarpedStep]
"""``step(logits (B, V), entropies (B,)) -> WarpedStep``: one decoding step of a method."""


class EntropyRecorder(LogitsProcessor):
    """Records the entropy (nats) of ``softmax(scores)`` at every step and returns the scores unchanged.

    Put it first in ``logits_processor`` so it sees the base's raw logits, e.g.
    ``model.generate(..., logits_processor=[recorder])`` for AutoDeco (the heads warp after it).
    """

    def __init__(self):
        self.entropies: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.entropies.append(entropy(scores))
        return scores

    def recorded(self) -> torch.Tensor:
        """``(B, steps)`` entropies, one column per step."""
        return torch.stack(self.entropies, dim=1) if self.entropies else torch.empty(0, 0)


class SettingLogitsProcessor(LogitsProcessor):
    """Replaces each step's logits by a method's warped logits and records T, P and the base entropy.

    Args:
        step: the method (see :func:`method_step`).
    """

    def __init__(self, step: Step):
        self.step = step
        self.temperatures: list[torch.Tensor] = []
        self.top_ps: list[torch.Tensor] = []
        self.entropies: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        entropies = entropy(scores)  # (B,)
        warped, temperature, top_p = self.step(scores, entropies)
        self.temperatures.append(temperature)
        self.top_ps.append(top_p)
        self.entropies.append(entropies)
        return warped

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Temperatures, top-ps and entropies used at each step, each ``(B, steps)``."""
        if not self.temperatures:
            return torch.empty(0, 0), torch.empty(0, 0), torch.empty(0, 0)
        return tuple(torch.stack(values, dim=1) for values in (self.temperatures, self.top_ps, self.entropies))


def _head_step(model, capture, setting: DecodingSetting) -> Step:
    """One head's per-token value with the other value static (the P head reads the T head's value)."""

    def step(logits: torch.Tensor, entropies: torch.Tensor) -> WarpedStep:
        hidden = capture.hidden_states[:, -1, :]  # (B, H)
        _, head_temperature, head_top_p = dynamic_step(model, hidden, logits, 1.0, 1.0, sample=False)  # (B,) each
        if setting.kind == TEMPERATURE_HEAD:
            temperature, top_p = head_temperature, torch.full_like(head_top_p, setting.param("P"))
        else:
            temperature, top_p = torch.full_like(head_temperature, setting.param("T")), head_top_p
        return WarpedStep(warp_logits(logits, temperature, top_p), temperature, top_p)

    return step


def _pool_step(value_pools: Sequence) -> Step:
    """Each row draws its (T, P) pair from its own stream, given the step's base entropy."""

    def step(logits: torch.Tensor, entropies: torch.Tensor) -> WarpedStep:
        if len(value_pools) != logits.shape[0]:
            raise ValueError(
                f"the shuffle controls need one value stream per generated row: got {len(value_pools)} streams "
                f"for {logits.shape[0]} rows"
            )
        pairs = [stream.draw(value) for stream, value in zip(value_pools, entropies.tolist())]
        temperature = torch.tensor([pair[0] for pair in pairs], dtype=torch.float32, device=logits.device)  # (B,)
        top_p = torch.tensor([pair[1] for pair in pairs], dtype=torch.float32, device=logits.device)  # (B,)
        return WarpedStep(warp_logits(logits, temperature, top_p), temperature, top_p)

    return step


def method_step(setting: DecodingSetting, *, model=None, capture=None, value_pools: Sequence | None = None) -> Step:
    """The step function of a method setting: its row's step in :mod:`autodeco.core.adaptive`, or the heads or pools.

    Args:
        setting: a setting of one of :data:`~autodeco.sampling.settings.METHOD_KINDS`.
        model: the AutoDecoForCausalLM (head kinds only).
        capture: the output head's input capture (head kinds only; see
            :func:`~autodeco.model.generation.capture_output_head_input`).
        value_pools: one stream per generated row, each with ``draw(entropy) -> (T, P)`` (shuffle kinds only;
            see :mod:`autodeco.sampling.shuffle`).

    Example:
        >>> step = method_step(DecodingSetting.confidence_gated(0.6, 1.0))
        >>> step(torch.tensor([[0.0, 0.0]]), torch.tensor([0.69])).temperature
        tensor([1.])
        >>> all(hasattr(adaptive, method.step) for method in COMPARISON_METHODS.values() if method.step)
        True
    """
    method = COMPARISON_METHODS.get(setting.kind)
    if method is not None and method.step is not None:
        warp = getattr(adaptive, method.step)
        values = [value for _, value in setting.params]  # in key order: the step's argument order
        return lambda logits, _: warp(logits, *values)
    if method is not None and method.uses == USES_HEADS:
        if model is None or capture is None:
            raise ValueError(f"the {setting.kind} setting needs the AutoDeco model and its output-head capture")
        return _head_step(model, capture, setting)
    if method is not None and method.uses == USES_POOLS:
        if value_pools is None:
            raise ValueError(f"the {setting.kind} setting needs value_pools: one value stream per generated row")
        return _pool_step(value_pools)
    raise ValueError(
        f"{setting.key!r} is not a method setting ({', '.join(METHOD_KINDS)}); greedy, static and autodeco "
        "decode through autodeco.sampling.rollouts.complete or model.generate"
    )


@dataclasses.dataclass
class SettingOutput:
    """What :func:`generate_with_setting` returns."""

    sequences: torch.Tensor
    """``(B, L + steps)`` prompt and generated ids."""
    temperatures: torch.Tensor
    """``(B, steps)`` temperature used per token (0 for a greedy step; NaN after the row's end)."""
    top_ps: torch.Tensor
    """``(B, steps)`` top-p used per token (truncation samplers: the mass kept; NaN after the row's end)."""
    entropies: torch.Tensor
    """``(B, steps)`` entropy in nats of the base's next-token distribution (NaN after the row's end)."""


def generate_with_setting(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    setting: DecodingSetting,
    *,
    value_pools: Sequence | None = None,
    **generate_kwargs,
) -> SettingOutput:
    """Sample with a method setting: the base's ``generate()`` with :class:`SettingLogitsProcessor` warping each step.

    Args:
        model: an :class:`~autodeco.model.modeling.AutoDecoForCausalLM` (the methods other than the head
            kinds use its base ``model.llm`` only).
        input_ids, attention_mask: ``(B, L)`` left-padded prompt.
        setting: a setting of :data:`~autodeco.sampling.settings.METHOD_KINDS`.
        value_pools: shuffle kinds only: one stream per generated row (``B`` rows, or ``B * num_return_sequences``),
            e.g. :class:`~autodeco.sampling.shuffle.ValueStream`; each row's stream is used in its order.
        **generate_kwargs: other ``generate()`` arguments (``max_new_tokens``, ``pad_token_id``, a cache, ...);
            sampling values (``temperature``, ``top_p``, ``top_k``, ...) would act after the method and are refused.

    Returns:
        a :class:`SettingOutput`.

    Raises:
        ValueError: a setting that is not a method, value pools missing or given where not used, an unsupported
            decoding mode, or a sampling argument in ``generate_kwargs``.
    """
    if setting.kind not in METHOD_KINDS:
        method_step(setting)  # raises, naming the method kinds
    if (value_pools is not None) != (setting.kind in POOL_KINDS):
        raise ValueError(
            f"value_pools go with the shuffle controls ({', '.join(POOL_KINDS)}) and only with them; "
            f"setting {setting.key!r} got {'none' if value_pools is None else 'value pools'}"
        )
    check_decoding_mode(generate_kwargs)
    overriding = sorted({"do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff",
                         "eta_cutoff", "logits_processor"} & set(generate_kwargs))
    if overriding:
        raise ValueError(f"generate_with_setting samples exactly as {setting.key!r} says; drop {overriding}")
    uses_heads = COMPARISON_METHODS[setting.kind].uses == USES_HEADS
    with capture_output_head_input(model.llm) if uses_heads else contextlib.nullcontext() as capture:
        processor = SettingLogitsProcessor(method_step(setting, model=model, capture=capture, value_pools=value_pools))
        output = generate_with_base(
            model.llm, input_ids, attention_mask, sample=True, temperature=1.0, top_p=1.0,
            logits_processor=LogitsProcessorList([processor]), **generate_kwargs,
        )
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    eos = generate_kwargs.get("eos_token_id", model.llm.generation_config.eos_token_id)
    temperatures, top_ps, entropies = blank_after_end(sequences, processor.recorded(), eos)
    return SettingOutput(sequences, temperatures, top_ps, entropies)

