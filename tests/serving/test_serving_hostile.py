"""serving under a crowd and hostile clients: a fake engine behind the real HTTP server on 127.0.0.1.

Each class of trouble has its test: a burst of connections, clients that half-close or vanish, answers that
would not be JSON, hostile bodies, fields the server does not implement, keys, content types, slow clients,
and the ``autodeco serve`` command's own checks.
"""

import http.client
import json
import math
import socket
import struct
import threading
import time

import pytest

from autodeco.engines.base import TokenEvent
from autodeco.serving.server import OpenAIServer, serve_in_thread

KEY = "s3cret-key"


class CharTokenizer:
    """One token per character (ids are code points below 256); raises on text it cannot encode, as real ones do."""

    chat_template = "{{ messages }}"

    def __len__(self):
        return 256

    def __call__(self, text, add_special_tokens=True):
        text.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, like a fast tokenizer's failure
        return {"input_ids": [ord(character) % 256 for character in text]}

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<{message['role']}>{message['content']}" for message in messages) + "<assistant>"


class PacedEngine:
    """Yields ``tokens`` tokens of text "a", ``delay`` seconds apart; counts what it yielded and when it was closed."""

    model_name = "fake"
    max_model_len = 4096

    def __init__(self, tokens=5, delay=0.0, temperature=0.5):
        self.tokenizer = CharTokenizer()
        self.tokens, self.delay, self.temperature = tokens, delay, temperature
        self.yielded = 0
        self.closed = threading.Event()

    def stream(self, request):
        return self._events(min(request.max_tokens, self.tokens))

    def _events(self, count):
        try:
            for index in range(count):
                time.sleep(self.delay)
                self.yielded += 1
                yield TokenEvent(index, "a", self.temperature, 0.9, "length" if index == count - 1 else None)
        finally:
            self.closed.set()


@pytest.fixture(scope="module")
def server():
    """A shared server over a fast engine, for the tests that need no options of their own."""
    shared = serve_in_thread(PacedEngine(), "127.0.0.1", 0)
    yield shared
    shared.shutdown()
    shared.server_close()


@pytest.fixture
def start():
    """``start(engine, **server_options)`` -> a running server, shut down after the test."""
    servers = []

    def start_server(engine=None, **options):
        server = serve_in_thread(engine or PacedEngine(), "127.0.0.1", 0, **options)
        servers.append(server)
        return server

    yield start_server
    for server in servers:
        server.shutdown()
        server.server_close()


def request_bytes(body, path="/v1/completions", headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items() if value is not None)
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + data


def read_response(connection):
    """Parse one HTTP response from a raw socket: (status, headers, body bytes)."""
    response = http.client.HTTPResponse(connection)
    response.begin()
    return response.status, response.headers, response.read()


def call(server, method, path, body=None, headers=None, timeout=30):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=timeout)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        defaults = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers={**defaults, **(headers or {})})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def strict_json(data: bytes):
    """JSON as a strict parser reads it: NaN and Infinity refused."""
    return json.loads(data, parse_constant=lambda name: pytest.fail(f"{name} in a response: {data[:300]!r}"))


COMPLETION = {"model": "fake", "prompt": "hi", "max_tokens": 5}
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


# ---------------------------------------------------------------------------------------------------- crowd


def test_a_burst_of_64_connections_is_queued_while_the_server_is_busy():
    """With the standard library's backlog of 5, only 6 of 64 connections open while no thread accepts."""
    server = OpenAIServer(("127.0.0.1", 0), PacedEngine())
    connections = []
    try:
        for _ in range(64):
            connections.append(socket.create_connection(server.server_address[:2], timeout=2))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for connection in connections:
            connection.sendall(request_bytes(COMPLETION))
        statuses = [read_response(connection)[0] for connection in connections]
    finally:
        for connection in connections:
            connection.close()
        server.shutdown()
        server.server_close()
    assert statuses == [200] * 64 and server.request_queue_size == 128


