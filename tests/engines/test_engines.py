"""engines: the contract's checks, incremental text and stop strings, and the HF engine against generate()."""

import threading

import pytest
import torch

from autodeco.engines.base import Engine, GenerationRequest, TokenEvent
from autodeco.engines.hf import HFEngine
from autodeco.engines.text import IncrementalText, StopStrings
from autodeco.model.base_model import end_token_ids


class ByteTokenizer:
    """One token per UTF-8 byte; token 0 is a special end token (skipped when decoding)."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(token for token in ids if token != 0).decode("utf-8", errors="replace")


def event(text, finish_reason=None, token_id=5):
    return TokenEvent(token_id=token_id, text=text, temperature=0.5, top_p=0.9, finish_reason=finish_reason)


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt_ids": []}, "prompt_ids is empty"),
        ({"max_tokens": 0}, "max_tokens must be an integer >= 1, but is 0"),
        ({"max_tokens": True}, "max_tokens must be an integer >= 1, but is True"),
        ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "but is nan"),
        ({"top_p": 0.0}, "top_p must be a finite number > 0"),
        ({"top_p": -1.0}, "but is -1.0"),
        ({"stop": ["ok", ""]}, "each stop must be a non-empty string, but got ''"),
        ({"temperature": 1e39}, "temperature must be at most 10000"),
        ({"top_p": 10000.5}, "top_p must be at most 10000"),
    ],
)
def test_request_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerationRequest(**{"prompt_ids": [3, 4], "max_tokens": 4, **fields})


def test_request_normalizes_and_allows_top_p_above_one():
    request = GenerationRequest(prompt_ids=(3, 4), max_tokens=2, temperature=0, top_p=2.5, stop="\n")
    assert request.prompt_ids == [3, 4] and request.stop == ["\n"] and request.top_p == 2.5 and request.greedy
    with pytest.raises(ValueError, match="finish_reason must be None or one of"):
        TokenEvent(token_id=1, text="", temperature=1.0, top_p=1.0, finish_reason="eos")


# ------------------------------------------------------------------------------------------- text pieces


def test_incremental_text_keeps_multibyte_characters_whole():
    text = IncrementalText(ByteTokenizer())
    ids = list("añ€😀b".encode())  # 1 + 2 + 3 + 4 + 1 bytes
    pieces = [text.piece(token) for token in ids]
    assert pieces == ["a", "", "ñ", "", "", "€", "", "", "", "😀", "b"]


def test_incremental_text_skips_special_tokens_and_flushes_at_the_end():
    text = IncrementalText(ByteTokenizer())
    assert [text.piece(token) for token in [104, 0, 105]] == ["h", "", "i"]
    cut = IncrementalText(ByteTokenizer())
    assert cut.piece(0xC3) == ""
    assert cut.piece(0xA9, final=False) == "é"
    unfinished = IncrementalText(ByteTokenizer())
    assert unfinished.piece(0xE2, final=True) == "\ufffd"  # generation ended mid-character: shown as it is


def test_incremental_text_matches_a_real_tokenizer(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    ids = tokenizer("a b?</s>x", add_special_tokens=False)["input_ids"]
    text = IncrementalText(tokenizer)
    pieces = [text.piece(token) for token in ids]
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_across_tokens_cuts_the_text_before_it():
    stops = StopStrings(["END"])
    released = []
    for piece in ["ab", "cE", "N", "Dzz"]:
        out, stopped = stops.add(event(piece))
        released += out
    assert stopped
    assert [item.text for item in released] == ["ab", "c", "", ""]  # one event per token, text cut before "END"
    assert [item.finish_reason for item in released] == [None, None, None, "stop"]


def test_stop_string_holds_only_a_possible_start():
    stops = StopStrings(["xyz", "\n\n"])
    assert [item.text for item in stops.add(event("ab"))[0]] == ["ab"]
    assert stops.add(event("x")) == ([], False)  # may begin "xyz"
    out, stopped = stops.add(event("q"))  # "xq" cannot: both released
    assert [item.text for item in out] == ["x", "q"] and not stopped
    out, stopped = stops.add(event("\n", finish_reason="length"))  # the last event releases everything
    assert [(item.text, item.finish_reason) for item in out] == [("\n", "length")]


def test_earliest_stop_string_wins():
    out, stopped = StopStrings(["cd", "b"]).add(event("abcd"))
    assert stopped and out[0].text == "a" and out[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------------- HF engine


@pytest.fixture(scope="module")
def loaded(tiny_chat_model_dir):
    from autodeco.sampling.inference import load_for_generation

    return load_for_generation(None, str(tiny_chat_model_dir), seed=0)


@pytest.fixture(scope="module")
def engine(loaded):
    return HFEngine(loaded.model, loaded.tokenizer, "tiny")


def prompt_ids(loaded, text="<u>what is 2+3?</s><a>"):
    return loaded.tokenizer(text, add_special_tokens=False)["input_ids"]


def reference(loaded, engine, ids, max_tokens, seed, **sampling):
    """What AutoDecoForCausalLM.generate makes and records for the same prompt and seed."""
    torch.manual_seed(seed)
    output = loaded.model.generate(
        torch.tensor([ids]), max_new_tokens=max_tokens, return_dict_in_generate=True,
        eos_token_id=engine.eos_token_ids, pad_token_id=engine.pad_token_id, **sampling,
    )
    return output.sequences[0, len(ids):].tolist(), output.temperatures[0].tolist(), output.top_ps[0].tolist()


def test_hf_engine_is_an_engine(engine, loaded):
    assert isinstance(engine, Engine)
    assert engine.eos_token_ids == [loaded.tokenizer.eos_token_id] == [1]
    assert engine.max_model_len == loaded.model.llm.config.max_position_embeddings


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.3)])
def test_sampled_tokens_and_values_equal_generate(engine, loaded, temperature, top_p):
    ids = prompt_ids(loaded)
    request = GenerationRequest(prompt_ids=ids, max_tokens=12, temperature=temperature, top_p=top_p, seed=11)
    events = list(engine.stream(request))
    tokens, temperatures, top_ps = reference(loaded, engine, ids, 12, 11, temperature=temperature, top_p=top_p)
    assert [item.token_id for item in events] == tokens
    assert [item.temperature for item in events] == pytest.approx(temperatures, rel=1e-6, abs=1e-7)
    assert [item.top_p for item in events] == pytest.approx(top_ps, rel=1e-6, abs=1e-7)
    assert [item.finish_reason for item in events] == [None] * (len(events) - 1) + ["length"]
    assert "".join(item.text for item in events) == loaded.tokenizer.decode(tokens, skip_special_tokens=True)


def test_greedy_equals_generate_greedy_and_repeats(engine, loaded):
    ids = prompt_ids(loaded)
    request = GenerationRequest(prompt_ids=ids, max_tokens=10, temperature=0.0)
    first = list(engine.stream(request))
    tokens, temperatures, top_ps = reference(loaded, engine, ids, 10, 0, do_sample=False)
    assert [item.token_id for item in first] == tokens
    assert [item.temperature for item in first] == pytest.approx(temperatures, rel=1e-6, abs=1e-7)
    assert [item.top_p for item in first] == pytest.approx(top_ps, rel=1e-6, abs=1e-7)
    assert [item.token_id for item in engine.stream(request)] == tokens


def test_values_equal_teacher_forced_heads(engine, loaded):
    ids = prompt_ids(loaded)
    events = list(engine.stream(GenerationRequest(prompt_ids=ids, max_tokens=6, seed=3, top_p=0.5)))
    sequence = torch.tensor([ids + [item.token_id for item in events]])
    with torch.no_grad():
        output = loaded.model(sequence)
    positions = slice(len(ids) - 1, len(ids) - 1 + len(events))  # the position before each generated token
    assert [item.temperature for item in events] == pytest.approx(output.temperature[0, positions].tolist(), abs=1e-5)
    expected_top_p = (output.top_p[0, positions] * 0.5).clamp(max=1.0)  # P = min(1, P_head * top_p)
    assert [item.top_p for item in events] == pytest.approx(expected_top_p.tolist(), abs=1e-5)


def test_stop_string_and_end_token_finish_with_stop(engine, loaded):
    ids = prompt_ids(loaded)
    greedy = list(engine.stream(GenerationRequest(prompt_ids=ids, max_tokens=10, temperature=0)))
    text = "".join(item.text for item in greedy)
    stop = text[3:5]
    assert len(stop) == 2 and stop.strip(), text
    stopped = list(engine.stream(GenerationRequest(prompt_ids=ids, max_tokens=10, temperature=0, stop=[stop])))
    assert "".join(item.text for item in stopped) == text[: text.index(stop)]
    assert stopped[-1].finish_reason == "stop" and len(stopped) < len(greedy)
    assert [item.token_id for item in stopped] == [item.token_id for item in greedy[: len(stopped)]]
    end = greedy[4].token_id  # make the 5th greedy token an end token
    ending = HFEngine(loaded.model, loaded.tokenizer, "tiny", eos_token_ids=[end])
    events = list(ending.stream(GenerationRequest(prompt_ids=ids, max_tokens=10, temperature=0)))
    first_end = [item.token_id for item in greedy].index(end)
    assert len(events) == first_end + 1 and events[-1].finish_reason == "stop"


def _generation_threads():
    return [thread for thread in threading.enumerate() if thread.name.startswith("autodeco-hf")]


def test_closing_the_stream_stops_the_generation(engine, loaded):
    endless = HFEngine(loaded.model, loaded.tokenizer, "tiny", eos_token_ids=[10**6])  # no end token: 200 steps
    steps = []
    hook = loaded.model.llm.register_forward_hook(lambda *arguments: steps.append(1))
    try:
        stream = endless.stream(GenerationRequest(prompt_ids=prompt_ids(loaded), max_tokens=200, seed=0))
        assert next(stream).finish_reason is None
        next(stream)
        stream.close()
        assert _generation_threads() == []  # the worker stopped and was joined
    finally:
        hook.remove()
    assert len(steps) < 20  # 200 without the stop
    after = list(engine.stream(GenerationRequest(prompt_ids=prompt_ids(loaded), max_tokens=3, seed=0)))
    assert len(after) == 3


def test_concurrent_requests_get_their_own_answers(engine, loaded):
    ids = prompt_ids(loaded)
    requests = [GenerationRequest(prompt_ids=ids, max_tokens=8, seed=seed, temperature=1.5) for seed in range(4)]
    sequential = [[item.token_id for item in engine.stream(request)] for request in requests]
    results = [None] * len(requests)

    def run(index):
        results[index] = [item.token_id for item in engine.stream(requests[index])]

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == sequential
    assert len({tuple(tokens) for tokens in sequential}) > 1  # the seeds matter


def test_prompt_filling_the_context_is_refused_at_once(engine, loaded):
    limit = engine.max_model_len
    with pytest.raises(ValueError, match=f"the prompt is {limit} tokens but the model's context holds {limit}"):
        engine.stream(GenerationRequest(prompt_ids=[5] * limit, max_tokens=4))
    request = GenerationRequest(prompt_ids=[5] * (limit - 2), max_tokens=50, temperature=0)
    assert engine.fit_max_tokens(request) == 2


def test_end_token_ids_reads_config_and_tokenizer():
    from types import SimpleNamespace as Namespace

    assert end_token_ids(Namespace(generation_config=Namespace(eos_token_id=None)), Namespace(eos_token_id=4)) == [4]
    assert end_token_ids(Namespace(), Namespace()) == []


def test_close_stops_running_generations_and_refuses_new_ones(loaded):
    engine = HFEngine(loaded.model, loaded.tokenizer, "tiny", eos_token_ids=[10**6])
    stream = engine.stream(GenerationRequest(prompt_ids=prompt_ids(loaded), max_tokens=200, seed=0))
    next(stream)
    engine.close()
    assert _generation_threads() == []
    with pytest.raises(RuntimeError, match="the engine is closed"):
        engine.stream(GenerationRequest(prompt_ids=[5], max_tokens=2))


def test_the_contract_declares_the_context_length():
    class Bare:
        model_name, tokenizer = "m", None

        def stream(self, request):
            return iter(())

    class WithContext(Bare):
        max_model_len = None

    assert not isinstance(Bare(), Engine) and isinstance(WithContext(), Engine)


def test_vllm_engine_reads_its_context_length_from_the_model_config():
    from types import SimpleNamespace as Namespace

    from autodeco.engines.vllm import _max_model_len

    assert _max_model_len(Namespace(model_config=Namespace(max_model_len=256))) == 256
    assert _max_model_len(Namespace(vllm_config=Namespace(model_config=Namespace(max_model_len=512)))) == 512
    assert _max_model_len(Namespace()) is None


# ------------------------------------------------------------------------- vLLM rows (no vLLM needed)


def test_a_vllm_row_says_who_decodes_by_its_type():
    from autodeco.core.multipliers import MultiplierError, Multipliers
    from autodeco.engines.vllm import BaseSampling, RowRequest

    assert RowRequest([5, 6], 4).autodeco and RowRequest([5, 6], 4).decoding == Multipliers()
    assert RowRequest([5, 6], 4, Multipliers(0.5, 0.9), 3).autodeco
    assert not RowRequest([5, 6], 4, BaseSampling(0.0, 1.0)).autodeco
    with pytest.raises(TypeError, match="Multipliers .* or BaseSampling"):
        RowRequest([5, 6], 4, (0.7, 0.9))  # two bare floats could mean either
    with pytest.raises(MultiplierError, match="top_p"):
        Multipliers(1.0, -1.0)
    for temperature, top_p in ((-0.1, 1.0), (float("nan"), 1.0), (1.0, 0.0), (1.0, 1.5)):
        with pytest.raises(ValueError, match="base row"):
            BaseSampling(temperature, top_p)
