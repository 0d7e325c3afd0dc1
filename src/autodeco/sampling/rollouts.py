"""Many completions for many prompts, with each prompt prefilled once.

Self-sampling (``autodeco sample``) and evaluation (``autodeco eval``) both draw n completions per
prompt under several decoding settings. Repeating each prompt n times (``num_return_sequences``)
would recompute its KV cache n times per setting. Instead :func:`prefill` runs the prompts through
the base once (all but their last token), and :func:`complete` copies that cache for each setting,
repeats it n times along the batch, and continues from the last prompt token with
:func:`~autodeco.sampling.decode_loop.decode_rows`, which drops rows from the batch as they end
(``compact=False`` lets ``generate()`` continue instead, every row until the last one ends).

    batch = prefill(model.llm, tokenizer, ["<rendered prompt 1>", "<rendered prompt 2>"])
    completions = complete(model, tokenizer, batch, DecodingSetting.autodeco(), num_samples=4, seed=0)
    completions[1][3].text  # the 4th completion of the 2nd prompt
"""

from __future__ import annotations

import copy
import dataclasses
import inspect

import torch

from autodeco.core.dynamic import blank_after_end
from autodeco.model.base_model import context_length, end_token_ids, room_after_prompt
from autodeco.model.compat import CACHE_ARGUMENT, output_cache
from autodeco.model.generation import generate_with_base
from autodeco.sampling import decode_loop
from autodeco.sampling.inference import encode_prompts
from autodeco.sampling.policies import EntropyRecorder, generate_with_setting
from autodeco.sampling.settings import AUTODECO, METHOD_KINDS, POOL_KINDS, STATIC, DecodingSetting


@dataclasses.dataclass
class Completion:
    """One generated answer."""

    text: str
    """Decoded text, special tokens removed."""
    token_ids: list[int]
    """Generated ids up to and including the end-of-sequence token."""
    temperatures: list[float] | None = None
    """Per-token temperatures actually used (AutoDeco and the method settings; 0 for a greedy step)."""
    top_ps: list[float] | None = None
    """Per-token top-p values actually used (AutoDeco and the methods; truncation samplers: the mass kept)."""
    entropies: list[float] | None = None
    """Per-token entropy in nats of the base's next-token distribution (AutoDeco and the method settings)."""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclasses.dataclass
class PromptBatch:
    """Left-padded prompts with the KV cache of all but their last token."""

    input_ids: torch.Tensor
    """``(B, L)`` prompt ids."""
    attention_mask: torch.Tensor
    """``(B, L)``."""
    cache: object | None
    """The base's cache over ``input_ids[:, :-1]`` (None when the prompts are one token long)."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@torch.no_grad()
def prefill(llm, tokenizer, rendered_prompts: list[str]) -> PromptBatch:
    """Encode rendered prompts (chat template already applied) and run all but their last token once.

    Position ids follow the attention mask exactly as ``generate()`` computes them, so the cached
    keys equal those ``generate()`` would have produced itself.
    """
    device = next(llm.parameters()).device
    encoded = encode_prompts(tokenizer, rendered_prompts, device, llm=llm)
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    if input_ids.shape[1] < 2:
        return PromptBatch(input_ids, attention_mask, None)
    prefix_mask = attention_mask[:, :-1]
    position_ids = (prefix_mask.long().cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)  # (B, L-1)
    # Only the cache is needed: ask for the last position's logits alone where the model allows it.
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(llm.forward).parameters else {}
    output = llm(
        input_ids=input_ids[:, :-1], attention_mask=prefix_mask, position_ids=position_ids, use_cache=True, **extra
    )
    return PromptBatch(input_ids, attention_mask, output_cache(output))


@torch.no_grad()
def complete(
    model,
    tokenizer,
    batch: PromptBatch,
    setting: DecodingSetting,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 256,
    seed: int = 0,
    value_pools=None,
    compact: bool = True,
) -> list[list[Completion]]:
    """Draw ``num_samples`` completions of every prompt in ``batch`` under ``setting``.

    Args:
        model: an :class:`~autodeco.model.modeling.AutoDecoForCausalLM` (static and greedy settings use its base only).
        tokenizer: the base's tokenizer.
        batch: from :func:`prefill`; its cache is copied, never changed, so it serves many settings.
        setting: greedy, static, AutoDeco or a method of :data:`~autodeco.sampling.settings.METHOD_KINDS`
            (sampled by :func:`~autodeco.sampling.policies.generate_with_setting`).
        num_samples: completions per prompt.
        max_new_tokens: generation length limit.
        seed: seeds torch's global generator before sampling (the caller's state is restored afterwards).
        value_pools: the shuffle controls' value streams (those settings only): either a callable
            ``make_stream(prompt_row, sample_index)`` returning the stream of that prompt's sample (e.g.
            :func:`~autodeco.sampling.shuffle.stream_factory`), or a list of ``len(batch) * num_samples`` streams
            in row order (prompt-major: the samples of prompt 0 first). Every sample gets its own stream.
        compact: decode with :func:`~autodeco.sampling.decode_loop.decode_rows`, which drops ended rows from the
            batch (once :data:`~autodeco.sampling.decode_loop.COMPACT_MIN_ENDED_FRACTION` of it has ended); False:
            transformers' ``generate()``, which runs every row until the last one ends. Both sample every token
            from the same distribution; their random draws part once the first rows leave the batch.

    Returns:
        ``completions[prompt][sample]``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    input_ids = batch.input_ids.repeat_interleave(num_samples, dim=0)  # (B*n, L)
    attention_mask = batch.attention_mask.repeat_interleave(num_samples, dim=0)
    kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if batch.cache is not None:
        cache = copy.deepcopy(batch.cache)
        cache.batch_repeat_interleave(num_samples)
        kwargs[CACHE_ARGUMENT] = cache
    streams = _row_streams(value_pools, setting, len(batch), num_samples)
    eos_ids = end_token_ids(model.llm, tokenizer)
    devices = [input_ids.device] if input_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if compact:
            new_tokens, *values = _decode_compacting(model, tokenizer, input_ids, attention_mask, kwargs, setting,
                                                     streams, eos_ids)
        else:
            new_tokens, *values = _decode_with_generate(model, input_ids, attention_mask, kwargs, setting, streams)
    flat = [_completion(tokenizer, new_tokens[row], eos_ids, values, row) for row in range(new_tokens.shape[0])]
    return [flat[start : start + num_samples] for start in range(0, len(flat), num_samples)]


