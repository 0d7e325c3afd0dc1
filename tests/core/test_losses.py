"""The two training losses on hand-computed cases and against a plain reference implementation.

Parity with the official code is in test_parity; memory and speed are measured in
benchmarks/loss_memory.py, not here.
"""

import doctest
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autodeco.core import losses
from autodeco.core.losses import LossSum, label_probability, soft_top_p_nll, temperature_loss, top_p_loss


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
        temperature_loss(
            torch.randn(1, 2, 3), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long), easy_token_drop=1.5
        )
    with pytest.raises(ValueError, match="steepness"):
        top_p_loss(
            torch.randn(1, 2, 3), torch.ones(1, 2), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long), steepness=0
        )


# ---------------------------------------------------------------------------------------------
# Chunked computation against a plain reference written from PAPER.md section 3.


def reference_soft_top_p_nll(logits, temperature, top_p, labels, steepness=30.0):
    """Soft top-p NLL with the mask scattered back to vocabulary order: (N, V), (N,), (N,), (N,) -> (N,)."""
    probs = torch.softmax(logits / temperature.clamp(min=1e-8)[:, None], dim=-1)
    sorted_probs, sorted_indices = torch.sort(probs, dim=-1, descending=True)
    sorted_mask = torch.exp(-steepness * torch.relu(sorted_probs.cumsum(-1) - top_p[:, None]))
    mask = torch.zeros_like(probs).scatter(-1, sorted_indices, sorted_mask)  # vocabulary order
    filtered = probs * mask
    renormalized = filtered / (filtered.sum(-1, keepdim=True) + 1e-9)
    return -torch.log(renormalized[torch.arange(len(labels)), labels] + 1e-9)


def reference_losses(logits, temperature, top_p, labels, random_values, easy_token_drop=0.6, dft_weighting=True):
    """(temperature loss, top-p loss), each the mean over its tokens, on the full (B, L - 1, V) tensors, in float64."""
    logits, labels = logits[:, :-1].double(), labels[:, 1:]
    temperature, top_p = temperature[:, :-1].double(), top_p[:, :-1].double()
    valid = labels != -100
    safe_labels = labels.clamp(min=0)
    base_log_probs = torch.log_softmax(logits, dim=-1)
    weight = (
        base_log_probs.gather(-1, safe_labels[..., None])[..., 0].exp()
        if dft_weighting
        else torch.ones_like(temperature)
    )
    easy = logits.argmax(-1) == labels
    kept = valid & ~(easy & (random_values < easy_token_drop))
    scaled_log_probs = torch.log_softmax(logits / temperature.clamp(min=0.01)[..., None], dim=-1)
    cross_entropy = -scaled_log_probs.gather(-1, safe_labels[..., None])[..., 0]
    temperature_part = (cross_entropy * weight.detach())[kept].mean()
    nll = reference_soft_top_p_nll(logits[valid], temperature[valid], top_p[valid], labels[valid])
    top_p_part = (nll * weight.detach()[valid]).mean()
    return temperature_part, top_p_part


def random_batch(batch=3, length=9, vocabulary=17, seed=0):
    """Random logits with some easy tokens, ignored prompt labels and a right-padded row."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocabulary, generator=generator) * 3
    labels = torch.randint(0, vocabulary, (batch, length), generator=generator)
    labels[:, 1::3] = logits[:, :-1:3].argmax(-1)  # every third prediction is the base argmax (easy)
    labels[0, :3] = -100  # prompt
    labels[2, length - 4 :] = -100  # padding
    temperature = torch.rand(batch, length, generator=generator) * 1.5 + 0.2
    temperature[1, 2] = 0.001  # below both clamps
    top_p = torch.rand(batch, length, generator=generator) * 0.9 + 0.05
    random_values = torch.rand(batch, length - 1, generator=generator)
    return logits, temperature, top_p, labels, random_values


def losses_and_gradients(compute, temperature, top_p):
    temperature = temperature.clone().requires_grad_()
    top_p = top_p.clone().requires_grad_()
    loss = compute(temperature, top_p)
    loss.backward()
    zero = torch.zeros_like(top_p)
    return loss.detach(), temperature.grad, top_p.grad if top_p.grad is not None else zero


def assert_close(actual, expected, rtol=1e-5):
    """Each element within ``rtol`` of the reference, or within ``rtol`` of its largest element (float32 rounding
    is amplified in gradients that nearly cancel, so those are held to the tensor's scale)."""
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * scale)


