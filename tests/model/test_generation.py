"""Sampling correctness of AutoDeco's generate(): statistics of the first token, user multipliers,
streamers, and the decoding step itself (autodeco.model.generation.dynamic_step)."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    force_heads,
    left_padded_batch,
    position_ids_for,
)
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from autodeco.core.decoding import adjusted_log_probs, warp_logits
from autodeco.core.dynamic import dynamic_step
from helpers import empirical, null_total_variation, total_variation

FAMILY = "llama"
SAMPLES = 6000
NULL_SIMULATIONS = 200


def prompt(length: int = 5, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded_batch(lengths=(length,), seed=seed)


# Statistics of the first sampled token ---------------------------------------------------------


@pytest.mark.parametrize(
    "temperature,top_p",
    [
        pytest.param(0.8, 0.3, id="narrow-nucleus"),
        pytest.param(1.5, 1.0, id="broad-hot"),
        pytest.param(0.2, 1.0, id="cold"),  # T < 0.25: T + 1e-8 != T in float32, the step's other branch
        pytest.param(None, None, id="untouched-heads"),
    ],
)
def test_first_token_distribution_matches_adjusted_log_probs(temperature, top_p, tiny_causal_lm, tiny_autodeco):
    llm = tiny_causal_lm(FAMILY)
    model = tiny_autodeco(FAMILY)
    force_heads(model, temperature, top_p)
    input_ids, attention_mask = prompt()
    torch.manual_seed(0)
    output = model.generate(
        input_ids.expand(SAMPLES, -1), attention_mask=attention_mask.expand(SAMPLES, -1),
        max_new_tokens=1, return_dict_in_generate=True,
    )
    tokens = output.sequences[:, -1]
    assert output.temperatures.shape == output.top_ps.shape == (SAMPLES, 1)
    # Every row sees the same prompt: one (T, P) for all.
    recorded_temperature, recorded_top_p = output.temperatures[:1, 0], output.top_ps[:1, 0]
    torch.testing.assert_close(output.temperatures[:, 0], recorded_temperature.expand(SAMPLES), rtol=0, atol=1e-6)
    torch.testing.assert_close(output.top_ps[:, 0], recorded_top_p.expand(SAMPLES), rtol=0, atol=1e-6)
    if temperature is not None:
        torch.testing.assert_close(recorded_temperature, torch.tensor([temperature]), rtol=0, atol=1e-5)
        torch.testing.assert_close(recorded_top_p, torch.tensor([top_p]), rtol=0, atol=1e-5)

    with torch.no_grad():
        last_logits = llm(input_ids, attention_mask=attention_mask).logits[:, -1].float()  # (1, V)
    expected = adjusted_log_probs(last_logits, recorded_temperature, recorded_top_p).exp()[0].double()  # (V,)
    vocab = expected.numel()
    support = int((expected > 0).sum())
    if top_p is not None and top_p < 1:
        assert 1 < support < vocab // 4, "the narrow case should have a small nucleus"

    # No sampled token lies outside the nucleus.
    assert (expected[tokens] > 0).all(), f"sampled tokens outside the nucleus: {tokens[expected[tokens] == 0].unique().tolist()}"

    # Total variation against the expected distribution, compared with its spread under the null
    # (sampling SAMPLES tokens from the expected distribution itself): 8 standard deviations above
    # the null mean is never reached by chance (the null's largest of 200 is about mean + 3 std).
    observed = total_variation(empirical(tokens, vocab), expected)
    null = null_total_variation(expected, SAMPLES, NULL_SIMULATIONS)
    bound = (null.mean() + 8 * null.std()).item()
    assert observed < bound, f"TV {observed:.4f} >= {bound:.4f} (null mean {null.mean():.4f}, max {null.max():.4f})"

    # The bound has power: plausible mistakes are far outside it.
    plain = torch.softmax(last_logits[0].double(), dim=-1)  # T = 1, no nucleus (the base's own sampling)
    wrong = [plain]
    if top_p is not None and top_p < 1:
        wrong.append(adjusted_log_probs(last_logits, recorded_temperature, torch.ones(1)).exp()[0].double())  # no top-p
    if temperature is not None and temperature != 1:
        wrong.append(adjusted_log_probs(last_logits, torch.ones(1), recorded_top_p).exp()[0].double())  # no T
    for alternative in wrong:
        assert total_variation(alternative, expected) > 2 * bound


# User multipliers ------------------------------------------------------------------------------


def _teacher_forced_values(model, input_ids, attention_mask, output):
    """The heads' own T and P at the positions that produced each generated token."""
    prompt_length = input_ids.shape[1]
    new_tokens = output.sequences.shape[1] - prompt_length
    full_mask = torch.cat([attention_mask, torch.ones(len(input_ids), new_tokens, dtype=attention_mask.dtype)], dim=1)
    with torch.no_grad():
        forced = model(output.sequences, attention_mask=full_mask, position_ids=position_ids_for(full_mask))
    producing = slice(prompt_length - 1, prompt_length - 1 + new_tokens)
    return forced.temperature[:, producing], forced.top_p[:, producing]


