"""OpenAI's completions and chat-completions API: requests checked and parsed (pure functions; responses: ``responses``).

What differs from OpenAI's own API:

- ``temperature`` and ``top_p`` are **multipliers** on the values the heads predict for each token
  (``T = T_head * temperature``, ``P = min(1, P_head * top_p)``, ``temperature=0`` decodes greedily),
  so ``top_p`` above 1 is allowed; a negative, NaN or infinite one is refused (so is ``top_p=0``).
- A request may ask for the values actually used with the extra field
  ``"autodeco": {"return_decoding": true}`` (the openai client: ``extra_body={"autodeco": {...}}``); each
  choice then carries ``"autodeco": {"temperatures": [...], "top_ps": [...]}``, one value per generated
  token (in streaming, each chunk's choice carries the values of the tokens in that chunk).
- One choice per request (``n`` = 1) and one prompt per completion request. Every field is honoured or
  refused, never ignored: a field outside :data:`COMPLETION_FIELDS` / :data:`CHAT_FIELDS` gets a 400 naming
  it, unless it is null or holds the value that means "off" (:data:`UNSUPPORTED_FIELDS`, e.g.
  ``"presence_penalty": 0``), which clients send by default.
- Numbers are JSON numbers of the right kind (no booleans, no 2.0 for an integer), integers fit in 64 bits,
  multipliers are at most :data:`~autodeco.core.multipliers.MAX_MULTIPLIER`, texts are valid Unicode (no lone
  surrogates), and a body nests at most :data:`MAX_JSON_DEPTH` levels; responses are strict JSON (no NaN or
  Infinity: :func:`to_json`).

Errors are :class:`ApiError`, rendered as OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import dataclasses
import hmac
import json

from autodeco.core.multipliers import LOWER_BOUNDS, MultiplierError, Multipliers

COMPLETION_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for ``/v1/completions``."""
CHAT_FALLBACK_MAX_TOKENS = 1024
"""``max_tokens`` of a chat request that gives none, when the engine does not know its context length
(otherwise the rest of the context is the limit, as in OpenAI's API)."""
DECODING_FIELD = "autodeco"
"""The extra request field (and choice field) for AutoDeco's per-token values."""

COMMON_FIELDS = frozenset({
    "model", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n", "user", DECODING_FIELD,
})
"""Fields both endpoints honour (``user`` is accepted and unused: it only labels the caller)."""
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "max_tokens"}
"""Fields ``POST /v1/completions`` honours."""
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_tokens", "max_completion_tokens"}
"""Fields ``POST /v1/chat/completions`` honours."""
UNSUPPORTED_FIELDS = {
    "logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,), "best_of": (1,), "suffix": ("",),
    "logit_bias": ({},), "presence_penalty": (0,), "frequency_penalty": (0,), "repetition_penalty": (1,),
    "top_k": (0, -1), "min_p": (0,), "response_format": ({"type": "text"},), "tools": ([],), "functions": ([],),
    "tool_choice": ("none",), "function_call": ("none",), "store": (False,), "modalities": (["text"],),
}
"""Fields this server does not implement -> the values that mean "off" (null too); any other value gets a 400."""
MESSAGE_FIELDS = frozenset({"role", "content"})
"""The fields of a chat message that are read (others get a 400 unless null)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in a body (a chat request needs 5)."""
MAX_INTEGER = 2**63 - 1
"""Largest integer field value (seeds, token ids, ``max_tokens``): a signed 64-bit integer, as torch and vLLM take."""
MAX_STOP_STRINGS = 16
"""Most stop strings in one request (each is checked after every token)."""
MAX_STOP_CHARACTERS = 1000
"""Longest stop string, in characters."""


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
    """Multiplier on the heads' temperatures (0 = greedy); for the plain base, the absolute temperature."""
    top_p: float = 1.0
    """Multiplier on the heads' top-p (> 0, capped at 1 after multiplying); for the plain base, the absolute top-p."""
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
    model: str | None = None
    """The served id the request names (which heads decode it, or the plain base)."""


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
    except RecursionError:  # json's parser recurses once per level
        body = _TOO_DEEP
    if body is _TOO_DEEP or _nesting_exceeds(body, MAX_JSON_DEPTH):
        raise ApiError(f"the request body nests objects or arrays more than {MAX_JSON_DEPTH} levels deep; "
                       "an OpenAI request needs a handful: flatten it")
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object ({{...}}), but is {_json_kind(body)}")
    return body


