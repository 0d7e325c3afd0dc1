"""Diagnose heads on held-out verified trajectories: token-level control, or just a better mean?

Teacher-forced on the completion tokens (the positions at which the heads chose T and P while the
completion was sampled, see :func:`autodeco.evaluation.teacher_forcing.completion_predictions`), in two passes
(the second reuses the first's logits when they fit in :data:`LOGIT_CACHE_BYTES`):

1. the mean inverse temperature ``beta_bar`` = mean of ``1 / T_t`` over every diagnosed token;
2. per token: predicted T and P, the base model's entropy and top probability (T = 1), the size of
   the final (T, P) nucleus (:func:`autodeco.core.decoding.warp_logits`), and the terms of the
   inverse-temperature test (:mod:`autodeco.core.inverse_temperature`) against ``beta_bar``.

:func:`summarise_diagnosis` turns the per-token columns into a JSON-ready dict: means, quantiles,
correlations, the predicted and measured gain of token-level temperature over the static
``beta_bar`` with bootstrap intervals over trajectories, the sign agreement of ``delta`` and ``g``,
and a verdict in plain words. :func:`diagnose` does both.

Shapes: ``N`` tokens, ``V`` vocabulary, ``K`` trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from autodeco.core.decoding import warp_logits
from autodeco.core.inverse_temperature import inverse_temperature_terms
from autodeco.core.statistics import bootstrap_ratio_interval, entropy, pearson, spearman
from autodeco.evaluation.teacher_forcing import HELDOUT_BATCH_SIZE, as_examples, completion_predictions

__all__ = ["BOOTSTRAP_RESAMPLES", "CONFIDENCE", "QUANTILES", "TOKEN_COLUMNS", "diagnose", "diagnose_tokens",
           "summarise_diagnosis", "verdict"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
"""Quantiles reported for each per-token value."""

BOOTSTRAP_RESAMPLES = 1000
"""Bootstrap resamples of the trajectories for the gain intervals."""

CONFIDENCE = 0.95
"""Central mass of the bootstrap intervals."""

LOGIT_CACHE_BYTES = 1 << 30
"""Pass 1's logits are kept in memory up to this size (1 GiB), sparing pass 2's forward passes."""

CHUNK_ROWS = 256
"""Tokens per chunk of the per-token computation (float64 ``(256, V)`` blocks)."""

TOKEN_COLUMNS = (
    "example", "temperature", "top_p", "entropy", "top_probability", "nucleus_size",
    "delta", "slope", "variance", "predicted_gain", "measured_gain", "measured_gain_vs_mean_temperature",
)
"""Per-token values returned by :func:`diagnose_tokens`, each ``(N,)``."""

VERDICTS = {
    "helps": "the heads' token-level temperature variation helps: it raises the log-probability of the verified "
             "tokens over a static mean temperature",
    "hurts": "the heads' token-level temperature variation hurts: it lowers the log-probability of the verified "
             "tokens below a static mean temperature",
    "nothing": "the heads' token-level temperature variation does nothing measurable: the interval of its gain "
               "over a static mean temperature contains 0",
}
"""Plain-words verdict for each outcome of the measured gain's interval."""

TOP_P_NOTE = ("top-p is left out of this test: it compares the heads' per-token temperature with one static "
              "temperature, both without a nucleus")


# ------------------------------------------------------------------------------------- two passes


def _batches(model, tokenizer, examples: list, batch_size: int, description: str, progress: bool) -> Iterator[dict]:
    from tqdm.auto import tqdm

    batches = completion_predictions(model, tokenizer, examples, batch_size)
    yield from tqdm(batches, total=math.ceil(len(examples) / batch_size), desc=description, unit="batch",
                    disable=not progress)


