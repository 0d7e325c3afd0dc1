"""Evaluation metrics: Pass@k, Pass@1 over seeds, paired bootstrap, and the oracle search.

Pure math (PAPER.md section 5): imports only the standard library and numpy. No files, no
models, no logging. Scores are fractions in [0, 1]; reports turn them into percentages.

Example:
    >>> pass_at_k(n=4, c=2, k=2)  # 1 - C(2, 2) / C(4, 2) = 1 - 1/6
    0.8333333333333334
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from fractions import Fraction

import numpy as np

__all__ = [
    "BOOTSTRAP_CONFIDENCE",
    "BOOTSTRAP_RESAMPLES",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "OracleChoice",
    "PairedDifference",
    "default_ks",
    "mean_and_std",
    "oracle_from_outcomes",
    "oracle_search",
    "paired_bootstrap",
    "pass_at_1_by_seed",
    "pass_at_k",
    "pass_at_k_curve",
    "pick_best",
]

DEFAULT_TEMPERATURE = 1.0
"""Default sampling temperature; grid ties are broken towards it (see :func:`pick_best`)."""

DEFAULT_TOP_P = 1.0
"""Default top-p; the oracle's temperature stage runs at this top-p."""

BOOTSTRAP_RESAMPLES = 10_000
"""Number of bootstrap resamples of the problem set."""

BOOTSTRAP_CONFIDENCE = 0.95
"""Coverage of the percentile confidence interval."""

GRID_DECIMALS = 2
"""Grid values are compared after rounding to this many decimals, the precision of setting keys."""

_TIE_TOLERANCE = 1e-12
"""Scores closer than this are ties (guards against float summation order)."""


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Mean per-problem difference ``a - b`` with a percentile bootstrap confidence interval.

    Example:
        >>> difference = PairedDifference(0.1, 0.02, 0.18, 10_000, 0.95, 50)
        >>> difference.excludes_zero
        True
    """

    mean_difference: float
    """Mean over problems of ``a[problem] - b[problem]``."""

    low: float
    """Lower end of the confidence interval."""

    high: float
    """Upper end of the confidence interval."""

    resamples: int
    """Number of bootstrap resamples drawn."""

    confidence: float = BOOTSTRAP_CONFIDENCE
    """Coverage of ``[low, high]``, e.g. 0.95."""

    num_problems: int = 0
    """Number of paired problems."""

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly on one side of 0 (a significant difference)."""
        return self.low > 0.0 or self.high < 0.0


