"""Shared-prefill rollouts give what plain generate() gives on repeated prompts."""

import pytest
import torch

from autodeco.common.seeds import derived_seed
from autodeco.sampling.inference import encode_prompts, load_for_generation, render_prompt
from autodeco.sampling.rollouts import complete, prefill
from autodeco.sampling.settings import DecodingSetting

PROMPTS = ["What is 2 + 3?", "Add 40 and 2, then tell me the result please."]


@pytest.fixture(scope="module")
def loaded(tiny_chat_model_dir):
    loaded = load_for_generation(None, str(tiny_chat_model_dir), seed=3)
    loaded.model.llm.generation_config.eos_token_id = 1
    return loaded


def rendered(loaded):
    return [render_prompt(loaded.tokenizer, prompt) for prompt in PROMPTS]


def test_greedy_shared_prefill_equals_plain_generate(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = prefill(model.llm, tokenizer, rendered(loaded))
    shared = complete(model, tokenizer, batch, DecodingSetting.greedy(), num_samples=2, max_new_tokens=12)
    plain_batch = encode_prompts(tokenizer, rendered(loaded))
    plain = model.generate(**plain_batch, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    for row, samples in enumerate(shared):
        expected = plain[row, plain_batch["input_ids"].shape[1] :].tolist()
        for completion in samples:  # both samples of a greedy setting are the same
            assert completion.token_ids == expected[: len(completion.token_ids)]
            assert len(completion.token_ids) == 12 or completion.token_ids[-1] == 1


def test_autodeco_shared_prefill_matches_repeated_prompts(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = prefill(model.llm, tokenizer, rendered(loaded))
    shared = complete(model, tokenizer, batch, DecodingSetting.autodeco(), num_samples=3, max_new_tokens=10, seed=5)
    repeated = encode_prompts(tokenizer, [text for text in rendered(loaded) for _ in range(3)])
    with torch.random.fork_rng():
        torch.manual_seed(5)
        output = model.generate(
            **repeated, do_sample=True, max_new_tokens=10, return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    flat = [completion for samples in shared for completion in samples]
    for row, completion in enumerate(flat):
        length = completion.num_tokens
        assert completion.token_ids == output.sequences[row, repeated["input_ids"].shape[1] :][:length].tolist()
        torch.testing.assert_close(torch.tensor(completion.temperatures), output.temperatures[row, :length])
        torch.testing.assert_close(torch.tensor(completion.top_ps), output.top_ps[row, :length])


def test_the_prefilled_cache_serves_several_settings_unchanged(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = prefill(model.llm, tokenizer, rendered(loaded))
    length_before = batch.cache.get_seq_length()
    first = complete(model, tokenizer, batch, DecodingSetting.static(0.7, 0.9), num_samples=2, max_new_tokens=8, seed=1)
    complete(model, tokenizer, batch, DecodingSetting.autodeco(), num_samples=4, max_new_tokens=8, seed=2)
    again = complete(model, tokenizer, batch, DecodingSetting.static(0.7, 0.9), num_samples=2, max_new_tokens=8, seed=1)
    assert batch.cache.get_seq_length() == length_before
    assert [[c.token_ids for c in row] for row in first] == [[c.token_ids for c in row] for row in again]
    assert first[0][0].temperatures is None


def test_sampling_leaves_the_callers_random_state_alone(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = prefill(model.llm, tokenizer, rendered(loaded))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    complete(model, tokenizer, batch, DecodingSetting.static(1.0, 1.0), num_samples=2, max_new_tokens=4, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_setting_keys_round_trip_and_validation():
    for setting in (DecodingSetting.greedy(), DecodingSetting.autodeco(), DecodingSetting.static(0.7, 0.95)):
        assert DecodingSetting.from_key(setting.key) == setting
    with pytest.raises(ValueError, match="temperature > 0"):
        DecodingSetting.static(0.0, 1.0)
    with pytest.raises(ValueError, match="kind"):
        DecodingSetting("beam")
    assert derived_seed("a", 1) == derived_seed("a", 1) != derived_seed("a", 2)


# Method settings and the shuffle controls' value pools ------------------------------------------------


def test_method_settings_record_per_token_values(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = prefill(model.llm, tokenizer, rendered(loaded))
    completions = complete(model, tokenizer, batch, DecodingSetting.edt(0.9, 0.6, 1.0, 0.95), num_samples=2,
                           max_new_tokens=8, seed=3)
    for completion in (c for row in completions for c in row):
        lengths = {len(completion.temperatures), len(completion.top_ps), len(completion.entropies)}
        assert lengths == {completion.num_tokens}
        assert all(0 < t <= 0.9 for t in completion.temperatures)
        assert set(completion.top_ps) == {torch.tensor(0.95).item()}
        assert all(h >= 0 for h in completion.entropies)
    autodeco = complete(model, tokenizer, batch, DecodingSetting.autodeco(), num_samples=2, max_new_tokens=8, seed=3)
    assert all(len(c.entropies) == c.num_tokens for row in autodeco for c in row)
    static = complete(model, tokenizer, batch, DecodingSetting.static(0.7, 0.9), num_samples=1, max_new_tokens=4)
    assert static[0][0].entropies is None


def test_value_pools_as_a_callable_or_a_list_give_the_same_completions(loaded):
    from autodeco.sampling.shuffle import ValuePool, ValueStream

    model, tokenizer = loaded.model, loaded.tokenizer
    batch = prefill(model.llm, tokenizer, rendered(loaded))
    pools = [ValuePool([0.5, 0.8, 1.1], [0.9, 1.0, 0.8]), ValuePool([0.3, 0.6], [0.7, 0.95])]
    setting = DecodingSetting.shuffle()

    def make_stream(prompt_row, sample_index):
        return ValueStream(pools[prompt_row], seed=10 * prompt_row + sample_index)

    by_callable = complete(model, tokenizer, batch, setting, num_samples=3, max_new_tokens=6, seed=1,
                           value_pools=make_stream)
    by_list = complete(model, tokenizer, batch, setting, num_samples=3, max_new_tokens=6, seed=1,
                       value_pools=[make_stream(row, sample) for row in range(2) for sample in range(3)])
    assert [[c.token_ids for c in row] for row in by_callable] == [[c.token_ids for c in row] for row in by_list]
    for row, samples in enumerate(by_callable):
        allowed = set(zip(pools[row].temperatures.float().tolist(), pools[row].top_ps.float().tolist()))
        for sample, completion in enumerate(samples):
            pairs = list(zip(completion.temperatures, completion.top_ps))
            replica = make_stream(row, sample)
            expected = [tuple(torch.tensor(replica.draw()).float().tolist()) for _ in pairs]
            assert pairs == expected and set(pairs) <= allowed
    with pytest.raises(ValueError, match="needs value_pools"):
        complete(model, tokenizer, batch, setting, num_samples=1, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"2 prompts x 3 samples = 6\), got 2"):
        complete(model, tokenizer, batch, setting, num_samples=3, max_new_tokens=2, value_pools=[make_stream(0, 0)] * 2)
    with pytest.raises(ValueError, match="not 'autodeco'"):
        complete(model, tokenizer, batch, DecodingSetting.autodeco(), max_new_tokens=2, value_pools=make_stream)
