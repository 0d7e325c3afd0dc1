"""A decoding loop whose batch shrinks as rows end.

Hugging Face's ``generate()`` runs every row of a batch until the *last* row has ended: a row that
emitted its end-of-sequence token keeps getting forward passes (fed padding) for nothing. When many
completions of very different lengths are drawn together (``autodeco eval``, ``autodeco sample``),
that is a large share of the compute. :func:`decode_rows` continues from a prefilled KV cache like
``generate()`` does, and once enough rows have ended it drops them from the batch: from the cache
(``cache.batch_select_indices``), the attention mask, the position ids and every per-row state (the
shuffle controls' value streams).

Each step chooses tokens exactly as ``generate()`` does for the same setting, with the same code:
greedy takes the argmax of the float32 logits; the other kinds warp the logits and draw one token per
row with ``torch.multinomial(softmax(warped))`` from torch's global generator (static: temperature,
then top-p as transformers' warpers define it, through :func:`~autodeco.core.decoding.warp_logits`;
AutoDeco: :func:`~autodeco.core.dynamic.dynamic_step` on the output head's input; the methods:
:func:`~autodeco.sampling.policies.method_step`). Until the first rows leave, the random draws are
therefore those of ``generate()`` on the same batch; afterwards every remaining row still samples
from its own exact distribution, only from a different part of the random stream.

Example (a tiny random model, greedy, token 4 ends a row: rows 2 and 0 end after 1 and 2 tokens and leave the
batch, so the base runs 3 + 2 + 1 + 1 + 1 + 1 = 9 rows instead of generate()'s 3 x 6 = 18):
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from autodeco.model.modeling import AutoDecoForCausalLM
    >>> _ = torch.manual_seed(0)
    >>> llm = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                    num_attention_heads=2, num_key_value_heads=1))
    >>> model = AutoDecoForCausalLM.from_base(llm, seed=0)
    >>> prompts = torch.tensor([[3, 4, 9], [0, 8, 9], [7, 7, 7]])
    >>> rows = decode_rows(model, prompts, (prompts > 0).long(), None, DecodingSetting.greedy(),
    ...                    max_new_tokens=6, end_ids={4}, pad_token_id=0)
    >>> rows.tokens.tolist(), rows.row_steps
    ([[14, 4, 0, 0, 0, 0], [8, 10, 1, 9, 6, 5], [4, 0, 0, 0, 0, 0]], 9)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Collection, Sequence

import torch

from autodeco.core.adaptive import entropy
from autodeco.core.decoding import warp_logits
from autodeco.core.dynamic import dynamic_step
from autodeco.model.compat import CACHE_ARGUMENT, output_cache
from autodeco.model.generation import capture_output_head_input
from autodeco.sampling.policies import method_step
from autodeco.sampling.settings import (
    AUTODECO,
    GREEDY,
    METHOD_KINDS,
    POOL_KINDS,
    STATIC,
    TEMPERATURE_HEAD,
    TOP_P_HEAD,
    DecodingSetting,
)

COMPACT_MIN_ENDED_FRACTION = 0.25
"""Drop ended rows once at least this fraction of the batch has ended (0: at every step where a row ends).

Each drop copies the KV cache of the rows kept; waiting until a quarter of the rows have ended bounds
the copies to a few per batch while keeping most of the saving (``benchmarks/compact_rows.py``)."""

_SELECTABLE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")
"""Cache layers whose ``batch_select_indices`` keeps the whole per-row state (no linear-attention or quantized state)."""


@dataclasses.dataclass
class DecodedRows:
    """What :func:`decode_rows` returns, one row per input row, in input order."""

    tokens: torch.Tensor
    """``(R, steps)`` generated ids, ``pad_token_id`` after each row's end token; ``steps <= max_new_tokens``."""
    temperatures: torch.Tensor | None
    """``(R, steps)`` temperature used per token (0 for a greedy step; NaN after the end); None for greedy/static."""
    top_ps: torch.Tensor | None
    """``(R, steps)`` top-p used per token (truncation samplers: the mass kept; NaN after the end); or None."""
    entropies: torch.Tensor | None
    """``(R, steps)`` entropy in nats of the base's next-token distribution (NaN after the end); or None."""
    row_steps: int
    """Rows summed over the forward passes run: what the base computed (``generate()`` runs ``R * steps``)."""


