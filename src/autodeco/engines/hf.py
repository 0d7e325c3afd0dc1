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
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

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
from autodeco.engines.text import IncrementalText, StopStrings
from autodeco.model.base_model import check_token_ids, context_length, end_token_ids, room_after_prompt


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

    Raises:
        ValueError: ``batching`` on a base whose cache cannot be padded (sliding-window or linear-attention
            layers; see :func:`~autodeco.engines.hf_batching.batching_unsupported_reason`), or a bad
            ``max_batch_size``.

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
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
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
        check_token_ids(self.model.llm, torch.tensor(request.prompt_ids))
        return self._events(request, self.fit_max_tokens(request))

    def fit_max_tokens(self, request: GenerationRequest) -> int:
        """``request.max_tokens``, lowered so that prompt + generation fit the base's context.

        Raises:
            ValueError: when the prompt alone fills the context.
        """
        room = room_after_prompt(len(request.prompt_ids), self.max_model_len, whose="the model's")
        return request.max_tokens if room is None else min(request.max_tokens, room)

    def _events(self, request: GenerationRequest, max_tokens: int) -> Iterator[TokenEvent]:
        batched = self.scheduler is not None
        run = _Batched(self.scheduler, request, max_tokens) if batched else _Generation(self, request, max_tokens)
        text = IncrementalText(self.tokenizer)
        stops = StopStrings(request.stop)
        self._active.add(run)
        try:
            run.start()
            for drawn in run.tokens():
                finish = drawn.finish_reason
                piece = text.piece(drawn.token_id, final=finish is not None)
                released, stopped = stops.add(TokenEvent(drawn.token_id, piece, drawn.temperature, drawn.top_p, finish))
                yield from released
                if stopped or finish is not None:
                    return
        finally:
            run.stop()
            self._active.discard(run)


class _Batched:
    """One request on the batching scheduler, started, read and stopped like a :class:`_Generation`."""

    def __init__(self, scheduler: BatchScheduler, request: GenerationRequest, max_tokens: int):
        self.scheduler = scheduler
        self.request = request
        self.max_tokens = max_tokens
        self.row = None

    def start(self) -> None:
        self.row = self.scheduler.submit(self.request, self.max_tokens)

    def tokens(self) -> Iterator[Drawn]:
        return self.row.tokens()

    def stop(self) -> None:
        """Take the row out of the batch at the next step boundary and wait until it is out."""
        if self.row is not None:
            self.scheduler.cancel(self.row)


class _Generation:
    """One request's ``generate()`` in a worker thread (without batching), feeding :class:`Drawn` tokens to a queue."""

    def __init__(self, engine: HFEngine, request: GenerationRequest, max_tokens: int):
        self.engine = engine
        self.request = request
        self.max_tokens = max_tokens
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
        with _seeded(request.seed, model.device):
            model.generate_dynamic(  # the model's own token stream, as generate() runs it
                input_ids, torch.ones_like(input_ids), request.multipliers.applied(), sample=not request.greedy,
                on_step=streamer.step_values,
                stopping_criteria=StoppingCriteriaList([_Cancelled(self.cancelled)]), streamer=streamer,
                max_new_tokens=self.max_tokens, eos_token_id=self.engine.eos_token_ids,
                pad_token_id=self.engine.pad_token_id,
            )


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
