"""The comparison methods inside generate() (autodeco.sampling.policies): first-token statistics and recorded values."""

from __future__ import annotations

import pytest
import torch
from conftest import EOS_TOKEN_ID, PAD_TOKEN_ID, left_padded_batch, position_ids_for

from autodeco.core.adaptive import entropy, top_probability
from autodeco.core.decoding import warp_logits
from autodeco.sampling.policies import EntropyRecorder, generate_with_setting, method_step
from autodeco.sampling.settings import DecodingSetting
from autodeco.sampling.shuffle import BinnedValueStream, ValueStream
from helpers import POOL, empirical, null_total_variation, total_variation

FAMILY = "llama"
SAMPLES = 6000
NULL_SIMULATIONS = 200

# On the test prompt the tiny model's first-step distribution has H = 4.05 nats (V = 128) and top probability 0.147.
HEURISTICS = {
    "edt": DecodingSetting.edt(1.0, 0.5, 1.0, top_p=0.9),
    "entropy-shift": DecodingSetting.entropy_shift(0.8, 2.0, 0.5, 0.1, 2.0, top_p=0.8),
    "confidence-gated-greedy": DecodingSetting.confidence_gated(0.1, 1.5, 0.9),
    "confidence-gated-sampled": DecodingSetting.confidence_gated(0.5, 1.5, 0.9),
    "min-p": DecodingSetting.min_p(0.7, 0.1),
    "eta": DecodingSetting.eta(1.0, 0.5),
    "top-n-sigma": DecodingSetting.top_n_sigma(1.5, 2.5),
}
HEADS = {"temperature-head": DecodingSetting.temperature_head(0.7), "top-p-head": DecodingSetting.top_p_head(0.8)}


def prompt() -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded_batch(lengths=(5,), seed=3)


def streams_for(setting: DecodingSetting, rows: int, seed: int = 0) -> list | None:
    if setting.kind == "shuffle":
        return [ValueStream(POOL, seed=seed + row) for row in range(rows)]
    if setting.kind == "bin-shuffle":
        return [BinnedValueStream(POOL, int(setting.param("bins")), seed=seed + row) for row in range(rows)]
    return None


def assert_matches_first_token_distribution(tokens, expected, last_logits):
    vocab = expected.numel()
    assert (expected[tokens] > 0).all(), f"sampled tokens outside the support: {tokens[expected[tokens] == 0].unique()}"
    observed = total_variation(empirical(tokens, vocab), expected)
    null = null_total_variation(expected, SAMPLES, NULL_SIMULATIONS)
    bound = (null.mean() + 8 * null.std()).item()
    assert observed <= bound, f"TV {observed:.4f} > {bound:.4f} (null mean {null.mean():.4f}, max {null.max():.4f})"
    plain = torch.softmax(last_logits[0].double(), dim=-1)  # the base's own sampling: the bound has power against it
    assert total_variation(plain, expected) > 2 * bound + 0.02


# First-token statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*HEURISTICS, *HEADS])
def test_first_token_distribution_of_each_method(name, tiny_causal_lm, tiny_autodeco):
    setting = {**HEURISTICS, **HEADS}[name]
    llm, model = tiny_causal_lm(FAMILY), tiny_autodeco(FAMILY)
    input_ids, attention_mask = prompt()
    with torch.no_grad():
        last_logits = llm(input_ids, attention_mask=attention_mask).logits[:, -1].float()  # (1, V)
    if setting.kind in ("temperature-head", "top-p-head"):
        with torch.no_grad():
            forced = model(input_ids, attention_mask=attention_mask)
        head_t, head_p = forced.temperature[:, -1].float(), forced.top_p[:, -1].float()
        t = head_t if setting.kind == "temperature-head" else torch.tensor([setting.param("T")])
        p = head_p if setting.kind == "top-p-head" else torch.tensor([setting.param("P")])
        step_logits, step_t, step_p = warp_logits(last_logits, t, p), t, p
    else:
        step_logits, step_t, step_p = method_step(setting)(last_logits, entropy(last_logits))
    expected = torch.softmax(step_logits[0].double(), dim=-1)  # (V,)
    support = int((expected > 0).sum())
    if name == "confidence-gated-greedy":
        assert support == 1 and step_t.item() == 0.0
    else:
        assert 1 < support < 128 - 5, f"{name}: the test needs a proper support, got {support}"

    torch.manual_seed(0)
    output = generate_with_setting(
        model, input_ids.expand(SAMPLES, -1), attention_mask.expand(SAMPLES, -1), setting, max_new_tokens=1
    )
    assert output.temperatures.shape == output.top_ps.shape == output.entropies.shape == (SAMPLES, 1)
    torch.testing.assert_close(output.temperatures[:, 0], step_t.expand(SAMPLES), rtol=0, atol=1e-5)
    torch.testing.assert_close(output.top_ps[:, 0], step_p.expand(SAMPLES), rtol=0, atol=1e-5)
    torch.testing.assert_close(output.entropies[:, 0], entropy(last_logits).expand(SAMPLES), rtol=0, atol=1e-5)
    assert_matches_first_token_distribution(output.sequences[:, -1], expected, last_logits)


