"""engines.hf_batching: continuous batching against solo runs and generate(), streaming, clients that leave,
errors, close(), the admission rule, and the pieces (padded cache, sampler, grouped attention)."""

import threading

import pytest
import torch

from autodeco.engines import hf_batching
from autodeco.engines.base import GenerationRequest
from autodeco.engines.hf import HFEngine
from autodeco.engines.hf_batching import (
    CACHE_SPARE_COLUMNS,
    BatchRow,
    BufferedLayer,
    RowSampling,
    RunningBatch,
    draw_tokens,
    grouped_sdpa_attention,
    pad_left,
)

NEVER = [10**6]
"""An end token no step draws: generations run to their max_tokens."""


@pytest.fixture(scope="module")
def loaded(tiny_chat_model_dir):
    from autodeco.sampling.inference import load_for_generation

    return load_for_generation(None, str(tiny_chat_model_dir), seed=0)


def batched_engine(loaded, **options) -> HFEngine:
    """The batching engine on the tiny model, with an end token it never draws (answers run to max_tokens)."""
    return HFEngine(loaded.model, loaded.tokenizer, "tiny", eos_token_ids=NEVER, batching=True, **options)


def prompt(loaded, text):
    return loaded.tokenizer(f"<u>{text}</s><a>", add_special_tokens=False)["input_ids"]


def crowd(loaded) -> list[GenerationRequest]:
    """8 requests: prompts of 8 to 40 tokens, 10 to 24 new tokens, greedy and sampled, multipliers below and above 1."""
    texts = ["hi", "what is 2+3?", "tell me a story about a cat", "x" * 30, "abc", "why?", "count: 1 2 3 4", "ok"]
    multipliers = [(1.0, 1.0), (0.7, 1.3), (0.0, 1.0), (1.5, 0.6), (1.0, 0.9), (0.0, 0.5), (2.0, 1.0), (0.8, 2.0)]
    return [
        GenerationRequest(prompt_ids=prompt(loaded, text), max_tokens=10 + 2 * index, temperature=temperature,
                          top_p=top_p, seed=100 + index)
        for index, (text, (temperature, top_p)) in enumerate(zip(texts, multipliers))
    ]


def answer(events) -> list[tuple]:
    return [(event.token_id, event.temperature, event.top_p, event.finish_reason) for event in events]


def run_concurrently(engine, requests) -> list:
    """Every request from its own thread, all released at once; each answer, or the error its stream raised."""
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def client(index):
        barrier.wait()
        try:
            results[index] = answer(engine.stream(requests[index]))
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