@dataclasses.dataclass(frozen=True)
class OracleChoice:
    """Result of the expert-guided (test-set tuned) two-step grid search.

    Example:
        >>> choice = OracleChoice(0.7, 0.9, {0.7: 0.5, 1.0: 0.4}, {0.9: 0.55, 1.0: 0.5})
        >>> choice.score
        0.55
    """

    temperature: float
    """Temperature picked on the P = 1.0 line."""

    top_p: float
    """Top-p picked at that temperature."""

    temperature_curve: dict[float, float]
    """Score of each grid temperature at top-p 1.0."""

    top_p_curve: dict[float, float]
    """Score of each grid top-p at the chosen temperature."""

    @property
    def score(self) -> float:
        """Score of the chosen ``(temperature, top_p)``."""
        return self.top_p_curve[self.top_p]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k estimate ``1 - C(n - c, k) / C(n, k)``, computed exactly.

    The binomial coefficients are Python integers and the ratio a :class:`~fractions.Fraction`,
    so the value is exact before the final rounding to float, also for n = 128 and beyond.

    Args:
        n: samples drawn for the problem (>= 1).
        c: correct samples among them (0 <= c <= n).
        k: attempts allowed (1 <= k <= n).

    Returns:
        Probability in [0, 1] that at least one of ``k`` samples drawn without replacement
        from the ``n`` is correct.

    Raises:
        ValueError: for counts out of range, quoting them.

    Example:
        >>> pass_at_k(10, 3, 1)
        0.3
        >>> pass_at_k(10, 8, 3)  # fewer than 3 wrong samples: every 3-subset has a correct one
        1.0
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be between 0 and n={n}, got {c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(
            f"k must be <= n samples per problem, got k={k} with n={n}: draw at least {k} samples "
            "per problem or ask for a smaller k"
        )
    failure = Fraction(math.comb(n - c, k), math.comb(n, k))  # comb(m, k) = 0 when m < k
    return float(1 - failure)


def pass_at_1_by_seed(correct: dict[str, dict[int, list[bool]]]) -> dict[int, float]:
    """Pass@1 of each seed: the mean over problems of that seed's per-problem success rate.

    A problem without outcomes for a seed (missing seed or empty list, as in an unfinished
    run) is left out of that seed's mean.

    Args:
        correct: ``problem id -> seed -> outcomes`` (one bool per sample).

    Returns:
        ``seed -> Pass@1`` in [0, 1], seeds in increasing order.

    Raises:
        ValueError: if there is no outcome at all.

    Example:
        >>> pass_at_1_by_seed({"p1": {0: [True, False], 1: [True, True]}, "p2": {0: [False, False], 1: [True, False]}})
        {0: 0.25, 1: 0.75}
    """
    rates: dict[int, list[float]] = {}
    for by_seed in correct.values():
        for seed, outcomes in by_seed.items():
            if outcomes:
                rates.setdefault(seed, []).append(sum(bool(outcome) for outcome in outcomes) / len(outcomes))
    if not rates:
        raise ValueError("pass_at_1_by_seed got no outcomes: every problem has an empty outcome list")
    return {seed: statistics.fmean(rates[seed]) for seed in sorted(rates)}


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1, as reported over seeds); std 0 for one value.

    Args:
        values: at least one number.

    Returns:
        ``(mean, std)``.

    Example:
        >>> mean_and_std([0.25, 0.75])
        (0.5, 0.3535533905932738)
        >>> mean_and_std([0.5])
        (0.5, 0.0)
    """
    values = [float(value) for value in values]
    if not values:
        raise ValueError("mean_and_std needs at least one value, got an empty list")
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def pass_at_k_curve(counts: dict[str, tuple[int, int]], ks: list[int]) -> dict[int, float]:
    """Pass@k for each k, averaged over problems.

    Args:
        counts: ``problem id -> (n samples, c correct)``.
        ks: the k values; each must be <= every problem's n.

    Returns:
        ``k -> mean over problems of pass_at_k(n, c, k)``, in the order of ``ks``.

    Example:
        >>> pass_at_k_curve({"a": (4, 1), "b": (4, 0)}, [1, 4])
        {1: 0.125, 4: 0.5}
    """
    if not counts:
        raise ValueError("pass_at_k_curve needs at least one problem, got none")
    return {k: statistics.fmean(pass_at_k(n, c, k) for n, c in counts.values()) for k in ks}


def default_ks(n: int) -> list[int]:
    """The k values to report for ``n`` samples per problem: powers of two up to n, plus n.

    Example:
        >>> default_ks(12)
        [1, 2, 4, 8, 12]
        >>> default_ks(128)
        [1, 2, 4, 8, 16, 32, 64, 128]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per problem) must be a positive integer, got {n!r}")
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def paired_bootstrap(
    a: dict[str, float],
    b: dict[str, float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = BOOTSTRAP_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Paired bootstrap over problems of the mean difference ``a - b``.

    Each resample draws as many problems as there are, with replacement, and averages their
    differences; the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    percentiles of those means. Pairing keeps each problem's difficulty out of the noise.

    Args:
        a: ``problem id -> score`` of the first method (e.g. its per-problem success rate).
        b: the same problems' scores under the second method.
        resamples: number of bootstrap resamples (>= 1).
        confidence: interval coverage, in (0, 1).
        seed: seed of the resampling generator (same seed, same interval).

    Returns:
        A :class:`PairedDifference`.

    Raises:
        ValueError: if the problem ids differ (naming some), or on empty input or bad options.

    Example:
        >>> result = paired_bootstrap({"p1": 1.0, "p2": 0.5}, {"p1": 0.5, "p2": 0.0}, resamples=100)
        >>> (result.mean_difference, result.low, result.high)
        (0.5, 0.5, 0.5)
    """
    if a.keys() != b.keys():
        only_a = sorted(a.keys() - b.keys())[:5]
        only_b = sorted(b.keys() - a.keys())[:5]
        raise ValueError(
            f"paired_bootstrap needs scores for the same problems; only in a: {only_a}, only in b: {only_b} "
            "(first five shown); pass the common problems only"
        )
    if not a:
        raise ValueError("paired_bootstrap needs at least one problem, got none")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence}")
    problems = sorted(a)
    differences = np.array([a[problem] - b[problem] for problem in problems], dtype=np.float64)  # (N,)
    generator = np.random.default_rng(seed)
    resampled_means = np.empty(resamples, dtype=np.float64)  # (R,)
    chunk = max(1, 1_000_000 // len(problems))  # bounds memory at about 8 MB of indices
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        indices = generator.integers(0, len(problems), size=(size, len(problems)))  # (r, N)
        resampled_means[start : start + size] = differences[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [tail, 1.0 - tail])
    return PairedDifference(
        mean_difference=float(differences.mean()),
        low=float(low),
        high=float(high),
        resamples=resamples,
        confidence=confidence,
        num_problems=len(problems),
    )


def pick_best(scores: dict[float, float], *, default: float = DEFAULT_TEMPERATURE) -> float:
    """The grid value with the highest score.

    Tie rule: among values whose scores tie (within 1e-12), the one closest to ``default``
    (1.0, the default sampling value) wins, so that the oracle moves away from the default
    only on evidence; if two are equally close, the smaller value wins.

    Args:
        scores: ``grid value -> score``.
        default: the value ties are broken towards.

    Returns:
        The chosen grid value.

    Example:
        >>> pick_best({0.5: 0.4, 0.8: 0.6, 1.0: 0.6})
        1.0
        >>> pick_best({0.5: 0.7, 0.8: 0.6, 1.0: 0.6})
        0.5
    """
    if not scores:
        raise ValueError("pick_best needs at least one grid value, got none")
    best_score = max(scores.values())
    tied = [value for value, score in scores.items() if best_score - score <= _TIE_TOLERANCE]
    return min(tied, key=lambda value: (abs(value - default), value))


def oracle_search(
    scores: dict[tuple[float, float], float],
    temperatures: list[float],
    top_ps: list[float],
) -> OracleChoice:
    """The paper's expert-guided tuning: temperature first at top-p 1.0, then top-p at that temperature.

    Step 1 scores every grid temperature at P = 1.0 and picks the best (:func:`pick_best`).
    Step 2 scores every grid top-p at that temperature and picks the best; P = 1.0 (the point
    step 1 chose) is always a candidate, so step 2 never ends below step 1. This is a search
    on the evaluated set itself: report its result as tuned on the test set.
    Grid values are matched after rounding to 2 decimals (the precision of setting keys).

    Args:
        scores: ``(temperature, top_p) -> score`` (e.g. mean Pass@1) of every evaluated point.
        temperatures: the temperature grid (e.g. 0.1, 0.2, ..., 1.0).
        top_ps: the top-p grid (e.g. 0.1, ..., 1.0); may be empty to stop after step 1.

    Returns:
        An :class:`OracleChoice` with both curves.

    Raises:
        ValueError: naming the grid points that have no score.

    Example:
        >>> scores = {(0.5, 1.0): 0.3, (1.0, 1.0): 0.2, (0.5, 0.9): 0.35, (1.0, 0.9): 0.9}
        >>> choice = oracle_search(scores, [0.5, 1.0], [0.9, 1.0])
        >>> (choice.temperature, choice.top_p)  # (1.0, 0.9) is better but not on the search path
        (0.5, 0.9)
    """
    if not temperatures:
        raise ValueError("oracle_search needs at least one grid temperature, got none")
    rounded = {(_grid_value(t), _grid_value(p)): score for (t, p), score in scores.items()}
    top_p_one = _grid_value(DEFAULT_TOP_P)
    temperature_curve = _curve(rounded, [(_grid_value(t), top_p_one) for t in temperatures], by="temperature")
    temperature = pick_best(temperature_curve, default=DEFAULT_TEMPERATURE)
    candidates = sorted({_grid_value(p) for p in top_ps} | {top_p_one})
    top_p_curve = _curve(rounded, [(temperature, p) for p in candidates], by="top_p")
    top_p = pick_best(top_p_curve, default=DEFAULT_TOP_P)
    return OracleChoice(temperature, top_p, temperature_curve, top_p_curve)


def oracle_from_outcomes(
    correct: dict[tuple[float, float], dict[str, dict[int, list[bool]]]],
    temperatures: list[float],
    top_ps: list[float],
) -> tuple[OracleChoice, dict[tuple[float, float], tuple[float, float]]]:
    """:func:`oracle_search` on each point's mean Pass@1 over seeds: the oracle of the runner and the report.

    Args:
        correct: ``(temperature, top_p) -> problem id -> seed -> outcomes`` of every static point evaluated.
        temperatures: the temperature grid (see :func:`oracle_search`).
        top_ps: the top-p grid; may be empty to stop after step 1.

    Returns:
        The :class:`OracleChoice`, and ``(temperature, top_p) -> (mean, std)`` of Pass@1 over seeds
        for every point of ``correct``.

    Raises:
        ValueError: naming the grid points that have no outcomes.

    Example:
        >>> correct = {(0.5, 1.0): {"p": {0: [True], 1: [True]}}, (1.0, 1.0): {"p": {0: [False], 1: [True]}}}
        >>> choice, levels = oracle_from_outcomes(correct, [0.5, 1.0], [])
        >>> choice.temperature, levels[(1.0, 1.0)][0]
        (0.5, 0.5)
    """
    levels = {point: mean_and_std(list(pass_at_1_by_seed(by_problem).values())) for point, by_problem in correct.items()}
    choice = oracle_search({point: mean for point, (mean, _) in levels.items()}, temperatures, top_ps)
    return choice, levels


def _grid_value(value: float) -> float:
    """``value`` rounded to the grid precision, so that 0.1 * 3 matches 0.3."""
    return round(float(value), GRID_DECIMALS)


def _curve(
    scores: dict[tuple[float, float], float], points: list[tuple[float, float]], *, by: str
) -> dict[float, float]:
    """Scores of ``points`` keyed by their temperature (``by="temperature"``) or top-p."""
    missing = [point for point in points if point not in scores]
    if missing:
        shown = ", ".join(f"(T={t:.2f}, P={p:.2f})" for t, p in missing[:10])
        raise ValueError(
            f"oracle_search: {len(missing)} grid point(s) have no score: {shown}"
            f"{' ...' if len(missing) > 10 else ''}; evaluate them first or shrink the grid"
        )
    position = 0 if by == "temperature" else 1
    return {point[position]: scores[point] for point in sorted(points)}
