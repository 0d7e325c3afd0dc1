"""The compacting decoding loop (autodeco.sampling.decode_loop): generate()'s draws, exact values, fewer rows."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PAD_TOKEN_ID
from helpers import POOL, empirical, null_total_variation, total_variation

from autodeco.core.adaptive import entropy
from autodeco.core.dynamic import dynamic_step
from autodeco.model.generation import capture_output_head_input
from autodeco.sampling import decode_loop
from autodeco.sampling.decode_loop import decode_rows, static_logits
from autodeco.sampling.inference import load_for_generation, render_prompt
from autodeco.sampling.policies import method_step
from autodeco.sampling.rollouts import complete, prefill
from autodeco.sampling.settings import DecodingSetting
from autodeco.sampling.shuffle import BinnedValueStream, ValueStream

PROMPTS = ["What is 2 + 3?", "Add 40 and 2, then tell me the result please.", "7*6=?"]
SAMPLES, STEPS = 4, 12
END_IDS = [1, *range(30, 40)]
"""Ten of the tiny chat model's ~100 tokens end a row (plus its own end token): rows end at very different steps."""

SETTINGS = [
    DecodingSetting.greedy(),
    DecodingSetting.static(0.7, 0.9),
    DecodingSetting.static(1.3, 1.0),
    DecodingSetting.autodeco(),
    DecodingSetting.edt(1.0, 0.5, 1.0, top_p=0.9),
    DecodingSetting.confidence_gated(0.05, 1.5, 0.9),
    DecodingSetting.min_p(0.7, 0.05),
    DecodingSetting.temperature_head(0.8),
    DecodingSetting.top_p_head(0.7),
    DecodingSetting.shuffle(),
    DecodingSetting.bin_shuffle(3),
]


@pytest.fixture(scope="module")
def loaded(tiny_chat_model_dir):
    loaded = load_for_generation(None, str(tiny_chat_model_dir), seed=3)
    loaded.model.llm.generation_config.eos_token_id = END_IDS
    return loaded


def make_stream(setting: DecodingSetting):
    if setting.kind == "shuffle":
        return lambda prompt, sample: ValueStream(POOL, seed=10 * prompt + sample)
    if setting.kind == "bin-shuffle":
        return lambda prompt, sample: BinnedValueStream(POOL, int(setting.param("bins")), seed=10 * prompt + sample)
    return None


def draw(loaded, setting, *, compact, seed=7):
    """``complete()`` on the test prompts, and how many rows the base computed over all its forward passes."""
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = prefill(model.llm, tokenizer, [render_prompt(tokenizer, prompt) for prompt in PROMPTS])
    counted = []
    handle = model.llm.register_forward_hook(lambda module, args, kwargs, output: counted.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        completions = complete(model, tokenizer, batch, setting, num_samples=SAMPLES, max_new_tokens=STEPS, seed=seed,
                               value_pools=make_stream(setting), compact=compact)
    finally:
        handle.remove()
    return [completion for samples in completions for completion in samples], sum(counted)


def ended_at(completion) -> int:
    """The step after which a completion has ended (STEPS when it ran to the limit without an end token)."""
    return completion.num_tokens if completion.token_ids[-1] in END_IDS else STEPS


def assert_same_values(ours, theirs, length):
    for field in ("temperatures", "top_ps", "entropies"):
        mine, reference = getattr(ours, field), getattr(theirs, field)
        assert (mine is None) == (reference is None), field
        if mine is not None:
            torch.testing.assert_close(torch.tensor(mine[:length]), torch.tensor(reference[:length]), rtol=0, atol=1e-6)


# The loop against generate() --------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.key)
def test_without_compaction_the_loop_draws_exactly_what_generate_draws(setting, loaded, monkeypatch):
    monkeypatch.setattr(decode_loop, "COMPACT_MIN_ENDED_FRACTION", math.inf)  # ended rows stay, as in generate()
    ours, our_rows = draw(loaded, setting, compact=True)
    theirs, their_rows = draw(loaded, setting, compact=False)
    ends = [ended_at(completion) for completion in theirs]
    assert len(set(ends)) >= 2 and min(ends) < STEPS, f"the rows should end at different steps: {ends}"
    for mine, reference in zip(ours, theirs):
        assert mine.token_ids == reference.token_ids and mine.text == reference.text
        assert_same_values(mine, reference, mine.num_tokens)
    assert our_rows == their_rows == SAMPLES * len(PROMPTS) * max(ends)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.key)