class ForwardLog:
    """Records the ``input_ids`` shape of every forward pass of the base."""

    def __init__(self, llm):
        self.shapes = []
        self.handle = llm.register_forward_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.shapes.append(tuple(ids.shape))

    def decoding_batch_sizes(self) -> list[int]:
        return [rows for rows, length in self.shapes if length == 1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def assert_same_answer(crowded, alone):
    assert [item[0] for item in crowded] == [item[0] for item in alone]  # the tokens
    assert [item[3] for item in crowded] == [item[3] for item in alone]  # the finish reasons
    assert [item[1] for item in crowded] == pytest.approx([item[1] for item in alone], rel=1e-5, abs=1e-6)
    assert [item[2] for item in crowded] == pytest.approx([item[2] for item in alone], rel=1e-5, abs=1e-6)


def _batch_threads():
    return [thread for thread in threading.enumerate() if thread.name.startswith("autodeco-hf")]


# ------------------------------------------------------------------------------------------- against solo runs


def test_concurrent_seeded_requests_equal_their_solo_runs(loaded):
    engine = batched_engine(loaded)
    requests = crowd(loaded)
    alone = [answer(engine.stream(request)) for request in requests]
    with ForwardLog(loaded.model.llm) as log:
        crowded = run_concurrently(engine, requests)
    for crowded_answer, alone_answer in zip(crowded, alone):
        assert_same_answer(crowded_answer, alone_answer)
    assert max(log.decoding_batch_sizes()) >= 4  # they really shared steps
    assert len({tuple(item[0] for item in value) for value in alone}) == len(requests)


def test_a_lone_request_equals_generate_bitwise(loaded):
    engine = batched_engine(loaded)
    ids = prompt(loaded, "what is 2+3?")
    for sampling, request in [
        ({"temperature": 0.7, "top_p": 1.3}, GenerationRequest(prompt_ids=ids, max_tokens=12, temperature=0.7,
                                                               top_p=1.3, seed=5)),
        ({"do_sample": False}, GenerationRequest(prompt_ids=ids, max_tokens=12, temperature=0.0)),
    ]:
        torch.manual_seed(5)
        output = loaded.model.generate(torch.tensor([ids]), max_new_tokens=12, return_dict_in_generate=True,
                                       eos_token_id=NEVER, pad_token_id=0, **sampling)
        events = answer(engine.stream(request))
        assert [item[0] for item in events] == output.sequences[0, len(ids):].tolist()
        assert [item[1] for item in events] == output.temperatures[0].tolist()  # bitwise
        assert [item[2] for item in events] == output.top_ps[0].tolist()


def test_batched_and_serialized_engines_agree_on_a_lone_request(loaded):
    batched = batched_engine(loaded)
    serialized = HFEngine(loaded.model, loaded.tokenizer, "tiny", eos_token_ids=NEVER, batching=False)
    request = GenerationRequest(prompt_ids=prompt(loaded, "hello"), max_tokens=9, temperature=1.2, seed=9, stop=["zz"])
    assert serialized.scheduler is None and batched.scheduler is not None
    assert answer(batched.stream(request)) == answer(serialized.stream(request))


def test_at_most_one_prefill_between_two_steps(loaded):
    engine = batched_engine(loaded)
    with ForwardLog(loaded.model.llm) as log:
        results = run_concurrently(engine, crowd(loaded))
    assert all(isinstance(result, list) for result in results)
    prefills = [length > 1 for rows, length in log.shapes]
    assert sum(prefills) == 8
    assert not any(first and second for first, second in zip(prefills, prefills[1:]))  # a step after each admission


def test_max_batch_size_caps_the_rows(loaded):
    engine = batched_engine(loaded, max_batch_size=2)
    requests = crowd(loaded)[:5]
    alone = [answer(engine.stream(request)) for request in requests]
    with ForwardLog(loaded.model.llm) as log:
        crowded = run_concurrently(engine, requests)
    assert max(log.decoding_batch_sizes()) == 2
    for crowded_answer, alone_answer in zip(crowded, alone):
        assert_same_answer(crowded_answer, alone_answer)
    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1, but is 0"):
        batched_engine(loaded, max_batch_size=0)


def test_unseeded_requests_draw_from_fresh_seeds(loaded):
    engine = batched_engine(loaded)
    request = GenerationRequest(prompt_ids=prompt(loaded, "hi"), max_tokens=16, temperature=2.0)
    first, second = (answer(engine.stream(request)) for _ in range(2))
    assert [item[0] for item in first] != [item[0] for item in second]


# ------------------------------------------------------------------------------ leaving, errors, closing


def test_a_client_that_leaves_stops_its_row_and_the_others_go_on(loaded):
    engine = batched_engine(loaded)
    other = GenerationRequest(prompt_ids=prompt(loaded, "abc"), max_tokens=30, temperature=0.9, seed=4)
    alone = answer(engine.stream(other))
    with ForwardLog(loaded.model.llm) as log:
        leaving = engine.stream(GenerationRequest(prompt_ids=prompt(loaded, "hi"), max_tokens=200, seed=1))
        assert next(leaving).finish_reason is None
        result = []
        thread = threading.Thread(target=lambda: result.append(answer(engine.stream(other))))
        thread.start()
        while not log.decoding_batch_sizes() or max(log.decoding_batch_sizes()) < 2:  # the other one has joined
            next(leaving)
        leaving.close()  # returns once its row has left the batch
        assert len(engine.scheduler.batch.rows) <= 1
        thread.join(timeout=60)
    assert_same_answer(result[0], alone)
    assert len(log.shapes) < 60  # 200 steps had the row stayed
    assert _batch_threads() == []  # the idle scheduler thread is gone


def test_an_error_in_one_request_leaves_the_others_alone(loaded, monkeypatch):
    engine = batched_engine(loaded)
    requests = crowd(loaded)[:4]
    alone = [answer(engine.stream(request)) for request in requests]
    failing = {requests[1].seed: 1, requests[3].seed: 4}  # seed -> the draw that fails (1: its prefill's)
    draws = {}
    original = hf_batching.draw_tokens

    def faulty(logits, warped, samplings):
        tokens = original(logits, warped, samplings)
        for row, sampling in enumerate(samplings):
            seed = sampling.generator.initial_seed()
            draws[seed] = draws.get(seed, 0) + 1
            if failing.get(seed) == draws[seed]:
                tokens[row] = None
        return tokens

    monkeypatch.setattr(hf_batching, "draw_tokens", faulty)
    results = run_concurrently(engine, requests)
    for index in (1, 3):
        assert isinstance(results[index], ValueError) and "the request cannot go on" in str(results[index])
    for index in (0, 2):
        assert_same_answer(results[index], alone[index])
    monkeypatch.undo()
    assert answer(engine.stream(requests[1])) == alone[1]  # the engine serves on


def test_a_failed_shared_step_fails_its_rows_only_and_the_engine_serves_on(loaded, monkeypatch):
    engine = batched_engine(loaded)
    request = GenerationRequest(prompt_ids=prompt(loaded, "hi"), max_tokens=5, seed=2)
    alone = answer(engine.stream(request))
    original = hf_batching.dynamic_step
    calls = []

    def failing_second_step(*arguments, **options):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(*arguments, **options)

    monkeypatch.setattr(hf_batching, "dynamic_step", failing_second_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(engine.stream(request))
    assert answer(engine.stream(request)) == alone


def test_close_ends_every_stream_and_refuses_new_ones(loaded):
    engine = batched_engine(loaded)
    streams = [engine.stream(GenerationRequest(prompt_ids=prompt(loaded, text), max_tokens=500, seed=0))
               for text in ("a", "b")]
    firsts = [next(stream) for stream in streams]
    rests = []
    readers = [threading.Thread(target=lambda stream=stream: rests.append(list(stream))) for stream in streams]
    for reader in readers:
        reader.start()
    engine.close()
    for reader in readers:
        reader.join(timeout=30)
    assert all(first.finish_reason is None for first in firsts)
    assert len(rests) == 2 and all(len(rest) < 499 and all(e.finish_reason is None for e in rest) for rest in rests)
    assert _batch_threads() == []
    with pytest.raises(RuntimeError, match="the engine is closed"):
        engine.stream(GenerationRequest(prompt_ids=[5], max_tokens=2))


def test_bases_with_sliding_window_caches_are_refused(loaded):
    from transformers import MistralConfig, MistralForCausalLM

    from autodeco.model.modeling import AutoDecoForCausalLM

    torch.manual_seed(0)
    llm = MistralForCausalLM(MistralConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, sliding_window=4)).eval()
    model = AutoDecoForCausalLM.from_base(llm, seed=0)
    with pytest.raises(ValueError, match=r"DynamicSlidingWindowLayer.*HFEngine\(\.\.\., batching=False\)"):
        HFEngine(model, loaded.tokenizer, "mistral", batching=True)
    serialized = HFEngine(model, loaded.tokenizer, "mistral")
    assert len(list(serialized.stream(GenerationRequest(prompt_ids=[5, 6, 7], max_tokens=3, seed=0)))) >= 1


def test_the_server_over_the_batching_engine_streams_concurrent_answers(loaded):
    openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install -e '.[test]'")
    from autodeco.serving.server import serve_in_thread

    server = serve_in_thread(batched_engine(loaded), "127.0.0.1", 0)
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    extra = {"autodeco": {"return_decoding": True}}

    def ask(seed):
        chunks = client.completions.create(model="tiny", prompt="go " * (seed + 1), max_tokens=8, seed=seed,
                                           temperature=1.5, stream=True, extra_body=extra)
        text, values = "", []
        for chunk in chunks:
            text += chunk.choices[0].text
            decoding = chunk.choices[0].model_extra["autodeco"]
            values += [value for pair in zip(decoding["temperatures"], decoding["top_ps"]) for value in pair]
        return text, values

    try:
        alone = {seed: ask(seed) for seed in range(4)}
        leaving = client.completions.create(model="tiny", prompt="long", max_tokens=500, stream=True, seed=9)
        next(iter(leaving))  # this client reads one chunk, then goes away while the others ask
        crowded = {}
        threads = [threading.Thread(target=lambda seed=seed: crowded.__setitem__(seed, ask(seed))) for seed in range(4)]
        for thread in threads:
            thread.start()
        leaving.close()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    for seed, (text, values) in alone.items():
        assert crowded[seed][0] == text and len(values) == 2 * 8
        assert crowded[seed][1] == pytest.approx(values, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------------ the pieces


def test_running_batch_pads_rows_on_the_left_and_cuts_shared_padding(loaded):
    llm = loaded.model.llm
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    with torch.no_grad():
        caches = [llm(input_ids=torch.tensor([ids]), use_cache=True).past_key_values for ids in prompts]
    solo_keys = [cache.layers[0].keys.clone() for cache in caches]  # (1, heads, L, d)
    batch = RunningBatch()
    for ids, cache, token in zip(prompts, caches, (40, 41)):
        batch.add(BatchRow(GenerationRequest(prompt_ids=ids, max_tokens=4), 4, "cpu"), cache, token)
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.positions.tolist() == [3, 5] and batch.tokens.tolist() == [40, 41]
    keys = batch.cache.layers[0].keys  # (2, heads, 5, d)
    assert torch.equal(keys[0, :, 2:], solo_keys[0][0]) and not keys[0, :, :2].any()
    assert torch.equal(keys[1], solo_keys[1][0])
    inputs = batch.step_inputs(logits_to_keep=True)
    assert inputs["input_ids"].tolist() == [[40], [41]] and inputs["position_ids"].tolist() == [[3], [5]]
    assert inputs["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    with torch.no_grad():
        llm(**inputs)  # one step: every layer gains a column, in place
    dropped = batch.keep([0])
    assert [row.request.prompt_ids for row in dropped] == [prompts[1]]
    assert batch.mask.tolist() == [[1, 1, 1, 1]]  # the two columns of padding are gone
    assert torch.equal(batch.cache.layers[0].keys[:, :, :3], solo_keys[0])
    assert batch.keep([]) and batch.rows == [] and batch.cache is None


def test_buffered_layer_grows_past_its_spare_columns():
    layer = BufferedLayer.holding(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5))
    expected_keys, expected_values = layer.keys.clone(), layer.values.clone()
    for _ in range(CACHE_SPARE_COLUMNS + 3):
        keys, values = torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5)
        layer.update(keys, values)
        expected_keys, expected_values = torch.cat([expected_keys, keys], -2), torch.cat([expected_values, values], -2)
    assert torch.equal(layer.keys, expected_keys) and torch.equal(layer.values, expected_values)
    assert layer.get_seq_length() == 4 + CACHE_SPARE_COLUMNS + 3


def test_draw_tokens_equals_multinomial_row_by_row():
    generator = torch.Generator().manual_seed(0)
    requests = [GenerationRequest(prompt_ids=[1], max_tokens=1, temperature=temperature, seed=seed)
                for seed, temperature in enumerate([1.0, 0.0, 0.7, 1.0, 0.0, 1.3])]
    ours = [RowSampling(request, "cpu") for request in requests]
    theirs = [torch.Generator().manual_seed(request.seed) for request in requests]
    for _ in range(4):
        logits = torch.randn(6, 300, generator=generator) * 3  # (B, V)
        warped = logits.masked_fill(logits < 0, -torch.inf)  # a nucleus of sorts
        expected = [
            int(logits[row].argmax()) if request.greedy
            else int(torch.multinomial(warped[row : row + 1].softmax(-1), 1, generator=theirs[row]))
            for row, request in enumerate(requests)
        ]
        assert draw_tokens(logits, warped, ours) == expected
    broken = torch.zeros(6, 300)
    broken[2, 0] = torch.nan
    assert draw_tokens(broken, broken, ours)[2] is None


def test_grouped_attention_equals_transformers_sdpa():
    from types import SimpleNamespace as Namespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(0)
    module = Namespace(num_key_value_groups=3, is_causal=True)
    query = torch.randn(4, 6, 1, 8, generator=generator)  # (B, heads, 1, d)
    key, value = torch.randn(2, 4, 2, 11, 8, generator=generator)  # (B, kv_heads, S, d) each
    mask = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    mask[0, ..., :3] = mask[2, ..., :7] = False  # left padding
    for attention_mask in (mask, None):
        ours, _ = grouped_sdpa_attention(module, query, key, value, attention_mask, scaling=0.3)
        theirs, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=0.3)
        assert ours.shape == (4, 1, 6, 8) and torch.equal(ours, theirs)


def test_padded_steps_run_the_grouped_attention_and_restore_sdpa(loaded, monkeypatch):
    engine = batched_engine(loaded)
    seen = []
    original = hf_batching.grouped_sdpa_attention

    def spy(module, query, key, value, attention_mask, **options):
        seen.append(attention_mask is not None and query.shape[2] == 1)
        return original(module, query, key, value, attention_mask, **options)

    from transformers import AttentionInterface

    AttentionInterface.register(hf_batching.GROUPED_ATTENTION, spy)
    try:
        run_concurrently(engine, crowd(loaded)[:3])
    finally:
        AttentionInterface.register(hf_batching.GROUPED_ATTENTION, original)
    assert seen and all(seen)  # only padded decoding steps switch to it
    assert loaded.model.llm.config._attn_implementation == "sdpa"


def test_pad_left_and_finish_reasons():
    assert pad_left(torch.ones(1, 2, 2), 3, dim=1).tolist() == [[[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]]
    assert hf_batching.finish_reason_for(7, 1, 1, [7]) == "stop"  # an end token wins over the length
