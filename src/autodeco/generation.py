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
import math

import torch
from transformers import GenerationConfig, LogitsProcessor

from autodeco.decoding import MIN_SAMPLING_TEMPERATURE, combine_with_user_values
from autodeco.heads import (
    ENTROPY_LOG_EPSILON,
    FEATURE_TEMPERATURE_EPSILON,
    TOP_MASS_TOKENS,
)

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
    call, so its defaults (``top_k=50``, penalties, ...) do not apply; ``top_k`` is off. A static
    ``(temperature, top_p)`` is applied by transformers' own warpers.

    Args:
        llm: a causal LM.
        input_ids, attention_mask: ``(B, L)`` left-padded prompt.
        sample: sample (True) or decode greedily (False; temperature and top-p are then ignored).
        temperature, top_p: static sampling values (used only when sampling).
        logits_processor: a ``LogitsProcessorList`` run before the warpers.
        **kwargs: any other ``generate()`` argument.
    """
    original = llm.generation_config
    llm.generation_config = sanitized_generation_config(original)
    try:
        sampling = {"temperature": float(temperature), "top_p": float(top_p), "top_k": 0} if sample else {}
        return llm.generate(
            input_ids, attention_mask=attention_mask, do_sample=sample, logits_processor=logits_processor,
            **sampling, **kwargs,
        )
    finally:
        llm.generation_config = original


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
        logits: ``(B, V)`` logits of the step (float32 in ``generate()``); never modified.
        temperature, top_p: the user's multipliers.
        sample: return warped logits; else return the logits unchanged.

    Returns:
        ``(warped_logits (B, V), temperature (B,), top_p (B,))``, the values actually used.

    The vocabulary-sized work is one sort (a radix sort on CPU, see :func:`_sort_ascending`), two
    divisions, one softmax (two when the user's temperature multiplier is not 1), the features, one
    cumulative sum and one scatter back to vocabulary order, in three ``(B, V)`` float buffers. It runs
    without autograd: the logits are frozen and the features read the detached temperature, as in
    :meth:`~autodeco.modeling.AutoDecoForCausalLM.predict`.
    """
    config = model.config
    head_temperature = model.predict_temperature(hidden)  # (B,)
    with torch.no_grad():
        sorted_logits, sorted_indices = _sort_ascending(logits.float())  # (B, V); fresh, so ours to overwrite
    feature_probs = work = None
    if config.enable_top_p_head:
        features = None
        if config.use_enhanced_features:
            with torch.no_grad():
                feature_scale = head_temperature.detach().float().unsqueeze(-1) + FEATURE_TEMPERATURE_EPSILON  # (B, 1)
                feature_logits = sorted_logits / feature_scale  # (B, V) ascending
                feature_probs = feature_logits.softmax(dim=-1)  # (B, V) ascending
                work = feature_logits  # free after the softmax
                features = _features_from_ascending_probs(feature_probs, work)  # (B, 4)
        head_top_p = model.top_p_head(model.to_head_dtype(hidden), head_temperature, features)
    else:
        head_top_p = torch.ones_like(head_temperature)
    final_temperature, final_top_p = combine_with_user_values(head_temperature, head_top_p, temperature, top_p)
    final_temperature, final_top_p = final_temperature.float(), final_top_p.float()
    if not sample:
        return logits, final_temperature, final_top_p
    with torch.no_grad():
        scaled = sorted_logits.div_(final_temperature.detach().clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1))
        if temperature == 1.0 and feature_probs is not None:
            # With the user's multiplier at 1, the feature probabilities are the sampling probabilities
            # (up to the 1e-8 in the feature temperature): reuse them instead of a second softmax.
            probs = feature_probs
        else:
            probs = scaled.softmax(dim=-1)
            if feature_probs is not None:
                work = feature_probs  # the features are done with it
        warped = _warp_sorted_in_place(scaled, sorted_indices, probs, final_top_p.detach(), work)
    return warped, final_temperature, final_top_p


RADIX_SORT_MIN_VOCAB = 32768
"""torch sorts a 1-D integer tensor of at least this many entries (its ``GRAIN_SIZE``) with a radix sort."""

_FLOAT32_MAGNITUDE_BITS = 0x7FFFFFFF
_FLOAT32_INFINITY_BITS = 0x7F800000


