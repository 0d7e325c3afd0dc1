"""The methods ``autodeco eval`` compares, and how the comparison methods get their parameters.

Four groups (PAPER.md sections 5 and 8):

- **the paper's rows**: ``greedy``, ``default`` (T = 1, P = 1), ``autodeco`` (the heads), ``meanshift``
  (the heads' mean, applied statically) and ``oracle`` (a grid searched on the test set itself);
- **heuristic adaptive decoding**: ``edt``, ``entropy-shift``, ``confidence-gated`` (per-token temperature
  rules) and the truncation samplers ``min-p``, ``eta`` and ``top-n-sigma``. Their parameters are chosen
  on problems of the *training* split (:data:`TUNING_GRIDS`, best mean Pass@1), never on the test set;
  with no tuning problems they take :data:`UNTUNED_DEFAULTS`, and the report says so;
- **head factorization**: ``temperature-head`` (the heads' T with MeanShift's P) and ``top-p-head``
  (MeanShift's T with the heads' P): which head carries the effect;
- **controls** that keep AutoDeco's per-token values but break their alignment with the context:
  ``shuffle`` (values drawn from AutoDeco's recorded values on other problems) and ``bin-shuffle``
  (the same within entropy bins).

Every group but the paper's is read from the table of comparison methods
(:data:`autodeco.sampling.settings.COMPARISON_METHODS`): a method added there is a ``--methods`` choice,
with its tuning grid and untuned defaults, without a change here.

Example:
    >>> check_methods(["autodeco", "edt"])
    ('autodeco', 'edt')
    >>> [setting.key for setting in tuning_candidates("top-n-sigma")]
    ['top-n-sigma:T=0.7,n=0.5', 'top-n-sigma:T=0.7,n=1', 'top-n-sigma:T=1,n=0.5', 'top-n-sigma:T=1,n=1']
"""

from __future__ import annotations

import itertools

from autodeco.sampling.settings import (
    COMPARISON_METHODS,
    CONTROL,
    FACTORIZATION,
    HEURISTIC,
    DecodingSetting,
)

PAPER_METHODS = ("greedy", "default", "autodeco", "meanshift", "oracle")
"""The paper's rows (and the quickstart's)."""


def _group(group: str) -> tuple[str, ...]:
    return tuple(kind for kind, method in COMPARISON_METHODS.items() if method.group == group)


HEURISTIC_METHODS = _group(HEURISTIC)
"""Heuristic adaptive and truncation samplers, with parameters tuned on the training split."""

FACTORIZATION_METHODS = _group(FACTORIZATION)
"""One head's per-token values with the other value fixed at MeanShift's."""

CONTROL_METHODS = _group(CONTROL)
"""AutoDeco's per-token values reassigned across tokens (globally, or within entropy bins)."""

METHODS = PAPER_METHODS + HEURISTIC_METHODS + FACTORIZATION_METHODS + CONTROL_METHODS
"""Every method name ``--methods`` accepts, in report order."""

NEEDS_MEANSHIFT = ("meanshift", *FACTORIZATION_METHODS)
"""Methods that need MeanShift's operating point."""

NEEDS_AUTODECO_RECORDS = CONTROL_METHODS
"""Methods that draw from AutoDeco's recorded per-token values (AutoDeco runs first)."""

TUNING_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    name: COMPARISON_METHODS[name].tuning_grid for name in HEURISTIC_METHODS
}
"""Each heuristic's parameter grid searched on the training split, by setting-key parameter name (the
parameters left out keep their default: the top-p of the temperature rules stays 1)."""

UNTUNED_DEFAULTS: dict[str, dict[str, float]] = {name: COMPARISON_METHODS[name].untuned for name in HEURISTIC_METHODS}
"""Parameters used when no tuning problems are given (values common in the methods' own papers)."""

MEAN_ENTROPY_PARAMETER = "mean_H"
"""The parameter a heuristic centres on the mean normalized entropy measured on the tuning problems."""

DEFAULT_MEAN_ENTROPY = 0.1
"""Mean normalized entropy assumed by entropy-shift when none was measured (tuning off)."""


def check_methods(methods) -> tuple[str, ...]:
    """The method names as a tuple, refusing unknown and repeated ones (listing the valid names).

    Raises:
        ValueError: naming the unknown method(s) and every valid one.
    """
    methods = tuple(methods)
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(METHODS)}")
    repeated = sorted({name for name in methods if methods.count(name) > 1})
    if repeated:
        raise ValueError(f"method(s) {', '.join(repeated)} given more than once in --methods")
    return methods


def uses_mean_entropy(method: str) -> bool:
    """Whether the heuristic ``method`` is centred on the measured mean entropy (tuned after the others).

    Example:
        >>> uses_mean_entropy("entropy-shift"), uses_mean_entropy("edt")
        (True, False)
    """
    return MEAN_ENTROPY_PARAMETER in COMPARISON_METHODS[method].parameter_names


def heuristic_setting(method: str, parameters: dict[str, float], mean_entropy: float | None = None) -> DecodingSetting:
    """The setting of a heuristic method from its tuned (or default) parameters, named as in setting keys.

    Args:
        method: one of :data:`HEURISTIC_METHODS`.
        parameters: values by parameter name (a grid point or :data:`UNTUNED_DEFAULTS`); the row's fixed
            values and the parameters' defaults fill the rest.
        mean_entropy: the measured mean normalized entropy (None: :data:`DEFAULT_MEAN_ENTROPY`), for the
            methods that use it.

    Example:
        >>> heuristic_setting("min-p", {"T": 1.0, "min_p": 0.1}).key
        'min-p:T=1,min_p=0.1'
    """
    if method not in HEURISTIC_METHODS:
        raise ValueError(f"{method!r} is not a heuristic method; heuristics: {', '.join(HEURISTIC_METHODS)}")
    values = {**COMPARISON_METHODS[method].fixed, **parameters}
    if uses_mean_entropy(method):
        values[MEAN_ENTROPY_PARAMETER] = DEFAULT_MEAN_ENTROPY if mean_entropy is None else mean_entropy
    return DecodingSetting.of_method(method, values)


def tuning_candidates(method: str, mean_entropy: float | None = None) -> list[DecodingSetting]:
    """Every setting of ``method``'s tuning grid, in grid order (the first of equal scores wins)."""
    grid = TUNING_GRIDS[method]
    names = list(grid)
    return [
        heuristic_setting(method, dict(zip(names, values)), mean_entropy)
        for values in itertools.product(*(grid[name] for name in names))
    ]