def _nesting_exceeds(value, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts deeper than ``limit`` (walked without recursion: the deep
    bodies are the ones a recursive walk would crash on)."""
    pending = [(value, 1)] if isinstance(value, (dict, list)) else []
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _json_kind(value) -> str:
    """``value``'s JSON type, with an article: "an array", "null", ..."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}
    return kinds.get(type(value), "a number")


_TOO_DEEP = object()
"""What :func:`parse_json` holds for a body too deep for json's parser."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_completion_request(body: dict, model_name: str | list[str]) -> ParsedRequest:
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
    parsed = _parse_common(body, model_name, "completion", COMPLETION_FIELDS)
    parsed.prompt = _parse_prompt(body.get("prompt"))
    parsed.max_tokens = _parse_max_tokens(body, "max_tokens")
    if parsed.max_tokens is None:
        parsed.max_tokens = COMPLETION_DEFAULT_MAX_TOKENS
    return parsed


def parse_chat_request(body: dict, model_name: str | list[str]) -> ParsedRequest:
    """Check a ``POST /v1/chat/completions`` body.

    Raises:
        ApiError: an unknown model, missing or malformed messages, or a bad sampling field.

    Example:
        >>> parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "m").messages
        [{'role': 'user', 'content': 'Hi'}]
    """
    parsed = _parse_common(body, model_name, "chat", CHAT_FIELDS)
    parsed.messages = _parse_messages(body.get("messages"))
    newer, older = _parse_max_tokens(body, "max_completion_tokens"), _parse_max_tokens(body, "max_tokens")
    if newer is not None and older is not None and newer != older:
        raise ApiError(f"max_completion_tokens={newer} and max_tokens={older} disagree; send one of them",
                       param="max_tokens")
    parsed.max_tokens = older if newer is None else newer
    return parsed


def _parse_common(body: dict, model_name: str | list[str], kind: str, fields: frozenset) -> ParsedRequest:
    _check_model(body.get("model"), model_name)
    _refuse_unread_fields(body, fields)
    n = body.get("n")
    if n is not None and not (_is_integer(n) and n == 1):
        raise ApiError(f"n must be 1 (one choice per request), but is {_quote(n)}; send several requests instead",
                       param="n", code="unsupported_value")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(f"user must be a string, but is {_quote(user)}", param="user")
    stream = _optional_bool(body, "stream")
    multipliers = _parse_multipliers(body)
    return ParsedRequest(
        kind=kind,
        temperature=multipliers.temperature,
        top_p=multipliers.top_p,
        seed=_parse_integer(body, "seed", -(2**63), MAX_INTEGER),
        stop=_parse_stop(body.get("stop")),
        stream=stream,
        include_usage=_parse_stream_options(body.get("stream_options"), stream),
        return_decoding=_parse_decoding_options(body.get(DECODING_FIELD)),
        model=body.get("model"),
    )


def _refuse_unread_fields(body: dict, fields: frozenset) -> None:
    """Refuse a field the endpoint does not read (null and the "off" values of :data:`UNSUPPORTED_FIELDS` pass):
    a client asking for JSON output, top-k or tools must learn it did not get them."""
    for name, value in body.items():
        if name in fields or value is None:
            continue
        if name in UNSUPPORTED_FIELDS:
            if any(_same(value, off) for off in UNSUPPORTED_FIELDS[name]):
                continue
            raise ApiError(f"{name}={_quote(value)} is not supported by this server; drop it",
                           param=name, code="unsupported_parameter")
        raise ApiError(
            f"unknown field {_quote(name)}: this endpoint reads only {', '.join(sorted(fields))}; drop it",
            param=_printable(name), code="unsupported_parameter",
        )


def _same(value, off) -> bool:
    """``value == off`` as JSON sees it: booleans equal only booleans (in Python ``True == 1``), 0.0 equals 0."""
    if isinstance(value, (bool, list, dict)) or isinstance(off, (bool, list, dict)):
        return json.dumps(value, sort_keys=True) == json.dumps(off, sort_keys=True)
    return type(value) is type(off) and value == off or _is_number(value) and _is_number(off) and value == off


def _quote(value, limit: int = 200) -> str:
    """``value`` as JSON for an error message, cut to ``limit`` characters (lone surrogates escaped)."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _printable(name: str) -> str:
    """A field name safe to echo (a lone surrogate escaped)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(value: str, param: str) -> str:
    """Refuse a string that is not Unicode text: a lone surrogate (``"\\ud800"`` is valid JSON) no tokenizer encodes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(f"{param} holds {_quote(value[error.start:error.end])} at character {error.start}, a lone "
                       "surrogate that is not text (a UTF-16 half); send valid Unicode", param=param) from None
    return value