def test_64_simultaneous_clients_all_get_their_answer(start):
    server = start(PacedEngine(tokens=3, delay=0.01))
    barrier, statuses = threading.Barrier(64), []

    def client():
        barrier.wait()
        statuses.append(call(server, "POST", "/v1/completions", COMPLETION)[0])

    threads = [threading.Thread(target=client) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 64


def test_backlog_is_configurable_and_checked():
    server = OpenAIServer(("127.0.0.1", 0), PacedEngine(), backlog=512)
    server.server_close()
    assert server.request_queue_size == 512
    with pytest.raises(ValueError, match="backlog must be an integer >= 1, but is 0"):
        OpenAIServer(("127.0.0.1", 0), PacedEngine(), backlog=0)


# ------------------------------------------------------------------------------------------- disconnects


@pytest.mark.parametrize("stream", [False, True])
def test_half_closed_client_gets_the_whole_answer(start, stream):
    """``nc -N`` shuts its sending side after the request: it is still reading, so it is not gone."""
    server = start(PacedEngine(tokens=8, delay=0.02))
    connection = socket.create_connection(server.server_address[:2], timeout=30)
    connection.sendall(request_bytes({**COMPLETION, "max_tokens": 8, "stream": stream}))
    connection.shutdown(socket.SHUT_WR)
    status, _, body = read_response(connection)
    connection.close()
    assert status == 200
    if stream:
        events = [line.removeprefix(b"data: ") for line in body.split(b"\n\n") if line]
        assert events[-1] == b"[DONE]"
        chunks = [strict_json(event) for event in events[:-1]]
        assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == "a" * 8
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    else:
        answer = strict_json(body)
        assert answer["usage"]["completion_tokens"] == 8 and answer["choices"][0]["text"] == "a" * 8


def test_half_closed_client_response_has_nothing_before_the_status_line(start):
    server = start(PacedEngine(tokens=4, delay=0.02))
    connection = socket.create_connection(server.server_address[:2], timeout=30)
    connection.sendall(request_bytes(COMPLETION))
    connection.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    connection.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert strict_json(received.split(b"\r\n\r\n", 1)[1])["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("stream", [False, True])
def test_client_that_leaves_stops_its_generation(start, how, stream):
    engine = PacedEngine(tokens=2000, delay=0.002)
    lines = []
    server = start(engine, log=lines.append)
    connection = socket.create_connection(server.server_address[:2], timeout=30)
    connection.sendall(request_bytes({**COMPLETION, "max_tokens": 2000, "stream": stream}))
    if stream:
        assert connection.recv(100).startswith(b"HTTP/1.1 200")
    else:
        deadline = time.monotonic() + 10
        while engine.yielded == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
    if how == "reset":  # SO_LINGER 0: close sends a reset
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
    assert engine.closed.wait(10), "the generation went on after the client left"
    assert engine.yielded < 2000
    deadline = time.monotonic() + 5
    while not any("went away" in line or "connection ended" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any("went away" in line or "connection ended" in line for line in lines), lines


def test_client_leaving_mid_stream_is_one_log_line_not_a_traceback(start, capfd):
    engine = PacedEngine(tokens=2000, delay=0.002)
    lines = []
    server = start(engine, log=lines.append)
    connection = socket.create_connection(server.server_address[:2], timeout=30)
    connection.sendall(request_bytes({**COMPLETION, "max_tokens": 2000, "stream": True}))
    assert connection.recv(4096).startswith(b"HTTP/1.1 200")
    connection.close()
    assert engine.closed.wait(10)
    time.sleep(0.2)
    assert call(server, "GET", "/health")[0] == 200
    assert "Traceback" not in capfd.readouterr().err
    assert len([line for line in lines if "went away" in line]) == 1, lines


# ------------------------------------------------------------------------------------------ strict JSON


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [1e39, 1e300, 10001])
def test_multipliers_that_would_overflow_are_refused(server, field, value):
    status, _, body = call(server, "POST", "/v1/completions",
                           {**COMPLETION, field: value, "autodeco": {"return_decoding": True}})
    error = strict_json(body)["error"]
    assert status == 400 and error["param"] == field and "at most 10000" in error["message"]


def test_largest_multiplier_is_accepted(server):
    status, _, body = call(server, "POST", "/v1/completions", {**COMPLETION, "temperature": 1e4, "top_p": 1e4})
    assert status == 200 and strict_json(body)["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_an_engine_value_json_cannot_carry_is_a_clear_500(start, value):
    server = start(PacedEngine(temperature=value))
    status, _, body = call(server, "POST", "/v1/completions", {**COMPLETION, "autodeco": {"return_decoding": True}})
    error = strict_json(body)["error"]
    assert status == 500 and "NaN or infinity" in error["message"] and error["type"] == "server_error"
    status, _, body = call(server, "POST", "/v1/completions",
                           {**COMPLETION, "stream": True, "autodeco": {"return_decoding": True}})
    events = [strict_json(line.removeprefix(b"data: ")) for line in body.split(b"\n\n") if line]
    assert status == 200 and "NaN or infinity" in events[-1]["error"]["message"]


# ------------------------------------------------------------------------------------------ hostile input

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.mark.parametrize(
    "raw, param",
    [
        (b'{"model": "fake", "prompt": "\\ud800"}', "prompt"),
        (b'{"model": "fake", "prompt": ["ok \\udfff"]}', "prompt"),
        (b'{"model": "fake", "prompt": "a", "stop": ["\\ud800"]}', "stop"),
        (DEEP, None),
        (DEEP_OBJECT, None),
        (b'{"model": "fake", "prompt": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}", None),
        (b'{"model": "fake", "prompt": "a", "seed": 18446744073709551616}', "seed"),
        (b'{"model": "fake", "prompt": "a", "seed": 9223372036854775808}', "seed"),
        (b'{"model": "fake", "prompt": "a", "seed": -9223372036854775809}', "seed"),
        (b'{"model": "fake", "prompt": "a", "seed": 1.0}', "seed"),
        (b'{"model": "fake", "prompt": "a", "seed": true}', "seed"),
        (b'{"model": "fake", "prompt": [18446744073709551616]}', "prompt"),
        (b'{"model": "fake", "prompt": [1, 340282366920938463463374607431768211456]}', "prompt"),
        (b'{"model": "fake", "prompt": [-1]}', "prompt"),
        (b'{"model": "fake", "prompt": [256]}', "prompt"),
        (b'{"model": "fake", "prompt": [[[1]]]}', "prompt"),
        (b'{"model": "fake", "prompt": [[1], [2]]}', "prompt"),
        (b'{"model": "fake", "prompt": [true]}', "prompt"),
        (b'{"model": "fake", "prompt": [1.0]}', "prompt"),
        (b'{"model": "fake", "prompt": []}', "prompt"),
        (b'{"model": "fake", "prompt": "a", "max_tokens": 1180591620717411303424}', "max_tokens"),
        (b'{"model": "fake", "prompt": "a", "max_tokens": 5.0}', "max_tokens"),
        (b'{"model": "fake", "prompt": "a", "max_tokens": true}', "max_tokens"),
        (b'{"model": "fake", "prompt": "a", "n": 100000000000000000000000}', "n"),
        (b'{"model": "fake", "prompt": "a", "n": 1.0}', "n"),
        (b'{"model": "fake", "prompt": "a", "n": true}', "n"),
        (b'{"model": "fake", "prompt": "a", "temperature": true}', "temperature"),
        (b'{"model": "fake", "prompt": "a", "top_p": "1"}', "top_p"),
        (b'{"model": "fake", "prompt": "a", "stop": ' + json.dumps(["x"] * 10_000).encode() + b"}", "stop"),
        (b'{"model": "fake", "prompt": "a", "stop": "' + b"x" * 5000 + b'"}', "stop"),
        (b'{"model": "fake", "prompt": "a", "user": 7}', "user"),
        (b'{"model": 123, "prompt": "a"}', "model"),
        (b'{"model": "fake", "prompt": "a", "seed": ' + b"9" * 5000 + b"}", None),
        (b"[1, 2]", None),
        (b'"text"', None),
        (b"null", None),
        (b"5", None),
        (b"true", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_hostile_completion_bodies_get_a_400_naming_the_field(server, raw, param):
    status, _, body = call(server, "POST", "/v1/completions", raw)
    error = strict_json(body)["error"]
    assert status == 400, error
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "messages, param",
    [
        ([{"role": "user", "content": "\ud800"}], "messages[0].content"),
        ([{"role": "user", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "\udc00"}]}],
         "messages[1].content[0].text"),
        ([{"role": "\ud800", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": "hi", "name": "bob"}], "messages[0].name"),
        ([{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]}], "messages[0].content"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([["user", "hi"]], "messages[0]"),
        ("hi", "messages"),
    ],
)
def test_hostile_chat_messages_get_a_400_naming_the_field(server, messages, param):
    status, _, body = call(server, "POST", "/v1/chat/completions", {**CHAT, "messages": messages})
    error = strict_json(body)["error"]
    assert status == 400 and error["param"] == param, error


def test_text_the_tokenizer_refuses_is_a_400_naming_the_field():
    from autodeco.serving.app import OpenAIApp

    class Refusing(CharTokenizer):
        def __call__(self, text, add_special_tokens=True):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")

    engine = PacedEngine()
    engine.tokenizer = Refusing()
    app = OpenAIApp(engine)
    for path, body, param in [("/v1/completions", COMPLETION, "prompt"), ("/v1/chat/completions", CHAT, "messages")]:
        reply = app.handle("POST", path, json.dumps(body).encode())
        assert reply.status == 400 and reply.body["error"]["param"] == param
        assert "TextEncodeInput" in reply.body["error"]["message"]


# ------------------------------------------------------------------------------------ fields honoured or not


@pytest.mark.parametrize(
    "path, changes, param",
    [
        ("/v1/completions", {"top_k": 40}, "top_k"),
        ("/v1/completions", {"min_p": 0.1}, "min_p"),
        ("/v1/completions", {"repetition_penalty": 1.2}, "repetition_penalty"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
        ("/v1/completions", {"frobnicate": 1}, "frobnicate"),
        ("/v1/completions", {"max_completion_tokens": 5}, "max_completion_tokens"),
        ("/v1/chat/completions", {"reasoning_effort": "high"}, "reasoning_effort"),
        ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/completions", {"stream": True, "stream_options": {"continuous_usage_stats": True}},
         "stream_options.continuous_usage_stats"),
        ("/v1/chat/completions", {"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
    ],
)
def test_fields_not_implemented_are_refused_by_name(server, path, changes, param):
    body = {**(COMPLETION if path == "/v1/completions" else CHAT), **changes}
    status, _, raw = call(server, "POST", path, body)
    error = strict_json(raw)["error"]
    assert status == 400 and error["param"] == param, error
    assert param.split(".")[-1] in error["message"]


def test_off_values_and_nulls_of_unimplemented_fields_pass(server):
    body = {**CHAT, "top_k": None, "response_format": {"type": "text"}, "presence_penalty": 0.0, "tool_choice": "none",
            "tools": [], "logprobs": False, "user": "someone", "n": 1, "frobnicate": None, "max_completion_tokens": 5}
    status, _, raw = call(server, "POST", "/v1/chat/completions", body)
    assert status == 200 and strict_json(raw)["usage"]["completion_tokens"] == 5


# ------------------------------------------------------------------------------------------------- security


def test_api_key_is_required_on_every_path_but_health(start):
    server = start(api_key=KEY)
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/completions", COMPLETION),
                               ("GET", "/v1/nothing", None)]:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}]:
            status, response_headers, raw = call(server, method, path, body, headers)
            error = strict_json(raw)["error"]
            assert status == 401 and error["code"] == "invalid_api_key" and KEY not in error["message"]
            assert response_headers["WWW-Authenticate"] == "Bearer"
    assert call(server, "GET", "/health")[0] == 200
    status, _, raw = call(server, "POST", "/v1/completions", COMPLETION, {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and strict_json(raw)["usage"]["completion_tokens"] == 5


def test_openai_client_with_the_key_is_answered_and_without_it_refused(start):
    openai = pytest.importorskip("openai")
    server = start(api_key=KEY)
    good = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=30)
    assert good.completions.create(model="fake", prompt="hi", max_tokens=3).usage.completion_tokens == 3
    bad = openai.OpenAI(base_url=server.url, api_key="guess", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_refused_request_keeps_the_connection_usable(start):
    server = start(api_key=KEY)
    connection = socket.create_connection(server.server_address[:2], timeout=30)
    keyed = request_bytes(COMPLETION, headers={"Authorization": f"Bearer {KEY}"})
    connection.sendall(request_bytes(COMPLETION) + keyed)
    response = http.client.HTTPResponse(connection)
    response.begin()
    response.read()
    assert response.status == 401
    assert read_response(connection)[0] == 200
    connection.close()


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", None, "application/jsonp",
])
def test_bodies_not_declared_as_json_are_415(server, content_type):
    connection = socket.create_connection(server.server_address[:2], timeout=30)
    connection.sendall(request_bytes(COMPLETION, headers={"Content-Type": content_type}))
    status, _, raw = read_response(connection)
    assert status == 415 and strict_json(raw)["error"]["code"] == "unsupported_media_type"
    connection.close()


def test_json_with_a_charset_is_accepted(server):
    status, _, _ = call(server, "POST", "/v1/completions", COMPLETION,
                        {"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200


def test_resolve_api_key_reads_the_flag_then_the_environment(monkeypatch):
    from autodeco.cli.serve import resolve_api_key

    monkeypatch.setenv("AUTODECO_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env" and resolve_api_key("flag") == "flag"
    monkeypatch.setenv("AUTODECO_API_KEY", "")
    assert resolve_api_key(None) is None
    with pytest.raises(ValueError, match="--api-key is empty"):
        resolve_api_key(" ")


# -------------------------------------------------------------------------------------------------- timeouts


def closed_within(connection, seconds):
    """Whether the server closes ``connection`` within ``seconds`` (what it sent before is skipped)."""
    connection.settimeout(seconds)
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
                                  request_bytes(COMPLETION)[:-10]])
def test_idle_and_half_sent_requests_are_closed_after_the_timeout(start, sent):
    lines = []
    server = start(timeout=0.5, log=lines.append)
    connection = socket.create_connection(server.server_address[:2], timeout=5)
    connection.sendall(sent)
    started = time.monotonic()
    assert closed_within(connection, 5)
    assert 0.4 < time.monotonic() - started < 3
    connection.close()
    timed_out = [line for line in lines if "timed out" in line or " 408 " in line]
    assert len(timed_out) == (1 if sent else 0), lines  # an idle connection closing is no news


def test_kept_alive_connection_is_closed_after_the_timeout_without_a_log_line(start):
    lines = []
    server = start(timeout=0.5, log=lines.append)
    connection = socket.create_connection(server.server_address[:2], timeout=5)
    connection.sendall(request_bytes(COMPLETION))
    assert read_response(connection)[0] == 200
    assert closed_within(connection, 5)
    connection.close()
    assert len(lines) == 1 and " 200 " in lines[0], lines


def test_a_request_trickled_byte_by_byte_is_cut_at_the_timeout(start):
    server = start(timeout=0.5)
    connection = socket.create_connection(server.server_address[:2], timeout=5)
    started = time.monotonic()
    try:
        for byte in request_bytes(COMPLETION):
            connection.sendall(bytes([byte]))
            time.sleep(0.05)
            if time.monotonic() - started > 3:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_within(connection, 5) and time.monotonic() - started < 3.5
    connection.close()


def test_half_sent_body_gets_a_408(start):
    server = start(timeout=0.5)
    connection = socket.create_connection(server.server_address[:2], timeout=5)
    connection.sendall(request_bytes(COMPLETION)[:-10])
    status, _, raw = read_response(connection)
    assert status == 408 and "did not arrive within 0.5 s" in strict_json(raw)["error"]["message"]
    connection.close()


@pytest.mark.parametrize("stream", [False, True])
def test_generations_longer_than_the_timeout_are_not_cut(start, stream):
    server = start(PacedEngine(tokens=6, delay=0.25), timeout=0.5)
    status, _, raw = call(server, "POST", "/v1/completions", {**COMPLETION, "max_tokens": 6, "stream": stream})
    assert status == 200 and raw.count(b"a") >= 6 and (b"[DONE]" in raw if stream else True)


def test_timeout_is_checked():
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0, but is 0"):
        OpenAIServer(("127.0.0.1", 0), PacedEngine(), timeout=0)


# ------------------------------------------------------------------------------------------ autodeco serve


def run_serve(monkeypatch, capsys, argv, engine=None):
    """``autodeco serve ARGV`` with a fake engine, stopped (as by Ctrl-C) as soon as it would serve."""
    from autodeco.cli import main
    from autodeco.cli import serve as serve_command

    seen = {}

    def serve_forever(self, *arguments):
        seen["address"] = self.server_address
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_command, "_load_engine", lambda *arguments: engine or PacedEngine())
    monkeypatch.setattr(OpenAIServer, "serve_forever", serve_forever)
    status = main(["serve", "--engine", "hf", "--model-name", "fake", *argv])
    output = capsys.readouterr()
    return status, output.out, output.err, seen.get("address")


def test_serve_on_every_interface_warns_on_stderr_with_the_real_address(monkeypatch, capsys):
    monkeypatch.delenv("AUTODECO_API_KEY", raising=False)
    status, out, err, address = run_serve(monkeypatch, capsys, ["--host", "0.0.0.0", "--port", "0"])
    assert status == 0
    assert f"warning: listening on 0.0.0.0:{address[1]} (every network interface)" in err and "--api-key" in err
    url = f"http://127.0.0.1:{address[1]}/v1"
    assert out.splitlines()[0] == f"autodeco serve: 'fake' on {url} (engine hf); Ctrl-C stops it"
    assert "warning" not in out


def test_serve_on_loopback_prints_only_the_url_and_usage_on_stdout(monkeypatch, capsys):
    monkeypatch.setenv("AUTODECO_API_KEY", KEY)
    status, out, err, _ = run_serve(monkeypatch, capsys, ["--port", "0"])
    assert status == 0 and "warning" not in err and KEY not in out + err
    assert out.startswith("autodeco serve: 'fake' on http://127.0.0.1:")
    assert "Authorization: Bearer $AUTODECO_API_KEY" in out


def test_serve_reports_a_busy_port_before_loading_the_model(monkeypatch, capsys):
    from autodeco.cli import main
    from autodeco.cli import serve as serve_command

    def load(*arguments):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(serve_command, "_load_engine", load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = main(["serve", "--engine", "hf", "--port", str(port)])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"autodeco: error: cannot listen on 127.0.0.1:{port}: ")
    assert "--port" in err


@pytest.mark.parametrize("argv, message", [
    (["--timeout", "0"], "--timeout must be a number of seconds > 0"),
    (["--api-key", ""], "--api-key is empty"),
])
def test_serve_refuses_bad_security_flags(capsys, argv, message):
    from autodeco.cli import main

    assert main(["serve", "--engine", "hf", "--port", "0", *argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("headers, status", [
    ({"Content-Length": str(50 * 1024 * 1024)}, 413),
    ({"Content-Length": None, "Transfer-Encoding": "chunked"}, 411),
    ({"Content-Length": "-1"}, 413),
    ({"Content-Length": "many"}, 400),
])
def test_bodies_too_large_chunked_or_unsized_are_refused_before_reading(server, headers, status):
    connection = socket.create_connection(server.server_address[:2], timeout=30)
    connection.sendall(request_bytes(b"{" * 1000, headers=headers))
    answer_status, answer_headers, raw = read_response(connection)
    connection.close()
    assert answer_status == status and answer_headers["Connection"] == "close" and strict_json(raw)["error"]


def test_a_50_mb_body_sent_whole_gets_its_413(server):
    """http.client writes the whole body before reading: the server takes it in briefly, so the 413 arrives."""
    status, _, raw = call(server, "POST", "/v1/completions", b" " * (50 * 1024 * 1024))
    assert status == 413 and "at most 33554432" in strict_json(raw)["error"]["message"]
