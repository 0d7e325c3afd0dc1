"""engines.heads_sets and the per-row heads of both engines' steps (pure torch: no model, no vLLM)."""

import pytest
import torch

from autodeco.core.dynamic import dynamic_step
from autodeco.engines.heads_sets import base_id, check_plain_base_top_p, heads_ids, plain_base_heads
from autodeco.engines.hf_batching import step_by_heads
from autodeco.engines.vllm_models import RowSettings, warp_rows
from autodeco.model.config import AutoDecoConfig
from autodeco.model.heads import AutoDecoHeads

HIDDEN, VOCAB = 8, 16


def make_heads(seed: int) -> AutoDecoHeads:
    torch.manual_seed(seed)
    return AutoDecoHeads(AutoDecoConfig(hidden_size=HIDDEN, vocab_size=VOCAB))


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, HIDDEN, generator=generator)  # (B, H)
    logits = torch.randn(5, VOCAB, generator=generator) * 3  # (B, V)
    return hidden, logits


def test_step_by_heads_gives_each_row_its_own_heads_values(batch):
    hidden, logits = batch
    alpha, beta = make_heads(1), make_heads(2)
    rows = [alpha, beta, alpha, beta, beta]
    temperature, top_p = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.5]), torch.tensor([1.0, 1.2, 0.8, 1.0, 1.0])
    warped, used_temperature, used_top_p = step_by_heads(rows, hidden, logits, temperature, top_p, True)
    for index, heads in enumerate(rows):
        alone = dynamic_step(heads, hidden[index:index + 1], logits[index:index + 1], temperature[index:index + 1],
                             top_p[index:index + 1], True)
        torch.testing.assert_close(warped[index], alone[0][0])
        torch.testing.assert_close(used_temperature[index], alone[1][0])
        torch.testing.assert_close(used_top_p[index], alone[2][0])
    assert not torch.allclose(used_temperature[0] / 1.0, dynamic_step(beta, hidden[:1], logits[:1], 1.0, 1.0)[1][0])


def test_step_by_heads_with_one_heads_is_dynamic_step_bitwise(batch):
    hidden, logits = batch
    alpha = make_heads(1)
    grouped = step_by_heads([alpha] * 5, hidden, logits, torch.ones(5), torch.ones(5), True)
    whole = dynamic_step(alpha, hidden, logits, torch.ones(5), torch.ones(5), True)
    for mine, reference in zip(grouped, whole):
        assert torch.equal(mine, reference)


def test_plain_base_heads_make_the_user_values_absolute(batch):
    hidden, logits = batch
    _, temperature, top_p = dynamic_step(plain_base_heads(HIDDEN, VOCAB), hidden, logits, torch.full((5,), 0.7),
                                         torch.full((5,), 0.9))
    assert temperature.tolist() == pytest.approx([0.7] * 5) and top_p.tolist() == pytest.approx([0.9] * 5)
    with pytest.raises(ValueError, match="absolute values .* but is 1.5"):
        check_plain_base_top_p(1.5, "base")


def test_vllm_rows_pick_their_heads_set_by_id(batch):
    hidden, logits = batch
    alpha, beta = make_heads(1), make_heads(2)
    records = [[] for _ in range(5)]
    rows = [RowSettings(record=records[index], heads=name)
            for index, name in enumerate([None, "beta", None, "beta", None])]
    rows[4].enabled = False  # the plain base: vLLM's own sampling, logits untouched
    output = warp_rows({None: alpha, "beta": beta}, hidden, logits, rows)
    for heads, indices in ((alpha, [0, 2]), (beta, [1, 3])):  # each heads set steps its rows together
        warped, temperature, top_p = dynamic_step(heads, hidden[indices], logits[indices], 1.0, 1.0)
        for position, index in enumerate(indices):
            assert torch.equal(output[index], warped[position])
            assert records[index] == [pytest.approx((float(temperature[position].detach()), float(top_p[position].detach())))]
    assert torch.equal(output[4], logits[4]) and records[4] == []


def test_ids_and_the_base_id():
    assert heads_ids(["shipped:a", "x/a", "y/a/"]) == ["a", "a-2", "a-3"]
    assert base_id("embedded:SmolLM2-135M-Instruct", taken=["a"]) == "embedded:SmolLM2-135M-Instruct"
    assert base_id("/models/a", taken=["a"]) == "a-2" and base_id("org/model") == "org/model"
