"""Reward training of the heads: group advantages, the advantage-weighted NLL, the drift penalty, greedy-like tokens.

Pure tensor code (torch only); the recipe around it is :mod:`autodeco.training.reward`.

The heads' policy at answer token ``t`` is the distribution they sample from: ``softmax(l_t / T_t)`` restricted
to the nucleus of ``P_t``. A policy-gradient step (REINFORCE with a group baseline, as GRPO) minimises

    loss = - sum_i A_i * sum_t log pi(y_{i,t}) / (number of answer tokens)

over the K answers ``i`` of each prompt, with ``A_i`` the answer's reward minus its group's mean
(:func:`group_advantages`). Only the heads move: ``log pi`` depends on the parameters through ``T_t`` and
``P_t``. The hard nucleus has no gradient in ``P``, so ``-log pi(y)`` is taken as the paper's soft top-p NLL
(:func:`autodeco.core.losses.soft_top_p_nll`, the per-token quantity of the top-p loss, without DFT weighting):
the sampler uses the hard nucleus, the gradient the soft one (steepness 30), a biased but low-variance
surrogate. Inside the hard nucleus the soft mask is 1 except at the boundary token (the one whose
cumulative probability crosses ``P``), which keeps ``exp(-30 * (c - P))`` of its mass; so an answer that
took such a token pulls ``P`` up when it was rewarded and down when it was not, more strongly than the
hard sampler's own gradient would (which is 0 almost everywhere).

Shapes: ``G`` groups (prompts), ``K`` answers per prompt, ``N`` answer tokens, ``V`` vocabulary.
"""

from __future__ import annotations

import torch

ADVANTAGE_EPSILON = 1e-4
"""Added to a group's reward standard deviation before dividing by it (TRL's GRPO uses the same 1e-4)."""

GREEDY_TEMPERATURE = 0.05
"""A token sampled below this temperature counts as greedy-like whatever its nucleus."""

FEATURE_CHUNK_ROWS = 256
"""Rows per chunk in :func:`greedy_like` (one ``(C, V)`` float32 tensor at a time)."""


