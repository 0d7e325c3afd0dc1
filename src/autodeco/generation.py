"""Dynamic decoding inside Hugging Face's ``generate()``.

The base model's own ``generate()`` runs unchanged (KV cache, left padding, streamers, stopping
criteria). Two small pieces make it dynamic:
- a forward hook on the output head records the final hidden state it receives, and
- :class:`AutoDecoLogitsProcessor` turns that hidden state and the step's logits into a per-row
  temperature and top-p, and returns the warped logits that ``generate()`` then samples from.
The logits are computed once, by the base model; the step sorts them once.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import GenerationConfig, LogitsProcessor

from autodeco.decoding import MIN_SAMPLING_TEMPERATURE, combine_with_user_values, warp_sorted_logits
from autodeco.heads import FEATURE_TEMPERATURE_EPSILON, probability_features_from_sorted

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


def sanitized_generation_config(base_config: GenerationConfig | None) -> GenerationConfig:
    """A generation config holding only the base's token ids and lengths, so no sampling default slips in."""
    kept = {}
    if base_config is not None:
        for field in KEPT_GENERATION_FIELDS:
            value = getattr(base_config, field, None)
            if value is not None:
                kept[field] = value
    return GenerationConfig(**kept)


class AutoDecoLogitsProcessor(LogitsProcessor):
    """Replace the step's logits by AutoDeco's warped logits (or, when ``sample`` is False, only record T and P).

    Args:
        model: the :class:`~autodeco.modeling.AutoDecoForCausalLM` whose heads predict T and P.
        capture: where the output head's input is recorded.
        temperature: multiplier on the head's temperature (the user's ``temperature``).
        top_p: multiplier on the head's top-p (the user's ``top_p``), capped at 1.
        sample: warp the logits (sampling) or leave them alone (greedy, values still recorded).
    """

    def __init__(self, model, capture: OutputHeadInputCapture, temperature: float, top_p: float, sample: bool):
        if temperature <= 0:
            raise ValueError(f"temperature multiplier must be > 0 when sampling, got {temperature}")
        if top_p <= 0:
            raise ValueError(f"top_p multiplier must be > 0, got {top_p}")
        self.model = model
        self.capture = capture
        self.temperature = temperature
        self.top_p = top_p
        self.sample = sample
        self.temperatures: list[torch.Tensor] = []
        self.top_ps: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        hidden = self.capture.hidden_states[:, -1, :]  # (B, H)
        warped, temperature, top_p = dynamic_step(self.model, hidden, scores, self.temperature, self.top_p, self.sample)
        self.temperatures.append(temperature)
        self.top_ps.append(top_p)
        return warped

    def recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The values used at each step: temperatures and top-ps, each ``(B, steps)``."""
        if not self.temperatures:
            return torch.empty(0, 0), torch.empty(0, 0)
        return torch.stack(self.temperatures, dim=1), torch.stack(self.top_ps, dim=1)


def dynamic_step(
    model, hidden: torch.Tensor, logits: torch.Tensor, temperature: float, top_p: float, sample: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step: heads -> (T, P) -> warped logits, with a single sort of the logits.

    Args:
        model: an AutoDecoForCausalLM.
        hidden: ``(B, H)`` final hidden states.
        logits: ``(B, V)`` logits of the step (float32 in ``generate()``).
        temperature, top_p: the user's multipliers.
        sample: return warped logits; else return the logits unchanged.

    Returns:
        ``(warped_logits (B, V), temperature (B,), top_p (B,))``, the values actually used.
    """
    logits = logits.float()
    head_temperature = model.predict_temperature(hidden)  # (B,)
    sorted_logits, sorted_indices = logits.sort(dim=-1)  # (B, V), ascending
    feature_probs = None
    if model.config.enable_top_p_head:
        if model.config.use_enhanced_features:
            feature_scale = head_temperature.float().unsqueeze(-1) + FEATURE_TEMPERATURE_EPSILON
            feature_probs = (sorted_logits / feature_scale).softmax(dim=-1)  # (B, V), ascending
            features = probability_features_from_sorted(feature_probs)  # (B, 4)
        else:
            features = None
        head_top_p = model.top_p_head(model.to_head_dtype(hidden), head_temperature, features)
    else:
        head_top_p = torch.ones_like(head_temperature)
    final_temperature, final_top_p = combine_with_user_values(head_temperature, head_top_p, temperature, top_p)
    final_temperature, final_top_p = final_temperature.float(), final_top_p.float()
    if not sample:
        return logits, final_temperature, final_top_p
    scaled_sorted = sorted_logits / final_temperature.clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1)
    # With the user's multiplier at 1, the feature probabilities are the sampling probabilities
    # (up to the 1e-8 in the feature temperature): reuse them instead of a second softmax.
    reusable = feature_probs if temperature == 1.0 else None
    warped = warp_sorted_logits(scaled_sorted, sorted_indices, final_top_p, ascending_probs=reusable)
    return warped, final_temperature, final_top_p
