"""The engine contracts: a :class:`GenerationRequest` in, a stream of :class:`TokenEvent` out (:class:`Engine`);
prompts in, completions out (:class:`RolloutEngine`).

Small and stable on purpose: the OpenAI-compatible server (``autodeco.serving``) speaks only :class:`Engine`,
and each engine (``engines.hf`` on Hugging Face ``generate()``, ``engines.vllm`` on vLLM) implements it;
``autodeco sample`` and ``autodeco eval`` speak only :class:`RolloutEngine`.

Example:
    >>> request = GenerationRequest(prompt_ids=[1, 2, 3], max_tokens=4, temperature=0.5, stop=["\\n"])
    >>> request.top_p, request.stop
    (1.0, ['\\n'])
    >>> TokenEvent(token_id=7, text="Hi", temperature=0.35, top_p=0.9, finish_reason="length").finish_reason
    'length'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from autodeco.core.multipliers import Multipliers

FINISH_REASONS = ("stop", "length")
"""Why a generation ended, on its last event: ``stop`` (end-of-sequence token or a stop string) or ``length``."""


@dataclasses.dataclass
class GenerationRequest:
    """One prompt to continue, with the user's decoding multipliers.

    Raises:
        ValueError: (in ``__post_init__``) an empty prompt, ``max_tokens`` < 1, a multiplier that
            :class:`~autodeco.core.multipliers.Multipliers` refuses (NaN, infinite, negative, a ``top_p`` of 0,
            above :data:`~autodeco.core.multipliers.MAX_MULTIPLIER`), or a stop that is not a non-empty string;
            quoting the value.
    """

    prompt_ids: list[int]
    """Token ids of the prompt, already rendered with the chat template where wanted."""
    max_tokens: int
    """Most tokens to generate (>= 1)."""
    temperature: float = 1.0
    """Multiplier on the heads' temperature (``T = T_head * temperature``); 0 decodes greedily. For the plain base
    (an engine's ``plain_base_name``), the absolute temperature."""
    top_p: float = 1.0
    """Multiplier on the heads' top-p (``P = min(1, P_head * top_p)``); > 0, values above 1 allowed. For the plain
    base, the absolute top-p (at most 1)."""
    seed: int | None = None
    """Seed of the request's sampling (None: whatever state the engine's generator is in)."""
    stop: list[str] = ()
    """Stop strings: generation ends when the text contains one; the text returned ends before it."""
    request_id: str = ""
    """The caller's id for the request (logging, cancellation)."""
    heads: str | None = None
    """Which of the engine's served ids decodes the request (a heads checkpoint, or the plain base: see
    :mod:`autodeco.engines.heads_sets`); None: the engine's default, its ``model_name``."""

    def __post_init__(self):
        self.prompt_ids = [int(token) for token in self.prompt_ids]
        if not self.prompt_ids:
            raise ValueError("prompt_ids is empty; give at least one prompt token")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, but is {self.max_tokens!r}")
        multipliers = Multipliers(self.temperature, self.top_p)
        self.temperature, self.top_p = multipliers.temperature, multipliers.top_p
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        for value in stop:
            if not isinstance(value, str) or not value:
                raise ValueError(f"each stop must be a non-empty string, but got {value!r}")
        self.stop = stop

    @property
    def multipliers(self) -> Multipliers:
        """The request's ``temperature`` and ``top_p`` as the one typed value the decoding code takes."""
        return Multipliers(self.temperature, self.top_p)

    @property
    def greedy(self) -> bool:
        """Whether the request decodes greedily (``temperature == 0``)."""
        return self.multipliers.greedy


@dataclasses.dataclass
class TokenEvent:
    """One generated token, with the temperature and top-p actually used to pick it."""

    token_id: int
    """The token's id."""
    text: str
    """The token's text piece (multi-byte characters whole, see ``sampling.inference.token_pieces``); a piece
    cut by a stop string is shortened to end before it."""
    temperature: float
    """The T used for this token, after the user's multiplier."""
    top_p: float
    """The P used for this token, after the user's multiplier (at most 1)."""
    finish_reason: str | None = None
    """None while generating; on the last event ``"stop"`` (end-of-sequence or a stop string) or ``"length"``."""

    def __post_init__(self):
        if self.finish_reason is not None and self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be None or one of {FINISH_REASONS}, but is {self.finish_reason!r}")


@runtime_checkable
class Engine(Protocol):
    """What the server needs from a generation engine.

    ``stream`` yields one :class:`TokenEvent` per generated token, the last one carrying ``finish_reason``.
    Closing the iterator early (the client went away) must stop the work for that request promptly and
    free its resources. It must be safe to call from several threads at once: an engine may serialize
    requests (the HF engine does) or batch them (the vLLM engine does).

    ``max_model_len`` is the one rule for how long an answer may be, whatever the engine: the server lowers
    a request's ``max_tokens`` to ``max_model_len - len(prompt_ids)`` (a chat request without ``max_tokens``
    gets exactly that room), and leaves a prompt that fills the context for ``stream`` to refuse.
    """

    model_name: str
    """The model id served in ``/v1/models`` and checked in each request's ``model`` (the default one, when
    the engine serves several heads: then its ``model_names`` lists every id, and a request's ``heads`` picks one;
    :func:`~autodeco.engines.heads_sets.served_model_names`)."""
    tokenizer: object
    """A Hugging Face tokenizer (chat template, decoding)."""
    max_model_len: int | None
    """Positions of the context the engine runs (prompt + generated tokens); None when unknown."""

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]: ...


@runtime_checkable
class RolloutEngine(Protocol):
    """What ``autodeco sample`` and ``autodeco eval`` need to draw completions (``--engine hf|vllm``).

    :class:`autodeco.sampling.rollouts.HFRollouts` and :class:`autodeco.engines.vllm.VllmRollouts` implement it:
    ``prefill`` encodes rendered prompts once (a ``PromptBatch``), ``complete`` draws ``num_samples`` completions
    of each under one decoding setting, as ``completions[prompt][sample]``
    (:class:`~autodeco.sampling.rollouts.Completion` records).
    """

    max_model_len: int | None
    """Positions of the context the engine runs (prompt + generated tokens); None when unknown."""

    def prefill(self, rendered_prompts: list[str]): ...

    def complete(self, batch, setting, *, num_samples: int = 1, max_new_tokens: int = 256, seed: int = 0,
                 value_pools=None, **options) -> list[list]: ...

    def close(self) -> None:
        """Free the engine's resources (a vLLM engine's thread and device memory); the HF engine has none."""
