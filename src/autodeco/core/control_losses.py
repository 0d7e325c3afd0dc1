"""Decoding-control losses (PAPER.md section 7): answers' mean predictions, ordered by a hinge.

:func:`completion_means` averages a head's predictions over each answer's completion tokens, and
:func:`ranking_loss` is the hinge that orders the mean of an answer whose prompt carries a command
against the same answer's mean without it (``A`` pairs). Pure tensor code: imports torch only.
"""

from __future__ import annotations

import torch

from autodeco.core.defaults import CONTROL_MARGIN, IGNORE_INDEX


def completion_means(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sequence's mean of ``values`` over the positions that predict a labelled token.

    These are the positions at which the heads chose T and P while the completion was generated
    (the last prompt position up to the one that predicts EOS), so the mean is the teacher-forced
    counterpart of the mean over an answer's generated tokens.

    Args:
        values: ``(B, L)`` per-position predictions (T or P).
        labels: ``(B, L)`` input token ids, -100 where not trained.

    Returns:
        ``(B,)`` means; 0 for a sequence with no labelled token.

    Example:
        >>> values = torch.tensor([[0.9, 0.5, 0.7, 0.1]])
        >>> completion_means(values, torch.tensor([[-100, -100, 5, 2]]))  # positions 1 and 2 predict tokens 2 and 3
        tensor([0.6000])
    """
    if values.shape != labels.shape or values.dim() != 2:
        raise ValueError(
            f"values and labels must both have shape (batch, length), got {tuple(values.shape)} and {tuple(labels.shape)}"
        )
    predicting = (labels[:, 1:] != IGNORE_INDEX).to(values.dtype)  # (B, L-1)
    counts = predicting.sum(dim=-1)  # (B,)
    return (values[:, :-1] * predicting).sum(dim=-1) / counts.clamp(min=1)


def ranking_loss(
    command_means: torch.Tensor,
    plain_means: torch.Tensor,
    directions: torch.Tensor,
    *,
    margin: float | torch.Tensor = CONTROL_MARGIN,
    detach_plain: bool = True,
) -> torch.Tensor:
    """Per-pair hinge ``relu(margin - direction * (command - plain))``.

    For a low-diversity command (``direction = -1``) that is ``relu(command - plain + margin)``: zero
    once the commanded mean is at least ``margin`` below the plain one. For a high-diversity command
    (``direction = +1``), ``relu(plain - command + margin)``: zero once it is ``margin`` above.

    Args:
        command_means: ``(A,)`` mean T (or P) of each answer under the prompt with the command.
        plain_means: ``(A,)`` the same answers' means without the command.
        directions: ``(A,)`` -1 (low) or +1 (high).
        margin: the gap to reach (>= 0): one for all pairs, or ``(A,)``, one per pair.
        detach_plain: stop the gradient at the plain means, so the loss moves only the commanded
            predictions and the plain ones stay with the paper's losses.

    Returns:
        ``(A,)`` losses.

    Example:
        >>> ranking_loss(torch.tensor([0.4, 0.75]), torch.tensor([0.7, 0.7]), torch.tensor([-1.0, 1.0]), margin=0.25)
        tensor([0.0000, 0.2000])
    """
    if not bool((torch.as_tensor(margin) >= 0).all()):
        raise ValueError(f"margin must be >= 0, got {margin}")
    if command_means.shape != plain_means.shape or command_means.shape != directions.shape:
        raise ValueError(
            "command_means, plain_means and directions must have the same shape (pairs,), got "
            f"{tuple(command_means.shape)}, {tuple(plain_means.shape)} and {tuple(directions.shape)}"
        )
    if not bool(((directions == 1) | (directions == -1)).all()):
        raise ValueError(f"directions must be -1 (low) or +1 (high), got {directions.tolist()}")
    plain = plain_means.detach() if detach_plain else plain_means
    return torch.relu(margin - directions.to(command_means.dtype) * (command_means - plain))
