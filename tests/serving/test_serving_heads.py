"""Several heads on one base, chosen per request: the real openai client against servers on a tiny model (HF engine)."""

import json
import threading

import pytest
import torch

openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install -e '.[test]'")

from autodeco.engines.base import GenerationRequest  # noqa: E402
from autodeco.engines.heads_sets import base_id, heads_ids, unique_ids  # noqa: E402
from autodeco.engines.hf import HFEngine  # noqa: E402
from autodeco.model.checkpoint import CheckpointError  # noqa: E402
from autodeco.serving.server import serve_in_thread  # noqa: E402

DECODING = {"autodeco": {"return_decoding": True}}


@pytest.fixture(scope="module")
def heads_dirs(tiny_chat_model_dir, tmp_path_factory):
    """Two heads checkpoints for the tiny base, ``alpha`` and ``beta``, with different (random) weights."""
    from autodeco.model.modeling import AutoDecoForCausalLM

    root = tmp_path_factory.mktemp("heads")
    folders = []
    for name, seed in (("alpha", 1), ("beta", 2)):
        model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=seed)
        folders.append(str(model.save_pretrained(root / name)))
    return folders


@pytest.fixture(scope="module")
def base_name(tiny_chat_model_dir):
    return base_id(str(tiny_chat_model_dir), taken=["alpha", "beta"])


def start(engine):
    server = serve_in_thread(engine, "127.0.0.1", 0)
    return server, openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module", params=[False, True], ids=["serial", "batching"])
def mixed(request, heads_dirs):
    """A server of alpha, beta and the plain base, one request at a time or batched."""
    engine = HFEngine.from_checkpoints(heads_dirs, plain_base=True, batching=request.param)
    server, client = start(engine)
    yield engine, client
    stop(server)
    engine.close()


@pytest.fixture(scope="module")
def beta_alone(heads_dirs):
    """A server of beta alone (the reference of exactness)."""
    engine = HFEngine.from_checkpoints(heads_dirs[1:])
    server, client = start(engine)
    yield engine, client
    stop(server)


def ask(client, model, prompt="count:", seed=7, **options):
    answer = client.completions.create(model=model, prompt=prompt, max_tokens=10, seed=seed, extra_body=DECODING,
                                       **options)
    values = answer.choices[0].model_extra["autodeco"]
    return answer.choices[0].text, values["temperatures"], values["top_ps"], answer.model


def test_models_lists_each_heads_and_the_plain_base(mixed, base_name):
    engine, client = mixed
    assert [model.id for model in client.models.list().data] == ["alpha", "beta", base_name]
    assert client.models.retrieve("beta").id == "beta"


def test_model_picks_the_heads_and_equals_a_server_of_those_heads_alone(mixed, beta_alone):
    _, client = mixed
    _, alone = beta_alone
    on_beta = ask(client, "beta", temperature=0.9, top_p=1.2)
    on_alpha = ask(client, "alpha", temperature=0.9, top_p=1.2)
    reference = ask(alone, "beta", temperature=0.9, top_p=1.2)
    assert on_beta[3] == "beta" and on_beta[:3] == reference[:3]  # bitwise: alone on each engine
    assert on_alpha[1] != pytest.approx(on_beta[1], rel=1e-3)  # other heads, other temperatures


def test_rows_of_one_batch_may_use_different_heads(heads_dirs, beta_alone):
    """In a mixed crowd (alpha, beta and the plain base at once), beta's seeded request equals its solo answer."""
    engine = HFEngine.from_checkpoints(heads_dirs, plain_base=True, batching=True)
    _, alone = beta_alone
    server, client = start(engine)
    try:
        reference = ask(alone, "beta", prompt="abc", seed=3)
        crowd = {}
        barrier = threading.Barrier(6)

        def run(key, model, prompt, seed):
            barrier.wait()
            crowd[key] = ask(client, model, prompt=prompt, seed=seed)

        models = ["alpha", "beta", engine.plain_base_name] * 2
        threads = [threading.Thread(target=run, args=(index, model, *(("abc", 3) if index == 1 else (f"x{index}y", 10 + index))))
                   for index, model in enumerate(models)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert engine.scheduler.row_steps > engine.scheduler.steps  # the requests did share steps
        text, temperatures, top_ps, _ = crowd[1]
        assert text == reference[0]
        assert temperatures == pytest.approx(reference[1], rel=1e-5) and top_ps == pytest.approx(reference[2], rel=1e-5)
    finally:
        stop(server)
        engine.close()


def test_the_plain_base_takes_absolute_values(mixed, loaded_base):
    engine, client = mixed
    name = engine.plain_base_name
    text, temperatures, top_ps, _ = ask(client, name, temperature=0.7, top_p=0.9)
    assert set(temperatures) == {0.7} and set(top_ps) == {0.9}
    greedy = client.completions.create(model=name, prompt="count:", max_tokens=6, temperature=0)
    ids = engine.tokenizer("count:", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        expected = loaded_base.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                        eos_token_id=engine.eos_token_ids, pad_token_id=engine.pad_token_id)
    assert greedy.choices[0].text == engine.tokenizer.decode(expected[0, len(ids):], skip_special_tokens=True)
    with pytest.raises(openai.BadRequestError, match="absolute"):
        client.completions.create(model=name, prompt="x", max_tokens=2, top_p=1.5)


@pytest.fixture(scope="module")
def loaded_base(tiny_chat_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)


def test_an_unknown_model_is_refused_naming_the_served_ids(mixed, base_name):
    _, client = mixed
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="gamma", prompt="x", max_tokens=2)
    assert "'alpha', 'beta'" in str(error.value) and base_name in str(error.value)
    with pytest.raises(openai.NotFoundError, match="'alpha'"):
        client.models.retrieve("gamma")


