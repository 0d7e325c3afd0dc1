"""The Hugging Face engine: :class:`~autodeco.engines.base.Engine` over ``AutoDecoForCausalLM``.

Two ways to run requests, both with exactly the decoding of
:meth:`~autodeco.model.modeling.AutoDecoForCausalLM.generate` for a request alone:

- ``HFEngine(..., batching=True)`` (what ``autodeco serve --engine hf`` runs) **batches concurrent requests
  continuously** (:mod:`autodeco.engines.hf_batching`): a scheduler thread adds each new request to the
  running batch at a step boundary (its prompt prefilled alone), decodes every row with one forward pass
  per step, each row with its own multipliers and its own seeded generator, and drops the rows that end or
  whose client left. A request's tokens and values in a crowd equal its solo run to float32 rounding (the
  module's docstring says what is exact and what is not).
- ``HFEngine(...)`` (``batching=False``, the default) **serializes** requests: each runs the model's own token
  stream (:meth:`~autodeco.model.modeling.AutoDecoForCausalLM.generate_dynamic`, what ``generate()`` runs) in a
  worker thread, one at a time in arrival order (a lock), and a streamer hands each token, with the T and P
  used for it, to the caller as it comes. Concurrent requests wait, and get bitwise their sequential answers.

**Several heads on one base** (:meth:`HFEngine.from_checkpoints`, ``autodeco serve HEADS HEADS ...``): the engine
serves the model's own heads as ``model_name``, more heads checkpoints of the same base (``more_heads``) and,
if asked, the base without heads (``plain_base_name``: the request's temperature and top-p are then absolute
values, :mod:`autodeco.engines.heads_sets`). A request's ``heads`` picks one; the base runs once for all of
them. Serialized, a request runs ``generate()`` with its heads' processor; batched, the rows of one step are
grouped by heads and each group's T and P come from its own heads (:mod:`autodeco.engines.hf_batching`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import os
from collections.abc import Iterator, Mapping

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from autodeco.engines.base import GenerationRequest, TokenEvent
from autodeco.engines.hf_batching import (
    DEFAULT_MAX_BATCH_SIZE,
    BatchScheduler,
    END,
    Drawn,
    batching_unsupported_reason,
    finish_reason_for,
    queued_items,
)
from autodeco.engines.heads_sets import check_one_base, check_plain_base_top_p, heads_ids, plain_base_heads
from autodeco.engines.text import IncrementalText, StopStrings
from autodeco.model.base_model import check_token_ids, context_length, end_token_ids, room_after_prompt
from autodeco.model.generation import AutoDecoLogitsProcessor, capture_output_head_input, generate_with_base


class HFEngine:
    """Serve an :class:`~autodeco.model.modeling.AutoDecoForCausalLM`, one request at a time or batched.

    Args:
        model: the model (its heads decide T and P).
        tokenizer: its Hugging Face tokenizer.
        model_name: the id served in ``/v1/models``.
        eos_token_ids: ids that end a generation (default: the base's ``generation_config`` end ids and the
            tokenizer's ``eos_token_id``).
        batching: decode concurrent requests together (continuous batching, ``autodeco serve``'s choice);
            False (the default) runs them one at a time through ``generate()``.
        max_batch_size: with batching, the most requests decoded together (others wait for a row to end).
        more_heads: more heads on the same base, by the id they are served under
            (:class:`~autodeco.model.heads.AutoDecoHeads` on the model's device; :meth:`from_checkpoints` loads them).
        plain_base_name: also serve the base without heads under this id (absolute temperature and top-p).

    Raises:
        ValueError: ``batching`` on a base whose cache cannot be padded (sliding-window or linear-attention
            layers; see :func:`~autodeco.engines.hf_batching.batching_unsupported_reason`), a bad
            ``max_batch_size``, or an id served twice.

    Example:
        >>> engine = HFEngine(model, tokenizer, "tiny")  # doctest: +SKIP
        >>> events = list(engine.stream(GenerationRequest(prompt_ids=[5, 6], max_tokens=3, seed=0)))  # doctest: +SKIP
        >>> [(event.text, round(event.temperature, 2), event.finish_reason) for event in events]  # doctest: +SKIP
        [('a', 0.91, None), ('b', 0.88, None), ('c', 0.9, 'length')]
    """

    def __init__(
        self,
        model,
        tokenizer,
        model_name: str,
        *,
        eos_token_ids: list[int] | None = None,
        batching: bool = False,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        more_heads: Mapping[str, torch.nn.Module] | None = None,
        plain_base_name: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.heads = _served_heads(model, model_name, more_heads or {}, plain_base_name)
        """Served id -> the heads that decode its requests (the model itself for ``model_name``)."""
        self.model_names = list(self.heads)
        """Every id served, ``model_name`` first (:func:`~autodeco.engines.heads_sets.served_model_names`)."""
        self.plain_base_name = plain_base_name
        self.max_model_len = context_length(model.llm)
        """Positions of the base's context (prompt + generated tokens), or None when unknown."""
        self.eos_token_ids = end_token_ids(model.llm, tokenizer) if eos_token_ids is None else list(eos_token_ids)
        self.pad_token_id = _pad_token_id(tokenizer, self.eos_token_ids)
        self.scheduler = None
        """The continuous-batching scheduler (None when ``batching`` is off)."""
        if batching:
            reason = batching_unsupported_reason(model.llm)
            if reason is not None:
                raise ValueError(f"{reason}; serve this base with HFEngine(..., batching=False), one request at a time")
            self.scheduler = BatchScheduler(model, self.eos_token_ids, max_batch_size)
        self._lock = threading.Lock()
        self._active: set = set()
        self._closed = False

    @classmethod
    def from_checkpoints(
        cls,
        references: list[str | os.PathLike],
        *,
        base: str | None = None,
        model_names: list[str] | None = None,
        plain_base: bool = False,
        seed: int = 0,
        **options,
    ) -> "HFEngine":
        """One engine serving several heads checkpoints on their one base (and the plain base if asked).

        Args:
            references: heads checkpoints (folders or ``shipped:NAME``); the first is the default.
            base: the base model (default: the one the checkpoints record).
            model_names: their served ids (default: :func:`~autodeco.engines.heads_sets.heads_ids`).
            plain_base: also serve the base without heads (id: :func:`~autodeco.engines.heads_sets.base_id`).
            seed: seed of fresh heads (when ``references`` is empty and the base has no default heads).
            **options: :class:`HFEngine`'s keyword arguments (``batching``, ``max_batch_size``, ...).

        Raises:
            CheckpointError: a checkpoint recorded for another base than the others (naming both), or heads
                that do not fit the base.

        Example:
            >>> engine = HFEngine.from_checkpoints(["shipped:smollm2-135m-instruct",
            ...                                     "shipped:smollm2-135m-instruct-control"], plain_base=True)  # doctest: +SKIP
            >>> engine.model_names  # doctest: +SKIP
            ['smollm2-135m-instruct', 'smollm2-135m-instruct-control', 'embedded:SmolLM2-135M-Instruct']
        """
        from autodeco.engines.heads_sets import base_id
        from autodeco.model.checkpoint import read_checkpoint
        from autodeco.model.shipped import heads_or_default
        from autodeco.sampling.inference import load_for_generation

        references = [os.fspath(reference) for reference in references]
        if not references and heads_or_default(None, base) is not None:
            references = [heads_or_default(None, base)]  # the base's default heads, as `autodeco serve` takes them
        names = list(model_names) if model_names else (heads_ids(references) or [base or "base"])
        if len(names) != max(len(references), 1):
            raise ValueError(f"got {len(names)} model names for {len(references)} heads checkpoints; give one per checkpoint")
        check_one_base([read_checkpoint(reference) for reference in references], references)
        loaded = load_for_generation(references[0] if references else None, base, seed=seed)
        model = loaded.model
        more = {name: load_heads_for(model, reference) for name, reference in zip(names[1:], references[1:])}
        plain = base_id(base or model.config.base_model_name_or_path, taken=names) if plain_base else None
        return cls(model, loaded.tokenizer, names[0], more_heads=more, plain_base_name=plain, **options)

    def heads_for(self, request: GenerationRequest) -> torch.nn.Module:
        """The heads that decode ``request`` (its ``heads`` id, else ``model_name``'s).

        Raises:
            ValueError: an id this engine does not serve (listing those it does), or a plain-base ``top_p`` above 1.
        """
        name = self.model_name if request.heads is None else request.heads
        heads = self.heads.get(name)
        if heads is None:
            raise ValueError(f"model {name!r} is not served here; this engine serves {', '.join(map(repr, self.heads))}")
        if name == self.plain_base_name:
            check_plain_base_top_p(request.top_p, name)
        return heads

    def close(self) -> None:
        """Stop every generation under way and wait for them (the server is shutting down); refuse new ones."""
        self._closed = True
        if self.scheduler is not None:
            self.scheduler.close()
        for run in list(self._active):
            run.stop()

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """The events of ``request``, one per generated token (the last one with ``finish_reason``).

        The request is checked at once (before the first event is asked for); generation starts with the
        first ``next()``. Closing the iterator stops the generation after the step under way.

        Raises:
            ValueError: a prompt that fills the base's context, or token ids the base cannot embed.
        """
        if self._closed:
            raise RuntimeError("the engine is closed (the server is shutting down)")
        heads = self.heads_for(request)
        check_token_ids(self.model.llm, torch.tensor(request.prompt_ids))
        return self._events(request, self.fit_max_tokens(request), heads)

    def fit_max_tokens(self, request: GenerationRequest) -> int:
        """``request.max_tokens``, lowered so that prompt + generation fit the base's context.

        Raises:
            ValueError: when the prompt alone fills the context.
        """
        room = room_after_prompt(len(request.prompt_ids), self.max_model_len, whose="the model's")
        return request.max_tokens if room is None else min(request.max_tokens, room)

    def _events(self, request: GenerationRequest, max_tokens: int, heads) -> Iterator[TokenEvent]:
        if self.scheduler is not None:
            run = _Batched(self.scheduler, request, max_tokens, heads)
        else:
            run = _Generation(self, request, max_tokens, heads)
        plain = (request.heads or self.model_name) == self.plain_base_name  # its T and P are the request's own
        text = IncrementalText(self.tokenizer)
        stops = StopStrings(request.stop)
        self._active.add(run)
        try:
            run.start()
            for drawn in run.tokens():
                finish = drawn.finish_reason
                piece = text.piece(drawn.token_id, final=finish is not None)
                temperature, top_p = (request.temperature, request.top_p) if plain else (drawn.temperature, drawn.top_p)
                released, stopped = stops.add(TokenEvent(drawn.token_id, piece, temperature, top_p, finish))
                yield from released
                if stopped or finish is not None:
                    return
        finally:
            run.stop()
            self._active.discard(run)


class _Batched:
    """One request on the batching scheduler, started, read and stopped like a :class:`_Generation`."""

    def __init__(self, scheduler: BatchScheduler, request: GenerationRequest, max_tokens: int, heads):
        self.scheduler = scheduler
        self.request = request
        self.max_tokens = max_tokens
        self.heads = heads
        self.row = None

    def start(self) -> None:
        self.row = self.scheduler.submit(self.request, self.max_tokens, self.heads)

    def tokens(self) -> Iterator[Drawn]:
        return self.row.tokens()

    def stop(self) -> None:
        """Take the row out of the batch at the next step boundary and wait until it is out."""
        if self.row is not None:
            self.scheduler.cancel(self.row)


class _Generation:
    """One request's ``generate()`` in a worker thread (without batching), feeding :class:`Drawn` tokens to a queue."""

    def __init__(self, engine: HFEngine, request: GenerationRequest, max_tokens: int, heads):
        self.engine = engine
        self.request = request
        self.max_tokens = max_tokens
        self.heads = heads
        self.cancelled = threading.Event()
        self.generating = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"autodeco-hf-{request.request_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop the generation after the step under way and wait for it; a request still queued just drops out.

        Waiting matters: the worker restores torch's random state when a seeded generation ends, so it
        must be done before the caller samples anything else.
        """
        self.cancelled.set()
        if self.generating.is_set():
            self.thread.join()

    def tokens(self) -> Iterator[Drawn]:
        """The tokens as they come; re-raises the worker's error."""
        return queued_items(self.queue)

    def _run(self) -> None:
        try:
            with self.engine._lock:
                self.generating.set()  # before looking at `cancelled`: stop() then either joins or is seen here
                if not self.cancelled.is_set():
                    self._generate()
        except BaseException as error:  # handed to the consumer, which re-raises it
            self.queue.put(error)
        finally:
            self.queue.put(END)

    def _generate(self) -> None:
        model, request = self.engine.model, self.request
        input_ids = torch.tensor([request.prompt_ids], device=model.device)  # (1, L)
        streamer = _QueueStreamer(self.queue, self.max_tokens, self.engine.eos_token_ids)
        generate = model.generate_dynamic if self.heads is model else _generate_with_heads(model, self.heads)
        with _seeded(request.seed, model.device):
            generate(  # the model's own token stream, as generate() runs it, with the request's heads
                input_ids, torch.ones_like(input_ids), request.multipliers.applied(), sample=not request.greedy,
                on_step=streamer.step_values,
                stopping_criteria=StoppingCriteriaList([_Cancelled(self.cancelled)]), streamer=streamer,
                max_new_tokens=self.max_tokens, eos_token_id=self.engine.eos_token_ids,
                pad_token_id=self.engine.pad_token_id,
            )


def _generate_with_heads(model, heads):
    """:meth:`~autodeco.model.modeling.AutoDecoForCausalLM.generate_dynamic` with other heads on the same base:
    the base's ``generate()`` with ``heads``' processor (the same steps, so the same tokens and values as a
    model holding those heads)."""

    def generate(input_ids, attention_mask, multipliers, *, sample: bool, on_step=None, **kwargs):
        with capture_output_head_input(model.llm) as capture:
            processor = AutoDecoLogitsProcessor(heads, capture, multipliers, sample, on_step=on_step)
            return generate_with_base(model.llm, input_ids, attention_mask, sample=sample,
                                      logits_processor=LogitsProcessorList([processor]), **kwargs)

    return generate


def load_heads_for(model, reference: str | os.PathLike):
    """The heads of checkpoint ``reference``, checked against ``model``'s base and put beside its own heads.

    Raises:
        CheckpointError: heads that do not fit the base (hidden size, vocabulary, type), or a bad checkpoint.
    """
    from autodeco.model.checkpoint import check_finite, read_checkpoint
    from autodeco.model.heads import AutoDecoHeads
    from autodeco.model.modeling import check_base_fits

    contents = read_checkpoint(reference)
    check_finite(contents.head_tensors, str(contents.path))
    check_base_fits(contents.config, model.llm, heads=str(contents.path))
    with torch.random.fork_rng(devices=[]):  # fresh weights, replaced at once: leave the caller's random state
        heads = AutoDecoHeads(contents.config)
    heads.load_head_tensors(contents.head_tensors, source=str(contents.path))
    weight = model.temp_head.mlp[0].weight
    return heads.to(device=weight.device, dtype=weight.dtype).eval()


def _served_heads(model, model_name: str, more_heads: Mapping, plain_base_name: str | None) -> dict:
    """Served id -> heads: the model's own, ``more_heads``, then the plain base's; an id given twice is refused."""
    served = {model_name: model}
    for name, heads in more_heads.items():
        if name in served:
            raise ValueError(f"model id {name!r} is served twice; give each heads checkpoint its own id")
        served[name] = heads
    if plain_base_name is not None:
        if plain_base_name in served:
            raise ValueError(f"the plain base's id {plain_base_name!r} is already a heads id; choose another")
        weight = model.temp_head.mlp[0].weight
        plain = plain_base_heads(model.config.hidden_size, model.config.vocab_size)
        served[plain_base_name] = plain.to(device=weight.device, dtype=weight.dtype).eval()
    return served


class _QueueStreamer:
    """A transformers streamer that puts each new token, with the T and P just computed for it, on a queue."""

    def __init__(self, tokens: queue.Queue, max_tokens: int, end_ids: list[int]):
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.end_ids = end_ids
        self.count = 0
        self.prompt_seen = False
        self.values: tuple[torch.Tensor, torch.Tensor] | None = None

    def step_values(self, temperature: torch.Tensor, top_p: torch.Tensor) -> None:
        """Keep the step's ``(temperature (1,), top_p (1,))``: the next token put is drawn with them."""
        self.values = (temperature, top_p)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        token_id = int(value.reshape(-1)[0])
        self.count += 1
        temperature, top_p = (float(value[0]) for value in self.values)
        finish = finish_reason_for(token_id, self.count, self.max_tokens, self.end_ids)
        self.tokens.put(Drawn(token_id, temperature, top_p, finish))

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    """Stop every row once ``event`` is set (the caller closed the stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed torch's generators for the block and restore them after it (no seed: leave them alone)."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _pad_token_id(tokenizer, eos_token_ids: list[int]) -> int | None:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else (eos_token_ids[0] if eos_token_ids else None)
