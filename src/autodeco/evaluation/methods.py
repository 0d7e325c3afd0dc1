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

Example:
    >>> check_methods(["autodeco", "edt"])
    ('autodeco', 'edt')
    >>> [setting.key for setting in tuning_candidates("top-n-sigma")]
    ['top-n-sigma:T=0.7,n=0.5', 'top-n-sigma:T=0.7,n=1', 'top-n-sigma:T=1,n=0.5', 'top-n-sigma:T=1,n=1']
"""

from __future__ import annotations

import itertools

from autodeco.sampling.settings import DecodingSetting

PAPER_METHODS = ("greedy", "default", "autodeco", "meanshift", "oracle")
"""The paper's rows (and the quickstart's)."""

HEURISTIC_METHODS = ("edt", "entropy-shift", "confidence-gated", "min-p", "eta", "top-n-sigma")
"""Heuristic adaptive and truncation samplers, with parameters tuned on the training split."""

FACTORIZATION_METHODS = ("temperature-head", "top-p-head")
"""One head's per-token values with the other value fixed at MeanShift's."""

CONTROL_METHODS = ("shuffle", "bin-shuffle")
"""AutoDeco's per-token values reassigned across tokens (globally, or within entropy bins)."""

METHODS = PAPER_METHODS + HEURISTIC_METHODS + FACTORIZATION_METHODS + CONTROL_METHODS
"""Every method name ``--methods`` accepts, in report order."""

NEEDS_MEANSHIFT = ("meanshift", *FACTORIZATION_METHODS)
"""Methods that need MeanShift's operating point."""

NEEDS_AUTODECO_RECORDS = CONTROL_METHODS
"""Methods that draw from AutoDeco's recorded per-token values (AutoDeco runs first)."""

ENTROPY_SHIFT_LIMITS = (0.05, 1.5)
"""The entropy-shift rule's temperature clamp ``[T_min, T_max]``."""

TUNING_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "edt": {"t0": (0.5, 0.7, 1.0), "n": (0.8,), "theta": (0.5, 1.0)},
    "entropy-shift": {"t_base": (0.3, 0.5, 0.7), "delta": (0.5, 1.0)},
    "confidence-gated": {"threshold": (0.5, 0.7, 0.9), "temperature": (0.7, 1.0)},
    "min-p": {"temperature": (0.7, 1.0), "min_p": (0.05, 0.1, 0.2)},
    "eta": {"temperature": (0.7, 1.0), "epsilon": (0.0009, 0.004)},
    "top-n-sigma": {"temperature": (0.7, 1.0), "n": (0.5, 1.0)},
}
"""Each heuristic's parameter grid searched on the training split (the keyword arguments of its
:class:`~autodeco.sampling.settings.DecodingSetting` constructor; the top-p of the temperature rules stays 1)."""

UNTUNED_DEFAULTS: dict[str, dict[str, float]] = {
    "edt": {"t0": 0.7, "n": 0.8, "theta": 1.0},
    "entropy-shift": {"t_base": 0.7, "delta": 1.0},
    "confidence-gated": {"threshold": 0.9, "temperature": 1.0},
    "min-p": {"temperature": 1.0, "min_p": 0.1},
    "eta": {"temperature": 1.0, "epsilon": 0.0009},
    "top-n-sigma": {"temperature": 1.0, "n": 1.0},
}
"""Parameters used when no tuning problems are given (values common in the methods' own papers)."""

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


def heuristic_setting(method: str, parameters: dict[str, float], mean_entropy: float | None = None) -> DecodingSetting:
    """The setting of a heuristic method from its tuned (or default) parameters.

    Example:
        >>> heuristic_setting("min-p", {"temperature": 1.0, "min_p": 0.1}).key
        'min-p:T=1,min_p=0.1'
    """
    if method == "edt":
        return DecodingSetting.edt(**parameters)
    if method == "entropy-shift":
        mean = DEFAULT_MEAN_ENTROPY if mean_entropy is None else mean_entropy
        return DecodingSetting.entropy_shift(**parameters, mean_entropy=mean, t_min=ENTROPY_SHIFT_LIMITS[0],
                                             t_max=ENTROPY_SHIFT_LIMITS[1])
    if method == "confidence-gated":
        return DecodingSetting.confidence_gated(**parameters)
    if method == "min-p":
        return DecodingSetting.min_p(**parameters)
    if method == "eta":
        return DecodingSetting.eta(**parameters)
    if method == "top-n-sigma":
        return DecodingSetting.top_n_sigma(**parameters)
    raise ValueError(f"{method!r} is not a heuristic method; heuristics: {', '.join(HEURISTIC_METHODS)}")


def tuning_candidates(method: str, mean_entropy: float | None = None) -> list[DecodingSetting]:
    """Every setting of ``method``'s tuning grid, in grid order (the first of equal scores wins)."""
    grid = TUNING_GRIDS[method]
    names = list(grid)
    return [
        heuristic_setting(method, dict(zip(names, values)), mean_entropy)
        for values in itertools.product(*(grid[name] for name in names))
    ]