def _decode_compacting(model, tokenizer, input_ids, attention_mask, kwargs, setting, streams, eos_ids):
    """``(new_tokens (R, steps), temperatures, top_ps, entropies)`` from :func:`decode_loop.decode_rows`."""
    max_new_tokens = kwargs["max_new_tokens"]
    room = room_after_prompt(input_ids.shape[1], context_length(model.llm))  # as AutoDecoForCausalLM.generate()
    if room is not None:
        max_new_tokens = min(max_new_tokens, room)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    decoded = decode_loop.decode_rows(
        model, input_ids, attention_mask, kwargs.get(CACHE_ARGUMENT), setting, max_new_tokens=max_new_tokens,
        end_ids=eos_ids, pad_token_id=pad, value_pools=streams,
        min_ended_fraction=decode_loop.COMPACT_MIN_ENDED_FRACTION,
    )
    return decoded.tokens, decoded.temperatures, decoded.top_ps, decoded.entropies


def _decode_with_generate(model, input_ids, attention_mask, kwargs, setting, streams):
    """``(new_tokens (R, steps), temperatures, top_ps, entropies)`` from transformers' ``generate()``."""
    if setting.kind == AUTODECO:
        recorder = EntropyRecorder()
        output = model.generate(
            input_ids, attention_mask, do_sample=True, return_dict_in_generate=True, logits_processor=[recorder],
            **kwargs,
        )
        sequences, temperatures, top_ps = output.sequences, output.temperatures, output.top_ps
        (entropies,) = blank_after_end(sequences, [recorder.recorded()], model.llm.generation_config.eos_token_id)
    elif setting.kind in METHOD_KINDS:
        output = generate_with_setting(model, input_ids, attention_mask, setting, value_pools=streams, **kwargs)
        sequences, temperatures, top_ps, entropies = (
            output.sequences, output.temperatures, output.top_ps, output.entropies
        )
    else:
        sequences = generate_with_base(
            model.llm, input_ids, attention_mask, sample=setting.kind == STATIC,
            temperature=setting.temperature, top_p=setting.top_p, **kwargs,
        )
        temperatures = top_ps = entropies = None
    return sequences[:, input_ids.shape[1] :], temperatures, top_ps, entropies


def _row_streams(value_pools, setting: DecodingSetting, prompts: int, num_samples: int) -> list | None:
    """One value stream per generated row (prompt-major), from a ``make_stream`` callable or a list."""
    if setting.kind not in POOL_KINDS:
        if value_pools is not None:
            raise ValueError(f"value_pools go with the shuffle controls ({', '.join(POOL_KINDS)}), not {setting.key!r}")
        return None
    if value_pools is None:
        raise ValueError(
            f"the {setting.kind} setting needs value_pools: make_stream(prompt_row, sample_index) or one stream per row"
        )
    if callable(value_pools):
        return [value_pools(row, sample) for row in range(prompts) for sample in range(num_samples)]
    streams = list(value_pools)
    if len(streams) != prompts * num_samples:
        raise ValueError(
            f"value_pools must hold one stream per generated row ({prompts} prompts x {num_samples} samples = "
            f"{prompts * num_samples}), got {len(streams)}"
        )
    return streams


def _completion(tokenizer, token_ids: torch.Tensor, eos_ids: list[int], values, row: int) -> Completion:
    ids = token_ids.tolist()
    end = next((index + 1 for index, token in enumerate(ids) if token in eos_ids), len(ids))
    ids = ids[:end]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    per_token = [None if value is None else value[row, :end].tolist() for value in values]  # T, P, H
    return Completion(text, ids, *per_token)


class HFRollouts:
    """The Hugging Face rollout engine: :func:`prefill` and :func:`complete` on a loaded model.

    ``autodeco sample`` and ``autodeco eval`` speak to a rollout engine through the contract
    :class:`autodeco.engines.base.RolloutEngine`; this one is the default, and another engine (vLLM's,
    :class:`autodeco.engines.vllm.VllmRollouts`) answers the same calls.
    """

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.max_model_len = context_length(model.llm)
        """Positions of the base's context, or None when unknown."""

    def close(self) -> None:
        """Nothing to free: the model belongs to the caller."""

    def prefill(self, rendered_prompts: list[str]) -> PromptBatch:
        return prefill(self.model.llm, self.tokenizer, rendered_prompts)

    def complete(self, batch: PromptBatch, setting: DecodingSetting, **options) -> list[list[Completion]]:
        return complete(self.model, self.tokenizer, batch, setting, **options)
