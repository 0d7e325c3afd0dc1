"""Label-free training losses for the temperature and top-p heads (PAPER.md section 3).

Pure tensor code: imports torch only. Both losses take the base model's logits and the heads'
predictions at every position, shift them inside (position t predicts token t + 1), ignore
labels equal to -100, and average over the kept tokens (or return their sum and count).

Memory: the losses are computed ``chunk_size`` tokens at a time, so the forward and the backward
never hold more than a few ``(chunk_size, V)`` tensors, whatever the sequence length. Each token's
loss depends on the logits (frozen, no gradient) and on that token's own temperature and top-p
only, so while a chunk is in memory its per-token derivatives ``d loss_i / d T_i`` and
``d loss_i / d P_i`` are computed too and kept as ``(N,)`` vectors; the backward multiplies them
by the incoming gradient and needs no ``(N, V)`` tensor at all. ``chunk_size=None`` runs the
straightforward version (every kept token's row at once, ordinary autograd), the reference the
benchmark in ``benchmarks/loss_memory.py`` compares against.

:func:`static_grid_nll` gives the same soft top-p NLL for a whole grid of static (T, P) pairs (the
held-out comparison): for one temperature, the soft top-p mass ``sum_j p_j exp(-a * relu(c_j - P))``
is ``c_{k-1} + exp(a * P) * sum_{j >= k} p_j exp(-a * c_j)`` with ``k`` the first sorted rank whose
cumulative probability ``c_k`` exceeds P, so one sort, one softmax and two cumulative sums per
temperature serve every top-p value of the grid.

Shapes: ``B`` batch, ``L`` sequence length, ``V`` vocabulary, ``N`` kept tokens, ``C`` chunk,
``G_T`` / ``G_P`` grid sizes.

The decoding-control losses (PAPER.md section 7) are in :mod:`autodeco.core.control_losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from autodeco.core.defaults import EASY_TOKEN_DROP, IGNORE_INDEX, STEEPNESS

MIN_LOSS_TEMPERATURE = 1e-2
"""The temperature loss divides logits by ``max(T, 0.01)``."""

MIN_SOFT_TOP_P_TEMPERATURE = 1e-8
"""The top-p loss divides logits by ``max(T, 1e-8)``."""

RENORMALIZE_EPSILON = 1e-9
"""Added to the masked mass before renormalising and to the probability inside the log."""

LOSS_CHUNK_TOKENS = 256
"""Tokens per chunk in the losses. At Qwen's vocabulary (151,936) one float32 ``(256, V)`` tensor
is 148 MiB and the soft top-p holds about a dozen of them; 2,048 tokens at once hold eight times
that. Smaller chunks save memory in proportion and cost little time until the per-chunk overhead
shows (measured in ``benchmarks/loss_memory.py``). ``None`` in the functions below means all at once."""

REDUCTIONS = ("mean", "sum", "none")
"""``reduction`` values: ``"mean"`` over kept tokens, ``"sum"`` returning a :class:`LossSum`, or ``"none"``: the
``(N,)`` per-token losses of the kept tokens in row-major order of their positions (for per-token weights, e.g.
the policy-gradient advantages of :mod:`autodeco.training.reward`)."""


class LossSum(NamedTuple):
    """A loss as a sum over tokens and the number of tokens, for averaging across processes.

    Attributes:
        total: scalar sum of the (weighted) per-token losses; carries the gradient.
        count: scalar int64 tensor, the number of tokens in the sum. ``total / count`` is the
            ``"mean"`` loss (0 tokens: ``total`` is 0 and so is ``count``).
    """

    total: torch.Tensor
    count: torch.Tensor


_TokenLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
"""``(logits (C, V) float32, temperature (C,), top_p (C,) or None, labels (C,)) -> (C,)``, row by row."""


def temperature_loss(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    labels: torch.Tensor,
    *,
    easy_token_drop: float = EASY_TOKEN_DROP,
    dft_weighting: bool = True,
    generator: torch.Generator | None = None,
    random_values: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = LOSS_CHUNK_TOKENS,
) -> torch.Tensor | LossSum:
    """Cross-entropy of ``logits / max(T, 0.01)`` with easy-token dropping and DFT weighting.

    Args:
        logits: ``(B, L, V)`` base-model logits (no gradient needed).
        temperature: ``(B, L)`` predicted temperatures.
        labels: ``(B, L)`` input token ids, -100 where not trained.
        easy_token_drop: probability of dropping a token the base model already ranks first.
        dft_weighting: multiply each token's loss by the base probability of its label.
        generator: random generator for the drop decisions (``torch.rand`` of shape ``(B, L - 1)``,
            drawn for every position).
        random_values: ``(B, L - 1)`` uniform draws in [0, 1) to use instead of drawing from
            ``generator``; an easy token at shifted position ``(b, t)`` is dropped when
            ``random_values[b, t] < easy_token_drop``.
        reduction: ``"mean"`` over the kept tokens, ``"sum"`` for a :class:`LossSum`, or ``"none"`` for the
            ``(N,)`` per-token losses (kept positions in row-major order).
        chunk_size: tokens per chunk (see :data:`LOSS_CHUNK_TOKENS`); ``None`` = all at once.

    Returns:
        Scalar mean loss over the kept tokens (0 if none is kept), or ``LossSum(total, count)``.

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
        >>> loss = temperature_loss(logits, torch.ones(1, 2), torch.tensor([[0, 0]]), easy_token_drop=0.0)
        >>> round(loss.item(), 4)  # -log(softmax([2, 0])[0]) * softmax([2, 0])[0]
        0.1118
    """
    if not 0.0 <= easy_token_drop <= 1.0:
        raise ValueError(f"easy_token_drop must be a probability in [0, 1], got {easy_token_drop}")
    _check_reduction(reduction)
    _check_chunk_size(chunk_size)
    shift_logits, shift_temperature, shift_labels = _shift(logits, temperature, labels)
    valid = shift_labels != IGNORE_INDEX  # (B, L-1)
    with torch.no_grad():
        if random_values is None:
            # Drawn for every position, kept or not, so a seeded generator gives the same stream as the reference.
            random_values = torch.rand(
                shift_labels.shape, generator=generator, device=generator_device(generator, labels)
            )
        elif random_values.shape != shift_labels.shape:
            raise ValueError(
                f"random_values must have shape (batch, length - 1) = {tuple(shift_labels.shape)}, "
                f"one draw per predicted position, got {tuple(random_values.shape)}"
            )
        easy = _easy_tokens(shift_logits, shift_labels, valid, chunk_size)  # (B, L-1)
        dropped = (random_values.to(labels.device) < easy_token_drop) & easy
    kept = valid & ~dropped  # (B, L-1)
    if not kept.any():
        return _reduce_empty(temperature.sum() * 0.0, reduction)
    token_losses, weights = _token_losses(
        _temperature_nll, shift_logits, kept, shift_temperature[kept].float(), None, shift_labels[kept], chunk_size
    )  # (N,) each
    if dft_weighting:
        token_losses = token_losses * weights
    return _reduce(token_losses, reduction)


def top_p_loss(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    labels: torch.Tensor,
    *,
    steepness: float = STEEPNESS,
    dft_weighting: bool = True,
    reduction: str = "mean",
    chunk_size: int | None = LOSS_CHUNK_TOKENS,
) -> torch.Tensor | LossSum:
    """Negative log-likelihood of the label under the soft top-p distribution, DFT-weighted.

    The gradient reaches both ``top_p`` and ``temperature`` (T is not detached).

    Args:
        logits: ``(B, L, V)`` base-model logits.
        temperature: ``(B, L)`` predicted temperatures.
        top_p: ``(B, L)`` predicted top-p values.
        labels: ``(B, L)`` input token ids, -100 where not trained.
        steepness: slope of the soft mask.
        dft_weighting: multiply each token's loss by the base probability of its label.
        reduction: ``"mean"`` over the labelled tokens, ``"sum"`` for a :class:`LossSum`, or ``"none"`` for the
            ``(N,)`` per-token losses (labelled positions in row-major order).
        chunk_size: tokens per chunk (see :data:`LOSS_CHUNK_TOKENS`); ``None`` = all at once.

    Returns:
        Scalar mean loss over the labelled tokens (0 if there are none), or ``LossSum(total, count)``.

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
        >>> loss = top_p_loss(logits, torch.ones(1, 2), torch.ones(1, 2), torch.tensor([[0, 0]]), dft_weighting=False)
        >>> round(loss.item(), 4)  # top_p = 1 masks nothing: -log softmax([2, 0])[0]
        0.1269
    """
    if steepness <= 0:
        raise ValueError(f"steepness must be > 0, got {steepness}")
    _check_reduction(reduction)
    _check_chunk_size(chunk_size)
    shift_logits, shift_temperature, shift_labels = _shift(logits, temperature, labels)
    if top_p.shape != temperature.shape:
        raise ValueError(
            f"top_p must have the temperature's shape {tuple(temperature.shape)}, got {tuple(top_p.shape)}"
        )
    shift_top_p = top_p[:, :-1]
    valid = shift_labels != IGNORE_INDEX  # (B, L-1)
    if not valid.any():
        return _reduce_empty((temperature.sum() + top_p.sum()) * 0.0, reduction)

    def soft_top_p(logits, temperature, top_p, labels):
        return _soft_top_p_nll_rows(logits, temperature, top_p, labels, steepness)

    token_losses, weights = _token_losses(
        soft_top_p,
        shift_logits,
        valid,
        shift_temperature[valid].float(),
        shift_top_p[valid].float(),
        shift_labels[valid],
        chunk_size,
    )  # (N,) each
    if dft_weighting:
        token_losses = token_losses * weights
    return _reduce(token_losses, reduction)


def soft_top_p_nll(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    labels: torch.Tensor,
    steepness: float = STEEPNESS,
    *,
    chunk_size: int | None = LOSS_CHUNK_TOKENS,
) -> torch.Tensor:
    """Per-token ``-log p~[y]`` of the differentiable top-p distribution.

    ``p = softmax(l / max(T, 1e-8))``; sorted descending with cumulative sums ``c``, each token
    keeps ``m = exp(-steepness * relu(c - P))`` of its mass; ``p~ = p * m / (sum(p * m) + 1e-9)``.
    With ``p = [0.5, 0.3, 0.2]`` and ``P = 0.8``: ``c = [0.5, 0.8, 1.0]``, so the first two keep
    all their mass and the last keeps ``exp(-30 * 0.2) = 0.0025`` of it.

    Args:
        logits: ``(N, V)``; temperature, top_p: ``(N,)``; labels: ``(N,)``.
        steepness: slope of the soft mask.
        chunk_size: rows per chunk; ``None`` = all at once.

    Returns:
        ``(N,)`` negative log-likelihoods.

    Example:
        >>> probs = torch.tensor([[0.5, 0.3, 0.2]])
        >>> nll = soft_top_p_nll(probs.log(), torch.ones(1), torch.tensor([0.8]), torch.tensor([2]))
        >>> round(nll.item(), 3)  # -log(0.2 * 0.0025 / (0.8 + 0.2 * 0.0025))
        7.387
    """
    _check_chunk_size(chunk_size)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (tokens, vocabulary), got {tuple(logits.shape)}")

    def soft_top_p(logits, temperature, top_p, labels):
        return _soft_top_p_nll_rows(logits, temperature, top_p, labels, steepness)

    token_losses, _ = _token_losses(
        soft_top_p, logits, None, temperature, top_p, labels, chunk_size, float_rows=False, with_weights=False
    )
    return token_losses


def label_probability(
    logits: torch.Tensor, labels: torch.Tensor, *, chunk_size: int | None = LOSS_CHUNK_TOKENS
) -> torch.Tensor:
    """The DFT weight ``softmax(l)[y]`` at temperature 1, detached, computed in float32.

    Args:
        logits: ``(N, V)``; labels: ``(N,)``.
        chunk_size: rows per chunk; ``None`` = all at once.

    Returns:
        ``(N,)`` probabilities of the labels.

    Example:
        >>> label_probability(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([1, 0]))
        tensor([0.5000, 0.8808])
    """
    _check_chunk_size(chunk_size)
    step = chunk_size or max(logits.shape[0], 1)
    with torch.no_grad():
        blocks = [
            _label_probability_rows(logits[start : start + step].float(), labels[start : start + step])  # (C,)
            for start in range(0, logits.shape[0], step)
        ]
    return torch.cat(blocks) if blocks else logits.new_zeros(0, dtype=torch.float32)


def static_grid_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    steepness: float = STEEPNESS,
) -> torch.Tensor:
    """Soft top-p NLL of every token under every static (T, P) pair, from one sort of the logits.

    Equal (up to rounding) to ``soft_top_p_nll(logits, T, P, labels)`` at constant T and P.

    Args:
        logits: ``(N, V)`` base logits.
        labels: ``(N,)`` next tokens.
        temperatures: ``(G_T,)`` positive temperatures.
        top_ps: ``(G_P,)`` top-p values.
        steepness: slope of the soft mask.

    Returns:
        ``(N, G_T, G_P)`` float64 negative log-likelihoods.

    Example:
        >>> probs = torch.tensor([[0.5, 0.3, 0.2]])
        >>> nll = static_grid_nll(probs.log(), torch.tensor([2]), torch.tensor([1.0]), torch.tensor([0.8]))
        >>> round(nll.item(), 3)  # as soft_top_p_nll: -log(0.2 * 0.0025 / (0.8 + 0.2 * 0.0025))
        7.387
    """
    sorted_logits, sorted_indices = logits.double().sort(dim=-1, descending=True)  # (N, V)
    label_rank = (sorted_indices == labels.unsqueeze(-1)).double().argmax(dim=-1, keepdim=True)  # (N, 1)
    top_ps = top_ps.double().to(logits.device)
    results = []
    for temperature in temperatures.tolist():
        sorted_probs = (sorted_logits / max(temperature, MIN_SOFT_TOP_P_TEMPERATURE)).softmax(dim=-1)  # (N, V)
        cumulative = sorted_probs.cumsum(dim=-1)  # (N, V)
        decayed = sorted_probs * torch.exp(-steepness * cumulative)  # p_j exp(-a c_j)
        tail = decayed.flip(-1).cumsum(-1).flip(-1)  # (N, V): sum over j >= k
        tail = torch.cat([tail, tail.new_zeros(tail.shape[0], 1)], dim=-1)  # (N, V + 1): empty tail at k = V
        first_outside = torch.searchsorted(cumulative, top_ps.expand(cumulative.shape[0], -1).contiguous(), right=True)  # (N, G_P)
        inside = torch.where(
            first_outside > 0, cumulative.gather(-1, (first_outside - 1).clamp(min=0)), torch.zeros_like(top_ps).expand_as(first_outside)
        )  # (N, G_P): sum of p_j with c_j <= P
        kept_mass = inside + torch.exp(steepness * top_ps) * tail.gather(-1, first_outside)  # (N, G_P)
        label_prob = sorted_probs.gather(-1, label_rank)  # (N, 1)
        label_mask = torch.exp(-steepness * torch.relu(cumulative.gather(-1, label_rank) - top_ps))  # (N, G_P)
        kept_label = label_prob * label_mask
        results.append(-torch.log(kept_label / (kept_mass + RENORMALIZE_EPSILON) + RENORMALIZE_EPSILON))
    return torch.stack(results, dim=1)  # (N, G_T, G_P)


def generator_device(generator: torch.Generator | None, fallback: torch.Tensor) -> torch.device:
    """The device random numbers are drawn on: the generator's own, else the tensor's."""
    return generator.device if generator is not None else fallback.device


# ---------------------------------------------------------------------------------------------
# Per-row formulas (any number of rows; each output row depends on its own input row only).


def _temperature_nll(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """``cross_entropy(l / max(T, 0.01), y)`` per row: ``(C, V), (C,), -, (C,) -> (C,)``."""
    scaled_logits = logits / temperature.clamp(min=MIN_LOSS_TEMPERATURE).unsqueeze(-1)  # (C, V)
    return torch.nn.functional.cross_entropy(scaled_logits, labels, reduction="none")


def _soft_top_p_nll_rows(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, labels: torch.Tensor, steepness: float
) -> torch.Tensor:
    """The formula of :func:`soft_top_p_nll` on one block of rows: ``(C, V), (C,), (C,), (C,) -> (C,)``."""
    scaled_logits = logits / temperature.clamp(min=MIN_SOFT_TOP_P_TEMPERATURE).unsqueeze(-1)  # (C, V)
    probs = scaled_logits.softmax(dim=-1)
    sorted_probs, sorted_indices = probs.sort(dim=-1, descending=True)  # (C, V)
    cumulative_probs = sorted_probs.cumsum(dim=-1)
    soft_mask = torch.exp(-steepness * torch.relu(cumulative_probs - top_p.unsqueeze(-1)))  # (C, V), sorted order
    kept_mass = (sorted_probs * soft_mask).sum(dim=-1)  # (C,)
    label_rank = (sorted_indices == labels.unsqueeze(-1)).byte().argmax(dim=-1, keepdim=True)  # (C, 1)
    label_kept = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1) * soft_mask.gather(-1, label_rank).squeeze(-1)
    return -torch.log(label_kept / (kept_mass + RENORMALIZE_EPSILON) + RENORMALIZE_EPSILON)


def _label_probability_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``softmax(l)[y]`` per row: ``(C, V) float32, (C,) -> (C,)``."""
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).exp()


