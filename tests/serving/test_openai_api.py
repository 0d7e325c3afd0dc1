"""serving.openai_api and serving.app without sockets: request checks, response shapes, streaming, closing."""

import json

import pytest

from autodeco.engines.base import TokenEvent
from autodeco.serving import openai_api as api
from autodeco.serving import responses
from autodeco.serving.app import OpenAIApp
from autodeco.serving.openai_api import ApiError


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(character) for character in text]}

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<{message['role']}>{message['content']}" for message in messages) + "<assistant>"


class FakeEngine:
    """Replays scripted (text, T, P) tokens; records requests and whether each stream was closed."""

    model_name = "fake"
    max_model_len = 64

    def __init__(self, pieces=(("4", 0.5, 0.9), (" ok", 0.6, 0.8), ("!", 0.7, 1.0)), finish="length"):
        self.tokenizer = FakeTokenizer()
        self.pieces = list(pieces)
        self.finish = finish
        self.requests = []
        self.closed = []

    def stream(self, request):
        if len(request.prompt_ids) >= self.max_model_len:
            raise ValueError(f"the prompt is {len(request.prompt_ids)} tokens, too long")
        self.requests.append(request)
        return self._events(request)

    def _events(self, request):
        count = min(request.max_tokens, len(self.pieces))
        try:
            for index, (text, temperature, top_p) in enumerate(self.pieces[:count]):
                finish = self.finish if index == count - 1 else None
                yield TokenEvent(token_id=index, text=text, temperature=temperature, top_p=top_p, finish_reason=finish)
        finally:
            self.closed.append(request.request_id)


def post(app, path, body, **kwargs):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return app.handle("POST", path, raw, **kwargs)


def read_stream(reply):
    lines = b"".join(reply.events).decode().split("\n\n")
    assert lines[-1] == "" and lines[-2] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-2]]


# --------------------------------------------------------------------------------------------- requests

COMPLETION = {"model": "fake", "prompt": "2+2="}
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "2+2?"}]}


@pytest.mark.parametrize(
    "changes, param, message",
    [
        ({"model": "gpt-4"}, "model", "model 'gpt-4' is not served here; this server serves 'fake'"),
        ({"model": None}, "model", "model is required"),
        ({"max_tokens": -5}, "max_tokens", "max_tokens must be an integer >= 1, but is -5"),
        ({"max_tokens": 0}, "max_tokens", "but is 0"),
        ({"max_tokens": 2.5}, "max_tokens", "but is 2.5"),
        ({"top_p": -0.1}, "top_p", "top_p must be a finite number > 0 (a multiplier"),
        ({"top_p": 0}, "top_p", "but is 0"),
        ({"temperature": -1}, "temperature", "temperature must be a finite number >= 0"),
        ({"temperature": "hot"}, "temperature", 'but is "hot"'),
        ({"n": 2}, "n", "n must be 1"),
        ({"logprobs": 3}, "logprobs", "logprobs=3 is not supported"),
        ({"echo": True}, "echo", "echo=true is not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty", "is not supported"),
        ({"stop": [1]}, "stop", "stop must be a string or a list of strings"),
        ({"seed": "1"}, "seed", "seed must be an integer"),
        ({"stream": "yes"}, "stream", "stream must be true or false"),
        ({"autodeco": {"return_decodings": True}}, "autodeco", "autodeco must be an object such as"),
        ({"autodeco": {"return_decoding": 1}}, "autodeco.return_decoding", "must be true or false"),
        ({"prompt": None}, "prompt", "prompt is required"),
        ({"prompt": ""}, "prompt", "prompt is empty"),
        ({"prompt": ["a", "b"]}, "prompt", "one prompt per request, but got 2"),
        ({"prompt": [1, -2]}, "prompt", "prompt token ids must be >= 0"),
        ({"prompt": {"text": "a"}}, "prompt", "prompt must be a non-empty string or list of token ids"),
    ],
)
def test_completion_request_errors_name_the_field_and_value(changes, param, message):
    body = {**COMPLETION, **changes}
    with pytest.raises(ApiError) as caught:
        api.parse_completion_request(body, "fake")
    assert caught.value.status == 400 and caught.value.param == param
    assert message in caught.value.message


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"messages": None}, "messages is required"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"content": "hi"}]}, "messages[0] must be an object with a string role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "only text parts"),
        ({"max_completion_tokens": -1}, "max_completion_tokens must be an integer >= 1, but is -1"),
    ],
)
def test_chat_request_errors(changes, message):
    with pytest.raises(ApiError, match=None) as caught:
        api.parse_chat_request({**CHAT, **changes}, "fake")
    assert message in caught.value.message