def _mean_inverse_temperature(
    model, tokenizer, examples: list, batch_size: int, progress: bool, cache_bytes: int
) -> tuple[float, float, list[dict] | None]:
    """Pass 1: ``(mean of 1 / T_t, mean of T_t, cached batches)`` over every completion token.

    The mean of ``1 / T`` is accumulated around the first token's value, so constant temperatures
    give exactly that value back (and ``delta = 0`` exactly in pass 2). The batches' predictions are
    kept (on the model's device) while their logits fit in ``cache_bytes``, so that pass 2 needs no
    forward pass; beyond that the cache is None.
    """
    reference = None
    shifted_sum = temperature_sum = 0.0
    count = cached_bytes = 0
    cache: list[dict] | None = []
    for tokens in _batches(model, tokenizer, examples, batch_size, "diagnose: pass 1/2 (mean 1/T)", progress):
        inverse = 1.0 / tokens["temperature"].double()  # (N,)
        if cache is not None:
            cached_bytes += tokens["logits"].numel() * tokens["logits"].element_size()
            if cached_bytes <= cache_bytes:
                cache.append(tokens)
            else:
                cache = None
        if inverse.numel() == 0:
            continue
        reference = float(inverse[0]) if reference is None else reference
        shifted_sum += float((inverse - reference).sum())
        temperature_sum += float(tokens["temperature"].double().sum())
        count += inverse.numel()
    if count == 0:
        raise ValueError("the trajectories hold no completion token to diagnose")
    return reference + shifted_sum / count, temperature_sum / count, cache


