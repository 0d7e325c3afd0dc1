"""Dynamic decoding inside Hugging Face's ``generate()``.

The base model's own ``generate()`` runs unchanged (KV cache, left padding, streamers, stopping
criteria). Two small pieces make it dynamic:
- a forward hook on the output head records the final hidden state it receives, and
- :class:`AutoDecoLogitsProcessor` turns that hidden state and the step's logits into a per-row
  temperature and top-p (:func:`autodeco.core.dynamic.dynamic_step`), and returns the warped logits that
  ``generate()`` then samples from.
The logits are computed once, by the base model; the step never sorts the vocabulary.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from transformers import GenerationConfig, LogitsProcessor

from autodeco.core.dynamic import dynamic_step
from autodeco.core.multipliers import Multipliers

KEPT_GENERATION_FIELDS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "max_length",
    "max_new_tokens",
    "use_cache",
    "cache_implementation",
)
"""What a base model's ``generation_config`` may contribute: tokens and lengths, never sampling settings."""


UNSUPPORTED_MODES = {
    "num_beams": "beam search",
    "num_beam_groups": "group beam search",
    "penalty_alpha": "contrastive search",
    "assistant_model": "assisted generation",
    "prompt_lookup_num_tokens": "prompt-lookup decoding",
    "constraints": "constrained beam search",
    "force_words_ids": "constrained beam search",
    "dola_layers": "DoLa decoding",
}
"""``generate()`` arguments that choose a decoding mode dynamic decoding does not define, with the mode's name.

Beam and group search would rank beams by the sum of log-probabilities of *warped* logits (a score
the heads' values make meaningless); contrastive, assisted and DoLa decoding bypass or re-score
the per-step logits the heads warp.
"""


def _is_active(name: str, value) -> bool:
    if value is None or value is False:
        return False
    if name in ("num_beams", "num_beam_groups"):
        return value != 1
    if name == "penalty_alpha":
        return value != 0
    return True


def check_decoding_mode(kwargs: dict, generation_config=None) -> None:
    """Refuse the ``generate()`` modes listed in :data:`UNSUPPORTED_MODES`, from keywords or a ``GenerationConfig``.

    Raises:
        ValueError: naming the argument, its value and what to do instead.
    """
    for name, mode in UNSUPPORTED_MODES.items():
        value = kwargs.get(name, getattr(generation_config, name, None))
        if _is_active(name, value):
            shown = type(value).__name__ if name == "assistant_model" else repr(value)
            raise ValueError(
                f"{name}={shown} asks for {mode}, which dynamic decoding does not support: the heads warp each "
                "sampled step's logits. Drop it (sample several sequences with num_return_sequences instead), "
                "or run the base model's own generate() on model.llm"
            )


class OutputHeadInputCapture:
    """Records the input of the base model's output head at every forward pass."""

    def __init__(self):
        self.hidden_states: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        self.hidden_states = inputs[0]


@contextlib.contextmanager
def capture_output_head_input(llm):
    """Attach an :class:`OutputHeadInputCapture` to ``llm``'s output head for the duration of the block."""
    capture = OutputHeadInputCapture()
    handle = output_head(llm).register_forward_hook(capture)
    try:
        yield capture
    finally:
        handle.remove()


def output_head(llm) -> torch.nn.Module:
    """The module that maps final hidden states to logits (``lm_head`` on most models)."""
    head = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"{type(llm).__name__} exposes no output head (get_output_embeddings() is None); "
            "AutoDeco needs a causal LM whose final hidden state reaches an output layer"
        )
    return head


def output_head_shape(llm) -> tuple[int, int]:
    """``(vocab_size, hidden_size)`` of the output head, also when DeepSpeed ZeRO-3 has partitioned it.

    A partitioned weight is an empty tensor on every process (``weight.shape == (0,)``); DeepSpeed
    keeps the full shape in ``weight.ds_shape``, which is read instead.
    """
    weight = output_head(llm).weight
    shape = tuple(getattr(weight, "ds_shape", None) or weight.shape)
    if len(shape) != 2 or 0 in shape:
        raise ValueError(
            f"the output head of {type(llm).__name__} has a weight of shape {shape}, not (vocab, hidden); "
            "AutoDeco needs a linear output layer (a partitioned weight must carry DeepSpeed's ds_shape)"
        )
    return shape[0], shape[1]


