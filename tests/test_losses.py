"""The two training losses on hand-computed cases (parity with the official code is in test_parity)."""

import math

import pytest
import torch

from autodeco.losses import soft_top_p_nll, temperature_loss, top_p_loss


def test_temperature_loss_hand_computed_with_dft_weight():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    temperature = torch.tensor([[0.5, 1.0]])
    labels = torch.tensor([[-100, 1]])  # position 0 predicts token 1
    loss = temperature_loss(logits, temperature, labels, easy_token_drop=0.0)
    probability = 1 / (1 + math.exp(4.0))  # softmax([4, 0])[1]
    weight = 1 / (1 + math.exp(2.0))  # softmax([2, 0])[1] at T = 1
    assert loss.item() == pytest.approx(-math.log(probability) * weight, rel=1e-6)


def test_temperature_loss_clamps_temperature_at_one_hundredth():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, 1]])
    tiny = temperature_loss(logits, torch.tensor([[1e-6, 1.0]]), labels, easy_token_drop=0.0, dft_weighting=False)
    clamped = temperature_loss(logits, torch.tensor([[0.01, 1.0]]), labels, easy_token_drop=0.0, dft_weighting=False)
    assert tiny.item() == pytest.approx(clamped.item()) and tiny.item() > 50


def test_easy_tokens_are_dropped_only_where_base_argmax_is_the_label():
    torch.manual_seed(0)
    logits = torch.randn(1, 400, 5)
    labels = torch.full((1, 400), -100)
    labels[0, 1:] = logits[0, :-1].argmax(-1)  # every label is the base argmax: all easy
    temperature = torch.ones(1, 400, requires_grad=True)
    kept_all = temperature_loss(logits, temperature, labels, easy_token_drop=0.0)
    dropped_all = temperature_loss(logits, temperature, labels, easy_token_drop=1.0)
    assert kept_all.item() > 0 and dropped_all.item() == 0.0
    dropped_all.backward()  # the zero loss still has a graph
    generator = torch.Generator().manual_seed(1)
    partial = temperature_loss(logits, temperature, labels, generator=generator)
    assert partial.item() > 0


def test_ignored_labels_contribute_nothing():
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    temperature, top_p = torch.rand(2, 6) + 0.5, torch.rand(2, 6) * 0.5 + 0.5
    masked = labels.clone()
    masked[1] = -100
    expected = top_p_loss(logits[:1], temperature[:1], top_p[:1], labels[:1])
    assert top_p_loss(logits, temperature, top_p, masked).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_top_p_matches_worked_example():
    # p = [0.5, 0.3, 0.2], P = 0.8: masks [1, 1, exp(-30 * 0.2)]
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    logits = probs.log()
    mask = torch.tensor([1.0, 1.0, math.exp(-6.0)])
    kept = probs[0] * mask
    for label in range(3):
        nll = soft_top_p_nll(logits, torch.ones(1), torch.tensor([0.8]), torch.tensor([label]))
        expected = -math.log(kept[label] / (kept.sum() + 1e-9) + 1e-9)
        assert nll.item() == pytest.approx(expected, rel=1e-5)


def test_top_p_loss_gradient_reaches_top_p_and_temperature():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 20) * 3
    labels = torch.randint(0, 20, (1, 5))
    temperature = torch.full((1, 5), 0.8, requires_grad=True)
    top_p = torch.full((1, 5), 0.3, requires_grad=True)
    top_p_loss(logits, temperature, top_p, labels).backward()
    assert temperature.grad.abs().sum() > 0 and top_p.grad.abs().sum() > 0


def test_top_p_loss_pushes_nucleus_open_for_a_rare_label():
    logits = torch.tensor([[[5.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 2]])  # the least likely token follows
    top_p = torch.tensor([[0.5, 0.5]], requires_grad=True)
    top_p_loss(logits, torch.ones(1, 2), top_p, labels, dft_weighting=False).backward()
    assert top_p.grad[0, 0] < 0  # raising top-p lowers the loss


def test_bad_shapes_and_settings_are_reported():
    with pytest.raises(ValueError, match="shape"):
        temperature_loss(torch.randn(2, 5), torch.ones(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="easy_token_drop"):
        temperature_loss(torch.randn(1, 2, 3), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long), easy_token_drop=1.5)
    with pytest.raises(ValueError, match="steepness"):
        top_p_loss(torch.randn(1, 2, 3), torch.ones(1, 2), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long), steepness=0)