@pytest.mark.parametrize("setting", [DecodingSetting.shuffle(), DecodingSetting.bin_shuffle(3)], ids=lambda s: s.kind)
def test_first_token_distribution_of_the_shuffle_controls(setting, tiny_causal_lm, tiny_autodeco):
    llm, model = tiny_causal_lm(FAMILY), tiny_autodeco(FAMILY)
    input_ids, attention_mask = prompt()
    with torch.no_grad():
        last_logits = llm(input_ids, attention_mask=attention_mask).logits[:, -1].float()  # (1, V)
    torch.manual_seed(0)
    output = generate_with_setting(
        model, input_ids.expand(SAMPLES, -1), attention_mask.expand(SAMPLES, -1), setting,
        value_pools=streams_for(setting, SAMPLES), max_new_tokens=1,
    )
    pairs = list(zip(output.temperatures[:, 0].tolist(), output.top_ps[:, 0].tolist()))
    pool_pairs = list(zip(POOL.temperatures.float().tolist(), POOL.top_ps.float().tolist()))
    assert set(pairs) <= set(pool_pairs), "every pair used comes from the pool, kept together"
    replicas = streams_for(setting, SAMPLES)
    h = entropy(last_logits).item()
    assert all(pair == tuple(torch.tensor(replica.draw(h)).float().tolist()) for pair, replica in zip(pairs, replicas))
    if setting.kind == "bin-shuffle":  # H = 4.05 lies in the top bin (edges at the 1/3 and 2/3 quantiles: 1.67, 3.33)
        assert {pair[0] for pair in pairs} == set(torch.tensor([0.3, 0.6]).tolist())
    else:
        assert len(set(pairs)) == len(pool_pairs)
    # Each row samples from its own pair's distribution: the expected first token is their mixture.
    temperatures = output.temperatures[:, 0]
    top_ps = output.top_ps[:, 0]
    per_row = warp_logits(last_logits.expand(SAMPLES, -1), temperatures, top_ps).softmax(-1).double()  # (SAMPLES, V)
    assert (per_row[torch.arange(SAMPLES), output.sequences[:, -1]] > 0).all(), "a token outside its row's nucleus"
    assert_matches_first_token_distribution(output.sequences[:, -1], per_row.mean(0), last_logits)


# Recorded values against teacher forcing -------------------------------------------------------------


def teacher_forced(llm, input_ids, attention_mask, sequences):
    """Logits ``(B, steps, V)`` and hidden states at the positions that produced each generated token."""
    prompt_length, steps = input_ids.shape[1], sequences.shape[1] - input_ids.shape[1]
    full_mask = torch.cat([attention_mask, torch.ones(len(input_ids), steps, dtype=attention_mask.dtype)], dim=1)
    with torch.no_grad():
        logits = llm(sequences, attention_mask=full_mask, position_ids=position_ids_for(full_mask)).logits
    return logits[:, prompt_length - 1 : prompt_length - 1 + steps].float(), full_mask


def valid_steps(sequences, steps):
    generated = sequences[:, -steps:]
    is_end = generated == EOS_TOKEN_ID
    return (is_end.cumsum(dim=1) - is_end.long()) == 0  # (B, steps): up to and including the end token