def sanitized_generation_config(base_config: GenerationConfig | None) -> GenerationConfig:
    """A generation config holding only the base's token ids and lengths, so no sampling default slips in."""
    kept = {}
    if base_config is not None:
        for field in KEPT_GENERATION_FIELDS:
            value = getattr(base_config, field, None)
            if value is not None:
                kept[field] = value
    return GenerationConfig(**kept)


def generate_with_base(
    llm,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    *,
    sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    logits_processor=None,
    **kwargs,
):
    """The base model's own ``generate()`` with exactly the sampling the caller asks for.

    The base's ``generation_config`` is swapped for :func:`sanitized_generation_config` during the
    call, so its defaults (``top_k=50``, penalties, ...) do not apply; ``top_k`` is off unless passed.
    A static ``(temperature, top_p)`` is applied by transformers' own warpers, after ``logits_processor``;
    so are ``top_k``, ``min_p``, ``typical_p``, ... when passed in ``kwargs``.

    Args:
        llm: a causal LM.
        input_ids, attention_mask: ``(B, L)`` left-padded prompt.
        sample: sample (True) or decode greedily (False; temperature and top-p are then ignored).
        temperature, top_p: static sampling values (used only when sampling).
        logits_processor: a ``LogitsProcessorList`` run before the warpers.
        **kwargs: any other ``generate()`` argument (``top_k`` here replaces the default of no top-k). With a
            ``generation_config`` among them, every generation setting goes into a copy of it and the copy alone
            to ``generate()`` (transformers deprecates a config together with loose settings).
    """
    sampling = {"temperature": float(temperature), "top_p": float(top_p), "top_k": 0} if sample else {}
    arguments = {"do_sample": sample, **sampling, **kwargs}
    config = arguments.pop("generation_config", None)
    if config is not None:
        config = copy.deepcopy(config)
        for name in [name for name in arguments if hasattr(config, name)]:
            setattr(config, name, arguments.pop(name))
        arguments["generation_config"] = config
    original = llm.generation_config
    llm.generation_config = sanitized_generation_config(original)
    try:
        return llm.generate(input_ids, attention_mask=attention_mask, logits_processor=logits_processor, **arguments)
    finally:
        llm.generation_config = original


class AutoDecoLogitsProcessor(LogitsProcessor):
    """Replace the step's logits by AutoDeco's warped logits (or, when ``sample`` is False, only record T and P).

    Args:
        heads: the heads with their policy (the :class:`~autodeco.model.modeling.AutoDecoForCausalLM`).
        capture: where the output head's input is recorded.
        multipliers: the user's scales on the heads' T and P.
        sample: warp the logits (sampling) or leave them alone (greedy, values still recorded).
        on_step: called with each step's ``(temperature (B,), top_p (B,))`` once they are computed.

    Raises:
        ValueError: ``sample`` with a greedy ``multipliers`` (a temperature multiplier of 0 samples nothing).
    """

    def __init__(
        self, heads, capture: OutputHeadInputCapture, multipliers: Multipliers, sample: bool,
        on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    ):
        if sample and multipliers.greedy:
            raise ValueError(f"{multipliers} decodes greedily: pass sample=False, or a temperature multiplier > 0")
        self.heads = heads
        self.capture = capture
        self.multipliers = multipliers
        self.sample = sample
        self.on_step = on_step
        self.temperatures: list[torch.Tensor] = []
        self.top_ps: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        hidden = self.capture.hidden_states[:, -1, :]  # (B, H)
        scales = self.multipliers
        warped, temperature, top_p = dynamic_step(self.heads, hidden, scores, scales.temperature, scales.top_p, self.sample)
        self.temperatures.append(temperature)
        self.top_ps.append(top_p)
        if self.on_step is not None:
            self.on_step(temperature, top_p)
        return warped

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The values used at each step: temperatures and top-ps, each ``(B, steps)``."""
        if not self.temperatures:
            return torch.empty(0, 0), torch.empty(0, 0)
        return torch.stack(self.temperatures, dim=1), torch.stack(self.top_ps, dim=1)