def _sort_ascending(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.sort(dim=-1)`` for ``(B, V)`` float32 logits, several times faster on CPU for large vocabularies.

    torch sorts a 2-D float tensor with a comparison sort (about 3.7 ms for one row of 49,152 logits on a
    2-core x86 VM), but a 1-D integer tensor of 32,768 entries or more with a radix sort (about 0.25 ms
    there). Each row's logits are mapped to int32 keys in the same order (``-0.0`` and ``0.0`` equal,
    NaN last, as torch orders them) and radix-sorted; the sorted values are gathered back. The values
    equal ``logits.sort()``'s and the indices ``logits.sort(stable=True)``'s: equal logits come in
    vocabulary order (torch's default sort leaves their order unspecified).
    Elsewhere (GPU, small vocabularies, other dtypes) this is ``logits.sort(dim=-1)``.
    """
    rows, vocab = logits.shape
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or vocab < RADIX_SORT_MIN_VOCAB:
        return logits.sort(dim=-1)
    logits = logits.contiguous()
    bits = logits.view(torch.int32)
    magnitude = bits & _FLOAT32_MAGNITUDE_BITS
    keys = torch.where(bits < 0, magnitude.neg(), magnitude)  # float order; -0.0 -> 0 like 0.0
    keys.masked_fill_(magnitude > _FLOAT32_INFINITY_BITS, _FLOAT32_MAGNITUDE_BITS)  # every NaN last
    values = torch.empty_like(logits)
    indices = torch.empty((rows, vocab), dtype=torch.long)
    sorted_keys = torch.empty(vocab, dtype=torch.int32)
    for row in range(rows):
        torch.sort(keys[row], stable=True, out=(sorted_keys, indices[row]))  # 1-D integer: radix sort
        torch.index_select(logits[row], 0, indices[row], out=values[row])
    return values, indices


def _features_from_ascending_probs(probs: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """:func:`autodeco.heads.probability_features_from_sorted` in fewer passes, without temporaries.

    ``probs``: ``(B, V)`` probabilities sorted ascending; ``work``: a ``(B, V)`` float buffer, overwritten.
    Entropy and variance are reduced with dot products (the variance in two passes, mean then squared
    deviations), which agrees with the reference to float32 rounding.
    """
    vocab = probs.shape[-1]
    top = probs[..., -TOP_MASS_TOKENS:]  # (B, 5) the most likely tokens
    torch.add(probs, ENTROPY_LOG_EPSILON, out=work).log_()  # log(p + 1e-8)
    entropy = torch.linalg.vecdot(probs, work).neg_()  # (B,)
    torch.sub(probs, probs.mean(dim=-1, keepdim=True), out=work)
    variance = torch.linalg.vecdot(work, work).div_(vocab - 1) if vocab > 1 else torch.full_like(entropy, float("nan"))
    return torch.stack([top.amax(dim=-1), entropy, variance, top.sum(dim=-1)], dim=-1)  # (B, 4)


NUCLEUS_TAIL_MAX_FRACTION = 0.25
"""Scatter only the sorted tail that holds every row's nucleus when it is at most this fraction of the vocabulary."""


def _warp_sorted_in_place(
    scaled: torch.Tensor, sorted_indices: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor, work: torch.Tensor | None
) -> torch.Tensor:
    """:func:`autodeco.decoding.warp_sorted_logits`, overwriting ``scaled`` and ``work`` instead of allocating.

    The cumulative probabilities ascend, so the tokens that :func:`~autodeco.decoding.nucleus_removal_mask`
    removes are a prefix of each sorted row, whose length a binary search finds. When every row's nucleus
    lies in the last ``NUCLEUS_TAIL_MAX_FRACTION`` of the sorted vocabulary, only that tail is masked and
    scattered into a ``-inf`` buffer; otherwise the whole tensor is. The result is the same either way.
    """
    vocab = probs.shape[-1]
    if work is None:
        work = torch.empty_like(probs)
    cumulative = torch.cumsum(probs, dim=-1, out=work)  # (B, V), non-decreasing
    threshold = (1 - top_p).unsqueeze(-1)  # (B, 1)
    removed_counts = torch.searchsorted(cumulative, threshold, right=True).clamp_(max=vocab - 1)  # (B, 1)
    first, total = torch.cat(
        [removed_counts.amin(dim=0).double(), cumulative[:, -1].sum(0, keepdim=True, dtype=torch.float64)]
    ).tolist()
    tail_start = int(first)
    if vocab - tail_start <= NUCLEUS_TAIL_MAX_FRACTION * vocab and not math.isnan(total):  # NaN: the search is invalid
        tail = scaled[:, tail_start:]  # (B, K) holds every row's nucleus
        positions = torch.arange(tail_start, vocab, device=scaled.device)  # (K,) sorted positions
        tail.masked_fill_(positions < removed_counts, float("-inf"))
        return work.fill_(float("-inf")).scatter_(-1, sorted_indices[:, tail_start:], tail)
    removed = cumulative <= threshold  # (B, V), exactly nucleus_removal_mask
    removed[..., -1] = False
    scaled.masked_fill_(removed, float("-inf"))
    return work.scatter_(-1, sorted_indices, scaled)  # sorted_indices is a permutation: every entry is written
