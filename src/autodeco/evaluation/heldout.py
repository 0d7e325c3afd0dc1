"""Held-out evaluation of heads, teacher-forced on verified trajectories.

Answers three questions on completion tokens the heads were not trained on:

1. Is the heads' soft top-p NLL (the training objective) lower than fresh heads' and lower than
   the best *static* (T, P) pair found by grid search on the same held-out tokens?
2. Where do the predictions sit on average? The mean predicted T and P are the **MeanShift**
   operating point of PAPER.md section 8 (:func:`teacher_forced_means`).
3. Does predicted T follow the base model's uncertainty? Pearson and Spearman correlation of
   the predicted T with the base model's entropy at T = 1, token by token.

"Completion tokens" are the positions whose *next* token is a completion token (or the final
EOS): exactly the positions at which the heads chose T and P while the completion was sampled.

The static grid reuses each batch's base logits for every (T, P)
(:func:`autodeco.core.losses.static_grid_nll`); entropy and correlations come from
:mod:`autodeco.core.statistics`.

Shapes: ``N`` tokens, ``V`` vocabulary, ``G_T`` / ``G_P`` grid sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from autodeco.core import losses
from autodeco.core.losses import static_grid_nll
from autodeco.core.statistics import entropy, pearson, spearman
from autodeco.training.data import TrainingExample, collate, fit_to_length, pad_token_id, tokenize_trajectory

GRID_TEMPERATURES = tuple(round(0.1 * step, 1) for step in range(1, 16))
"""Static temperatures searched: 0.1, 0.2, ..., 1.5."""

GRID_TOP_PS = tuple(round(0.1 * step, 1) for step in range(1, 11))
"""Static top-p values searched: 0.1, 0.2, ..., 1.0."""

GRID_CHUNK_ROWS = 64
"""Tokens per chunk in the static-grid computation (float64 ``(64, V)`` blocks)."""

HELDOUT_BATCH_SIZE = 4
"""Sequences per teacher-forced forward pass."""


# ---------------------------------------------------------------------------------- teacher forcing


def as_examples(tokenizer, examples: Iterable, max_length: int | None = None) -> list[TrainingExample]:
    """Tokenize trajectories (objects or dicts with ``prompt`` and ``completion``); pass examples through.

    With ``max_length``, completions are truncated to fit; trajectories whose prompt alone does
    not fit are left out.
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
    model, tokenizer, examples: Iterable, batch_size: int = HELDOUT_BATCH_SIZE, max_length: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Teacher-forced forward passes, yielding each batch's completion tokens.

    Yields:
        dicts with ``logits`` ``(N, V)`` float32, ``labels`` ``(N,)``, ``temperature`` ``(N,)``
        and ``top_p`` ``(N,)`` at the positions that predict a completion token, and ``example``
        ``(N,)``: the index in ``examples`` of the trajectory each token belongs to.
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
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            next_labels = batch["labels"][:, 1:]  # (B, L-1)
            predicting = next_labels != losses.IGNORE_INDEX
            example_index = torch.arange(start, start + len(next_labels), device=next_labels.device)  # (B,)
            yield {
                "logits": output.logits[:, :-1][predicting].float(),  # (N, V)
                "labels": next_labels[predicting],
                "temperature": output.temperature[:, :-1][predicting].float(),
                "top_p": output.top_p[:, :-1][predicting].float(),
                "example": example_index[:, None].expand_as(next_labels)[predicting],
            }
    finally:
        model.train(was_training)


def teacher_forced_means(
    model, tokenizer, examples: Iterable, batch_size: int = HELDOUT_BATCH_SIZE, max_length: int | None = None
) -> tuple[float, float, int]:
    """Mean predicted T and P over the completion tokens of ``examples``: the MeanShift operating point.

    Args:
        model: an ``AutoDecoForCausalLM``.
        tokenizer: its tokenizer (with the chat template).
        examples: trajectories (``prompt``/``completion``) or tokenized :class:`TrainingExample` s.
        batch_size: sequences per forward pass.
        max_length: truncate longer trajectories (None: no limit).

    Returns:
        ``(mean_temperature, mean_top_p, num_tokens)``.

    Example:
        >>> teacher_forced_means(model, tokenizer, [{"prompt": "1+1?", "completion": "2"}])  # doctest: +SKIP
        (0.81, 0.9, 2)
    """
    temperature_sum = top_p_sum = 0.0
    count = 0
    for tokens in completion_predictions(model, tokenizer, examples, batch_size, max_length):
        temperature_sum += float(tokens["temperature"].double().sum())
        top_p_sum += float(tokens["top_p"].double().sum())
        count += tokens["temperature"].numel()
    if count == 0:
        raise ValueError("the held-out trajectories hold no completion token")
    return temperature_sum / count, top_p_sum / count, count


