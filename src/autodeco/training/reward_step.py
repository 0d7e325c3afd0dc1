"""The reward objective's loss step: scored answers -> teacher-forced micro-batches -> gradient sum and statistics.

For the answers of one step (K per prompt, each with its advantage ``A_i``,
:func:`autodeco.core.policy_gradient.group_advantages`), the prompt and answer tokens are run through the frozen
base and the heads (teacher forcing), and each answer token's ``-log pi(y_t)`` is the soft top-p NLL under the
heads' T and P (:func:`autodeco.core.losses.top_p_loss` with ``reduction="none"`` and no DFT weighting: the
per-token quantity of the paper's top-p loss). The step's loss is

    ( sum_i A_i * sum_t -log pi(y_{i,t})  +  kl_weight * sum_{i,t} drift_{i,t} ) / (answer tokens of the step)

with ``drift`` the squared distance of the predictions from the starting heads'
(:func:`autodeco.core.policy_gradient.head_drift`). Each micro-batch returns the gradient of its *sum* (float64)
and its statistics as sums, so processes can add theirs up and the step divides once by the global token count.

Shapes: ``B`` rows of a micro-batch, ``L`` padded length, ``N`` answer tokens, ``P`` trained parameters.
"""

from __future__ import annotations

import torch

from autodeco.core import losses
from autodeco.core.defaults import IGNORE_INDEX
from autodeco.core.policy_gradient import advantage_weighted_nll, greedy_like, head_drift
from autodeco.data.tokens import TrainingExample, collate

STATISTICS = (
    "answer_tokens", "policy_loss_sum", "drift_sum", "temperature_sum", "temperature_square_sum", "top_p_sum",
    "greedy_like_tokens",
)
"""The per-step sums a micro-batch adds (reduced across processes with the gradient), in this order."""


def step_gradient(
    model, start_heads, parameters: list[torch.Tensor], examples: list[TrainingExample], advantages: torch.Tensor, *,
    steepness: float, kl_weight: float, batch_size: int, pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed gradient and statistics of this process's answers, ``forward_batch_size`` rows at a time.

    Args:
        model: the ``AutoDecoForCausalLM`` being trained.
        start_heads: the starting heads (an ``AutoDecoForCausalLM`` on the same base) for the drift penalty, or
            None when ``kl_weight`` is 0.
        parameters: the trained heads' parameters.
        examples: one teacher-forcing row per answer (:func:`autodeco.training.on_policy.group_examples`).
        advantages: ``(len(examples),)`` each answer's advantage.
        steepness: slope of the soft top-p mask.
        kl_weight: weight of the drift penalty.
        batch_size: rows per forward pass.
        pad_id: padding token id.

    Returns:
        ``(gradient (P,) float64, statistics (len(STATISTICS),) float64)``: sums, not yet divided by the tokens.
    """
    device = parameters[0].device
    gradient = torch.zeros(sum(parameter.numel() for parameter in parameters), dtype=torch.float64, device=device)
    statistics = torch.zeros(len(STATISTICS), dtype=torch.float64, device=device)
    for start in range(0, len(examples), batch_size):
        rows = collate(examples[start : start + batch_size], pad_id)  # (B, L) each
        batch = {name: tensor.to(device) for name, tensor in rows.items()}
        total, values = micro_batch_loss(
            model, start_heads, batch, advantages[start : start + batch_size].to(device), steepness=steepness,
            kl_weight=kl_weight,
        )
        gradient += _flat_gradient(total, parameters)
        statistics += values
    return gradient, statistics


def micro_batch_loss(
    model, start_heads, batch: dict[str, torch.Tensor], advantages: torch.Tensor, *, steepness: float, kl_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch's loss *sum* (with gradient to the heads) and its statistics.

    Args:
        batch: ``input_ids``, ``attention_mask``, ``labels`` ``(B, L)`` (labels -100 on the prompt and padding).
        advantages: ``(B,)`` each row's advantage.

    Returns:
        ``(loss_sum, statistics (len(STATISTICS),) float64)``.
    """
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    labels = batch["labels"]
    token_nll = losses.top_p_loss(
        output.logits, output.temperature, output.top_p, labels, steepness=steepness, dft_weighting=False,
        reduction="none",
    )  # (N,) in row-major order of the answer positions
    predicting = labels[:, 1:] != IGNORE_INDEX  # (B, L-1): positions that predict an answer token
    rows = predicting.nonzero()[:, 0]  # (N,) the row of each answer token
    temperature = output.temperature[:, :-1][predicting]  # (N,)
    top_p = output.top_p[:, :-1][predicting]  # (N,)
    policy = advantage_weighted_nll(token_nll, advantages[rows])
    drift = torch.zeros((), device=policy.device)
    if kl_weight > 0:
        with torch.no_grad():
            start_temperature, start_top_p = start_heads.predict(output.head_input, output.logits)  # (B, L) each
        drift = head_drift(
            temperature.float(), top_p.float(), start_temperature[:, :-1][predicting].float(),
            start_top_p[:, :-1][predicting].float(),
        ).sum()
    greedy = torch.cat([
        greedy_like(output.logits[row, :-1][predicting[row]], output.temperature[row, :-1][predicting[row]].detach(),
                    output.top_p[row, :-1][predicting[row]].detach())
        for row in range(labels.shape[0])
    ])  # (N,)
    values = temperature.detach().double()
    statistics = torch.stack([
        torch.tensor(float(rows.numel()), dtype=torch.float64, device=values.device),
        policy.detach().double(),
        drift.detach().double(),
        values.sum(),
        values.square().sum(),
        top_p.detach().double().sum(),
        greedy.double().sum(),
    ])
    return policy + kl_weight * drift, statistics


def _flat_gradient(loss: torch.Tensor, parameters: list[torch.Tensor]) -> torch.Tensor:
    """``(P,)`` float64 gradient of ``loss`` with respect to ``parameters`` (zeros without a graph)."""
    if not loss.requires_grad:
        return torch.zeros(sum(parameter.numel() for parameter in parameters), dtype=torch.float64, device=loss.device)
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat([
        (gradient if gradient is not None else torch.zeros_like(parameter)).reshape(-1).double()
        for gradient, parameter in zip(gradients, parameters)
    ])
