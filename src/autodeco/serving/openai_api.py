"""OpenAI's completions and chat-completions API: requests checked and parsed, responses built (pure functions).

What differs from OpenAI's own API:

- ``temperature`` and ``top_p`` are **multipliers** on the values the heads predict for each token
  (``T = T_head * temperature``, ``P = min(1, P_head * top_p)``, ``temperature=0`` decodes greedily),
  so ``top_p`` above 1 is allowed; a negative, NaN or infinite one is refused (so is ``top_p=0``).
- A request may ask for the values actually used with the extra field
  ``"autodeco": {"return_decoding": true}`` (the openai client: ``extra_body={"autodeco": {...}}``); each
  choice then carries ``"autodeco": {"temperatures": [...], "top_ps": [...]}``, one value per generated
  token (in streaming, each chunk's choice carries the values of the tokens in that chunk).
- One choice per request (``n`` = 1) and one prompt per completion request; ``logprobs``, ``echo``,
  ``best_of``, ``suffix``, penalties, ``logit_bias`` and tools are refused with a 400 rather than ignored.

Errors are :class:`ApiError`, rendered as OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid

COMPLETION_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for ``/v1/completions``."""
CHAT_FALLBACK_MAX_TOKENS = 1024
"""``max_tokens`` of a chat request that gives none, when the engine does not know its context length
(otherwise the rest of the context is the limit, as in OpenAI's API)."""
DECODING_FIELD = "autodeco"
"""The extra request field (and choice field) for AutoDeco's per-token values."""

UNSUPPORTED_FIELDS = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "logit_bias": (None, {}), "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "tools": (None, []), "functions": (None, []), "prediction": (None,), "audio": (None,),
}
"""Request fields this server does not implement -> the values that mean "off" (any other value gets a 400)."""