def _check_model(model, model_name: str | list[str]) -> None:
    """Refuse a missing ``model``, or one that is not among the served ids (``model_name``: one id, or a list)."""
    names = [model_name] if isinstance(model_name, str) else list(model_name)
    served = ", ".join(repr(name) for name in names)
    if model is None:
        raise ApiError(f"model is required; this server serves {served}", param="model")
    if not isinstance(model, str) or model not in names:
        shown = repr(model) if isinstance(model, str) and len(model) <= 200 else _quote(model)
        raise ApiError(
            f"model {shown} is not served here; this server serves {served} (listed by GET /v1/models)",
            param="model", code="model_not_found",
        )


def _optional_bool(body: dict, name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"{param or name} must be true or false, but is {_quote(value)}", param=param or name)
    return value


def _parse_stream_options(options, stream: bool) -> bool:
    """``stream_options.include_usage``; the options are refused without ``stream`` (as OpenAI does), and so is any
    option other than ``include_usage``."""
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError(f"stream_options must be an object, but is {_quote(options)}", param="stream_options")
    if not stream:
        raise ApiError("stream_options is only read when stream is true; drop it or set \"stream\": true",
                       param="stream_options")
    for name, value in options.items():
        if name != "include_usage" and value is not None:
            raise ApiError(f"stream_options.{_printable(name)}={_quote(value)} is not supported by this server "
                           "(only include_usage is); drop it", param=f"stream_options.{_printable(name)}",
                           code="unsupported_parameter")
    return _optional_bool(options, "include_usage", "stream_options.include_usage")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


FIELD_MEANINGS = {
    "temperature": "a multiplier on each token's predicted temperature; 0 decodes greedily",
    "top_p": "a multiplier on each token's predicted top-p, capped at 1 after multiplying; above 1 is allowed",
}
"""What the request fields ``temperature`` and ``top_p`` mean, for the messages that refuse a value."""


def _parse_multipliers(body: dict) -> Multipliers:
    """The request's ``temperature`` and ``top_p`` (JSON numbers, 1 when absent) as :class:`Multipliers`."""
    values = {}
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not _is_number(value):  # a JSON string or boolean, which float() might accept
            raise ApiError(_multiplier_message(name, LOWER_BOUNDS[name], value), param=name)
        values[name] = 1.0 if value is None else value
    try:
        return Multipliers(**values)
    except MultiplierError as error:  # the rule is the multipliers'; the message speaks the API's words
        raise ApiError(_multiplier_message(error.name, error.bound, error.value, error.too_large), param=error.name) from None


def _multiplier_message(name: str, bound: str, value, too_large: bool = False) -> str:
    if too_large:
        return (f"{name} must be {bound}: it multiplies each token's predicted value, and larger ones overflow to "
                f"infinity (or to NaN); but is {_quote(value)}")
    return f"{name} must be a finite number {bound} ({FIELD_MEANINGS[name]}), but is {_quote(value)}"


