"""Continuous batching for the HF engine: concurrent requests share each decoding step.

One scheduler thread per engine (started by the first request, gone once none is left) runs rounds;
requests join and leave only between two rounds (step boundaries):

1. **Admit** at most one waiting request: its prompt is prefilled **alone** (a batch of one, no
   padding: ``generate()``'s own prefill, with ``logits_to_keep=1``) and its first token drawn from
   that prefill; unless that token ends it, the row joins the running batch (so a new request stalls
   the running ones for one prefill at most).
2. **Step** the running batch: the base runs once on every row's pending token ``(B, 1)``,
   :func:`~autodeco.core.dynamic.dynamic_step` once on ``(B, V)`` with each row's own multipliers, then
   each row draws its token from its own ``torch.Generator`` (the argmax of the float32 logits for a
   greedy row) exactly as ``generate()`` draws for a batch of one (:func:`draw_tokens`).
3. **Drop** the rows that ended (an end token, their ``max_tokens``), failed, or whose client left (checked
   before the step too) from the cache, the mask and the per-row state; columns that are padding in every
   remaining row are cut off.

**The running batch's cache** is one ``DynamicCache`` of ``S`` columns with rows aligned on the
right: row ``i``'s ``n_i`` tokens fill its last ``n_i`` columns, the attention mask is 0 on the
``S - n_i`` columns before them, and its position ids count its own tokens only (how ``generate()``
treats a left-padded batch). A row that joins with a shorter cache is padded on the left with zeros
(masked out); a longer one pads the batch instead. Its layers are :class:`BufferedLayer`: a step
writes its column in place instead of copying the layer. Without padding the mask is left out (the
fast attention path, as ``generate()`` does); under it, a step's attention keeps grouped key/value
heads grouped (:func:`grouped_sdpa_attention`, the same values as transformers' ``"sdpa"``).

**Several heads** (``HFEngine(..., more_heads=...)``): each row carries the heads its request asked for. A step
runs the base once on every row, then :func:`~autodeco.core.dynamic.dynamic_step` once per heads present
(:func:`step_by_heads`: the rows of each heads taken out, stepped, and put back in place); a batch whose rows
all use one heads steps all of them at once, as before.

**What is exact.** A request alone on the engine runs ``generate()``'s own shapes: its tokens and its
T and P equal ``AutoDecoForCausalLM.generate`` with the same seed, bitwise. In a crowd, its prefill,
its first token and its random stream stay its own: the prefill runs alone, and each row draws from
its own generator, seeded from the request's ``seed`` (a fresh random seed when it has none). Its
later steps run in a batch whose size and padding depend on the crowd, and there a row's logits are
*not* bitwise those of its solo run: on CPU, MKL computes a product of one row with a matrix-vector
kernel and, below twelve rows, the rows left over from blocks of four with yet other kernels, and
attention over a left-padded cache sums in another order. So in a crowd a request's T and P agree
with its solo run to float32 rounding (up to 2e-6 apart on SmolLM2-135M), and its tokens are the same
unless a draw falls within that rounding of a boundary (two tokens' chances, or the nucleus cut): none
differed in the thousands of tokens ``benchmarks/serve_batching.py`` compares (figures in its README).
Bitwise rows would need every step padded to at least twelve rows and attention computed row by row,
two to three times the cost of a lone request's step on this CPU.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import queue
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch
from transformers.cache_utils import DynamicLayer

from autodeco.core.dynamic import dynamic_step
from autodeco.engines.base import GenerationRequest
from autodeco.model.compat import CACHE_ARGUMENT, output_cache
from autodeco.model.generation import capture_output_head_input

DEFAULT_MAX_BATCH_SIZE = 32
"""Rows decoded together at most; further requests wait until a row ends."""

CACHE_SPARE_COLUMNS = 64
"""Free columns each layer of the running batch's cache keeps on its right (:class:`BufferedLayer`): a step writes
its keys and values there in place, where ``DynamicLayer`` copies the whole layer into a fresh tensor (on CPU,
mostly page faults: a 16-row step of SmolLM2-135M took 252 ms with those copies, 209 ms without). A layer moves
to a larger buffer once every this many steps, and when rows join or leave."""

END = object()
"""Put on a row's queue once it has left the batch (after its last token, an error or a cancellation)."""