# 18 labelled predictions in random_batch(): chunks of 4 and 5 leave a short last chunk, 6 divides them, 64 > N.
CHUNK_SIZES = [1, 4, 5, 6, 64, None]


def assert_matches(actual, at_once, reference):
    """(loss, grad T, grad P) against the all-at-once float32 path (tightly) and the float64 reference."""
    for value, same_arithmetic in zip(actual, at_once):
        assert_close(value, same_arithmetic, rtol=1e-5)
    assert_close(actual[0], reference[0], rtol=1e-5)  # the loss value
    for gradient, exact in zip(actual[1:], reference[1:]):
        assert_close(gradient, exact, rtol=1e-4)  # float32 gradients against float64 ones


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_chunked_temperature_loss_matches_reference_values_and_gradients(chunk_size):
    logits, temperature, top_p, labels, random_values = random_batch()

    def chunked(size):
        return lambda t, p: temperature_loss(logits, t, labels, random_values=random_values, chunk_size=size)

    reference = losses_and_gradients(
        lambda t, p: reference_losses(logits, t, p, labels, random_values)[0], temperature, top_p
    )
    at_once = losses_and_gradients(chunked(None), temperature, top_p)
    assert_matches(losses_and_gradients(chunked(chunk_size), temperature, top_p), at_once, reference)
    assert reference[1].abs().sum() > 0


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_chunked_top_p_loss_matches_reference_values_and_gradients(chunk_size):
    logits, temperature, top_p, labels, random_values = random_batch()
    assert (labels[:, 1:] != -100).sum() == 18

    def chunked(size):
        return lambda t, p: top_p_loss(logits, t, p, labels, chunk_size=size)

    reference = losses_and_gradients(
        lambda t, p: reference_losses(logits, t, p, labels, random_values)[1], temperature, top_p
    )
    at_once = losses_and_gradients(chunked(None), temperature, top_p)
    assert_matches(losses_and_gradients(chunked(chunk_size), temperature, top_p), at_once, reference)
    assert reference[1].abs().sum() > 0 and reference[2].abs().sum() > 0


@pytest.mark.parametrize("chunk_size", [2, None])
def test_joint_loss_without_dft_weighting_matches_reference(chunk_size):
    logits, temperature, top_p, labels, random_values = random_batch(seed=5)

    def chunked(t, p):
        return temperature_loss(
            logits, t, labels, random_values=random_values, dft_weighting=False, chunk_size=chunk_size
        ) + top_p_loss(logits, t, p, labels, dft_weighting=False, chunk_size=chunk_size)

    reference = losses_and_gradients(
        lambda t, p: sum(reference_losses(logits, t, p, labels, random_values, dft_weighting=False)), temperature, top_p
    )
    actual = losses_and_gradients(chunked, temperature, top_p)
    assert_close(actual[0], reference[0], rtol=1e-5)
    for gradient, exact in zip(actual[1:], reference[1:]):
        assert_close(gradient, exact, rtol=1e-4)


def test_chunked_losses_match_all_at_once_for_bfloat16_inputs():
    logits, temperature, top_p, labels, random_values = random_batch(seed=2)
    logits, temperature, top_p = logits.bfloat16(), temperature.bfloat16(), top_p.bfloat16()

    def joint(chunk_size):
        return lambda t, p: (
            temperature_loss(logits, t, labels, random_values=random_values, chunk_size=chunk_size)
            + top_p_loss(logits, t, p, labels, chunk_size=chunk_size)
        )

    chunked, at_once = (
        losses_and_gradients(joint(3), temperature, top_p),
        losses_and_gradients(joint(None), temperature, top_p),
    )
    for value, reference in zip(chunked, at_once):
        assert value.dtype == reference.dtype == torch.float32 or value.dtype == reference.dtype == torch.bfloat16
        torch.testing.assert_close(value, reference)  # bfloat16 gradients: one rounding step apart at most