def _generate(model, seed=0, **kwargs):
    input_ids, attention_mask = left_padded_batch()
    torch.manual_seed(seed)
    output = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=5, return_dict_in_generate=True, **kwargs
    )
    return input_ids, attention_mask, output


def test_user_temperature_multiplies_recorded_temperatures(tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask, output = _generate(model, temperature=0.5)
    head_temperature, head_top_p = _teacher_forced_values(model, input_ids, attention_mask, output)
    valid = ~torch.isnan(output.temperatures)
    torch.testing.assert_close(output.temperatures[valid], 0.5 * head_temperature[valid], rtol=0, atol=1e-5)
    # The top-p head reads the head's own temperature, not the user's product.
    torch.testing.assert_close(output.top_ps[valid], head_top_p[valid], rtol=0, atol=1e-5)


@pytest.mark.parametrize("multiplier", [1.5, 10.0])
def test_user_top_p_multiplies_and_caps_recorded_top_p(multiplier, tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask, output = _generate(model, top_p=multiplier)
    head_temperature, head_top_p = _teacher_forced_values(model, input_ids, attention_mask, output)
    valid = ~torch.isnan(output.top_ps)
    expected = (multiplier * head_top_p).clamp(max=1.0)
    torch.testing.assert_close(output.top_ps[valid], expected[valid], rtol=0, atol=1e-5)
    assert (output.top_ps[valid] <= 1.0).all()
    if multiplier == 10.0:
        assert (output.top_ps[valid] == 1.0).all()
    else:
        assert (output.top_ps[valid] < 1.0).any()
    torch.testing.assert_close(output.temperatures[valid], head_temperature[valid], rtol=0, atol=1e-5)


def test_generation_config_temperature_and_top_p_act_as_multipliers(tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    config = GenerationConfig(do_sample=True, temperature=0.5, top_p=1.5, top_k=1, max_new_tokens=5)
    input_ids, attention_mask = left_padded_batch()
    torch.manual_seed(0)
    output = model.generate(input_ids, attention_mask=attention_mask, generation_config=config, return_dict_in_generate=True)
    head_temperature, head_top_p = _teacher_forced_values(model, input_ids, attention_mask, output)
    valid = ~torch.isnan(output.temperatures)
    torch.testing.assert_close(output.temperatures[valid], 0.5 * head_temperature[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(output.top_ps[valid], (1.5 * head_top_p[valid]).clamp(max=1), rtol=0, atol=1e-5)
    assert config.temperature == 0.5 and config.top_k == 1  # the caller's config is not modified


def test_temperature_zero_is_greedy(tiny_causal_lm, tiny_autodeco):
    llm = tiny_causal_lm(FAMILY)
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask = left_padded_batch()
    greedy = llm.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=6)
    for seed in range(2):
        torch.manual_seed(seed)
        assert torch.equal(model.generate(input_ids, attention_mask=attention_mask, temperature=0, max_new_tokens=6), greedy)
    detailed = model.generate(
        input_ids, attention_mask=attention_mask, temperature=0.0, max_new_tokens=6, return_dict_in_generate=True
    )
    assert torch.equal(detailed.sequences, greedy)
    # Greedy still reports the heads' own values (user multiplier 0 is not applied to them).
    head_temperature, _ = _teacher_forced_values(model, input_ids, attention_mask, detailed)
    valid = ~torch.isnan(detailed.temperatures)
    torch.testing.assert_close(detailed.temperatures[valid], head_temperature[valid], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"temperature": -0.5}, {"top_p": 0.0}, {"top_p": -1.0}])
def test_invalid_multipliers_are_refused(kwargs, tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask = prompt()
    with pytest.raises(ValueError):
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2, **kwargs)


# End of sequence and user logits processors ---------------------------------------------------


class ForceTokenAtStep(LogitsProcessor):
    """Leaves only ``token`` possible for ``row`` at generation step ``step`` (0-based)."""

    def __init__(self, prompt_length: int, row: int, step: int, token: int):
        self.prompt_length, self.row, self.step, self.token = prompt_length, row, step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores = scores.clone()
            scores[self.row] = float("-inf")
            scores[self.row, self.token] = 0.0
        return scores


def test_values_after_end_of_sequence_are_nan_and_user_processors_apply_first(tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask = left_padded_batch()
    prompt_length, end_step, steps = input_ids.shape[1], 2, 6
    torch.manual_seed(0)
    output = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=steps, return_dict_in_generate=True,
        logits_processor=LogitsProcessorList([ForceTokenAtStep(prompt_length, row=0, step=end_step, token=EOS_TOKEN_ID)]),
    )
    generated = output.sequences[:, prompt_length:]
    assert generated[0, end_step] == EOS_TOKEN_ID
    assert (generated[0, end_step + 1 :] == PAD_TOKEN_ID).all()
    if (generated[1] == EOS_TOKEN_ID).any():
        pytest.skip("row 1 sampled the end token by chance")
    assert generated.shape[1] == steps
    for values in (output.temperatures, output.top_ps):
        assert torch.isfinite(values[0, : end_step + 1]).all()  # the end token's own step keeps its values
        assert torch.isnan(values[0, end_step + 1 :]).all()
        assert torch.isfinite(values[1]).all()
    # The recorded values before the end are the heads' own. At the forced step the top-p head read
    # the features of the processed (one-hot) scores, so only its temperature matches there.
    head_temperature, head_top_p = _teacher_forced_values(model, input_ids, attention_mask, output)
    valid = ~torch.isnan(output.temperatures)
    torch.testing.assert_close(output.temperatures[valid], head_temperature[valid], rtol=0, atol=1e-5)
    valid[0, end_step] = False
    torch.testing.assert_close(output.top_ps[valid], head_top_p[valid], rtol=0, atol=1e-5)


# Streamers -------------------------------------------------------------------------------------


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.chunks: list[torch.Tensor] = []
        self.ended = 0

    def put(self, value):
        self.chunks.append(value.detach().clone())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("do_sample", [True, False])
def test_streamer_receives_the_generated_tokens(do_sample, tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask = prompt()
    streamer = RecordingStreamer()
    torch.manual_seed(0)
    sequences = model.generate(
        input_ids, attention_mask=attention_mask, do_sample=do_sample, max_new_tokens=6, streamer=streamer
    )
    assert streamer.ended == 1
    assert torch.equal(streamer.chunks[0].reshape(-1), input_ids.reshape(-1))  # the prompt comes first
    streamed = torch.cat([chunk.reshape(-1) for chunk in streamer.chunks[1:]])
    assert torch.equal(streamed, sequences[0, input_ids.shape[1] :])
    assert len(streamer.chunks) == 1 + streamed.numel()


def test_text_streamer_prints_generated_text(tiny_autodeco, capsys):
    from transformers import TextStreamer

    class DigitsTokenizer:
        """Decodes token ids as space-separated numbers: enough for TextStreamer."""

        def decode(self, ids, **kwargs):
            return "".join(f"<{int(i)}>" for i in ids)

    model = tiny_autodeco(FAMILY)
    input_ids, attention_mask = prompt()
    torch.manual_seed(0)
    sequences = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=4, streamer=TextStreamer(DigitsTokenizer(), skip_prompt=True)
    )
    printed = capsys.readouterr().out
    assert printed.strip() == "".join(f"<{int(i)}>" for i in sequences[0, input_ids.shape[1] :])


# dynamic_step ----------------------------------------------------------------------------------


def _step_inputs(model, rows: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, model.config.hidden_size, generator=generator)
    logits = 3 * torch.randn(rows, model.config.vocab_size, generator=generator)
    return hidden, logits


def test_dynamic_step_without_sampling_returns_logits_unchanged(tiny_autodeco):
    model = tiny_autodeco(FAMILY)
    hidden, logits = _step_inputs(model)
    original = logits.clone()
    with torch.no_grad():
        returned, temperature, top_p = dynamic_step(model, hidden, logits, 0.5, 2.0, sample=False)
        head_temperature, head_top_p = model.predict(hidden, logits)
    assert torch.equal(returned, original)
    assert torch.equal(logits, original)
    assert temperature.shape == top_p.shape == (3,)
    torch.testing.assert_close(temperature, 0.5 * head_temperature)
    torch.testing.assert_close(top_p, (2.0 * head_top_p).clamp(max=1))


HEAD_SETTINGS = {
    "both": {},
    "temperature-only": {"enable_top_p_head": False},
    "top-p-only": {"enable_temperature_head": False},
    "no-features": {"use_enhanced_features": False},
}


@pytest.mark.parametrize("user_temperature,user_top_p", [(1.0, 1.0), (0.5, 1.0), (1.3, 0.7)])
@pytest.mark.parametrize(
    "heads,forced_temperature",
    [
        pytest.param(settings, forced, id=f"{name}-{'T0.1' if forced else 'headT'}")
        for name, settings in HEAD_SETTINGS.items()
        for forced in (None, 0.1)
        if not (forced and settings.get("enable_temperature_head") is False)
    ],
)
def test_dynamic_step_matches_predict_and_warp_logits(heads, user_temperature, user_top_p, forced_temperature, tiny_autodeco):
    """The fused decoding step equals the reference pieces: model.predict, then warp_logits.

    A head temperature of 0.1 (where ``T + 1e-8 != T`` in float32) takes the step's other branch.
    """
    model = tiny_autodeco(FAMILY, **heads)
    if forced_temperature is not None:
        force_heads(model, temperature=forced_temperature)
    hidden, logits = _step_inputs(model, rows=4, seed=1)
    original = logits.clone()
    with torch.no_grad():
        warped, temperature, top_p = dynamic_step(model, hidden, logits, user_temperature, user_top_p)
        head_temperature, head_top_p = model.predict(hidden, logits)
    assert torch.equal(logits, original), "dynamic_step modified its input logits"
    torch.testing.assert_close(temperature, head_temperature * user_temperature)
    torch.testing.assert_close(top_p, (head_top_p * user_top_p).clamp(max=1))
    if not model.config.enable_temperature_head:
        assert torch.equal(head_temperature, torch.ones(4))
    if not model.config.enable_top_p_head:
        assert torch.equal(head_top_p, torch.ones(4))  # the user's top_p still multiplies this 1
    expected = warp_logits(logits, temperature, top_p)
    assert torch.equal(torch.isinf(warped), torch.isinf(expected))
    torch.testing.assert_close(warped, expected)


def test_dynamic_step_with_masked_logits(tiny_autodeco):
    """Logits already set to -inf by an earlier processor stay out of the nucleus; a one-token row keeps its token."""
    model = tiny_autodeco(FAMILY)
    hidden, logits = _step_inputs(model, rows=2, seed=2)
    logits[0, ::2] = float("-inf")
    logits[1] = float("-inf")
    logits[1, 7] = 0.0
    with torch.no_grad():
        warped, temperature, top_p = dynamic_step(model, hidden, logits, 1.0, 1.0)
    assert torch.isinf(warped[0, ::2]).all()
    assert torch.isfinite(warped[1]).sum() == 1 and torch.isfinite(warped[1, 7])
    assert not torch.isnan(warped).any() and torch.isfinite(temperature).all() and torch.isfinite(top_p).all()
    expected = warp_logits(logits, temperature, top_p)
    assert torch.equal(torch.isinf(warped), torch.isinf(expected))
    torch.testing.assert_close(warped, expected)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 0), r"shape \(1, 0\): the prompt is empty"), ((0, 3), r"shape \(0, 3\): the prompt is empty"),
     ((4,), r"shape \(4,\), not \(batch, length\).*unsqueeze\(0\)")],
)
def test_empty_or_unbatched_prompts_are_refused_with_the_shape(shape, message, tiny_autodeco):
    model = tiny_autodeco("llama")
    with pytest.raises(ValueError, match=message):
        model.generate(torch.ones(shape, dtype=torch.long), max_new_tokens=2)


def test_text_generation_pipeline_runs_the_model(tiny_chat_model_dir):
    import transformers

    from autodeco import AutoDecoForCausalLM

    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    assert model.can_generate() and model.generation_config.top_k is None  # no base sampling defaults
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    [result] = pipe("1 + 1 =", max_new_tokens=3, do_sample=False)
    assert result["generated_text"].startswith("1 + 1 =")
    [chat] = pipe([{"role": "user", "content": "hi"}], max_new_tokens=2)
    assert chat["generated_text"][-1]["role"] == "assistant"