class _RowChooser:
    """Next tokens of the rows in the batch under one setting, and the values used (the setting's own step code)."""

    def __init__(self, model, setting: DecodingSetting, capture, streams: list | None):
        self.model, self.setting, self.capture = model, setting, capture
        self.streams = streams
        self.method = self._method_step()

    def _method_step(self):
        if self.setting.kind not in METHOD_KINDS:
            return None
        return method_step(self.setting, model=self.model, capture=self.capture, value_pools=self.streams)

    def select(self, keep: list[int]) -> None:
        """Keep the per-row state of the batch rows ``keep`` only (the value streams of the shuffle controls)."""
        if self.streams is not None:
            self.streams = [self.streams[row] for row in keep]
            self.method = self._method_step()

    def __call__(self, logits: torch.Tensor):
        """``logits (b, V)`` float32 -> ``(tokens (b,), temperature, top_p, entropy)`` (values ``(b,)`` or None)."""
        kind = self.setting.kind
        if kind == GREEDY:
            return logits.argmax(dim=-1), None, None, None
        temperature = top_p = entropies = None
        if kind == STATIC:
            warped = static_logits(logits, self.setting.temperature, self.setting.top_p)
        elif kind == AUTODECO:
            entropies = entropy(logits)  # (b,) of the base's own distribution
            hidden = self.capture.hidden_states[:, -1, :]  # (b, H)
            warped, temperature, top_p = dynamic_step(self.model, hidden, logits, 1.0, 1.0, sample=True)
        else:
            entropies = entropy(logits)
            warped, temperature, top_p = self.method(logits, entropies)
        tokens = torch.multinomial(warped.softmax(dim=-1), num_samples=1).squeeze(1)  # (b,) as generate() draws
        return tokens, temperature, top_p, entropies