@torch.no_grad()
def diagnose_tokens(
    model,
    tokenizer,
    trajectories: Iterable,
    *,
    batch_size: int = HELDOUT_BATCH_SIZE,
    max_length: int | None = None,
    progress: bool = False,
    cache_bytes: int = LOGIT_CACHE_BYTES,
) -> dict[str, torch.Tensor]:
    """Per-token values of the diagnosis, teacher-forced on the completion tokens of ``trajectories``.

    Args:
        model: an ``AutoDecoForCausalLM``.
        tokenizer: its tokenizer (with the chat template).
        trajectories: verified trajectories (``prompt``/``completion``) or tokenized ``TrainingExample`` s.
        batch_size: sequences per forward pass.
        max_length: truncate longer trajectories (None: no limit).
        progress: show a progress bar over the batches of each pass.
        cache_bytes: keep pass 1's logits (on the model's device) up to this many bytes, so that
            pass 2 reuses them instead of running the model again (0: always run it again).

    Returns:
        ``{column: (N,) tensor}`` for each of :data:`TOKEN_COLUMNS` (``example``: the trajectory's
        index, int64; the rest float64), plus ``mean_inverse_temperature`` and ``mean_temperature``
        as 0-d tensors. ``measured_gain_vs_mean_temperature`` is the exact gain over the static
        ``T = mean(T_t)`` (MeanShift's temperature) instead of ``1 / mean(1 / T_t)``.

    Example:
        >>> tokens = diagnose_tokens(model, tokenizer, [{"prompt": "1+1?", "completion": "2"}])  # doctest: +SKIP
        >>> tokens["measured_gain"].shape  # doctest: +SKIP
        torch.Size([2])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = as_examples(tokenizer, trajectories, max_length)
    mean_inverse, mean_temperature, cache = _mean_inverse_temperature(
        model, tokenizer, examples, batch_size, progress, cache_bytes
    )
    if cache is None:
        cache = _batches(model, tokenizer, examples, batch_size, "diagnose: pass 2/2 (per token)", progress)
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in TOKEN_COLUMNS}
    for tokens in cache:
        for start in range(0, tokens["labels"].numel(), CHUNK_ROWS):
            chunk = {name: value[start : start + CHUNK_ROWS] for name, value in tokens.items()}
            for name, value in _chunk_values(chunk, mean_inverse, mean_temperature).items():
                columns[name].append(value.cpu())
    result = {name: torch.cat(values) for name, values in columns.items()}
    result["mean_inverse_temperature"] = torch.tensor(mean_inverse, dtype=torch.float64)
    result["mean_temperature"] = torch.tensor(mean_temperature, dtype=torch.float64)
    return result


def _chunk_values(chunk: dict[str, torch.Tensor], mean_inverse: float, mean_temperature: float) -> dict:
    logits, labels, temperature, top_p = chunk["logits"], chunk["labels"], chunk["temperature"], chunk["top_p"]
    terms = inverse_temperature_terms(logits, labels, temperature, mean_inverse)
    versus_mean_temperature = inverse_temperature_terms(logits, labels, temperature, 1.0 / mean_temperature).measured
    return {
        "example": chunk["example"].long(),
        "temperature": temperature.double(),
        "top_p": top_p.double(),
        "entropy": entropy(logits).double(),
        "top_probability": torch.softmax(logits.float(), dim=-1).amax(dim=-1).double(),
        "nucleus_size": torch.isfinite(warp_logits(logits, temperature, top_p)).sum(dim=-1).double(),
        "delta": terms.delta,
        "slope": terms.slope,
        "variance": terms.variance,
        "predicted_gain": terms.predicted,
        "measured_gain": terms.measured,
        "measured_gain_vs_mean_temperature": versus_mean_temperature,
    }


# ------------------------------------------------------------------------------------------ summary


def verdict(low: float, high: float) -> str:
    """``"helps"``, ``"hurts"`` or ``"nothing"`` from the interval of the measured mean gain.

    Example:
        >>> verdict(0.01, 0.05), verdict(-0.05, -0.01), verdict(-0.01, 0.02)
        ('helps', 'hurts', 'nothing')
    """
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    return "nothing"


def summarise_diagnosis(
    tokens: dict[str, torch.Tensor], *, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """The JSON-ready diagnosis of :func:`diagnose_tokens`' per-token values.

    Args:
        tokens: from :func:`diagnose_tokens` (or hand-built with the same keys).
        resamples: bootstrap resamples of the trajectories.
        confidence: central mass of the intervals.
        seed: seed of the bootstrap.

    Returns:
        A dict with ``num_trajectories``, ``num_tokens``; ``per_token`` (``mean``, ``std``,
        ``min``, ``max``, ``quantiles`` of T, P, entropy, top probability, nucleus size);
        ``correlations`` (Pearson and Spearman of T with entropy and with top probability, of P
        with entropy); ``inverse_temperature_test`` (gains with intervals, per-trajectory sums,
        first- and second-order terms, delta-g correlation, sign agreement, predicted-measured
        correlation, the gain over static ``T = mean(T)``, ``verdict`` and ``verdict_text``,
        ``alignment_text``); ``bootstrap`` (its settings).

    Example:
        >>> ones = torch.ones(4, dtype=torch.float64)
        >>> tokens = {name: ones for name in TOKEN_COLUMNS} | {"example": torch.tensor([0, 0, 1, 1]),
        ...     "mean_inverse_temperature": torch.tensor(1.0), "mean_temperature": torch.tensor(1.0)}
        >>> summary = summarise_diagnosis(tokens, resamples=10)
        >>> summary["inverse_temperature_test"]["verdict"], summary["inverse_temperature_test"]["measured_gain"]["mean"]
        ('helps', 1.0)
    """
    example = tokens["example"].long()
    count = example.numel()
    if count == 0:
        raise ValueError("no token to summarise: the trajectories hold no completion token")
    trajectories, example = torch.unique(example, return_inverse=True)  # renumber 0..K-1
    per_trajectory_counts = torch.bincount(example).double()  # (K,)

    def per_trajectory(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(trajectories), dtype=torch.float64).index_add_(0, example, values.double())  # (K,)

    def gain(values: torch.Tensor) -> dict:
        sums = per_trajectory(values)
        options = {"resamples": resamples, "confidence": confidence, "seed": seed}
        return {
            "mean": float(values.double().mean()),
            "interval": list(bootstrap_ratio_interval(sums, per_trajectory_counts, **options)),
            "per_trajectory_sum": {
                "mean": float(sums.mean()),
                "interval": list(bootstrap_ratio_interval(sums, torch.ones_like(sums), **options)),
            },
        }

    delta, slope = tokens["delta"], tokens["slope"]
    measured = gain(tokens["measured_gain"])
    outcome = verdict(*measured["interval"])
    counted = (delta != 0) & (slope != 0)
    agreeing = int(((delta > 0) == (slope > 0))[counted].sum())
    share = agreeing / int(counted.sum()) if counted.any() else None
    test = {
        "top_p": TOP_P_NOTE,
        "mean_inverse_temperature": float(tokens["mean_inverse_temperature"]),
        "static_temperature": 1.0 / float(tokens["mean_inverse_temperature"]),
        "delta": _describe(delta),
        "predicted_gain": gain(tokens["predicted_gain"]),
        "measured_gain": measured,
        "first_order_term": float((slope * delta).mean()),
        "second_order_term": float((-0.5 * tokens["variance"] * delta * delta).mean()),
        "delta_slope_correlation": _correlation(delta, slope),
        "sign_agreement": {"share": share, "agreeing": agreeing, "counted": int(counted.sum()),
                           "left_out": count - int(counted.sum())},
        "predicted_measured_correlation": _correlation(tokens["predicted_gain"], tokens["measured_gain"]),
        "mean_temperature": float(tokens["mean_temperature"]),
        "measured_gain_vs_mean_temperature": gain(tokens["measured_gain_vs_mean_temperature"]),
        "verdict": outcome,
        "verdict_text": VERDICTS[outcome],
        "alignment_text": _alignment_text(share),
    }
    return {
        "num_trajectories": len(trajectories),
        "num_tokens": count,
        "per_token": {name: _describe(tokens[name])
                      for name in ("temperature", "top_p", "entropy", "top_probability", "nucleus_size")},
        "correlations": {
            "temperature_entropy": _correlation(tokens["temperature"], tokens["entropy"]),
            "temperature_top_probability": _correlation(tokens["temperature"], tokens["top_probability"]),
            "top_p_entropy": _correlation(tokens["top_p"], tokens["entropy"]),
        },
        "inverse_temperature_test": test,
        "bootstrap": {"unit": "trajectory", "resamples": resamples, "confidence": confidence, "seed": seed},
    }


def diagnose(
    model,
    tokenizer,
    trajectories: Iterable,
    *,
    batch_size: int = HELDOUT_BATCH_SIZE,
    max_length: int | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The JSON-ready diagnosis of heads on held-out trajectories (:func:`diagnose_tokens` + :func:`summarise_diagnosis`).

    Example:
        >>> report = diagnose(model, tokenizer, heldout_trajectories)  # doctest: +SKIP
        >>> report["inverse_temperature_test"]["verdict"]  # doctest: +SKIP
        'nothing'
    """
    tokens = diagnose_tokens(model, tokenizer, trajectories, batch_size=batch_size, max_length=max_length,
                             progress=progress)
    return summarise_diagnosis(tokens, resamples=resamples, seed=seed)


