"""The teacher-forced pass: known answers fed to the model, the heads' T and P read where each token was chosen.

Held-out evaluation (:mod:`autodeco.evaluation.heldout`), the diagnosis
(:mod:`autodeco.evaluation.diagnose`) and control-eval's same-answer measurement
(:mod:`autodeco.evaluation.control`) all read the model this way, through :func:`completion_predictions`.

"Completion tokens" are the positions whose *next* token is a completion token (or the final
EOS): exactly the positions at which the heads chose T and P while the completion was sampled.

Shapes: ``B`` batch, ``L`` padded length, ``K`` positions kept, ``N`` completion tokens, ``V`` vocabulary.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator

import torch

from autodeco.core.defaults import IGNORE_INDEX
from autodeco.data.tokens import TrainingExample, collate, fit_to_length, pad_token_id, tokenize_trajectory

HELDOUT_BATCH_SIZE = 4
"""Sequences per teacher-forced forward pass."""


def as_examples(tokenizer, examples: Iterable, max_length: int | None = None) -> list[TrainingExample]:
    """Tokenize trajectories (objects or dicts with ``prompt`` and ``completion``); pass examples through.

    With ``max_length``, completions are truncated to fit; trajectories whose prompt alone does
    not fit are left out.

    Raises:
        ValueError: nothing is left to evaluate (no trajectory, or none fits ``max_length``).
    """
    tokenized = []
    for item in examples:
        if isinstance(item, TrainingExample):
            tokenized.append(item)
            continue
        prompt = item["prompt"] if isinstance(item, dict) else item.prompt
        completion = item["completion"] if isinstance(item, dict) else item.completion
        prompt_ids, completion_ids = tokenize_trajectory(tokenizer, prompt, completion)
        fitted = fit_to_length(prompt_ids, completion_ids, max_length or len(prompt_ids) + len(completion_ids))
        if fitted is not None:
            tokenized.append(TrainingExample(torch.tensor(fitted[0]), torch.tensor(fitted[1])))
    if not tokenized:
        raise ValueError("no held-out trajectory to evaluate (the list is empty, or nothing fits max_length)")
    return tokenized


@torch.no_grad()
def completion_predictions(
    model,
    tokenizer,
    examples: Iterable,
    batch_size: int = HELDOUT_BATCH_SIZE,
    max_length: int | None = None,
    *,
    with_logits: bool = True,
    from_first_label: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Teacher-forced forward passes, yielding each batch's completion tokens.

    Args:
        model: an ``AutoDecoForCausalLM``.
        tokenizer: its tokenizer (with the chat template).
        examples: trajectories (``prompt``/``completion``) or tokenized :class:`TrainingExample` s.
        batch_size: sequences per forward pass.
        max_length: truncate longer trajectories (None: no limit).
        with_logits: yield the base logits too (False spares an ``(N, V)`` copy when only T and P are read).
        from_first_label: compute logits and heads only from the last position before the batch's first
            label on (the model's ``logits_to_keep``, where its base model takes it): the earlier positions
            predict nothing that is measured.

    Yields:
        dicts with ``labels`` ``(N,)``, ``temperature`` ``(N,)`` and ``top_p`` ``(N,)`` at the positions that
        predict a completion token, ``example`` ``(N,)`` (the index in ``examples`` of the trajectory each
        token belongs to) and, with ``with_logits``, ``logits`` ``(N, V)`` float32.

    Example:
        >>> next(completion_predictions(model, tokenizer, [{"prompt": "1+1?", "completion": "2"}]))["labels"]  # doctest: +SKIP
        tensor([17, 2])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenized = as_examples(tokenizer, examples, max_length)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(tokenized), batch_size):
            batch = collate(tokenized[start : start + batch_size], pad_token_id(tokenizer))
            batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
            keep = batch["labels"].shape[1]  # K = L: every position
            extra = {}
            if from_first_label:
                keep = _positions_to_keep(batch["labels"])
                extra = _keep_argument(model, keep)
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
            next_labels = batch["labels"][:, batch["labels"].shape[1] - keep + 1 :]  # (B, K-1)
            predicting = next_labels != IGNORE_INDEX
            example_index = torch.arange(start, start + len(next_labels), device=next_labels.device)  # (B,)
            tokens = {
                "labels": next_labels[predicting],
                "temperature": output.temperature[:, -keep:-1][predicting].float(),
                "top_p": output.top_p[:, -keep:-1][predicting].float(),
                "example": example_index[:, None].expand_as(next_labels)[predicting],
            }
            if with_logits:
                tokens = {"logits": output.logits[:, -keep:-1][predicting].float(), **tokens}  # (N, V)
            yield tokens
    finally:
        model.train(was_training)


def _positions_to_keep(labels: torch.Tensor) -> int:
    """``K``: the positions from the one before the batch's first label to the end.

    Example:
        >>> _positions_to_keep(torch.tensor([[-100, -100, 7, 2], [-100, -100, 9, -100]]))
        3
    """
    labelled = labels != IGNORE_INDEX  # (B, L)
    if not labelled.any():
        return labels.shape[1]
    first = int(labelled.any(dim=0).int().argmax())  # the first column holding a label
    return labels.shape[1] - first + 1


def _keep_argument(model, keep: int) -> dict[str, int]:
    """``{"logits_to_keep": keep}`` where the base model takes it, else nothing (it then computes every position)."""
    if "logits_to_keep" not in inspect.signature(model.llm.forward).parameters:
        return {}
    return {"logits_to_keep": keep}


def teacher_forced_means(
    model,
    tokenizer,
    examples: Iterable,
    batch_size: int = HELDOUT_BATCH_SIZE,
    max_length: int | None = None,
    *,
    from_first_label: bool = False,
) -> tuple[float, float, int]:
    """Mean predicted T and P over the completion tokens of ``examples``: the MeanShift operating point.

    Args:
        model: an ``AutoDecoForCausalLM``.
        tokenizer: its tokenizer (with the chat template).
        examples: trajectories (``prompt``/``completion``) or tokenized :class:`TrainingExample` s.
        batch_size: sequences per forward pass.
        max_length: truncate longer trajectories (None: no limit).
        from_first_label: see :func:`completion_predictions`.

    Returns:
        ``(mean_temperature, mean_top_p, num_tokens)``, summed in float64.

    Raises:
        ValueError: the examples hold no completion token.

    Example:
        >>> teacher_forced_means(model, tokenizer, [{"prompt": "1+1?", "completion": "2"}])  # doctest: +SKIP
        (0.81, 0.9, 2)
    """
    temperature_sum = top_p_sum = 0.0
    count = 0
    batches = completion_predictions(
        model, tokenizer, examples, batch_size, max_length, with_logits=False, from_first_label=from_first_label
    )
    for tokens in batches:
        temperature_sum += float(tokens["temperature"].double().sum())
        top_p_sum += float(tokens["top_p"].double().sum())
        count += tokens["temperature"].numel()
    if count == 0:
        raise ValueError("the held-out trajectories hold no completion token")
    return temperature_sum / count, top_p_sum / count, count