def group_advantages(
    rewards: torch.Tensor, *, normalize: bool = True, epsilon: float = ADVANTAGE_EPSILON
) -> torch.Tensor:
    """Each answer's reward minus its group's mean, optionally divided by the group's standard deviation.

    A group whose rewards are all equal (every answer right, or every one wrong) gets advantages 0 (also when
    normalised, whatever ``epsilon``) and so gives no gradient. The standard deviation is the unbiased one
    (``torch.std``), as TRL's GRPO computes it.

    Args:
        rewards: ``(G, K)`` rewards of the K answers of each of G prompts (K >= 2).
        normalize: divide by ``std + epsilon`` (GRPO); False keeps the plain difference (Dr. GRPO).
        epsilon: added to the standard deviation.

    Returns:
        ``(G, K)`` float32 advantages.

    Example:
        >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), normalize=False)
        tensor([[ 0.5000, -0.5000, -0.5000,  0.5000],
                [ 0.0000,  0.0000,  0.0000,  0.0000]])
        >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), epsilon=0.0)  # std of [1, 0, 0, 1] = 1/sqrt(3)
        tensor([[ 0.8660, -0.8660, -0.8660,  0.8660]])
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must have shape (groups, answers) with at least 2 answers, got {tuple(rewards.shape)}"
        )
    rewards = rewards.float()
    advantages = rewards - rewards.mean(dim=1, keepdim=True)  # (G, K)
    if normalize:
        spread = rewards.std(dim=1, keepdim=True)  # (G, 1)
        advantages = torch.where(spread > 0, advantages / (spread + epsilon), torch.zeros_like(advantages))
    return advantages


def groups_with_signal(rewards: torch.Tensor) -> torch.Tensor:
    """``(G,)`` bool: groups whose rewards differ (the only ones that give a gradient).

    Example:
        >>> groups_with_signal(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        tensor([ True, False])
    """
    return (rewards != rewards[:, :1]).any(dim=1)


def advantage_weighted_nll(token_nll: torch.Tensor, token_advantages: torch.Tensor) -> torch.Tensor:
    """``sum_t A_t * (-log pi(y_t))``: the policy-gradient loss's numerator (divide by the token count).

    Its gradient lowers the NLL (raises the probability) of the tokens of answers with a positive advantage
    and raises it for those with a negative one.

    Args:
        token_nll: ``(N,)`` ``-log pi(y_t)`` with gradient to the heads.
        token_advantages: ``(N,)`` the advantage of the answer each token belongs to (no gradient).

    Example:
        >>> advantage_weighted_nll(torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.5, 0.5, -1.0]))
        tensor(1.)
    """
    if token_nll.shape != token_advantages.shape:
        raise ValueError(f"token_nll and token_advantages must have the same shape, got {tuple(token_nll.shape)} "
                         f"and {tuple(token_advantages.shape)}")
    return (token_advantages.detach().to(token_nll.dtype) * token_nll).sum()


def head_drift(
    temperature: torch.Tensor, top_p: torch.Tensor, start_temperature: torch.Tensor, start_top_p: torch.Tensor
) -> torch.Tensor:
    """Per-token squared distance of the heads' predictions from the starting heads' on the same tokens.

    ``(log T - log T0)^2 + (P - P0)^2``: T on the log scale (a ratio: halving and doubling T cost the same),
    P as it is (both live in (0, 1)). A cheap stand-in for a KL between the two sampling distributions, which
    would need the vocabulary-sized distributions of both heads at every token.

    Args:
        temperature, top_p: ``(N,)`` the trained heads' predictions (with gradient).
        start_temperature, start_top_p: ``(N,)`` the starting heads' predictions (no gradient).

    Returns:
        ``(N,)`` penalties.

    Example:
        >>> head_drift(torch.tensor([2.0]), torch.tensor([0.9]), torch.tensor([1.0]), torch.tensor([0.5]))
        tensor([0.6405])
    """
    log_ratio = torch.log(temperature) - torch.log(start_temperature.detach())  # (N,)
    return log_ratio.square() + (top_p - start_top_p.detach()).square()


@torch.no_grad()
def greedy_like(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, *,
    greedy_temperature: float = GREEDY_TEMPERATURE, chunk_rows: int = FEATURE_CHUNK_ROWS,
) -> torch.Tensor:
    """``(N,)`` bool: tokens decoded as if greedily: T below ``greedy_temperature``, or a nucleus of one token.

    The hard nucleus of ``P`` (the smallest set of top tokens whose probability reaches ``P``) holds the top
    token alone exactly when that token's probability under ``softmax(l / T)`` is at least ``P``. That
    probability is ``1 / sum_j exp((l_j - l_max) / T)``.

    Args:
        logits: ``(N, V)`` base logits; temperature, top_p: ``(N,)``.
        greedy_temperature: below this T a token counts as greedy-like.
        chunk_rows: rows per chunk.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
        >>> greedy_like(logits, torch.tensor([1.0, 1.0, 0.01]), torch.tensor([0.8, 0.9, 1.0]))  # p_max = 0.881
        tensor([ True, False,  True])
    """
    flags = []
    for start in range(0, logits.shape[0], chunk_rows):
        block = logits[start : start + chunk_rows].float()  # (C, V)
        scale = temperature[start : start + chunk_rows].float().clamp(min=1e-8).unsqueeze(-1)  # (C, 1)
        shifted = (block - block.max(dim=-1, keepdim=True).values) / scale  # (C, V), max 0
        top_probability = torch.exp(-torch.logsumexp(shifted, dim=-1))  # (C,)
        one_token = top_probability >= top_p[start : start + chunk_rows].float()  # (C,)
        flags.append(one_token | (scale.squeeze(-1) < greedy_temperature))
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool, device=logits.device)
