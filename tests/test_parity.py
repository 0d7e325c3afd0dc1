"""Numerical parity with the official AutoDeco implementation (reference numbers in fixtures/official)."""

import json
from pathlib import Path

import pytest
import torch

from autodeco import AutoDecoForCausalLM
from autodeco.heads import probability_features
from autodeco.losses import temperature_loss, top_p_loss

FIXTURES = Path(__file__).parent / "fixtures" / "official"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
RELATIVE_TOLERANCE = 1e-4
VARIANTS = {"enhanced": "heads-only", "basic": "heads-only-basic"}


def assert_close(actual, expected):
    expected = torch.tensor(expected, dtype=torch.float64)
    actual = actual.detach().double()
    assert actual.shape == expected.shape
    deviation = ((actual - expected).abs() / expected.abs().clamp(min=1e-12)).max().item()
    assert deviation <= RELATIVE_TOLERANCE, f"max relative deviation {deviation:.2e}"


@pytest.fixture(scope="module")
def batch():
    return {name: torch.tensor(EXPECTED["batch"][name]) for name in ("input_ids", "attention_mask", "labels", "labels_mixed")}


def load(variant: str, merged: bool = False) -> AutoDecoForCausalLM:
    if merged:
        return AutoDecoForCausalLM.from_pretrained(FIXTURES / "merged")
    return AutoDecoForCausalLM.from_pretrained(FIXTURES / VARIANTS[variant], base_model=FIXTURES / "tiny-llama")


@pytest.mark.parametrize("variant,merged", [("enhanced", False), ("basic", False), ("enhanced", True)])
def test_per_token_temperature_and_top_p_match_official(batch, variant, merged):
    model = load(variant, merged)
    assert model.config.use_enhanced_features == (variant == "enhanced")
    with torch.no_grad():
        output = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    reference = EXPECTED["variants"][variant]
    assert_close(output.temperature, reference["temp_logits"])
    assert_close(output.top_p, reference["top_p_logits"])
    assert_close(output.logits[0, 0, :5], reference["logits_0_0_first5"])
    assert output.logits.argmax(-1).tolist() == reference["logits_argmax"]


def test_probability_features_match_official(batch):
    model = load("enhanced")
    with torch.no_grad():
        output = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        features = probability_features(output.logits, output.temperature)
    expected = torch.tensor(EXPECTED["variants"]["enhanced"]["top_p_prob_stats"], dtype=torch.float64)
    assert torch.allclose(features.double(), expected, rtol=RELATIVE_TOLERANCE, atol=1e-9)


@pytest.mark.parametrize("variant", ["enhanced", "basic"])
@pytest.mark.parametrize("labels_name", ["labels", "labels_mixed"])
@pytest.mark.parametrize("seed", [123, 456])
def test_losses_match_official(batch, variant, labels_name, seed):
    model = load(variant)
    labels = batch[labels_name]
    with torch.no_grad():
        output = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = EXPECTED["variants"][variant]["losses"][labels_name][f"seed_{seed}"]
    generator = torch.Generator().manual_seed(seed)
    loss_t = temperature_loss(output.logits, output.temperature, labels, generator=generator)
    loss_p = top_p_loss(output.logits, output.temperature, output.top_p, labels)
    assert_close(loss_t, expected["temp_loss"])
    assert_close(loss_p, expected["top_p_loss"])


def test_forward_loss_is_sum_of_official_losses(batch):
    model = load("enhanced")
    output = model(
        batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels_mixed"],
        generator=torch.Generator().manual_seed(123),
    )
    expected = EXPECTED["variants"]["enhanced"]["losses"]["labels_mixed"]["forward_seed_123"]
    assert_close(output.loss, expected["loss"])
    assert_close(output.temperature_loss, expected["temp_loss"])
    assert_close(output.top_p_loss, expected["top_p_loss"])


def test_easy_token_drop_draws_match_official_random_stream():
    for seed in (123, 456):
        draws = torch.rand((2, 11), generator=torch.Generator().manual_seed(seed))
        assert_close(draws, EXPECTED["rand_vals"][f"seed_{seed}"])
