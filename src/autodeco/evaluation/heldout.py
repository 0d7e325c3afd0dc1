"""Held-out evaluation of heads, teacher-forced on verified trajectories.

Answers three questions on completion tokens the heads were not trained on:

1. Is the heads' soft top-p NLL (the training objective) lower than fresh heads' and lower than
   the best *static* (T, P) pair found by grid search on the same held-out tokens?
2. Where do the predictions sit on average? The mean predicted T and P are the **MeanShift**
   operating point of PAPER.md section 8
   (:func:`autodeco.evaluation.teacher_forcing.teacher_forced_means`).
3. Does predicted T follow the base model's uncertainty? Pearson and Spearman correlation of
   the predicted T with the base model's entropy at T = 1, token by token.

"Completion tokens" are the positions whose *next* token is a completion token (or the final
EOS): the teacher-forced pass of :mod:`autodeco.evaluation.teacher_forcing`.

The static grid reuses each batch's base logits for every (T, P)
(:func:`autodeco.core.losses.static_grid_nll`); entropy and correlations come from
:mod:`autodeco.core.statistics`.

Shapes: ``N`` tokens, ``V`` vocabulary, ``G_T`` / ``G_P`` grid sizes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from autodeco.core import losses
from autodeco.core.defaults import STEEPNESS
from autodeco.core.losses import static_grid_nll
from autodeco.core.statistics import entropy, pearson, spearman
from autodeco.evaluation.teacher_forcing import HELDOUT_BATCH_SIZE, as_examples, completion_predictions

GRID_TEMPERATURES = tuple(round(0.1 * step, 1) for step in range(1, 16))
"""Static temperatures searched: 0.1, 0.2, ..., 1.5."""

GRID_TOP_PS = tuple(round(0.1 * step, 1) for step in range(1, 11))
"""Static top-p values searched: 0.1, 0.2, ..., 1.0."""

GRID_CHUNK_ROWS = 64
"""Tokens per chunk in the static-grid computation (float64 ``(64, V)`` blocks)."""


def heldout_report(
    model,
    tokenizer,
    examples: Iterable,
    *,
    grid_temperatures: Iterable[float] = GRID_TEMPERATURES,
    grid_top_ps: Iterable[float] = GRID_TOP_PS,
    batch_size: int = HELDOUT_BATCH_SIZE,
    steepness: float = STEEPNESS,
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