# ---------------------------------------------------------------------------------------------
# Chunking.


def _token_losses(
    token_loss: _TokenLoss,
    logits: torch.Tensor,
    rows: torch.Tensor | None,
    temperature: torch.Tensor,
    top_p: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_size: int | None,
    *,
    float_rows: bool = True,
    with_weights: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token losses and DFT weights of the rows of ``logits`` selected by the mask ``rows``.

    Args:
        token_loss: the per-row formula.
        logits: ``(B, L, V)`` or ``(N_all, V)``.
        rows: boolean mask of ``logits.shape[:-1]`` selecting the ``N`` rows, in row-major order,
            or None for every row of a 2-D ``logits``.
        temperature, top_p, labels: ``(N,)`` values for the selected rows (``top_p`` may be None).
        chunk_size: rows per chunk, ``None`` = one block with ordinary autograd.
        float_rows: cast each block of logits to float32 before ``token_loss``.
        with_weights: also return the labels' base probabilities (else None).

    Returns:
        ``(token_losses, label_probabilities)``, ``(N,)`` each; the first carries the gradient to
        ``temperature`` and ``top_p`` (and to ``logits`` if they require it).
    """
    take = _row_taker(logits, rows, float_rows)
    count = labels.shape[0]
    weigh = _label_probability_rows if with_weights else None
    if chunk_size is None or count == 0:  # the straightforward reference: every row at once
        block = take(slice(0, count))  # (N, V)
        return token_loss(block, temperature, top_p, labels), _block_weights(weigh, block, labels)
    slices = [slice(start, start + chunk_size) for start in range(0, count, chunk_size)]
    if torch.is_grad_enabled() and logits.requires_grad:
        return _checkpointed_token_losses(token_loss, weigh, take, slices, temperature, top_p, labels)
    inputs = [value for value in (temperature, top_p) if value is not None]
    needs_grad = torch.is_grad_enabled() and any(value.requires_grad for value in inputs)
    token_losses, weights = _TokenLossesWithLocalGradients.apply(
        token_loss, weigh, take, slices, needs_grad, labels, *inputs
    )
    return token_losses, weights if with_weights else None


def _block_weights(weigh, block: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """DFT weights of one block, without gradient (None when not asked for)."""
    if weigh is None:
        return None
    with torch.no_grad():
        return weigh(block.detach().float(), labels)


def _row_taker(logits: torch.Tensor, rows: torch.Tensor | None, float_rows: bool) -> Callable[[slice], torch.Tensor]:
    """A function from a slice of the selected rows to their ``(C, V)`` logits (a copy of those C rows only).

    ``rows``: boolean mask of ``logits.shape[:-1]``, or None for every row of a 2-D ``logits`` (then a
    slice is a view, no copy).
    """
    row_indices = None if rows is None else rows.nonzero(as_tuple=True)  # one (N,) tensor per leading dimension

    def take(part: slice) -> torch.Tensor:
        block = logits[part] if row_indices is None else logits[tuple(index[part] for index in row_indices)]  # (C, V)
        return block.float() if float_rows else block

    return take


class _TokenLossesWithLocalGradients(torch.autograd.Function):
    """Per-token losses whose backward needs only ``(N,)`` vectors.

    Token ``i``'s loss depends on ``T_i`` and ``P_i`` and on no other token's, and the logits carry
    no gradient. So while a chunk's rows are in memory, ``d loss_i / d T_i`` (and ``/ d P_i``) is
    the gradient of the chunk's summed loss, computed by autograd right there; the backward then
    scales those saved vectors by the incoming per-token gradient. One forward and one backward
    per chunk, as in the straightforward version, and only one chunk's tensors alive at a time.
    """

    @staticmethod
    def forward(ctx, token_loss, weigh, take, slices, needs_grad, labels, *inputs):
        loss_blocks, weight_blocks, gradient_blocks = [], [], []
        for part in slices:
            block = take(part)  # (C, V)
            weight_blocks.append(_block_weights(weigh, block, labels[part]))
            block_inputs = [value[part].detach().requires_grad_(needs_grad) for value in inputs]  # (C,) each
            with torch.set_grad_enabled(needs_grad):
                block_losses = token_loss(block, *_temperature_and_top_p(block_inputs), labels[part])  # (C,)
                if needs_grad:
                    grads = torch.autograd.grad(block_losses.sum(), block_inputs, allow_unused=True)
                    gradient_blocks.append(
                        [torch.zeros_like(value) if grad is None else grad for grad, value in zip(grads, block_inputs)]
                    )
            loss_blocks.append(block_losses.detach())
            del block, block_losses  # free this chunk before the next one is gathered
        if needs_grad:
            ctx.save_for_backward(*(torch.cat(blocks) for blocks in zip(*gradient_blocks)))  # (N,) per input
        token_losses = torch.cat(loss_blocks)  # (N,)
        weights = torch.cat(weight_blocks) if weigh is not None else token_losses.new_zeros(0)
        ctx.mark_non_differentiable(weights)
        return token_losses, weights

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_token_losses, grad_weights):
        input_grads = [grad_token_losses * gradient for gradient in ctx.saved_tensors]
        return (None, None, None, None, None, None, *input_grads)


def _temperature_and_top_p(block_inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(temperature, top_p)`` from the one or two per-token inputs."""
    return (block_inputs[0], block_inputs[1] if len(block_inputs) > 1 else None)


def _checkpointed_token_losses(token_loss, weigh, take, slices, temperature, top_p, labels):
    """Fallback when the logits themselves need a gradient: each chunk under activation checkpointing
    (only the chunk's inputs are saved; its intermediates are recomputed in the backward)."""

    def block_losses(part: slice, block_temperature, block_top_p):
        block = take(part)  # (C, V)
        return token_loss(block, block_temperature, block_top_p, labels[part]), _block_weights(
            weigh, block, labels[part]
        )

    pieces = [
        checkpoint(block_losses, part, temperature[part], None if top_p is None else top_p[part], use_reentrant=False)
        for part in slices
    ]
    weights = torch.cat([weights for _, weights in pieces]) if weigh is not None else None
    return torch.cat([losses for losses, _ in pieces]), weights


def _easy_tokens(shift_logits: torch.Tensor, shift_labels: torch.Tensor, valid: torch.Tensor, chunk_size: int | None):
    """``(B, L-1)`` bool: labelled positions where the base model's argmax is the label (chunked argmax)."""
    easy = torch.zeros_like(valid)
    valid_labels = shift_labels[valid]  # (N,)
    take = _row_taker(shift_logits, valid, float_rows=False)
    step = chunk_size or max(valid_labels.shape[0], 1)
    easy_blocks = [
        take(slice(start, start + step)).argmax(dim=-1) == valid_labels[start : start + step]  # (C,)
        for start in range(0, valid_labels.shape[0], step)
    ]
    if easy_blocks:
        easy[valid] = torch.cat(easy_blocks)
    return easy


# ---------------------------------------------------------------------------------------------
# Arguments and reductions.


def _reduce(token_losses: torch.Tensor, reduction: str) -> torch.Tensor | LossSum:
    if reduction == "none":
        return token_losses
    if reduction == "sum":
        count = torch.tensor(token_losses.shape[0], dtype=torch.int64, device=token_losses.device)
        return LossSum(token_losses.sum(), count)
    return token_losses.mean()


def _reduce_empty(zero: torch.Tensor, reduction: str) -> torch.Tensor | LossSum:
    if reduction == "none":
        return zero.reshape(1)[:0]  # (0,) still attached to the graph
    if reduction == "sum":
        return LossSum(zero, torch.zeros((), dtype=torch.int64, device=zero.device))
    return zero


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"chunk_size must be a positive number of tokens per chunk, or None for all at once, got {chunk_size!r}"
        )


def _shift(
    logits: torch.Tensor, temperature: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (batch, length, vocabulary), got {tuple(logits.shape)}")
    if temperature.shape != labels.shape or labels.shape != logits.shape[:2]:
        raise ValueError(
            "temperature and labels must have shape (batch, length) matching the logits "
            f"{tuple(logits.shape[:2])}, got {tuple(temperature.shape)} and {tuple(labels.shape)}"
        )
    return logits[:, :-1], temperature[:, :-1], labels[:, 1:]