def test_requests_parse_multipliers_and_options():
    parsed = api.parse_completion_request(
        {**COMPLETION, "temperature": 0, "top_p": 2.0, "stop": "\n", "seed": 7, "stream": True,
         "stream_options": {"include_usage": True}, "autodeco": {"return_decoding": True}, "n": 1,
         "logprobs": None, "presence_penalty": 0.0, "user": "someone"},
        "fake",
    )
    assert (parsed.temperature, parsed.top_p, parsed.stop, parsed.seed) == (0.0, 2.0, ["\n"], 7)
    assert parsed.stream and parsed.include_usage and parsed.return_decoding
    assert parsed.max_tokens == api.COMPLETION_DEFAULT_MAX_TOKENS
    assert api.parse_completion_request({**COMPLETION, "prompt": [[5, 6]]}, "fake").prompt == [5, 6]
    chat = api.parse_chat_request(
        {**CHAT, "max_tokens": 9, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                              {"type": "text", "text": "b"}]}]},
        "fake",
    )
    assert chat.max_tokens == 9 and chat.messages == [{"role": "user", "content": "ab"}]
    assert api.parse_chat_request(CHAT, "fake").max_tokens is None


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'{"temperature": NaN}', b"\xff"])
def test_malformed_bodies_are_400(raw):
    with pytest.raises(ApiError) as caught:
        api.parse_json(raw)
    assert caught.value.status == 400 and "JSON" in caught.value.message


# --------------------------------------------------------------------------------------------------- app


def test_unknown_path_is_404_and_wrong_method_405():
    app = OpenAIApp(FakeEngine())
    reply = app.handle("GET", "/v1/nothing")
    assert reply.status == 404
    assert set(reply.body["error"]) == {"message", "type", "param", "code"}
    assert "unknown path '/v1/nothing'" in reply.body["error"]["message"]
    reply = app.handle("GET", "/v1/completions")
    assert reply.status == 405 and reply.headers["Allow"] == "POST"
    assert app.handle("GET", "/v1/models/other").status == 404


def test_models_lists_the_engines_model():
    app = OpenAIApp(FakeEngine())
    body = app.handle("GET", "/v1/models?x=1").body
    assert [model["id"] for model in body["data"]] == ["fake"] and body["object"] == "list"
    assert app.handle("GET", "/v1/models/fake").body["id"] == "fake"


def test_completion_response_with_per_token_values():
    engine = FakeEngine()
    reply = post(OpenAIApp(engine), "/v1/completions",
                 {**COMPLETION, "max_tokens": 5, "temperature": 0.5, "top_p": 3, "seed": 2, "stop": ["zz"],
                  "autodeco": {"return_decoding": True}})
    assert reply.status == 200
    choice = reply.body["choices"][0]
    assert choice["text"] == "4 ok!" and choice["finish_reason"] == "length"
    assert choice["autodeco"] == {"temperatures": [0.5, 0.6, 0.7], "top_ps": [0.9, 0.8, 1.0]}
    assert reply.body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    request = engine.requests[0]
    assert request.prompt_ids == [ord(c) for c in "2+2="] and request.max_tokens == 5
    assert (request.temperature, request.top_p, request.seed, request.stop) == (0.5, 3.0, 2, ["zz"])
    assert engine.closed == [request.request_id] and request.request_id == reply.body["id"]
    assert "autodeco" not in post(OpenAIApp(FakeEngine()), "/v1/completions", COMPLETION).body["choices"][0]