def _describe(values: torch.Tensor) -> dict:
    values = values.double()
    sorted_values = values.sort().values
    return {
        "mean": float(values.mean()),
        "std": float(values.std()) if values.numel() > 1 else 0.0,
        "min": float(sorted_values[0]),
        "max": float(sorted_values[-1]),
        "quantiles": {str(level): _quantile(sorted_values, level) for level in QUANTILES},
    }


def _quantile(sorted_values: torch.Tensor, level: float) -> float:
    """Linear interpolation between order statistics (numpy's default; no size limit unlike ``torch.quantile``)."""
    position = level * (sorted_values.numel() - 1)
    below = math.floor(position)
    above = min(below + 1, sorted_values.numel() - 1)
    return float(sorted_values[below] + (position - below) * (sorted_values[above] - sorted_values[below]))


def _correlation(x: torch.Tensor, y: torch.Tensor) -> dict:
    """Pearson and Spearman; None (JSON null) where undefined (a constant column)."""
    values = {"pearson": pearson(x, y), "spearman": spearman(x, y)}
    return {name: None if math.isnan(value) else value for name, value in values.items()}


def _alignment_text(share: float | None) -> str:
    if share is None:
        return "no token has both a nonzero delta and a nonzero g: alignment is undefined"
    side = "more" if share > 0.5 else "less" if share < 0.5 else "no more"
    return (f"delta = 1/T_t - mean(1/T) has the sign of g = z_gold - E[z] on {100 * share:.1f} % of tokens "
            f"({side} often than the 50 % of an assignment unrelated to g)")