def test_chunked_losses_pass_gradients_to_logits_that_require_them():
    logits, temperature, top_p, labels, random_values = random_batch(seed=3)
    gradients = []
    for chunk_size in (4, None):
        trainable_logits = logits.clone().requires_grad_()
        loss = temperature_loss(
            trainable_logits, temperature, labels, random_values=random_values, chunk_size=chunk_size
        )
        loss = loss + top_p_loss(trainable_logits, temperature, top_p, labels, chunk_size=chunk_size)
        loss.backward()
        gradients.append(trainable_logits.grad)
    assert gradients[1].abs().sum() > 0
    assert_close(gradients[0], gradients[1])


def test_chunked_losses_under_no_grad_give_the_same_values():
    logits, temperature, top_p, labels, _ = random_batch(seed=4)
    with torch.no_grad():
        chunked = top_p_loss(logits, temperature.requires_grad_(), top_p, labels, chunk_size=2)
    assert not chunked.requires_grad
    assert_close(chunked, top_p_loss(logits, temperature, top_p, labels, chunk_size=None).detach())


@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_soft_top_p_nll_and_label_probability_chunks_match_reference(chunk_size):
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(10, 13, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, 13, (10,), generator=generator)
    temperature = (torch.rand(10, generator=generator, dtype=torch.float64) + 0.3).requires_grad_()
    top_p = (torch.rand(10, generator=generator, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    nll = soft_top_p_nll(logits, temperature, top_p, labels, chunk_size=chunk_size)
    expected = reference_soft_top_p_nll(logits, temperature, top_p, labels)
    assert_close(nll, expected)
    actual_grads = torch.autograd.grad((nll * torch.arange(10)).sum(), [temperature, top_p])
    expected_grads = torch.autograd.grad((expected * torch.arange(10)).sum(), [temperature, top_p])
    for value, reference in zip(actual_grads, expected_grads):
        assert_close(value, reference)
    probability = label_probability(logits, labels, chunk_size=chunk_size)
    assert probability.dtype == torch.float32
    assert_close(probability, torch.softmax(logits, -1)[torch.arange(10), labels])


class LargestNewStorage(TorchDispatchMode):
    """Records the largest tensor storage any operation creates, ignoring views of ``ignored``."""

    def __init__(self, ignored: torch.Tensor):
        super().__init__()
        self.ignored_pointer = ignored.untyped_storage().data_ptr()
        self.largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() != self.ignored_pointer:
                self.largest_bytes = max(self.largest_bytes, value.untyped_storage().nbytes())
        return result


@pytest.mark.parametrize("loss_name", ["temperature", "top_p"])
def test_chunks_never_create_a_tensor_of_all_tokens_by_vocabulary(loss_name):
    batch, length, vocabulary, chunk_size = 2, 33, 50, 8  # 64 predictions
    logits = torch.randn(batch, length, vocabulary)
    labels = torch.randint(0, vocabulary, (batch, length))
    largest = {}
    for size in (chunk_size, None):
        temperature = torch.full((batch, length), 0.9, requires_grad=True)
        top_p = torch.full((batch, length), 0.7, requires_grad=True)
        with LargestNewStorage(logits) as recorder:
            if loss_name == "temperature":
                loss = temperature_loss(logits, temperature, labels, easy_token_drop=0.0, chunk_size=size)
            else:
                loss = top_p_loss(logits, temperature, top_p, labels, chunk_size=size)
            loss.backward()
        largest[size] = recorder.largest_bytes
    chunk_bytes = chunk_size * vocabulary * 8  # the widest dtype here is int64 (sort indices)
    assert largest[chunk_size] <= chunk_bytes < largest[None]


def test_random_values_give_the_same_drops_as_the_generator_draws():
    logits, temperature, top_p, labels, _ = random_batch(seed=7)
    seeded = losses_and_gradients(
        lambda t, p: temperature_loss(logits, t, labels, generator=torch.Generator().manual_seed(11)),
        temperature,
        top_p,
    )
    draws = torch.rand(labels[:, 1:].shape, generator=torch.Generator().manual_seed(11))
    given = losses_and_gradients(
        lambda t, p: temperature_loss(logits, t, labels, random_values=draws), temperature, top_p
    )
    for value, reference in zip(given, seeded):
        assert torch.equal(value, reference)
    never_dropped = temperature_loss(logits, temperature, labels, random_values=torch.ones_like(draws))
    assert never_dropped.item() != pytest.approx(given[0].item())  # the draws do decide


def test_sum_reduction_gives_total_and_count_of_the_mean():
    logits, temperature, top_p, labels, random_values = random_batch(seed=8)
    kept_expected = {"top_p": int((labels[:, 1:] != -100).sum())}
    easy = logits[:, :-1].argmax(-1) == labels[:, 1:]
    kept_expected["temperature"] = int(((labels[:, 1:] != -100) & ~(easy & (random_values < 0.6))).sum())
    assert kept_expected["temperature"] < kept_expected["top_p"]
    for name, compute in {
        "temperature": lambda **kw: temperature_loss(logits, temperature, labels, random_values=random_values, **kw),
        "top_p": lambda **kw: top_p_loss(logits, temperature, top_p, labels, **kw),
    }.items():
        summed = compute(reduction="sum", chunk_size=4)
        assert isinstance(summed, LossSum) and summed.count.dtype == torch.int64
        assert summed.count.item() == kept_expected[name]
        assert_close(summed.total / summed.count, compute(reduction="mean", chunk_size=4))


def test_sum_reduction_with_no_tokens_is_zero_over_zero_and_still_differentiable():
    logits = torch.randn(1, 4, 6)
    labels = torch.full((1, 4), -100)
    temperature = torch.ones(1, 4, requires_grad=True)
    top_p = torch.ones(1, 4, requires_grad=True)
    for summed in (
        temperature_loss(logits, temperature, labels, reduction="sum"),
        top_p_loss(logits, temperature, top_p, labels, reduction="sum"),
    ):
        assert summed.total.item() == 0.0 and summed.count.item() == 0
        summed.total.backward()


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size_is_reported_with_its_value(chunk_size):
    logits, labels = torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"chunk_size .* got {chunk_size!r}"):
        temperature_loss(logits, torch.ones(1, 3), labels, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=rf"chunk_size .* got {chunk_size!r}"):
        top_p_loss(logits, torch.ones(1, 3), torch.ones(1, 3), labels, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=rf"chunk_size .* got {chunk_size!r}"):
        label_probability(logits[0], labels[0], chunk_size=chunk_size)


def test_bad_random_values_shape_and_reduction_are_reported():
    logits, labels = torch.randn(2, 5, 4), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"random_values .*\(2, 4\).*got \(2, 5\)"):
        temperature_loss(logits, torch.ones(2, 5), labels, random_values=torch.rand(2, 5))
    with pytest.raises(ValueError, match="reduction .*'avg'"):
        temperature_loss(logits, torch.ones(2, 5), labels, reduction="avg")
    with pytest.raises(ValueError, match="reduction .*'batchmean'"):
        top_p_loss(logits, torch.ones(2, 5), torch.ones(2, 5), labels, reduction="batchmean")


def test_docstring_examples_run():
    assert doctest.testmod(losses, raise_on_error=False).failed == 0


def test_soft_top_p_nll_and_label_probability_accept_zero_tokens():
    empty_logits, empty = torch.zeros(0, 5), torch.zeros(0)
    assert soft_top_p_nll(empty_logits, empty, empty, torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert label_probability(empty_logits, torch.zeros(0, dtype=torch.long)).shape == (0,)