def heldout_report(
    model,
    tokenizer,
    examples: Iterable,
    *,
    grid_temperatures: Iterable[float] = GRID_TEMPERATURES,
    grid_top_ps: Iterable[float] = GRID_TOP_PS,
    batch_size: int = HELDOUT_BATCH_SIZE,
    steepness: float = losses.STEEPNESS,
    max_length: int | None = None,
) -> dict:
    """Teacher-forced held-out metrics of the heads and of every static (T, P) on a grid.

    Args:
        model: an ``AutoDecoForCausalLM`` (trained or fresh heads).
        tokenizer: its tokenizer.
        examples: held-out trajectories (``prompt``/``completion``) or :class:`TrainingExample` s.
        grid_temperatures: static temperatures to search (empty: skip the grid).
        grid_top_ps: static top-p values to search.
        batch_size: sequences per forward pass.
        steepness: slope of the soft top-p mask (the training value).
        max_length: truncate longer trajectories (None: no limit).

    Returns:
        A JSON-ready dict: ``num_tokens``; ``heads`` with ``nll_dft`` (the DFT-weighted soft
        top-p NLL, i.e. the top-p training objective, no easy-token dropping), ``nll`` (unweighted)
        and mean/std of predicted T and P; ``static_grid`` (``temperatures``, ``top_ps`` and
        ``nll_dft`` / ``nll`` tables indexed ``[T][P]``); ``best_static`` per metric
        (``temperature``, ``top_p``, ``value``); ``temperature_entropy_correlation``
        (``pearson``, ``spearman``).

    Example:
        >>> report = heldout_report(model, tokenizer, trajectories)  # doctest: +SKIP
        >>> report["heads"]["nll_dft"] < report["best_static"]["nll_dft"]["value"]  # doctest: +SKIP
        True
    """
    temperatures = torch.tensor(list(grid_temperatures), dtype=torch.float64)
    top_ps = torch.tensor(list(grid_top_ps), dtype=torch.float64)
    if temperatures.numel() and (temperatures.min() <= 0 or top_ps.numel() == 0 or top_ps.min() <= 0 or top_ps.max() > 1):
        raise ValueError(
            f"grid temperatures must be > 0 and top-p values in (0, 1], got {temperatures.tolist()} and {top_ps.tolist()}"
        )
    sums = {"nll": 0.0, "nll_dft": 0.0}
    grid = {"nll": torch.zeros(len(temperatures), len(top_ps), dtype=torch.float64),
            "nll_dft": torch.zeros(len(temperatures), len(top_ps), dtype=torch.float64)}
    predicted_temperatures, predicted_top_ps, entropies = [], [], []
    tokenized = as_examples(tokenizer, examples, max_length)
    for tokens in completion_predictions(model, tokenizer, tokenized, batch_size):
        logits, labels = tokens["logits"], tokens["labels"]
        nll = losses.soft_top_p_nll(logits, tokens["temperature"], tokens["top_p"], labels, steepness).double()  # (N,)
        weights = losses.label_probability(logits, labels).double()  # (N,)
        sums["nll"] += float(nll.sum())
        sums["nll_dft"] += float((nll * weights).sum())
        if temperatures.numel():
            for start in range(0, logits.shape[0], GRID_CHUNK_ROWS):
                block = static_grid_nll(
                    logits[start : start + GRID_CHUNK_ROWS], labels[start : start + GRID_CHUNK_ROWS],
                    temperatures, top_ps, steepness,
                ).cpu()  # (C, G_T, G_P)
                grid["nll"] += block.sum(dim=0)
                grid["nll_dft"] += (block * weights[start : start + GRID_CHUNK_ROWS].cpu()[:, None, None]).sum(dim=0)
        predicted_temperatures.append(tokens["temperature"].cpu())
        predicted_top_ps.append(tokens["top_p"].cpu())
        entropies.append(entropy(logits).cpu())
    temperature_values, top_p_values = torch.cat(predicted_temperatures), torch.cat(predicted_top_ps)
    count = temperature_values.numel()
    if count == 0:
        raise ValueError("the held-out trajectories hold no completion token")
    report = {
        "num_examples": len(tokenized),
        "num_tokens": count,
        "heads": {
            "nll_dft": sums["nll_dft"] / count,
            "nll": sums["nll"] / count,
            "temperature_mean": float(temperature_values.double().mean()),
            "temperature_std": float(temperature_values.double().std()) if count > 1 else 0.0,
            "top_p_mean": float(top_p_values.double().mean()),
            "top_p_std": float(top_p_values.double().std()) if count > 1 else 0.0,
        },
        "temperature_entropy_correlation": {
            "pearson": pearson(temperature_values, torch.cat(entropies)),
            "spearman": spearman(temperature_values, torch.cat(entropies)),
        },
    }
    if temperatures.numel():
        report["static_grid"] = {
            "temperatures": temperatures.tolist(),
            "top_ps": top_ps.tolist(),
            **{metric: (table / count).tolist() for metric, table in grid.items()},
        }
        report["best_static"] = {metric: _best_pair(table / count, temperatures, top_ps) for metric, table in grid.items()}
    return report


def _best_pair(table: torch.Tensor, temperatures: torch.Tensor, top_ps: torch.Tensor) -> dict[str, float]:
    flat_index = int(table.argmin())
    row, column = divmod(flat_index, table.shape[1])
    return {"temperature": float(temperatures[row]), "top_p": float(top_ps[column]), "value": float(table[row, column])}