def test_chat_response_renders_the_template_and_fills_the_context_by_default():
    engine = FakeEngine(finish="stop")
    reply = post(OpenAIApp(engine), "/v1/chat/completions", CHAT)
    assert reply.body["object"] == "chat.completion"
    assert reply.body["choices"][0]["message"] == {"role": "assistant", "content": "4 ok!"}
    assert reply.body["choices"][0]["finish_reason"] == "stop"
    prompt = "<user>2+2?<assistant>"
    assert engine.requests[0].prompt_ids == [ord(c) for c in prompt]
    assert engine.requests[0].max_tokens == FakeEngine.max_model_len - len(prompt)


def test_chat_without_template_is_400():
    engine = FakeEngine()
    engine.tokenizer.chat_template = None
    reply = post(OpenAIApp(engine), "/v1/chat/completions", CHAT)
    assert reply.status == 400 and "has no chat template" in reply.body["error"]["message"]


def test_engine_refusal_is_400():
    reply = post(OpenAIApp(FakeEngine()), "/v1/completions", {**COMPLETION, "prompt": "x" * 80})
    assert reply.status == 400 and "the prompt is 80 tokens, too long" in reply.body["error"]["message"]


@pytest.mark.parametrize("kind, path, body", [("completion", "/v1/completions", COMPLETION),
                                               ("chat", "/v1/chat/completions", CHAT)])
def test_stream_has_one_chunk_per_token_with_its_values(kind, path, body):
    engine = FakeEngine()
    reply = post(OpenAIApp(engine), path, {**body, "stream": True, "stream_options": {"include_usage": True},
                                           "autodeco": {"return_decoding": True}})
    chunks = read_stream(reply)
    *token_chunks, usage_chunk = chunks
    assert [chunk["choices"][0]["autodeco"]["temperatures"] for chunk in token_chunks] == [[0.5], [0.6], [0.7]]
    assert [chunk["choices"][0]["finish_reason"] for chunk in token_chunks] == [None, None, "length"]
    if kind == "chat":
        assert token_chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "4"}
        assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in token_chunks) == "4 ok!"
        assert {chunk["object"] for chunk in token_chunks} == {"chat.completion.chunk"}
    else:
        assert "".join(chunk["choices"][0]["text"] for chunk in token_chunks) == "4 ok!"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 3
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert len(engine.closed) == 1


def test_stream_closed_early_closes_the_engine_stream():
    engine = FakeEngine()
    reply = post(OpenAIApp(engine), "/v1/completions", {**COMPLETION, "stream": True})
    next(reply.events)
    assert engine.closed == []
    reply.events.close()
    assert len(engine.closed) == 1


def test_gone_client_stops_a_whole_answer():
    engine = FakeEngine()
    checks = []

    def gone():
        checks.append(1)
        return True

    reply = post(OpenAIApp(engine), "/v1/completions", COMPLETION, client_gone=gone)
    assert checks == [1] and len(engine.closed) == 1
    assert reply.body["usage"]["completion_tokens"] == 1  # the first token only: nobody is listening


def test_engine_ending_without_a_reason_still_closes_the_choice():
    engine = FakeEngine(finish=None)
    chunks = read_stream(post(OpenAIApp(engine), "/v1/completions", {**COMPLETION, "stream": True}))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"][0]["text"] == ""
    body = post(OpenAIApp(FakeEngine(finish=None)), "/v1/completions", COMPLETION).body
    assert body["choices"][0]["finish_reason"] == "length"


# ------------------------------------------------------------------------------------- strictness and gates