def _parse_max_tokens(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and not _is_integer(value):
        raise ApiError(f"{name} must be an integer >= 1, but is {_quote(value)}", param=name)
    return _parse_integer(body, name, 1, MAX_INTEGER)


def _is_integer(value) -> bool:
    """A JSON integer: not a boolean (``True`` is an ``int`` in Python), not a float such as 2.0."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_integer(body: dict, name: str, minimum: int, maximum: int) -> int | None:
    """An optional integer field between ``minimum`` and ``maximum`` (None when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    if not _is_integer(value):
        raise ApiError(f"{name} must be an integer, but is {_quote(value)}", param=name)
    if not minimum <= value <= maximum:
        raise ApiError(f"{name} must be an integer >= {minimum}, but is {_quote(value)}" if value < minimum else
                       f"{name} must be at most {maximum} (a signed 64-bit integer), but is {_quote(value, 60)}",
                       param=name)
    return value


def _parse_stop(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise ApiError(f"stop must be a string or a list of strings, but is {_quote(value)}", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(f"stop holds {len(stops)} strings; at most {MAX_STOP_STRINGS} are accepted", param="stop")
    for stop in stops:
        _check_text(stop, "stop")
        if len(stop) > MAX_STOP_CHARACTERS:
            raise ApiError(f"a stop string has {len(stop)} characters; at most {MAX_STOP_CHARACTERS} are accepted",
                           param="stop")
    return [stop for stop in stops if stop]


def _parse_decoding_options(value) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or set(value) - {"return_decoding"}:
        raise ApiError(
            f'{DECODING_FIELD} must be an object such as {{"return_decoding": true}}, but is {_quote(value)}',
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
        return _check_text(prompt, "prompt")
    if isinstance(prompt, list) and prompt and all(_is_integer(token) for token in prompt):
        if min(prompt) < 0:
            raise ApiError(f"prompt token ids must be >= 0, but one is {min(prompt)}", param="prompt")
        if max(prompt) > MAX_INTEGER:
            raise ApiError(f"prompt token ids must be at most {MAX_INTEGER} (and below the tokenizer's size), but one "
                           f"is {_quote(max(prompt), 60)}", param="prompt")
        return prompt
    raise ApiError(f"prompt must be a non-empty string or list of token ids, but is {_quote(prompt)}", param="prompt")


def _parse_messages(messages) -> list[dict]:
    if messages is None:
        raise ApiError("messages is required: give the conversation, e.g. [{\"role\": \"user\", \"content\": \"Hi\"}]",
                       param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(f"messages must be a non-empty list of messages, but is {_quote(messages)}",
                       param="messages")
    return [_parse_message(message, index) for index, message in enumerate(messages)]


def _parse_message(message, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(f"{where} must be an object with a string role, but is {_quote(message)}", param=where)
    for name, value in message.items():
        if name not in MESSAGE_FIELDS and value is not None:
            raise ApiError(f"{where}.{_printable(name)} is not read by this server (a message is its role and "
                           "content); drop it", param=f"{where}.{_printable(name)}", code="unsupported_parameter")
    _check_text(message["role"], f"{where}.role")
    return {"role": message["role"], "content": _message_text(message.get("content"), f"{where}.content")}


def _message_text(content, where: str) -> str:
    """A message's content as one text: a string, or the text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return _check_text(content, where)
    if not isinstance(content, list):
        raise ApiError(f"{where} must be a string or a list of text parts, but is {_quote(content)}", param=where)
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str) \
                or set(part) - {"type", "text"}:
            raise ApiError(f"{where} holds a part this server cannot read ({_quote(part)}); only text parts "
                           "({\"type\": \"text\", \"text\": ...}) are supported", param=where)
        texts.append(_check_text(part["text"], f"{where}[{index}].text"))
    return "".join(texts)


# ------------------------------------------------------------------------------------------ request gates


def check_api_key(authorization: str | None, api_key: str | None) -> None:
    """Refuse a request without ``Authorization: Bearer <api_key>`` (nothing to check when ``api_key`` is None).

    The key is compared in constant time (``hmac.compare_digest``), so the reply's timing does not tell how much
    of a guess was right.

    Raises:
        ApiError: a 401, with OpenAI's ``invalid_api_key`` code; the key sent is not quoted.

    Example:
        >>> check_api_key("Bearer s3cret", "s3cret")
        >>> check_api_key(None, "s3cret")
        Traceback (most recent call last):
        ...
        autodeco.serving.openai_api.ApiError: this server needs an API key: send the header 'Authorization: Bearer <key>' (the openai client: api_key=<key>)
    """
    if api_key is None:
        return
    scheme, _, given = (authorization or "").strip().partition(" ")
    if not given or scheme.lower() != "bearer":
        raise ApiError("this server needs an API key: send the header 'Authorization: Bearer <key>' (the openai client: "
                       "api_key=<key>)", status=401, code="invalid_api_key")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), api_key.encode("utf-8")):
        raise ApiError("the API key sent is not this server's (set by autodeco serve --api-key or AUTODECO_API_KEY); "
                       "send the right one", status=401, code="invalid_api_key")


def check_content_type(content_type: str | None) -> None:
    """Refuse a request body not declared as JSON.

    Browsers send cross-site form posts (``text/plain``, ``application/x-www-form-urlencoded``,
    ``multipart/form-data``, or no type at all) without asking the server first; only ``application/json``
    needs their preflight check, which this server never grants. So a web page cannot drive a local server.

    Raises:
        ApiError: a 415, naming the type received.

    Example:
        >>> check_content_type("application/json; charset=utf-8")
        >>> check_content_type("text/plain")
        Traceback (most recent call last):
        ...
        autodeco.serving.openai_api.ApiError: the request body must be JSON sent with the header 'Content-Type: application/json', but its Content-Type is 'text/plain'
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError("the request body must be JSON sent with the header 'Content-Type: application/json', but its "
                       f"Content-Type is {content_type!r}" if content_type else
                       "the request body must be JSON sent with the header 'Content-Type: application/json', but no "
                       "Content-Type was sent", status=415, code="unsupported_media_type")