def test_compaction_keeps_generates_draws_until_the_first_row_leaves(setting, loaded, monkeypatch):
    monkeypatch.setattr(decode_loop, "COMPACT_MIN_ENDED_FRACTION", 0.0)  # drop every row as soon as it ends
    ours, our_rows = draw(loaded, setting, compact=True)
    theirs, their_rows = draw(loaded, setting, compact=False)
    first_end = min(ended_at(completion) for completion in theirs)
    assert first_end < STEPS
    for mine, reference in zip(ours, theirs):
        assert mine.token_ids[:first_end] == reference.token_ids[:first_end]
        assert_same_values(mine, reference, first_end)
    if setting.kind == "greedy":  # no randomness: the whole completions agree
        assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
    assert our_rows == sum(ended_at(completion) for completion in ours) < their_rows


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.key)
def test_recorded_values_equal_teacher_forced_values_after_compaction(setting, loaded, monkeypatch):
    monkeypatch.setattr(decode_loop, "COMPACT_MIN_ENDED_FRACTION", 0.0)
    model, tokenizer = loaded.model, loaded.tokenizer
    ours, _ = draw(loaded, setting, compact=True, seed=11)
    assert len({completion.num_tokens for completion in ours}) >= 2
    streams = make_stream(setting)
    for row, completion in enumerate(ours):
        assert not any(token in END_IDS for token in completion.token_ids[:-1]), "a row got tokens after its end"
        prompt = tokenizer(render_prompt(tokenizer, PROMPTS[row // SAMPLES]), return_tensors="pt").input_ids
        sequence = torch.cat([prompt, torch.tensor([completion.token_ids])], dim=1)  # (1, L + n), no padding
        producing = slice(prompt.shape[1] - 1, sequence.shape[1] - 1)  # the positions that chose each token
        with torch.no_grad():
            logits = model.llm(sequence).logits[0, producing].float()  # (n, V)
        if setting.kind == "greedy":
            assert completion.token_ids == logits.argmax(-1).tolist()
            continue
        if setting.kind == "static":
            warped = static_logits(logits, setting.temperature, setting.top_p)
            assert all(warped[step, token] > -math.inf for step, token in enumerate(completion.token_ids))
            assert completion.temperatures is None
            continue
        values = [torch.tensor(getattr(completion, field)) for field in ("temperatures", "top_ps", "entropies")]
        assert not any(value.isnan().any() for value in values), "no NaN before a row's end"
        torch.testing.assert_close(values[2], entropy(logits), rtol=0, atol=1e-4)
        if setting.kind in ("autodeco", "temperature-head", "top-p-head"):
            with torch.no_grad():
                forced = model(sequence)
            head_t, head_p = forced.temperature[0, producing], forced.top_p[0, producing]
            if setting.kind == "autodeco":
                expected = (head_t, head_p)
            elif setting.kind == "temperature-head":
                expected = (head_t, torch.full_like(head_p, setting.param("P")))
            else:
                expected = (torch.full_like(head_t, setting.param("T")), head_p)
        elif streams is not None:
            replica = streams(row // SAMPLES, row % SAMPLES)
            pairs = [replica.draw(h) for h in values[2].tolist()]
            expected = (torch.tensor([pair[0] for pair in pairs]), torch.tensor([pair[1] for pair in pairs]))
        else:
            step = method_step(setting)(logits, entropy(logits))
            expected = (step.temperature, step.top_p)
        torch.testing.assert_close(values[0], expected[0].float(), rtol=0, atol=1e-4)
        torch.testing.assert_close(values[1], expected[1].float(), rtol=0, atol=1e-4)


# The per-step distribution after rows leave ------------------------------------------------------------

ROWS = 4000


def test_second_token_distribution_after_compaction_is_autodecos(tiny_autodeco):
    """Rows that end at step 1 leave; the others' second tokens follow AutoDeco's distribution in their own context."""
    model = tiny_autodeco("llama")
    prompt = torch.tensor([[17, 42, 99, 5, 63]])
    with torch.no_grad(), capture_output_head_input(model.llm) as capture:
        first_logits = model.llm(prompt).logits[:, -1].float()  # (1, V)
        first = dynamic_step(model, capture.hidden_states[:, -1], first_logits, 1.0, 1.0)[0].softmax(-1)[0].double()
    end_ids = first.argsort(descending=True)[:12].tolist()  # the 12 likeliest first tokens end a row
    assert 0.3 < first[end_ids].sum() < 0.7
    torch.manual_seed(0)
    rows = decode_rows(model, prompt.expand(ROWS, -1), torch.ones(ROWS, 5, dtype=torch.long), None,
                       DecodingSetting.autodeco(), max_new_tokens=2, end_ids=end_ids, pad_token_id=PAD_TOKEN_ID)
    survived = ~torch.isin(rows.tokens[:, 0], torch.tensor(end_ids))
    assert rows.row_steps == ROWS + int(survived.sum()), "the ended rows left the batch before the second step"
    assert (rows.tokens[~survived, 1] == PAD_TOKEN_ID).all() and rows.temperatures[~survived, 1].isnan().all()
    # Expected: the mixture over each surviving first token t of P(t | survived) x AutoDeco's distribution after t.
    kept = [token for token in range(first.numel()) if token not in end_ids and first[token] > 0]
    contexts = torch.cat([prompt.expand(len(kept), -1), torch.tensor(kept)[:, None]], dim=1)  # (K, 6)
    with torch.no_grad(), capture_output_head_input(model.llm) as capture:
        second_logits = model.llm(contexts).logits[:, -1].float()  # (K, V)
        second = dynamic_step(model, capture.hidden_states[:, -1], second_logits, 1.0, 1.0)[0]
    weights = first[kept] / first[kept].sum()  # (K,)
    expected = (weights[:, None] * second.softmax(-1).double()).sum(0)  # (V,)
    observed_tokens = rows.tokens[survived, 1]
    observed = total_variation(empirical(observed_tokens, expected.numel()), expected)
    null = null_total_variation(expected, observed_tokens.numel(), 200)
    bound = (null.mean() + 8 * null.std()).item()
    assert observed <= bound, f"TV {observed:.4f} > {bound:.4f}"
    assert total_variation(first, expected) > 2 * bound, "the bound tells the second step from the first"


# Arguments -------------------------------------------------------------------------------------------


def test_decode_rows_refuses_missing_or_misplaced_value_streams(tiny_autodeco):
    model = tiny_autodeco("llama")
    prompt = torch.tensor([[17, 42, 99]])
    mask = torch.ones_like(prompt)
    common = {"max_new_tokens": 1, "end_ids": [2], "pad_token_id": PAD_TOKEN_ID}
    with pytest.raises(ValueError, match="setting 'shuffle' got none"):
        decode_rows(model, prompt, mask, None, DecodingSetting.shuffle(), **common)
    with pytest.raises(ValueError, match="setting 'autodeco' got value pools"):
        decode_rows(model, prompt, mask, None, DecodingSetting.autodeco(), value_pools=[ValueStream(POOL, 0)], **common)
    with pytest.raises(ValueError, match="one stream per row: got 2 for 1 rows"):
        decode_rows(model, prompt, mask, None, DecodingSetting.shuffle(), value_pools=[ValueStream(POOL, 0)] * 2,
                    **common)


def test_static_logits_are_transformers_warpers():
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 2
    for temperature, top_p in ((0.7, 0.9), (1.3, 1.0), (1.0, 0.5), (1.0, 1.0)):
        expected = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
        torch.testing.assert_close(static_logits(logits, temperature, top_p), expected, rtol=0, atol=1e-6)