def test_to_json_refuses_nan_and_infinity_and_escapes_lone_surrogates():
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ApiError) as caught:
            responses.to_json({"temperatures": [value]})
        assert caught.value.status == 500 and "NaN or infinity" in caught.value.message
    assert json.loads(responses.to_json({"text": "é\ud800"})) == {"text": "é\ud800"}
    with pytest.raises(ApiError):
        responses.server_sent_event({"top_ps": [float("nan")]})


def test_api_key_check():
    api.check_api_key(None, None)
    api.check_api_key("Bearer k", "k")
    api.check_api_key("bearer  k ", "k")
    for header in (None, "", "k", "Bearer", "Bearer kk", "Basic k", "Bearer \udcff"):
        with pytest.raises(ApiError) as caught:
            api.check_api_key(header, "k")
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
def test_json_content_types_pass(content_type):
    api.check_content_type(content_type)


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=b", "application/json-seq"])
def test_other_content_types_are_415(content_type):
    with pytest.raises(ApiError) as caught:
        api.check_content_type(content_type)
    assert caught.value.status == 415 and caught.value.code == "unsupported_media_type"


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 65 + b"1" + b"}" * 65])
def test_deeply_nested_bodies_are_400(raw):
    with pytest.raises(ApiError) as caught:
        api.parse_json(raw)
    assert caught.value.status == 400 and "nests" in caught.value.message


def test_nesting_up_to_the_limit_parses():
    assert api.parse_json(b'{"a": ' * 63 + b"[1]" + b"}" * 63)["a"]


@pytest.mark.parametrize(
    "changes, param",
    [
        ({"top_k": 40}, "top_k"), ({"min_p": 0.05}, "min_p"), ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"), ({"tool_choice": "auto"}, "tool_choice"),
        ({"guided_json": {}}, "guided_json"), ({"presence_penalty": True}, "presence_penalty"),
        ({"max_completion_tokens": 3}, "max_completion_tokens"), ({"seed": 2**64}, "seed"), ({"seed": 1.5}, "seed"),
        ({"max_tokens": 2**63}, "max_tokens"), ({"n": 1.0}, "n"), ({"temperature": 1e5}, "temperature"),
        ({"top_p": 1e39}, "top_p"), ({"prompt": [2**63]}, "prompt"), ({"prompt": "\ud800"}, "prompt"),
        ({"stop": ["a"] * 17}, "stop"), ({"stop": "\udfff"}, "stop"), ({"user": ["x"]}, "user"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_completion_fields_not_read_or_out_of_range_are_refused_by_name(changes, param):
    with pytest.raises(ApiError) as caught:
        api.parse_completion_request({**COMPLETION, **changes}, "fake")
    assert caught.value.status == 400 and caught.value.param == param


def test_off_values_and_nulls_pass():
    parsed = api.parse_chat_request(
        {**CHAT, "top_k": None, "response_format": {"type": "text"}, "tool_choice": "none", "tools": [],
         "frequency_penalty": 0.0, "logprobs": False, "seed": -(2**63), "stop": ["a"] * 16, "n": 1,
         "messages": [{"role": "user", "content": "hi", "name": None}]},
        "fake",
    )
    assert parsed.seed == -(2**63) and parsed.messages == [{"role": "user", "content": "hi"}]


def test_max_tokens_is_fitted_to_the_engines_context():
    engine = FakeEngine()
    post(OpenAIApp(engine), "/v1/completions", {**COMPLETION, "max_tokens": 1000})
    assert engine.requests[0].max_tokens == FakeEngine.max_model_len - len("2+2=")


def test_chat_without_max_tokens_falls_back_when_the_context_is_unknown():
    class Unknown(FakeEngine):
        max_model_len = None

        def stream(self, request):
            self.requests.append(request)
            return self._events(request)

    engine = Unknown()
    post(OpenAIApp(engine), "/v1/chat/completions", CHAT)
    assert engine.requests[0].max_tokens == api.CHAT_FALLBACK_MAX_TOKENS