class Drawn(NamedTuple):
    """One token handed from the scheduler to its request's consumer."""

    token_id: int
    temperature: float
    """The T used for it, after the request's multiplier."""
    top_p: float
    """The P used for it, after the request's multiplier (at most 1)."""
    finish_reason: str | None
    """``"stop"``, ``"length"``, or None while the request goes on."""


def finish_reason_for(token_id: int, count: int, max_tokens: int, end_ids) -> str | None:
    """Why a generation ends at its ``count``-th token ``token_id``: ``"stop"`` (an end token), ``"length"``
    (``max_tokens`` reached), or None when it goes on.

    Example:
        >>> finish_reason_for(2, 3, 8, [2]), finish_reason_for(5, 8, 8, [2]), finish_reason_for(5, 3, 8, [2])
        ('stop', 'length', None)
    """
    return "stop" if token_id in end_ids else ("length" if count >= max_tokens else None)


def pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``tensor`` with zeros put before its entries along ``dim`` so that it is ``width`` long there.

    Example:
        >>> pad_left(torch.tensor([[1, 1]]), 4, dim=1)
        tensor([[0, 0, 1, 1]])
    """
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


GROUPED_ATTENTION = "autodeco_grouped_sdpa"
"""The attention implementation the scheduler's padded decoding steps run under (:func:`grouped_sdpa_attention`),
registered with transformers by :func:`register_grouped_attention`."""


def grouped_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' ``"sdpa"`` attention, except that a decoding step under a padding mask hands grouped key and
    value heads to torch as they are (``enable_gqa=True``).

    Under a mask, transformers first repeats them to one per query head (on CPU), copying the layer's whole cache
    at every step: for 16 rows of SmolLM2-135M at 100 positions (3 key/value heads for 9 query heads), 1.3 ms per
    layer against 0.6 ms, about 20 ms a step. torch's CPU kernel reads each group in place and returns the same
    values (``tests/engines/test_hf_batching.py`` checks them bitwise). Every other call (no mask, several query
    positions, a position bias, one group) is transformers' own. Used on CPU only: on CUDA, transformers repeats
    the heads on purpose (a mask with ``enable_gqa`` falls back to the slow kernel there).

    Args:
        module: the attention module (its ``num_key_value_groups``).
        query: ``(B, heads, 1, d)``.
        key, value: ``(B, kv_heads, S, d)``.
        attention_mask: ``(B, 1, 1, S)`` bool, False on padding.
        dropout, scaling, kwargs: as transformers passes them.

    Returns:
        ``((B, 1, heads, d), None)``, as transformers' attention functions return.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if attention_mask is None or query.shape[2] != 1 or groups == 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )  # (B, heads, 1, d)
    return output.transpose(1, 2).contiguous(), None


def register_grouped_attention() -> bool:
    """Register :data:`GROUPED_ATTENTION` with transformers (its masks: those of ``"sdpa"``); idempotent.

    Returns:
        whether the installed transformers has the registries (else padded steps keep ``"sdpa"``).
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return False
    AttentionInterface.register(GROUPED_ATTENTION, grouped_sdpa_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return True


@contextlib.contextmanager
def grouped_attention(llm, wanted: bool):
    """Run the block under :data:`GROUPED_ATTENTION` when ``wanted`` and ``llm`` runs ``"sdpa"``; restore it after.

    The switch is on the model's config, so a forward another thread runs meanwhile goes through it too: it
    computes the same values (the function falls back to ``"sdpa"`` for anything but a padded decoding step).
    """
    config = llm.config
    if not wanted or config._attn_implementation != "sdpa":
        yield
        return
    config._attn_implementation = GROUPED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


class RowSampling:
    """One request's sampling state: its multipliers and its own random stream.

    Args:
        request: the request (its ``temperature`` and ``top_p`` multipliers, ``seed``, greedy or not).
        device: where the generator draws (the model's device).

    Example:
        >>> sampling = RowSampling(GenerationRequest(prompt_ids=[1], max_tokens=1, temperature=0.5, seed=3), "cpu")
        >>> sampling.temperature, sampling.greedy, sampling.generator.initial_seed()
        (0.5, False, 3)
    """

    def __init__(self, request: GenerationRequest, device: torch.device | str):
        applied = request.multipliers.applied()  # a greedy row's T is recorded, not used
        self.greedy = request.greedy
        self.temperature, self.top_p = applied.temperature, applied.top_p
        self.generator = torch.Generator(device=device)
        if request.seed is None:
            self.generator.seed()  # a fresh random seed
        else:
            self.generator.manual_seed(request.seed)


def draw_tokens(logits: torch.Tensor, warped: torch.Tensor | None, samplings: list[RowSampling]) -> list[int | None]:
    """Each row's next token, as ``generate()`` would choose it for that row alone.

    A greedy row takes the argmax of its ``logits``. A sampled row gets exactly
    ``torch.multinomial(softmax(warped[i:i+1]), 1, generator=samplings[i].generator)``: torch draws one token as
    ``argmax(probs / q)`` with ``q ~ Exp(1)`` of the row's size from the generator; here only the ``q`` are drawn
    row by row (each from its own generator), the softmax, the division and the argmax run on the whole batch.

    Args:
        logits: ``(B, V)`` float32 logits of the step.
        warped: ``(B, V)`` the sampling logits (:func:`~autodeco.core.dynamic.dynamic_step`'s), or None when
            every row is greedy.
        samplings: each row's :class:`RowSampling`.

    Returns:
        one token id per row; None for a sampled row whose distribution ``torch.multinomial`` refuses (the softmax
        of logits holding NaN or ``+inf``, or of logits all ``-inf``: NaN everywhere).

    Example (row 0 greedy, row 1 sampled where only token 2 has mass):
        >>> rows = [RowSampling(GenerationRequest(prompt_ids=[1], max_tokens=1, temperature=temperature), "cpu")
        ...         for temperature in (0.0, 1.0)]
        >>> logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
        >>> draw_tokens(logits, torch.tensor([[0.0, 0.0, 0.0], [-torch.inf, -torch.inf, 0.0]]), rows)
        [1, 2]
    """
    greedy = any(sampling.greedy for sampling in samplings)
    tokens = logits.argmax(dim=-1).tolist() if greedy else [None] * len(samplings)  # (B,)
    if warped is None:
        return tokens
    probs = warped.softmax(dim=-1)  # (B, V)
    noise = torch.ones_like(probs)  # (B, V): Exp(1) draws on the sampled rows
    sampled = [row for row, sampling in enumerate(samplings) if not sampling.greedy]
    for row in sampled:
        noise[row].exponential_(1, generator=samplings[row].generator)
    drawn = (probs / noise).argmax(dim=-1).tolist()  # (B,)
    valid = (probs.sum(dim=-1) > 0).tolist()  # a softmax is NaN everywhere or sums to 1: torch.multinomial's checks
    for row in sampled:
        tokens[row] = drawn[row] if valid[row] else None
    return tokens


def step_by_heads(
    heads: list, hidden: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, sample: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~autodeco.core.dynamic.dynamic_step` where row ``i`` uses ``heads[i]``: once per distinct heads, on its rows.

    Args:
        heads: each row's heads (the same object for rows that share heads).
        hidden: ``(B, H)``; logits: ``(B, V)``; temperature, top_p: ``(B,)`` the rows' multipliers.
        sample: return warped logits (else the logits themselves, as ``dynamic_step``).

    Returns:
        ``(warped (B, V), temperature (B,), top_p (B,))``, each row's from its own heads.

    Example (one heads for every row: one call, exactly ``dynamic_step``):
        >>> from autodeco.engines.heads_sets import plain_base_heads
        >>> base = plain_base_heads(4, 3)
        >>> _, used, _ = step_by_heads([base, base], torch.zeros(2, 4), torch.zeros(2, 3), torch.tensor([0.5, 2.0]),
        ...                            torch.ones(2), True)
        >>> used.tolist()
        [0.5, 2.0]
    """
    groups: dict[int, list[int]] = {}
    for index, row_heads in enumerate(heads):
        groups.setdefault(id(row_heads), []).append(index)
    if len(groups) == 1:
        return dynamic_step(heads[0], hidden, logits, temperature, top_p, sample)
    warped = logits.new_empty(logits.shape, dtype=torch.float32) if sample else logits  # (B, V)
    used_temperature = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)  # (B,)
    used_top_p = torch.empty_like(used_temperature)  # (B,)
    for indices in groups.values():
        rows = torch.tensor(indices, device=logits.device)  # (G,)
        group_warped, group_temperature, group_top_p = dynamic_step(
            heads[indices[0]], hidden.index_select(0, rows), logits.index_select(0, rows),
            temperature.index_select(0, rows), top_p.index_select(0, rows), sample,
        )  # (G, V), (G,), (G,)
        if sample:
            warped.index_copy_(0, rows, group_warped.float())
        used_temperature.index_copy_(0, rows, group_temperature)
        used_top_p.index_copy_(0, rows, group_top_p)
    return warped, used_temperature, used_top_p


class BatchRow:
    """One request inside the scheduler: its sampling state, its progress, and the queue its tokens go to."""

    def __init__(self, request: GenerationRequest, max_tokens: int, device: torch.device, heads=None):
        self.request = request
        self.max_tokens = max_tokens
        self.heads = heads
        """The heads deciding this row's T and P (None: the model's own)."""
        self.sampling = RowSampling(request, device)
        self.count = 0  # tokens generated so far
        self.queue: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        """Set by the consumer (its client left, or it has what it needs): the row leaves at the next boundary."""
        self.released = threading.Event()
        """Set once the row has left the scheduler for good."""

    def emit(self, token_id: int, temperature: float, top_p: float, end_ids) -> bool:
        """Hand the row's next token to its consumer; True when that token ends the row."""
        self.count += 1
        finish = finish_reason_for(token_id, self.count, self.max_tokens, end_ids)
        self.queue.put(Drawn(token_id, temperature, top_p, finish))
        return finish is not None

    def release(self, error: BaseException | None = None) -> None:
        """The row leaves the scheduler: its consumer gets ``error`` (if any), then the end of its tokens."""
        if self.released.is_set():
            return
        if error is not None:
            self.queue.put(error)
        self.queue.put(END)
        self.released.set()

    def tokens(self) -> Iterator[Drawn]:
        """The row's tokens as they come (blocking); re-raises an error the scheduler handed over."""
        return queued_items(self.queue)


def queued_items(items: queue.Queue) -> Iterator:
    """What a producer thread puts on ``items``, as it comes (blocking), up to :data:`END`; a put exception is raised."""
    while True:
        item = items.get()
        if item is END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class BufferedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with spare columns: ``update`` appends in place.

    Example:
        >>> layer = BufferedLayer.holding(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4))
        >>> keys, values = layer.update(torch.ones(2, 1, 1, 4), torch.ones(2, 1, 1, 4))
        >>> keys.shape, layer.get_seq_length(), keys[0, 0, :, 0].tolist()
        (torch.Size([2, 1, 4, 4]), 4, [0.0, 0.0, 0.0, 1.0])
    """

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor) -> BufferedLayer:
        """A layer holding copies of ``keys`` and ``values`` ``(B, heads, S, d)``."""
        layer = cls()
        layer.hold(keys, values)
        return layer

    def hold(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Copy ``keys`` and ``values`` ``(B, heads, S, d)`` into new buffers, :data:`CACHE_SPARE_COLUMNS` to spare."""
        length = keys.shape[-2]
        buffers = []
        for states in (keys, values):
            batch, heads, _, dim = states.shape
            buffer = states.new_empty((batch, heads, length + CACHE_SPARE_COLUMNS, dim))  # (B, heads, S + spare, d)
            buffer[:, :, :length] = states
            buffers.append(buffer)
        self.key_buffer, self.value_buffer = buffers
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states`` and ``value_states`` ``(B, heads, n, d)``; return all keys and values so far."""
        length, end = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            self.hold(self.keys, self.values)
        self.key_buffer[:, :, length:end] = key_states
        self.value_buffer[:, :, length:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


class RunningBatch:
    """The rows decoding together: one left-padded cache, its mask, and each row's pending token and position.

    Only the scheduler thread touches it.
    """

    def __init__(self):
        self.rows: list[BatchRow] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        """``(B, S)`` long: 1 on each row's tokens, 0 on its left padding."""
        self.tokens: torch.Tensor | None = None
        """``(B,)`` each row's pending token: drawn and streamed, not yet run through the base."""
        self.positions: torch.Tensor | None = None
        """``(B,)`` the position id of each pending token (the number of tokens before it in its row)."""

    def add(self, row: BatchRow, cache, token: int) -> None:
        """Add a row whose prompt ``cache`` (batch of one) was just prefilled and whose next input is ``token``."""
        length = cache.get_seq_length()
        device = cache.layers[0].keys.device
        mask = torch.ones((1, length), dtype=torch.long, device=device)  # (1, L)
        token_tensor = torch.tensor([token], device=device)  # (1,)
        position = torch.tensor([len(row.request.prompt_ids)], device=device)  # (1,) = L
        if not self.rows:
            self.cache, self.mask, self.tokens, self.positions = cache, mask, token_tensor, position
            cache.layers[:] = [BufferedLayer.holding(layer.keys, layer.values) for layer in cache.layers]
        else:
            width = max(self.mask.shape[1], length)
            for layer, new in zip(self.cache.layers, cache.layers):
                layer.hold(
                    torch.cat([pad_left(layer.keys, width, -2), pad_left(new.keys, width, -2)]),  # (B + 1, h, S', d)
                    torch.cat([pad_left(layer.values, width, -2), pad_left(new.values, width, -2)]),
                )
            self.mask = torch.cat([pad_left(self.mask, width, 1), pad_left(mask, width, 1)])  # (B + 1, S')
            self.tokens = torch.cat([self.tokens, token_tensor])
            self.positions = torch.cat([self.positions, position])
        self.rows.append(row)

    def step_inputs(self, logits_to_keep: bool) -> dict:
        """The base's keyword arguments for one step over every row's pending token."""
        mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)  # (B, S + 1)
        self.mask = mask  # the step appends one column to the cache
        inputs = {
            "input_ids": self.tokens.unsqueeze(1),  # (B, 1)
            "attention_mask": None if bool(mask.all()) else mask,
            "position_ids": self.positions.unsqueeze(1),  # (B, 1)
            CACHE_ARGUMENT: self.cache,
            "use_cache": True,
        }
        return {**inputs, "logits_to_keep": 1} if logits_to_keep else inputs

    def advance(self, tokens: list[int]) -> None:
        """After a step: each row's new pending token (``tokens``, one per row) one position further."""
        self.tokens = torch.tensor(tokens, device=self.tokens.device)  # (B,)
        self.positions = self.positions + 1

    def keep(self, indices: list[int]) -> list[BatchRow]:
        """Keep the rows at ``indices`` (in that order) and return the others; cut columns of padding only."""
        kept = set(indices)
        dropped = [row for index, row in enumerate(self.rows) if index not in kept]
        if not dropped:
            return []
        if not indices:
            self.rows, self.cache, self.mask, self.tokens, self.positions = [], None, None, None, None
            return dropped
        selected = torch.tensor(indices, device=self.mask.device)  # (B',)
        self.mask, self.tokens, self.positions = self.mask[selected], self.tokens[selected], self.positions[selected]
        self.rows = [self.rows[index] for index in indices]
        padding = int((self.mask.shape[1] - self.mask.sum(dim=1)).min())  # leading columns masked in every row
        self.mask = self.mask[:, padding:]  # (B', S - padding)
        for layer in self.cache.layers:
            layer.hold(layer.keys[selected, :, padding:], layer.values[selected, :, padding:])  # (B', h, S', d)
        return dropped


def batching_unsupported_reason(llm) -> str | None:
    """Why the batching scheduler cannot run ``llm`` (None when it can), from the cache of a one-token forward.

    Rows join a batch by padding their caches on the left, which needs every cache layer to be a plain
    ``DynamicLayer`` (no sliding window, linear attention or quantized states).
    """
    with torch.no_grad():
        output = llm(input_ids=torch.zeros((1, 1), dtype=torch.long, device=llm.device), use_cache=True)
    cache = output_cache(output)
    layers = getattr(cache, "layers", None)
    kinds = sorted({type(layer).__name__ for layer in layers or ()})
    if not layers or kinds != ["DynamicLayer"]:
        return (f"{type(llm).__name__} keeps a cache of {type(cache).__name__} with layers {kinds or 'unknown'}, "
                "not only DynamicLayer; continuous batching pads plain key-value caches only")
    return None


class BatchScheduler:
    """Decode the requests of one model together, in a thread that lives while there are requests.

    Args:
        model: the :class:`~autodeco.model.modeling.AutoDecoForCausalLM` (its heads decide T and P).
        end_ids: the token ids that end a generation.
        max_batch_size: rows decoded together at most.
    """

    def __init__(self, model, end_ids: list[int], max_batch_size: int = DEFAULT_MAX_BATCH_SIZE):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, but is {max_batch_size!r}")
        self.model = model
        self.end_ids = list(end_ids)
        self.max_batch_size = max_batch_size
        self.logits_to_keep = "logits_to_keep" in inspect.signature(model.llm.forward).parameters
        self.grouped_attention = model.device.type == "cpu" and register_grouped_attention()
        """Whether padded steps run :func:`grouped_sdpa_attention` (on CPU, when transformers has the registries)."""
        self.batch = RunningBatch()
        self.steps = 0
        """Batched decoding steps run so far (each prefill is one more forward)."""
        self.row_steps = 0
        """Rows summed over those steps (``row_steps / steps`` is the mean batch size)."""
        self._waiting: collections.deque[BatchRow] = collections.deque()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._last_thread: threading.Thread | None = None
        self._closed = False

    # ----------------------------------------------------------------------------- the consumers' side

    def submit(self, request: GenerationRequest, max_tokens: int, heads=None) -> BatchRow:
        """Queue ``request`` (at most ``max_tokens`` tokens, decoded with ``heads``, default the model's own) for the
        next step boundary; its row streams its tokens."""
        row = BatchRow(request, max_tokens, self.model.device, heads)
        with self._condition:
            if self._closed:
                raise RuntimeError("the engine is closed (the server is shutting down)")
            self._waiting.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="autodeco-hf-batch", daemon=True)
                self._thread.start()
        return row

    def cancel(self, row: BatchRow) -> None:
        """Take ``row`` out at the next step boundary and wait until it is out (and the thread, if now idle, gone)."""
        row.cancelled.set()
        with self._condition:
            if row in self._waiting:
                self._waiting.remove(row)
                row.release()
            if threading.current_thread() is self._thread:  # a stream finalized on the scheduler thread: never wait
                return
        row.released.wait()
        self._join_if_idle()

    def close(self) -> None:
        """Stop every request (each stream ends without a finish reason), wait for the thread, refuse new ones."""
        with self._condition:
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._release_everything()

    def _join_if_idle(self) -> None:
        """Join the scheduler thread when it is leaving for lack of work, so that no idle thread lingers."""
        with self._condition:
            self._condition.wait_for(lambda: self._thread is None or bool(self._waiting or self.batch.rows))
            leaving = self._last_thread if self._thread is None else None
        if leaving is not None and leaving is not threading.current_thread():
            leaving.join()

    # ---------------------------------------------------------------------------- the scheduler thread

    def _run(self) -> None:
        try:
            while self._round():
                pass
        except BaseException as error:  # a fault of the loop itself: every row gets it, later requests start afresh
            self._release_everything(error)
            with self._condition:
                self._leave()

    def _round(self) -> bool:
        """One step boundary: admit a waiting request, then step the batch; False once there is nothing left to do."""
        with self._condition:
            if self._closed or not (self._waiting or self.batch.rows):
                self._leave()
                return False
            admitted = self._waiting.popleft() if self._waiting and len(self.batch.rows) < self.max_batch_size else None
        if admitted is not None:
            self._admit(admitted)
        self._step()
        return True

    def _leave(self) -> None:
        """Mark the thread as gone (under the condition's lock) and wake those waiting for it."""
        self._last_thread, self._thread = self._thread, None
        self._condition.notify_all()

    def _release_everything(self, error: BaseException | None = None) -> None:
        """Every waiting and running row leaves, its consumer getting ``error`` (if any) and the end of its tokens."""
        with self._condition:
            rows = list(self._waiting) + self.batch.keep([])
            self._waiting.clear()
        for row in rows:
            row.release(error)

    @torch.no_grad()
    def _admit(self, row: BatchRow) -> None:
        """Prefill ``row``'s prompt alone, hand over its first token, and add it to the batch unless it ended."""
        if row.cancelled.is_set():
            row.release()
            return
        try:
            input_ids = torch.tensor([row.request.prompt_ids], device=self.model.device)  # (1, L)
            keep = {"logits_to_keep": 1} if self.logits_to_keep else {}
            with capture_output_head_input(self.model.llm) as capture:
                output = self.model.llm(input_ids=input_ids, use_cache=True, **keep)
            token = self._draw([row], output.logits, capture.hidden_states)[0]
        except Exception as error:  # this request's own failure (its prompt): the batch goes on
            row.release(error)
            return
        if token is None or row.cancelled.is_set():
            row.release()
        else:
            self.batch.add(row, output_cache(output), token)

    @torch.no_grad()
    def _step(self) -> None:
        """One decoding step of every row in the batch; rows that end or were cancelled leave it."""
        batch = self.batch
        for row in batch.keep([index for index, row in enumerate(batch.rows) if not row.cancelled.is_set()]):
            row.release()
        if not batch.rows:
            return
        try:
            inputs = batch.step_inputs(self.logits_to_keep)
            grouped = self.grouped_attention and inputs["attention_mask"] is not None  # padded, on CPU
            with capture_output_head_input(self.model.llm) as capture, grouped_attention(self.model.llm, grouped):
                output = self.model.llm(**inputs)
            self.steps, self.row_steps = self.steps + 1, self.row_steps + len(batch.rows)
            tokens = self._draw(batch.rows, output.logits, capture.hidden_states)
        except Exception as error:  # the shared forward failed: no row can go on (the batch is empty afterwards)
            for row in batch.keep([]):
                row.release(error)
            return
        batch.advance([0 if token is None else token for token in tokens])
        for row in batch.keep([index for index, token in enumerate(tokens) if token is not None]):
            row.release()

    def _draw(self, rows: list[BatchRow], logits: torch.Tensor, hidden: torch.Tensor) -> list[int | None]:
        """Choose and hand over each row's next token from a forward's ``logits (B, *, V)`` and the output head's
        input ``hidden (B, *, H)``; None for a row that ended with it or failed (a failure goes to that row only)."""
        last_logits = logits[:, -1].to(copy=True, dtype=torch.float32)  # (B, V), as generate() copies them
        samplings = [row.sampling for row in rows]
        temperature = torch.tensor([sampling.temperature for sampling in samplings], device=last_logits.device)  # (B,)
        top_p = torch.tensor([sampling.top_p for sampling in samplings], device=last_logits.device)  # (B,)
        sample = not all(sampling.greedy for sampling in samplings)
        hidden = hidden[:, -1, :]  # (B, H)
        heads = [self.model if row.heads is None else row.heads for row in rows]
        warped, temperatures, top_ps = step_by_heads(heads, hidden, last_logits, temperature, top_p, sample)
        tokens = draw_tokens(last_logits, warped if sample else None, samplings)
        temperatures, top_ps = temperatures.tolist(), top_ps.tolist()
        for index, (row, token) in enumerate(zip(rows, tokens)):
            if token is None:
                row.release(ValueError(
                    "the sampling distribution holds a NaN, an infinity or no mass (T = "
                    f"{temperatures[index]!r}, P = {top_ps[index]!r}); the request cannot go on"
                ))
            elif row.emit(token, temperatures[index], top_ps[index], self.end_ids):
                tokens[index] = None
        return tokens
