"""OpenAI's completions and chat-completions API: response bodies and streamed chunks (pure functions).

Requests are checked and parsed in :mod:`autodeco.serving.openai_api`; this module builds what goes back:
whole responses, server-sent-event chunks, the model list, all as strict JSON (:func:`to_json`).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

from autodeco.serving.openai_api import DECODING_FIELD, ApiError, ParsedRequest

@dataclasses.dataclass
class Generated:
    """What a choice has generated so far (or in one chunk): text, token count, per-token values, finish."""

    text: str = ""
    tokens: int = 0
    temperatures: list[float] = dataclasses.field(default_factory=list)
    top_ps: list[float] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None

    def add(self, event) -> None:
        """Add a :class:`~autodeco.engines.base.TokenEvent`."""
        self.text += event.text
        self.tokens += 1
        self.temperatures.append(float(event.temperature))
        self.top_ps.append(float(event.top_p))
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason


def new_id(kind: str) -> str:
    """``cmpl-...`` or ``chatcmpl-...``."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's ``usage`` object.

    Example:
        >>> usage(5, 3)
        {'prompt_tokens': 5, 'completion_tokens': 3, 'total_tokens': 8}
    """
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _choice(kind: str, generated: Generated, return_decoding: bool, *, chunk: bool, first: bool = False) -> dict:
    if kind == "chat" and chunk:
        delta = {"role": "assistant", "content": generated.text} if first else {"content": generated.text}
        choice = {"index": 0, "delta": delta}
    elif kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": generated.text}}
    else:
        choice = {"index": 0, "text": generated.text}
    choice["logprobs"] = None
    choice["finish_reason"] = generated.finish_reason
    if return_decoding:
        choice[DECODING_FIELD] = {"temperatures": generated.temperatures, "top_ps": generated.top_ps}
    return choice


def response_body(
    parsed: ParsedRequest, generated: Generated, *, request_id: str, model_name: str, prompt_tokens: int,
    created: int | None = None,
) -> dict:
    """The whole (non-streamed) response of a completion or chat request.

    Example:
        >>> parsed = ParsedRequest(kind="completion", return_decoding=True)
        >>> generated = Generated("4", 1, [0.5], [0.9], "length")
        >>> body = response_body(parsed, generated, request_id="cmpl-1", model_name="m", prompt_tokens=4, created=0)
        >>> body["choices"][0]
        {'index': 0, 'text': '4', 'logprobs': None, 'finish_reason': 'length', 'autodeco': {'temperatures': [0.5], 'top_ps': [0.9]}}
        >>> body["object"], body["usage"]["total_tokens"]
        ('text_completion', 5)
    """
    return {
        "id": request_id,
        "object": "chat.completion" if parsed.kind == "chat" else "text_completion",
        "created": int(time.time()) if created is None else created,
        "model": model_name,
        "choices": [_choice(parsed.kind, generated, parsed.return_decoding, chunk=False)],
        "usage": usage(prompt_tokens, generated.tokens),
    }


def chunk_body(
    parsed: ParsedRequest, generated: Generated, *, request_id: str, model_name: str, created: int, first: bool = False,
) -> dict:
    """One streamed chunk holding the text (and values) of the tokens in ``generated``.

    Example:
        >>> parsed = ParsedRequest(kind="chat", return_decoding=True)
        >>> chunk = chunk_body(parsed, Generated("Hi", 1, [0.7], [0.95]), request_id="c", model_name="m", created=0, first=True)
        >>> chunk["object"], chunk["choices"][0]["delta"], chunk["choices"][0]["autodeco"]
        ('chat.completion.chunk', {'role': 'assistant', 'content': 'Hi'}, {'temperatures': [0.7], 'top_ps': [0.95]})
    """
    return {
        "id": request_id,
        "object": "chat.completion.chunk" if parsed.kind == "chat" else "text_completion",
        "created": created,
        "model": model_name,
        "choices": [_choice(parsed.kind, generated, parsed.return_decoding, chunk=True, first=first)],
    }


def usage_chunk_body(parsed: ParsedRequest, *, request_id: str, model_name: str, created: int,
                     prompt_tokens: int, completion_tokens: int) -> dict:
    """The last streamed chunk when ``stream_options.include_usage`` is set: no choices, the usage."""
    return {
        "id": request_id,
        "object": "chat.completion.chunk" if parsed.kind == "chat" else "text_completion",
        "created": created,
        "model": model_name,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def models_body(model_name: str | list[str], created: int = 0) -> dict:
    """``GET /v1/models``: the model served, or each of several (heads checkpoints and the plain base).

    Example:
        >>> models_body("m")["data"][0]["id"]
        'm'
        >>> [model["id"] for model in models_body(["default", "control", "base"])["data"]]
        ['default', 'control', 'base']
    """
    names = [model_name] if isinstance(model_name, str) else list(model_name)
    return {"object": "list", "data": [model_body(name, created) for name in names]}


def model_body(model_name: str, created: int = 0) -> dict:
    """``GET /v1/models/{id}``."""
    return {"id": model_name, "object": "model", "created": created, "owned_by": "autodeco"}


def to_json(body: dict) -> bytes:
    """A response body as strict JSON in UTF-8: the one place answers are encoded, so none carries NaN or Infinity
    (Python's ``json`` writes both, and strict parsers such as JavaScript's ``JSON.parse`` refuse them).

    Raises:
        ApiError: (a 500) a value JSON cannot hold, e.g. a temperature that overflowed.

    Example:
        >>> to_json({"T": [0.5]})
        b'{"T": [0.5]}'
        >>> to_json({"T": [float("inf")]})
        Traceback (most recent call last):
        ...
        autodeco.serving.openai_api.ApiError: the answer holds a number JSON cannot carry (NaN or infinity); this is a bug in the engine or the heads, please report it with the request
    """
    try:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ApiError("the answer holds a number JSON cannot carry (NaN or infinity); this is a bug in "
                       "the engine or the heads, please report it with the request", status=500, type="server_error",
                       code="non_finite_value") from None
    return text.encode("utf-8", "backslashreplace")  # a lone surrogate becomes its JSON escape, \\ud800


def server_sent_event(data: dict | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (``data: [DONE]`` for the string ``[DONE]``).

    Raises:
        ApiError: as :func:`to_json`.

    Example:
        >>> server_sent_event({"a": 1})
        b'data: {"a": 1}\\n\\n'
    """
    payload = data.encode("utf-8") if isinstance(data, str) else to_json(data)
    return b"data: " + payload + b"\n\n"