def static_logits(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The logits transformers' temperature and top-p warpers sample from (each skipped at 1, as there).

    Example:
        >>> static_logits(torch.tensor([[2.0, 1.0, 0.0]]), 0.5, 0.5)
        tensor([[4., -inf, -inf]])
    """
    if top_p >= 1.0:
        return logits if temperature == 1.0 else logits / temperature
    rows = logits.shape[0]
    return warp_logits(
        logits, torch.full((rows,), temperature, device=logits.device), torch.full((rows,), top_p, device=logits.device)
    )


def _selectable(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ in _SELECTABLE_LAYERS for layer in layers)


@torch.no_grad()
def decode_rows(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    cache,
    setting: DecodingSetting,
    *,
    max_new_tokens: int,
    end_ids: Collection[int],
    pad_token_id: int,
    value_pools: Sequence | None = None,
    min_ended_fraction: float = COMPACT_MIN_ENDED_FRACTION,
) -> DecodedRows:
    """Decode up to ``max_new_tokens`` tokens per row, dropping ended rows from the batch as they end.

    Args:
        model: an :class:`~autodeco.model.modeling.AutoDecoForCausalLM` (greedy, static and most methods use
            its base ``model.llm`` only).
        input_ids, attention_mask: ``(R, L)`` left-padded prompts.
        cache: the base's cache over the first ``cache.get_seq_length()`` prompt positions (e.g. all but the last,
            from :func:`~autodeco.sampling.rollouts.prefill`), or None. It is changed: pass a copy to keep it.
        setting: any decoding setting (greedy, static, AutoDeco or a method).
        max_new_tokens: the most tokens generated per row.
        end_ids: the ids that end a row (it keeps its end token).
        pad_token_id: what fills ``tokens`` after a row's end.
        value_pools: the shuffle controls only: one value stream per row (``draw(entropy) -> (T, P)``).
        min_ended_fraction: drop ended rows once at least this fraction of the batch has ended (0: whenever a row
            ends; above 1: never, which reproduces ``generate()``'s random draws exactly).

    Returns:
        a :class:`DecodedRows`.

    Raises:
        ValueError: value pools missing, given to a setting without them, or not one per row.
    """
    rows = input_ids.shape[0]
    if (value_pools is not None) != (setting.kind in POOL_KINDS):
        raise ValueError(
            f"value_pools go with the shuffle controls ({', '.join(POOL_KINDS)}) and only with them; "
            f"setting {setting.key!r} got {'none' if value_pools is None else 'value pools'}"
        )
    if value_pools is not None and len(value_pools) != rows:
        raise ValueError(f"value_pools must hold one stream per row: got {len(value_pools)} for {rows} rows")
    device = input_ids.device
    records = setting.kind not in (GREEDY, STATIC)
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    values = [torch.full((rows, max_new_tokens), math.nan, device=device) for _ in range(3)] if records else None
    end_ids = torch.tensor(sorted(end_ids), dtype=torch.long, device=device)

    batch_rows = torch.arange(rows, device=device)  # (b,) input row of each batch row
    ended = torch.zeros(rows, dtype=torch.bool, device=device)  # (b,) ended rows still in the batch
    mask = attention_mask.long()
    positions = mask.cumsum(dim=-1) - 1  # (b, L) as generate() computes them
    past = 0 if cache is None else cache.get_seq_length()
    step_ids, step_positions = input_ids[:, past:], positions[:, past:].masked_fill(mask[:, past:] == 0, 0)
    padded = not bool(mask.all())  # without padding the mask is left out, as generate() does (a faster attention)
    row_steps = steps = 0
    uses_hidden = setting.kind in (AUTODECO, TEMPERATURE_HEAD, TOP_P_HEAD)
    with capture_output_head_input(model.llm) if uses_hidden else contextlib.nullcontext() as capture:
        chooser = _RowChooser(model, setting, capture, None if value_pools is None else list(value_pools))
        for step in range(max_new_tokens):
            arguments = {CACHE_ARGUMENT: cache} if cache is not None else {}
            output = model.llm(
                input_ids=step_ids, attention_mask=mask if padded else None, position_ids=step_positions,
                use_cache=True, **arguments,
            )
            cache = output_cache(output)
            row_steps += step_ids.shape[0]
            steps = step + 1
            logits = output.logits[:, -1].to(copy=True, dtype=torch.float32)  # (b, V), as generate() copies them
            del output
            chosen, temperature, top_p, entropies = chooser(logits)
            live = ~ended  # (b,)
            chosen = chosen.masked_fill(ended, pad_token_id)  # ended rows are fed padding, as in generate()
            tokens[batch_rows[live], step] = chosen[live]
            if records:
                for record, value in zip(values, (temperature, top_p, entropies)):
                    record[batch_rows[live], step] = value[live].float()
            ended = ended | torch.isin(chosen, end_ids)
            if bool(ended.all()):
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)  # (b, L + step + 1)
            step_ids, step_positions = chosen[:, None], step_positions[:, -1:] + 1  # (b, 1) each
            if int(ended.sum()) >= max(1.0, min_ended_fraction * ended.numel()) and _selectable(cache):
                keep = (~ended).nonzero().squeeze(1)  # (b',)
                cache.batch_select_indices(keep)
                mask, step_ids, step_positions = mask[keep], step_ids[keep], step_positions[keep]
                batch_rows, ended = batch_rows[keep], ended[keep]
                chooser.select(keep.tolist())
                padded = padded and not bool(mask.all())
    tokens = tokens[:, :steps]
    temperatures, top_ps, entropies = (value[:, :steps] for value in values) if records else (None, None, None)
    return DecodedRows(tokens, temperatures, top_ps, entropies, row_steps)