@pytest.mark.parametrize(
    "setting",
    [*HEURISTICS.values(), *HEADS.values(), DecodingSetting.shuffle(), DecodingSetting.bin_shuffle(3)],
    ids=lambda setting: setting.kind,
)
def test_recorded_values_equal_teacher_forced_values(setting, tiny_causal_lm, tiny_autodeco):
    llm, model = tiny_causal_lm(FAMILY), tiny_autodeco(FAMILY)
    input_ids, attention_mask = left_padded_batch(lengths=(7, 4, 6), seed=1)
    rows, steps = len(input_ids), 12
    torch.manual_seed(4)
    output = generate_with_setting(
        model, input_ids, attention_mask, setting, value_pools=streams_for(setting, rows, seed=50),
        max_new_tokens=steps, pad_token_id=PAD_TOKEN_ID,
    )
    assert output.temperatures.shape == (rows, steps)
    valid = valid_steps(output.sequences, steps)
    for values in (output.temperatures, output.top_ps, output.entropies):
        assert torch.equal(torch.isnan(values), ~valid), "NaN exactly after each row's end"
    logits, full_mask = teacher_forced(llm, input_ids, attention_mask, output.sequences)  # (B, steps, V)
    flat = logits.reshape(rows * steps, -1)
    torch.testing.assert_close(output.entropies[valid], entropy(flat).view(rows, steps)[valid], rtol=0, atol=1e-4)
    if setting.kind in HEADS:
        with torch.no_grad():
            forced = model(output.sequences, attention_mask=full_mask, position_ids=position_ids_for(full_mask))
        producing = slice(input_ids.shape[1] - 1, input_ids.shape[1] - 1 + steps)
        head_t, head_p = forced.temperature[:, producing], forced.top_p[:, producing]
        if setting.kind == "temperature-head":
            expected_t, expected_p = head_t, torch.full_like(head_p, setting.param("P"))
        else:
            expected_t, expected_p = torch.full_like(head_t, setting.param("T")), head_p
        assert head_t.std() > 0.01 and head_p.std() > 0.01, "the heads' values should vary per token"
    elif setting.kind in ("shuffle", "bin-shuffle"):
        replicas = streams_for(setting, rows, seed=50)
        drawn = [[replicas[row].draw(h) for h in output.entropies[row].tolist()] for row in range(rows)]
        expected_t = torch.tensor([[pair[0] for pair in row] for row in drawn])
        expected_p = torch.tensor([[pair[1] for pair in row] for row in drawn])
    else:
        step = method_step(setting)(flat, entropy(flat))
        expected_t, expected_p = step.temperature.view(rows, steps), step.top_p.view(rows, steps)
    torch.testing.assert_close(output.temperatures[valid], expected_t[valid].float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(output.top_ps[valid], expected_p[valid].float(), rtol=0, atol=1e-4)


def test_the_confidence_gate_switches_per_token(tiny_causal_lm, tiny_autodeco):
    llm, model = tiny_causal_lm(FAMILY), tiny_autodeco(FAMILY)
    input_ids, attention_mask = left_padded_batch(lengths=(7, 4, 6, 5), seed=2)
    steps = 16
    with torch.no_grad():
        first = llm(input_ids, attention_mask=attention_mask).logits[:, -1].float()
    ordered = top_probability(first).sort().values
    setting = DecodingSetting.confidence_gated((ordered[1] + ordered[2]).item() / 2, 1.3)  # 2 rows above at first
    torch.manual_seed(1)
    output = generate_with_setting(model, input_ids, attention_mask, setting, max_new_tokens=steps,
                                   pad_token_id=PAD_TOKEN_ID)
    valid = valid_steps(output.sequences, steps)
    logits, _ = teacher_forced(llm, input_ids, attention_mask, output.sequences)
    greedy = output.temperatures == 0
    assert greedy[valid].any() and (~greedy[valid]).any()
    generated = output.sequences[:, -steps:]
    assert torch.equal(generated[greedy & valid], logits.argmax(-1)[greedy & valid]), "greedy steps take the argmax"
    assert greedy[:, 0].tolist() == (top_probability(first) > setting.param("threshold")).tolist()
    assert torch.equal(greedy[valid], (top_probability(logits) > setting.param("threshold"))[valid])


def test_entropy_recorder_records_raw_entropies_and_leaves_autodeco_sampling_unchanged(tiny_causal_lm, tiny_autodeco):
    llm, model = tiny_causal_lm(FAMILY), tiny_autodeco(FAMILY)
    input_ids, attention_mask = left_padded_batch(lengths=(7, 4), seed=5)
    torch.manual_seed(7)
    plain = model.generate(input_ids, attention_mask, max_new_tokens=6, return_dict_in_generate=True)
    recorder = EntropyRecorder()
    torch.manual_seed(7)
    recorded = model.generate(input_ids, attention_mask, max_new_tokens=6, return_dict_in_generate=True,
                              logits_processor=[recorder])
    assert torch.equal(plain.sequences, recorded.sequences)
    entropies = recorder.recorded()
    assert entropies.shape == (2, recorded.sequences.shape[1] - input_ids.shape[1])
    logits, _ = teacher_forced(llm, input_ids, attention_mask, recorded.sequences)
    valid = valid_steps(recorded.sequences, entropies.shape[1])
    torch.testing.assert_close(entropies[valid], entropy(logits.flatten(0, 1)).view_as(entropies)[valid],
                               rtol=0, atol=1e-4)


# Arguments --------------------------------------------------------------------------------------------


def test_generate_with_setting_refuses_what_it_does_not_define(tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask = prompt()
    with pytest.raises(ValueError, match="not a method setting"):
        generate_with_setting(model, input_ids, attention_mask, DecodingSetting.static(0.7, 1.0), max_new_tokens=1)
    with pytest.raises(ValueError, match="value_pools go with the shuffle controls"):
        generate_with_setting(model, input_ids, attention_mask, DecodingSetting.shuffle(), max_new_tokens=1)
    with pytest.raises(ValueError, match="value_pools go with the shuffle controls"):
        generate_with_setting(model, input_ids, attention_mask, DecodingSetting.eta(1.0, 0.1),
                              value_pools=[ValueStream(POOL, 0)], max_new_tokens=1)
    with pytest.raises(ValueError, match="one value stream per generated row: got 2 streams for 1 rows"):
        generate_with_setting(model, input_ids, attention_mask, DecodingSetting.shuffle(),
                              value_pools=[ValueStream(POOL, 0)] * 2, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"drop \['temperature'\]"):
        generate_with_setting(model, input_ids, attention_mask, DecodingSetting.eta(1.0, 0.1), temperature=0.5)
    with pytest.raises(ValueError, match="beam search"):
        generate_with_setting(model, input_ids, attention_mask, DecodingSetting.eta(1.0, 0.1), num_beams=2)


def test_values_after_a_rows_end_are_nan(tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask = left_padded_batch(lengths=(7, 4), seed=1)
    setting = DecodingSetting.min_p(1.0, 0.05)
    torch.manual_seed(3)
    free = generate_with_setting(model, input_ids, attention_mask, setting, max_new_tokens=6, pad_token_id=PAD_TOKEN_ID)
    end_token = free.sequences[0, input_ids.shape[1] + 2].item()  # row 0's third token becomes its end
    assert end_token not in free.sequences[0, input_ids.shape[1] : input_ids.shape[1] + 2].tolist()
    torch.manual_seed(3)
    ended = generate_with_setting(model, input_ids, attention_mask, setting, max_new_tokens=6, pad_token_id=PAD_TOKEN_ID,
                                  eos_token_id=end_token)
    assert torch.equal(ended.sequences[0, : input_ids.shape[1] + 3], free.sequences[0, : input_ids.shape[1] + 3])
    for values, reference in ((ended.temperatures, free.temperatures), (ended.top_ps, free.top_ps),
                              (ended.entropies, free.entropies)):
        assert torch.isnan(values[0, 3:]).all() and not torch.isnan(values[0, :3]).any()
        torch.testing.assert_close(values[0, :3], reference[0, :3])