def test_heads_of_another_base_are_refused_naming_both_bases(heads_dirs, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(heads_dirs[1], other)
    config = json.loads((other / "config.json").read_text())
    config["base_model_name_or_path"] = "org/another-base"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="org/another-base") as error:
        HFEngine.from_checkpoints([heads_dirs[0], str(other)])
    assert json.loads((tmp_path / "other" / "config.json").read_text())  # untouched
    recorded = json.loads(open(f"{heads_dirs[0]}/config.json").read())["base_model_name_or_path"]
    assert recorded in str(error.value)


def test_the_python_engine_picks_heads_per_request(heads_dirs):
    engine = HFEngine.from_checkpoints(heads_dirs)
    request = GenerationRequest(prompt_ids=[10, 11, 12], max_tokens=3, seed=1, heads="beta")
    assert engine.model_names == ["alpha", "beta"] and engine.model_name == "alpha"
    assert len(list(engine.stream(request))) == 3
    with pytest.raises(ValueError, match="'alpha', 'beta'"):
        engine.stream(GenerationRequest(prompt_ids=[10], max_tokens=1, heads="gamma"))


def test_ids_are_folder_names_made_unique():
    assert heads_ids(["shipped:smollm2-135m-instruct", "shipped:smollm2-135m-instruct-control"]) == [
        "smollm2-135m-instruct", "smollm2-135m-instruct-control"]
    assert heads_ids(["runs/a/heads", "runs/b/heads", "runs/c/heads"]) == ["heads", "heads-2", "heads-3"]
    assert unique_ids(["m"], taken=["m", "m-2"]) == ["m-3"]


def test_autodeco_serve_with_several_heads_serves_each(monkeypatch, capsys, heads_dirs, base_name, tiny_chat_model_dir):
    """``autodeco serve A B`` (the real loading path), stopped as soon as it would serve, after one request per id."""
    from autodeco.cli import main
    from autodeco.serving.server import OpenAIServer

    seen = {}

    def serve_forever(self, *arguments):
        seen["models"] = json.loads(json.dumps(self.app.handle("GET", "/v1/models").body))
        for model in ("alpha", "beta", base_name):
            body = json.dumps({"model": model, "prompt": "ab", "max_tokens": 2, "seed": 0}).encode()
            seen[model] = self.app.handle("POST", "/v1/completions", body).body["model"]
        raise KeyboardInterrupt

    monkeypatch.setattr(OpenAIServer, "serve_forever", serve_forever)
    assert main(["serve", "--engine", "hf", "--port", "0", "--quiet", *heads_dirs]) == 0
    assert [model["id"] for model in seen["models"]["data"]] == ["alpha", "beta", base_name]
    assert [seen[model] for model in ("alpha", "beta", base_name)] == ["alpha", "beta", base_name]
    out = capsys.readouterr().out
    assert f"'alpha', 'beta', '{base_name}' on http://127.0.0.1:" in out.splitlines()[0]


def test_autodeco_serve_refuses_the_same_heads_twice_and_model_name_with_several(monkeypatch, capsys, heads_dirs):
    from autodeco.cli import main

    assert main(["serve", "--engine", "hf", "--port", "0", heads_dirs[0], heads_dirs[0] + "/"]) != 0
    assert "same heads checkpoint" in capsys.readouterr().err
    assert main(["serve", "--engine", "hf", "--port", "0", "--model-name", "x", *heads_dirs]) != 0
    assert "--model-name" in capsys.readouterr().err
