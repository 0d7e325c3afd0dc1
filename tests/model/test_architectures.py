"""AutoDecoForCausalLM on tiny random models of every supported architecture, in float32 and bfloat16.

Checks the forward pass (logits untouched, T/P ranges, losses and gradients), generate()
(shapes, ranges, agreement of the KV-cache path with a teacher-forced forward, left padding,
greedy equivalence with the base), checkpoints (heads-only and merged round trips) and that the
base model's generation_config sampling defaults never leak into AutoDeco's sampling.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    DTYPES,
    EOS_TOKEN_ID,
    FAMILIES,
    force_heads,
    left_padded_batch,
    position_ids_for,
)

from autodeco.core import losses
from autodeco.core.decoding import adjusted_log_probs, warp_logits
from autodeco.model.modeling import AutoDecoForCausalLM

MAX_NEW_TOKENS = 6

family_and_dtype = pytest.mark.parametrize(
    "family,dtype",
    [pytest.param(family, dtype, id=f"{family}-{str(dtype).removeprefix('torch.')}") for family in FAMILIES for dtype in DTYPES],
)


def ended_before(generated: torch.Tensor) -> torch.Tensor:
    """True at steps strictly after the first end-of-sequence token of the row."""
    is_end = generated == EOS_TOKEN_ID
    return (is_end.long().cumsum(dim=1) - is_end.long()) > 0


def values_tolerance(dtype: torch.dtype) -> float:
    # bfloat16 bases: the cached and the full forward may round differently (up to ~5e-5 seen, mixtral).
    return 1e-5 if dtype == torch.float32 else 5e-3


# Forward --------------------------------------------------------------------------------------


@family_and_dtype
def test_forward_keeps_base_logits_and_predicts_in_range(family, dtype, tiny_causal_lm, tiny_autodeco):
    llm = tiny_causal_lm(family, dtype)
    model = tiny_autodeco(family, dtype)
    input_ids, attention_mask = left_padded_batch()
    with torch.no_grad():
        output = model(input_ids, attention_mask=attention_mask)
        base_logits = llm(input_ids, attention_mask=attention_mask).logits
    assert torch.equal(output.logits, base_logits)
    assert output.logits.dtype == dtype
    assert output.temperature.shape == input_ids.shape
    assert output.top_p.shape == input_ids.shape
    assert torch.isfinite(output.temperature).all() and torch.isfinite(output.top_p).all()
    assert ((output.temperature > 0) & (output.temperature < 2)).all()
    assert ((output.top_p > 0) & (output.top_p < 1)).all()
    # The heads read the hidden state: predictions vary between positions.
    assert output.temperature.std() > 0 and output.top_p.std() > 0


@family_and_dtype
def test_forward_loss_and_gradients_reach_heads_only(family, dtype, tiny_causal_lm, tiny_autodeco):
    llm = tiny_causal_lm(family, dtype)
    llm.requires_grad_(True).train()  # wrapping must freeze the base and keep it in eval mode by itself
    model = tiny_autodeco(family, dtype)
    model.train()
    input_ids, attention_mask = left_padded_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    output = model(input_ids, attention_mask=attention_mask)
    temperature_loss = losses.temperature_loss(
        output.logits, output.temperature, labels, generator=torch.Generator().manual_seed(0)
    )
    top_p_loss = losses.top_p_loss(output.logits, output.temperature, output.top_p, labels)
    loss = temperature_loss + top_p_loss
    assert loss is not None and torch.isfinite(loss)
    assert torch.isfinite(temperature_loss) and torch.isfinite(top_p_loss)
    loss.backward()
    for head in (model.temp_head, model.top_p_head):
        for name, parameter in head.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
        assert head.mlp[0].weight.grad.abs().sum() > 0
        assert head.mlp[2].weight.grad.abs().sum() > 0
    for name, parameter in model.llm.named_parameters():
        assert not parameter.requires_grad, name
        assert parameter.grad is None, name
    assert not model.llm.training


# Generation -----------------------------------------------------------------------------------


def _sample(model, seed: int = 0, padding: str = "pad", **kwargs):
    input_ids, attention_mask = left_padded_batch(padding=padding)
    torch.manual_seed(seed)
    output = model.generate(
        input_ids, attention_mask=attention_mask, do_sample=True, max_new_tokens=MAX_NEW_TOKENS,
        return_dict_in_generate=True, **kwargs,
    )
    return input_ids, attention_mask, output


@family_and_dtype
def test_generate_left_padded_batch_shapes_and_ranges(family, dtype, tiny_autodeco):
    model = tiny_autodeco(family, dtype)
    input_ids, _, output = _sample(model)
    batch, prompt_length = input_ids.shape
    new_tokens = output.sequences.shape[1] - prompt_length
    assert 1 <= new_tokens <= MAX_NEW_TOKENS
    assert output.sequences.shape == (batch, prompt_length + new_tokens)
    assert torch.equal(output.sequences[:, :prompt_length], input_ids)
    assert output.temperatures.shape == (batch, new_tokens)
    assert output.top_ps.shape == (batch, new_tokens)
    assert output.temperatures.dtype == torch.float32 and output.top_ps.dtype == torch.float32
    after_end = ended_before(output.sequences[:, prompt_length:])
    # NaN exactly where the row had already ended, values in range everywhere else.
    assert torch.equal(torch.isnan(output.temperatures), after_end)
    assert torch.equal(torch.isnan(output.top_ps), after_end)
    temperatures, top_ps = output.temperatures[~after_end], output.top_ps[~after_end]
    assert ((temperatures > 0) & (temperatures < 2)).all()
    assert ((top_ps > 0) & (top_ps <= 1)).all()


@family_and_dtype
@pytest.mark.parametrize("padding", ["pad", "garbage"])
def test_generate_values_match_teacher_forced_forward(family, dtype, padding, tiny_autodeco):
    """The T/P recorded step by step with the KV cache equal a full forward over the final sequences.

    With ``padding="garbage"`` the padding holds random ids: only the attention mask hides them.
    """
    model = tiny_autodeco(family, dtype)
    input_ids, attention_mask, output = _sample(model, seed=1, padding=padding)
    prompt_length = input_ids.shape[1]
    sequences = output.sequences
    new_tokens = sequences.shape[1] - prompt_length
    full_mask = torch.cat([attention_mask, torch.ones(len(sequences), new_tokens, dtype=attention_mask.dtype)], dim=1)
    with torch.no_grad():
        forced = model(sequences, attention_mask=full_mask, position_ids=position_ids_for(full_mask))
    producing = slice(prompt_length - 1, prompt_length - 1 + new_tokens)  # position t produces token t + 1
    forced_temperature = forced.temperature[:, producing].float()
    forced_top_p = forced.top_p[:, producing].float()
    valid = ~ended_before(sequences[:, prompt_length:])
    tolerance = values_tolerance(dtype)
    torch.testing.assert_close(output.temperatures[valid], forced_temperature[valid], rtol=0, atol=tolerance)
    torch.testing.assert_close(output.top_ps[valid], forced_top_p[valid], rtol=0, atol=tolerance)
    if dtype == torch.float32:
        # Every sampled token lies inside the nucleus the teacher-forced values define.
        logits = forced.logits[:, producing].float()  # (B, n, V)
        log_probs = adjusted_log_probs(
            logits.reshape(-1, logits.shape[-1]), forced_temperature.reshape(-1), forced_top_p.reshape(-1)
        ).reshape(logits.shape)
        chosen = log_probs.gather(-1, sequences[:, prompt_length:].unsqueeze(-1)).squeeze(-1)
        assert torch.isfinite(chosen[valid]).all()


@family_and_dtype
@pytest.mark.parametrize("padding", ["pad", "garbage"])
def test_greedy_equals_base_greedy(family, dtype, padding, tiny_causal_lm, tiny_autodeco):
    llm = tiny_causal_lm(family, dtype)
    model = tiny_autodeco(family, dtype)
    input_ids, attention_mask = left_padded_batch(padding=padding)
    expected = llm.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    plain = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    assert torch.equal(plain, expected)
    detailed = model.generate(
        input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
        return_dict_in_generate=True,
    )
    assert torch.equal(detailed.sequences, expected)
    new_tokens = expected.shape[1] - input_ids.shape[1]
    assert detailed.temperatures.shape == (2, new_tokens)


@family_and_dtype
def test_base_generation_config_sampling_defaults_are_not_applied(family, dtype, tiny_causal_lm, tiny_autodeco):
    llm = tiny_causal_lm(family, dtype)
    model = tiny_autodeco(family, dtype)
    force_heads(model, temperature=1.9, top_p=1.0)
    input_ids, attention_mask = left_padded_batch(lengths=(5,), seed=3)
    rows = 256
    original = llm.generation_config
    saved = copy.deepcopy(original)
    try:
        original.top_k = 1
        original.repetition_penalty = 5.0
        torch.manual_seed(0)
        output = model.generate(
            input_ids.expand(rows, -1), attention_mask=attention_mask.expand(rows, -1), max_new_tokens=1,
            return_dict_in_generate=True, output_scores=True,
        )
        assert llm.generation_config is original
        assert llm.generation_config.top_k == 1
        assert llm.generation_config.repetition_penalty == 5.0
    finally:
        llm.generation_config = saved
    first_tokens = output.sequences[:, -1]
    assert first_tokens.unique().numel() > 10, "top_k=1 from the base's generation_config was applied"
    torch.testing.assert_close(output.temperatures, torch.full((rows, 1), 1.9), rtol=0, atol=1e-5)
    torch.testing.assert_close(output.top_ps, torch.ones(rows, 1), rtol=0, atol=1e-6)
    # The scores generate() sampled from are exactly AutoDeco's warped logits: no top-k, no repetition penalty.
    with torch.no_grad():
        last_logits = llm(input_ids, attention_mask=attention_mask).logits[:, -1].float()
    expected = warp_logits(last_logits, output.temperatures[:1, 0], output.top_ps[:1, 0])
    atol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(output.scores[0][:1], expected, rtol=0, atol=atol)
    assert torch.isfinite(output.scores[0]).all()  # P = 1: nothing removed


# Checkpoints ----------------------------------------------------------------------------------


def _perturb_heads(model, seed: int = 7) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in [*model.temp_head.parameters(), *model.top_p_head.parameters()]:
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


@family_and_dtype
def test_heads_only_round_trip(family, dtype, tiny_causal_lm, tiny_autodeco, tmp_path):
    llm = tiny_causal_lm(family, dtype)
    model = tiny_autodeco(family, dtype)
    _perturb_heads(model)
    model.save_pretrained(tmp_path / "heads")
    loaded = AutoDecoForCausalLM.from_pretrained(tmp_path / "heads", base_model=llm)
    assert loaded.llm is llm
    input_ids, attention_mask = left_padded_batch()
    with torch.no_grad():
        before = model(input_ids, attention_mask=attention_mask)
        after = loaded(input_ids, attention_mask=attention_mask)
    assert torch.equal(after.temperature, before.temperature)
    assert torch.equal(after.top_p, before.top_p)
    assert torch.equal(after.logits, before.logits)


@family_and_dtype
def test_merged_round_trip(family, dtype, tiny_autodeco, tmp_path):
    model = tiny_autodeco(family, dtype)
    _perturb_heads(model)
    model.save_pretrained(tmp_path / "merged", merged=True)
    loaded = AutoDecoForCausalLM.from_pretrained(tmp_path / "merged")  # no base given: read from the checkpoint
    assert type(loaded.llm) is type(model.llm)
    assert loaded.llm is not model.llm
    assert loaded.llm.dtype == dtype
    input_ids, attention_mask = left_padded_batch()
    with torch.no_grad():
        before = model(input_ids, attention_mask=attention_mask)
        after = loaded(input_ids, attention_mask=attention_mask)
    assert torch.equal(after.logits, before.logits)
    assert torch.equal(after.temperature, before.temperature)
    assert torch.equal(after.top_p, before.top_p)