class ApiError(Exception):
    """A request the API refuses, with its HTTP status and OpenAI's error fields.

    Example:
        >>> ApiError("max_tokens must be an integer >= 1, but is -3", param="max_tokens").body()["error"]["param"]
        'max_tokens'
    """

    def __init__(
        self, message: str, *, status: int = 400, type: str = "invalid_request_error",
        param: str | None = None, code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        """OpenAI's error body."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}``.

    Example:
        >>> error_body("unknown path '/v2'", code="not_found")
        {'error': {'message': "unknown path '/v2'", 'type': 'invalid_request_error', 'param': None, 'code': 'not_found'}}
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclasses.dataclass
class ParsedRequest:
    """A checked completion or chat request."""

    kind: str
    """``"completion"`` or ``"chat"``."""
    prompt: str | list[int] | None = None
    """Completions: the prompt text, or its token ids."""
    messages: list[dict] | None = None
    """Chat: ``[{"role": ..., "content": text}, ...]`` (content parts joined into text)."""
    max_tokens: int | None = None
    """Most tokens to generate; None: the API's default."""
    temperature: float = 1.0
    """Multiplier on the heads' temperatures (0 = greedy)."""
    top_p: float = 1.0
    """Multiplier on the heads' top-p (> 0, capped at 1 after multiplying)."""
    seed: int | None = None
    """Sampling seed."""
    stop: list[str] = dataclasses.field(default_factory=list)
    """Stop strings."""
    stream: bool = False
    """Answer with server-sent events."""
    include_usage: bool = False
    """Streaming: end with a chunk holding ``usage`` (``stream_options.include_usage``)."""
    return_decoding: bool = False
    """Add each token's temperature and top-p to the choices."""


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object.

    Raises:
        ApiError: a body that is not UTF-8 JSON holding an object.

    Example:
        >>> parse_json(b'{"model": "m"}')
        {'model': 'm'}
        >>> parse_json(b'{"model": ')
        Traceback (most recent call last):
        ...
        autodeco.serving.openai_api.ApiError: the request body is not valid JSON (Expecting value: line 1 column 11 (char 10)); send a JSON object such as {"model": ..., "prompt": ...}
    """
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(
            f"the request body is not valid JSON ({error}); send a JSON object such as "
            '{"model": ..., "prompt": ...}'
        ) from None
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, but is a {type(body).__name__}")
    return body


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_completion_request(body: dict, model_name: str) -> ParsedRequest:
    """Check a ``POST /v1/completions`` body.

    Raises:
        ApiError: an unknown model, a missing or multiple prompt, or a bad sampling field (quoting the value).

    Example:
        >>> parse_completion_request({"model": "m", "prompt": "2+2=", "top_p": 1.5}, "m").top_p
        1.5
        >>> parse_completion_request({"model": "m", "prompt": "2+2=", "max_tokens": -1}, "m")
        Traceback (most recent call last):
        ...
        autodeco.serving.openai_api.ApiError: max_tokens must be an integer >= 1, but is -1
    """
    parsed = _parse_common(body, model_name, "completion")
    parsed.prompt = _parse_prompt(body.get("prompt"))
    parsed.max_tokens = _parse_max_tokens(body, "max_tokens")
    if parsed.max_tokens is None:
        parsed.max_tokens = COMPLETION_DEFAULT_MAX_TOKENS
    return parsed


def parse_chat_request(body: dict, model_name: str) -> ParsedRequest:
    """Check a ``POST /v1/chat/completions`` body.

    Raises:
        ApiError: an unknown model, missing or malformed messages, or a bad sampling field.

    Example:
        >>> parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "m").messages
        [{'role': 'user', 'content': 'Hi'}]
    """
    parsed = _parse_common(body, model_name, "chat")
    parsed.messages = _parse_messages(body.get("messages"))
    parsed.max_tokens = _parse_max_tokens(body, "max_completion_tokens")
    if parsed.max_tokens is None:
        parsed.max_tokens = _parse_max_tokens(body, "max_tokens")
    return parsed


def _parse_common(body: dict, model_name: str, kind: str) -> ParsedRequest:
    _check_model(body.get("model"), model_name)
    for name, off_values in UNSUPPORTED_FIELDS.items():
        value = body.get(name)
        if not any(_same(value, off) for off in off_values):
            raise ApiError(
                f"{name}={json.dumps(value)} is not supported by this server; drop it",
                param=name, code="unsupported_parameter",
            )
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise ApiError(f"n must be 1 (one choice per request), but is {json.dumps(n)}; send several requests instead",
                       param="n", code="unsupported_value")
    stream = _optional_bool(body, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(f"stream_options must be an object, but is {json.dumps(stream_options)}", param="stream_options")
    return ParsedRequest(
        kind=kind,
        temperature=_parse_multiplier(body, "temperature", zero_allowed=True),
        top_p=_parse_multiplier(body, "top_p", zero_allowed=False),
        seed=_parse_seed(body.get("seed")),
        stop=_parse_stop(body.get("stop")),
        stream=stream,
        include_usage=stream and _optional_bool(stream_options, "include_usage", "stream_options.include_usage"),
        return_decoding=_parse_decoding_options(body.get(DECODING_FIELD)),
    )


def _same(value, off) -> bool:
    """``value == off``, with booleans only equal to booleans (``True == 1`` in Python)."""
    return value is off or (isinstance(value, bool) == isinstance(off, bool) and value == off)


def _check_model(model, model_name: str) -> None:
    if model is None:
        raise ApiError(f"model is required; this server serves {model_name!r}", param="model")
    if model != model_name:
        raise ApiError(
            f"model {model!r} is not served here; this server serves {model_name!r} (listed by GET /v1/models)",
            param="model", code="model_not_found",
        )


def _optional_bool(body: dict, name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"{param or name} must be true or false, but is {json.dumps(value)}", param=param or name)
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_multiplier(body: dict, name: str, *, zero_allowed: bool) -> float:
    value = body.get(name)
    if value is None:
        return 1.0
    if name == "temperature":
        allowed = ">= 0 (a multiplier on each token's predicted temperature; 0 decodes greedily)"
    else:
        allowed = "> 0 (a multiplier on each token's predicted top-p, capped at 1 after multiplying; above 1 is allowed)"
    if not _is_number(value) or not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        raise ApiError(f"{name} must be a finite number {allowed}, but is {json.dumps(value)}", param=name)
    return float(value)


def _parse_max_tokens(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(f"{name} must be an integer >= 1, but is {json.dumps(value)}", param=name)
    return value


def _parse_seed(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"seed must be an integer, but is {json.dumps(value)}", param="seed")
    return value


def _parse_stop(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise ApiError(f"stop must be a string or a list of strings, but is {json.dumps(value)}", param="stop")
    return [stop for stop in stops if stop]


def _parse_decoding_options(value) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or set(value) - {"return_decoding"}:
        raise ApiError(
            f'{DECODING_FIELD} must be an object such as {{"return_decoding": true}}, but is {json.dumps(value)}',
            param=DECODING_FIELD,
        )
    return _optional_bool(value, "return_decoding", f"{DECODING_FIELD}.return_decoding")


def _parse_prompt(prompt) -> str | list[int]:
    if prompt is None:
        raise ApiError("prompt is required: give the text to continue", param="prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(item, (str, list)) for item in prompt):
        if len(prompt) != 1:
            raise ApiError(
                f"this server takes one prompt per request, but got {len(prompt)}; send them as separate requests",
                param="prompt", code="unsupported_value",
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError("prompt is empty; give the text to continue", param="prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if min(prompt) < 0:
            raise ApiError(f"prompt token ids must be >= 0, but one is {min(prompt)}", param="prompt")
        return prompt
    raise ApiError(
        f"prompt must be a non-empty string or list of token ids, but is {json.dumps(prompt)[:200]}", param="prompt"
    )


def _parse_messages(messages) -> list[dict]:
    if messages is None:
        raise ApiError("messages is required: give the conversation, e.g. [{\"role\": \"user\", \"content\": \"Hi\"}]",
                       param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(f"messages must be a non-empty list of messages, but is {json.dumps(messages)[:200]}",
                       param="messages")
    return [_parse_message(message, index) for index, message in enumerate(messages)]


def _parse_message(message, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(f"{where} must be an object with a string role, but is {json.dumps(message)[:200]}",
                       param=where)
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(f"{where}.content holds a part this server cannot read ({json.dumps(part)[:200]}); "
                               "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                               param=f"{where}.content")
            texts.append(part["text"])
        content = "".join(texts)
    elif not isinstance(content, str):
        raise ApiError(f"{where}.content must be a string or a list of text parts, but is {json.dumps(content)[:200]}",
                       param=f"{where}.content")
    return {"role": message["role"], "content": content}


# ------------------------------------------------------------------------------------------ responses


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


def models_body(model_name: str, created: int = 0) -> dict:
    """``GET /v1/models``: the one model served.

    Example:
        >>> models_body("m")["data"][0]["id"]
        'm'
    """
    return {"object": "list", "data": [model_body(model_name, created)]}


def model_body(model_name: str, created: int = 0) -> dict:
    """``GET /v1/models/{id}``."""
    return {"id": model_name, "object": "model", "created": created, "owned_by": "autodeco"}


def server_sent_event(data: dict | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (``data: [DONE]`` for the string ``[DONE]``).

    Example:
        >>> server_sent_event({"a": 1})
        b'data: {"a": 1}\\n\\n'
    """
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode("utf-8")
