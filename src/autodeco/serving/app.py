"""The API's logic without sockets: route a request, render its prompt, run the engine, gather or stream the answer.

:class:`OpenAIApp` turns ``(method, path, body)`` into a :class:`Reply`: a JSON body, or an iterator of
server-sent events that the HTTP shell (:mod:`autodeco.serving.server`) writes as they come. Closing that
iterator (the client went away) closes the engine's stream, which stops the generation.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from autodeco.engines.base import Engine, GenerationRequest
from autodeco.engines.heads_sets import served_model_names
from autodeco.serving import openai_api as api
from autodeco.serving import responses
from autodeco.serving.openai_api import ApiError, ParsedRequest
from autodeco.serving.responses import Generated

ROUTES = {
    "/v1/models": "GET",
    "/v1/completions": "POST",
    "/v1/chat/completions": "POST",
    "/health": "GET",
}
"""Path -> the method it answers (``/v1/models/{id}`` too)."""


@dataclasses.dataclass
class Reply:
    """What to send back: a JSON ``body``, or ``events`` (server-sent events, already encoded) for a stream."""

    status: int = 200
    body: dict | None = None
    events: Iterator[bytes] | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def error_reply(error: ApiError) -> Reply:
    """The JSON error reply of ``error``."""
    return Reply(status=error.status, body=error.body())


class OpenAIApp:
    """OpenAI's completions and chat API over an :class:`~autodeco.engines.base.Engine`.

    Args:
        engine: generates the tokens (and says which T and P it used). An engine serving several heads on one base
            (``model_names``) answers each of them: a request's ``model`` picks the heads that decode it.

    Example:
        >>> app = OpenAIApp(engine)  # doctest: +SKIP
        >>> reply = app.handle("POST", "/v1/completions", b'{"model": "tiny", "prompt": "2+2=", "max_tokens": 3}')  # doctest: +SKIP
        >>> reply.status, reply.body["choices"][0]["finish_reason"]  # doctest: +SKIP
        (200, 'length')
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model_names = served_model_names(engine)
        """Every id served (``/v1/models``), the engine's default first."""
        self.created = int(time.time())
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to drive from several threads at once

    def handle(
        self, method: str, path: str, raw_body: bytes = b"", client_gone: Callable[[], bool] = lambda: False
    ) -> Reply:
        """Answer one request; never raises for a bad request (a 4xx reply instead).

        Args:
            method: ``GET`` or ``POST``.
            path: the request path (a query string is ignored).
            raw_body: the request body.
            client_gone: tells whether the client has disconnected (checked between tokens: a gone client stops
                the generation).
        """
        path = urlsplit(path).path.rstrip("/") or "/"
        try:
            allowed = ROUTES.get(path) or ("GET" if path.startswith("/v1/models/") else None)
            if allowed is None:
                raise ApiError(
                    f"unknown path {path!r}; this server answers GET /v1/models, POST /v1/completions and "
                    "POST /v1/chat/completions", status=404, code="not_found",
                )
            if method != allowed:
                reply = error_reply(ApiError(f"{path} answers {allowed}, not {method}", status=405,
                                             code="method_not_allowed"))
                reply.headers["Allow"] = allowed
                return reply
            if path == "/health":
                return Reply(body={"status": "ok"})
            if path == "/v1/models":
                return Reply(body=responses.models_body(self.model_names, self.created))
            if path.startswith("/v1/models/"):
                return self._model(path.removeprefix("/v1/models/"))
            body = api.parse_json(raw_body)
            if path == "/v1/completions":
                parsed = api.parse_completion_request(body, self._served())
            else:
                parsed = api.parse_chat_request(body, self._served())
            return self._generate(parsed, client_gone)
        except ApiError as error:
            return error_reply(error)

    def _served(self) -> str | list[str]:
        """The served id (one engine model) or ids, as the request parsers take them."""
        return self.model_names if len(self.model_names) > 1 else self.engine.model_name

    def _model(self, name: str) -> Reply:
        if name not in self.model_names:
            served = ", ".join(repr(known) for known in self.model_names)
            raise ApiError(f"model {name!r} is not served here; this server serves {served}",
                           status=404, param="model", code="model_not_found")
        return Reply(body=responses.model_body(name, self.created))

    # ---------------------------------------------------------------------------------------- generation

    def prompt_ids(self, parsed: ParsedRequest) -> list[int]:
        """The prompt's token ids: the chat template applied to the messages, or the completion prompt encoded.

        Raises:
            ApiError: a chat request to a model without a chat template, messages its template refuses, text the
                tokenizer cannot encode, or token ids outside the tokenizer's vocabulary.
        """
        if parsed.kind == "completion" and isinstance(parsed.prompt, list):
            return self._check_vocabulary(list(parsed.prompt))
        tokenizer = self.engine.tokenizer
        with self._tokenizer_lock:
            if parsed.kind == "completion":
                return self._encode(parsed.prompt, "prompt", add_special_tokens=True)
            if not getattr(tokenizer, "chat_template", None):
                raise ApiError(f"model {self.engine.model_name!r} has no chat template; send the text to "
                               "POST /v1/completions instead", param="messages")
            try:
                text = tokenizer.apply_chat_template(parsed.messages, add_generation_prompt=True, tokenize=False)
            except Exception as error:  # the template's own checks (roles, order) raise jinja errors
                raise ApiError(f"the model's chat template refused these messages: {error}", param="messages") from None
            return self._encode(text, "messages", add_special_tokens=False)

    def _encode(self, text: str, param: str, *, add_special_tokens: bool) -> list[int]:
        """``text``'s token ids; the tokenizer's failure (text it cannot take) is the request's fault: a 400."""
        try:
            return list(self.engine.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        except Exception as error:
            raise ApiError(f"the tokenizer cannot encode {param}: {type(error).__name__}: {error}; send plain text",
                           param=param) from None

    def _check_vocabulary(self, prompt_ids: list[int]) -> list[int]:
        """Refuse token ids the tokenizer does not have (nothing could decode them; the model may not embed them)."""
        try:
            size = len(self.engine.tokenizer)
        except TypeError:  # a tokenizer without a length: the engine checks the ids itself
            return prompt_ids
        if max(prompt_ids) >= size:
            raise ApiError(f"prompt holds token id {max(prompt_ids)}, but the tokenizer's ids are 0..{size - 1}",
                           param="prompt")
        return prompt_ids

    def generation_request(self, parsed: ParsedRequest, prompt_ids: list[int], request_id: str) -> GenerationRequest:
        """The engine's request, with ``max_tokens`` fitted to the engine's context (the rule of
        :class:`~autodeco.engines.base.Engine`): lowered to the room left after the prompt, and a chat request
        without ``max_tokens`` gets all of that room (:data:`~autodeco.serving.openai_api.CHAT_FALLBACK_MAX_TOKENS`
        when the engine does not know its context). A prompt that leaves no room is the engine's to refuse."""
        max_tokens = parsed.max_tokens
        context = getattr(self.engine, "max_model_len", None)
        room = context - len(prompt_ids) if context else None
        if max_tokens is None:
            max_tokens = room if room and room > 0 else api.CHAT_FALLBACK_MAX_TOKENS
        elif room and room > 0:
            max_tokens = min(max_tokens, room)
        try:
            return GenerationRequest(
                prompt_ids=prompt_ids, max_tokens=max_tokens, temperature=parsed.temperature, top_p=parsed.top_p,
                seed=parsed.seed, stop=parsed.stop, request_id=request_id, heads=self._heads_id(parsed),
            )
        except ValueError as error:
            raise ApiError(str(error)) from None

    def _heads_id(self, parsed: ParsedRequest) -> str | None:
        """The engine's heads id for the request: None (its default) unless the engine serves several."""
        return parsed.model if len(self.model_names) > 1 else None

    def _generate(self, parsed: ParsedRequest, client_gone: Callable[[], bool]) -> Reply:
        request_id = responses.new_id(parsed.kind)
        prompt_ids = self.prompt_ids(parsed)
        if not prompt_ids:
            raise ApiError("the prompt encodes to no tokens; give some text", param="prompt")
        request = self.generation_request(parsed, prompt_ids, request_id)
        events = self._start(request)
        try:
            first = next(events, None)  # engine errors on the first step are still a 4xx/5xx, not a broken stream
        except ValueError as error:
            close(events)
            raise ApiError(str(error)) from None
        except Exception:
            close(events)
            raise
        model_name = parsed.model if len(self.model_names) > 1 else self.engine.model_name
        context = _Stream(parsed, request_id, model_name, len(prompt_ids), first, events)
        if parsed.stream:
            return Reply(events=context.sse(client_gone), headers={"Cache-Control": "no-cache"})
        return Reply(body=context.whole(client_gone))

    def _start(self, request: GenerationRequest):
        try:
            return iter(self.engine.stream(request))
        except ValueError as error:  # the engine refuses the request (a prompt longer than the context, ...)
            raise ApiError(str(error)) from None


def close(events) -> None:
    """Close an engine's event iterator (stopping its generation), when it can be closed."""
    closer = getattr(events, "close", None)
    if closer is not None:
        closer()


@dataclasses.dataclass
class _Stream:
    """One request's engine events, gathered into a response or turned into chunks."""

    parsed: ParsedRequest
    request_id: str
    model_name: str
    prompt_tokens: int
    first: object
    events: Iterator

    gone: bool = False
    """Whether the client went away before the end."""

    def _all_events(self, client_gone: Callable[[], bool]):
        if self.first is None:
            return
        yield self.first
        for event in self.events:
            if client_gone():
                self.gone = True
                return
            yield event

    def whole(self, client_gone: Callable[[], bool]) -> dict:
        """The non-streamed response (the engine's stream closed at the end, or when the client is gone)."""
        generated = Generated()
        try:
            for event in self._all_events(client_gone):
                generated.add(event)
                if event.finish_reason is not None:
                    break
        finally:
            close(self.events)
        generated.finish_reason = generated.finish_reason or "length"
        return responses.response_body(self.parsed, generated, request_id=self.request_id, model_name=self.model_name,
                                 prompt_tokens=self.prompt_tokens)

    def sse(self, client_gone: Callable[[], bool]) -> Iterator[bytes]:
        """The streamed response: a chunk per token, the usage chunk if asked for, ``[DONE]``.

        Closing this iterator closes the engine's stream.
        """
        try:
            yield from self._chunks(client_gone)
        except ApiError as error:  # a chunk JSON cannot carry: the status is sent, so end with an error event
            yield responses.server_sent_event(error.body())

    def _chunks(self, client_gone: Callable[[], bool]) -> Iterator[bytes]:
        created = int(time.time())
        tokens, finish_reason, first = 0, None, True
        try:
            for event in self._all_events(client_gone):
                generated = Generated()
                generated.add(event)
                tokens += 1
                finish_reason = event.finish_reason
                yield responses.server_sent_event(responses.chunk_body(
                    self.parsed, generated, request_id=self.request_id, model_name=self.model_name, created=created,
                    first=first,
                ))
                first = False
                if finish_reason is not None:
                    break
        finally:
            close(self.events)
        if self.gone:
            return
        if finish_reason is None:  # the engine ended without saying why (or produced nothing): close the choice
            closing = Generated(finish_reason="length")
            yield responses.server_sent_event(responses.chunk_body(
                self.parsed, closing, request_id=self.request_id, model_name=self.model_name, created=created,
                first=first,
            ))
        if self.parsed.include_usage:
            yield responses.server_sent_event(responses.usage_chunk_body(
                self.parsed, request_id=self.request_id, model_name=self.model_name, created=created,
                prompt_tokens=self.prompt_tokens, completion_tokens=tokens,
            ))
        yield responses.server_sent_event("[DONE]")
