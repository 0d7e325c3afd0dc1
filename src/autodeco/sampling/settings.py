"""Decoding settings: how tokens are chosen, as one small typed object with one key format.

A :class:`DecodingSetting` is greedy, a static ``(T, P)`` pair, AutoDeco (the heads' per-token
values), or one of the comparison methods of :data:`COMPARISON_METHODS` (heuristic per-token temperatures,
truncation samplers, one head with the other value fixed, and shuffle controls; PAPER.md section 8), one table
row per method.
Its :attr:`~DecodingSetting.key` names it in records, reports and on the command line (``greedy``,
``autodeco``, ``T=0.70,P=1.00`` or ``<kind>:<name>=<value>,...``); :meth:`DecodingSetting.from_key`
reads it back. Static values are rounded to :data:`SETTING_DECIMALS` decimals and method parameters
to :data:`PARAMETER_SIGNIFICANT_DIGITS` significant digits once, when the setting is made, so a
setting and its key always agree.

Example:
    >>> DecodingSetting.static(0.7, 1).key
    'T=0.70,P=1.00'
    >>> DecodingSetting.from_key("T=0.70,P=1.00") == DecodingSetting.static(0.7, 1.0)
    True
    >>> DecodingSetting.from_key("greedy").kind
    'greedy'
    >>> DecodingSetting.edt(0.7, 0.8, 1.0).key
    'edt:T0=0.7,N=0.8,theta=1,P=1'
    >>> DecodingSetting.from_key("edt:T0=0.7,N=0.8,theta=1,P=1").param("N")
    0.8
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

GREEDY = "greedy"
"""Key (and kind) of greedy decoding (one deterministic sample per problem, seed 0)."""

STATIC = "static"
"""Kind of a static (T, P) setting; its key is ``T=<t>,P=<p>``."""

AUTODECO = "autodeco"
"""Key (and kind) of decoding with the AutoDeco heads (per-token T and P)."""

EDT, ENTROPY_SHIFT, CONFIDENCE_GATED = "edt", "entropy-shift", "confidence-gated"
MIN_P, ETA, TOP_N_SIGMA = "min-p", "eta", "top-n-sigma"
TEMPERATURE_HEAD, TOP_P_HEAD = "temperature-head", "top-p-head"
SHUFFLE, BIN_SHUFFLE = "shuffle", "bin-shuffle"
"""Kinds of the comparison methods; each one's row of :data:`COMPARISON_METHODS` says what it is."""

HEURISTIC, FACTORIZATION, CONTROL = "heuristic", "factorization", "control"
"""Groups of comparison methods: heuristic samplers (tuned on the training split), one head with the other value
fixed, and controls that reassign AutoDeco's own values (see :mod:`autodeco.evaluation.methods`)."""

USES_HEADS, USES_POOLS = "heads", "pools"
"""What a method without a step function in :mod:`autodeco.core.adaptive` is built from: the AutoDeco heads,
or pools of AutoDeco's recorded values."""

ENGINES = ("hf", "vllm")
"""Rollout engines of ``autodeco sample``/``eval``: Hugging Face ``generate()`` (default) or vLLM with the plugin."""

SETTING_DECIMALS = 2
"""Decimals of T and P in a static setting (values are rounded to them when the setting is made)."""

PARAMETER_SIGNIFICANT_DIGITS = 4
"""Significant digits of a method's parameters (values are rounded to them when the setting is made)."""

DEFAULT_ENTROPY_BINS = 5
"""Entropy bins of the bin-shuffle control (edges at the pool's entropy quantiles)."""

_STATIC_PATTERN = re.compile(r"T=(\d+\.\d{2}),P=(\d+\.\d{2})")


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a method: its key name, allowed range and meaning.

    Example:
        >>> ParameterSpec("N", "base of the power", 0.0, 1.0).allowed
        '(0, 1)'
    """

    name: str
    """Name in keys and in :meth:`DecodingSetting.param` (e.g. ``"T0"``)."""
    meaning: str
    """What the parameter does, in a few words."""
    low: float = -math.inf
    """Lower bound of the allowed range."""
    high: float = math.inf
    """Upper bound of the allowed range."""
    low_inclusive: bool = False
    """Whether ``low`` itself is allowed."""
    high_inclusive: bool = False
    """Whether ``high`` itself is allowed."""
    default: float | None = None
    """Value used when a key leaves the parameter out (None: required)."""
    integer: bool = False
    """Whether only whole numbers are allowed."""

    @property
    def allowed(self) -> str:
        """The allowed range in interval notation, e.g. ``"(0, 1]"``."""
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        return f"{left}{_format(self.low)}, {_format(self.high)}{right}"

    @property
    def requirement(self) -> str:
        """What a value must be, for error messages: ``"in (0, 1)"``, ``"an integer in [1, inf)"``."""
        return f"an integer in {self.allowed}" if self.integer else f"in {self.allowed}"

    def contains(self, value: float) -> bool:
        """Whether ``value`` is a finite number in the allowed range."""
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below


def _positive(name: str, meaning: str, default: float | None = None) -> ParameterSpec:
    return ParameterSpec(name, meaning, low=0.0, default=default)


def _top_p(meaning: str = "static top-p applied after the temperature") -> ParameterSpec:
    return ParameterSpec("P", meaning, 0.0, 1.0, high_inclusive=True, default=1.0)


@dataclasses.dataclass(frozen=True)
class Method:
    """One comparison method: everything about it but its math, which lives in :mod:`autodeco.core.adaptive`.

    Adding a method is its step function in :mod:`autodeco.core.adaptive` and one row of
    :data:`COMPARISON_METHODS`: keys, validation, decoding (:func:`autodeco.sampling.policies.method_step`),
    ``--methods``, tuning and the report read the row.

    Example:
        >>> COMPARISON_METHODS["min-p"].parameter_names
        ('T', 'min_p')
    """

    kind: str
    """Its name in ``--methods`` and the prefix of its setting keys (``min-p:T=1,min_p=0.1``)."""
    summary: str
    """What it does, in one sentence."""
    group: str
    """:data:`HEURISTIC`, :data:`FACTORIZATION` or :data:`CONTROL`."""
    parameters: tuple[ParameterSpec, ...] = ()
    """Its parameters in key order; their names are the names in keys and in every table below."""
    step: str | None = None
    """Name of its step in :mod:`autodeco.core.adaptive`: ``step(logits (B, V), *parameter values in key order)
    -> WarpedStep``. None: built from what :attr:`uses` names."""
    uses: str | None = None
    """:data:`USES_HEADS` or :data:`USES_POOLS` for the methods without a step function."""
    tuning_grid: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    """Heuristics: the values searched on the training split, by parameter (grid order breaks ties)."""
    untuned: dict[str, float] = dataclasses.field(default_factory=dict)
    """Heuristics: the values used without tuning problems (common in the method's own paper)."""
    fixed: dict[str, float] = dataclasses.field(default_factory=dict)
    """Heuristics: values the evaluation sets and never tunes."""
    ordered: tuple[tuple[str, str], ...] = ()
    """``(low, high)`` parameter pairs whose values must satisfy ``low <= high``."""
    report_temperature: str = "dynamic"
    """How the report's T column reads: ``dynamic``, ``static`` (its ``T``) or ``gated`` (``0 or`` its ``T``)."""
    truncation: bool = False
    """Whether its own rule cuts the support instead of a top-p (the report's P column names the rule)."""

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """The names of :attr:`parameters`, in key order."""
        return tuple(spec.name for spec in self.parameters)


def _static_temperature(meaning: str = "static temperature") -> ParameterSpec:
    return _positive("T", meaning)


COMPARISON_METHODS: dict[str, Method] = {method.kind: method for method in (
    Method(
        EDT, "Entropy-based dynamic temperature (arXiv 2403.14541): T = T0 * N^(theta / H), then a static top-p.",
        HEURISTIC, (
            _positive("T0", "temperature ceiling (reached as the entropy grows)"),
            ParameterSpec("N", "base of the power N^(theta/H); smaller is colder at low entropy", 0.0, 1.0),
            _positive("theta", "entropy scale of the exponent"),
            _top_p(),
        ), step="edt_logits",
        tuning_grid={"T0": (0.5, 0.7, 1.0), "N": (0.8,), "theta": (0.5, 1.0)},
        untuned={"T0": 0.7, "N": 0.8, "theta": 1.0},
    ),
    Method(
        ENTROPY_SHIFT, "T = T + delta * (H / log V - mean_H), clamped to [T_min, T_max], then a static top-p.",
        HEURISTIC, (
            _positive("T", "temperature at the mean normalized entropy"),
            ParameterSpec("delta", "temperature change per unit of normalized entropy above the mean"),
            ParameterSpec("mean_H", "mean normalized entropy H / log V (estimated elsewhere)", 0.0, 1.0, True, True),
            _positive("T_min", "lowest temperature"),
            _positive("T_max", "highest temperature (>= T_min)"),
            _top_p(),
        ), step="entropy_shift_logits",
        tuning_grid={"T": (0.3, 0.5, 0.7), "delta": (0.5, 1.0)},
        untuned={"T": 0.7, "delta": 1.0},
        fixed={"T_min": 0.05, "T_max": 1.5},
        ordered=(("T_min", "T_max"),),
    ),
    Method(
        CONFIDENCE_GATED, "Greedy where the top probability exceeds a threshold, else a static temperature and top-p.",
        HEURISTIC, (
            ParameterSpec("threshold", "greedy when the top probability exceeds this", 0.0, 1.0),
            _static_temperature("temperature of the other steps"),
            _top_p("static top-p of the other steps"),
        ), step="confidence_gated_logits",
        tuning_grid={"threshold": (0.5, 0.7, 0.9), "T": (0.7, 1.0)},
        untuned={"threshold": 0.9, "T": 1.0},
        report_temperature="gated",
    ),
    Method(
        MIN_P, "A static temperature, then keep the tokens with p >= min_p * p_max.",
        HEURISTIC, (
            _static_temperature(),
            ParameterSpec("min_p", "keep tokens with p >= min_p * p_max", 0.0, 1.0, high_inclusive=True),
        ), step="min_p_logits",
        tuning_grid={"T": (0.7, 1.0), "min_p": (0.05, 0.1, 0.2)},
        untuned={"T": 1.0, "min_p": 0.1},
        report_temperature="static", truncation=True,
    ),
    Method(
        ETA, "A static temperature, then eta sampling: keep p >= min(epsilon, sqrt(epsilon) * exp(-H)).",
        HEURISTIC, (
            _static_temperature(),
            ParameterSpec("epsilon", "eta = min(epsilon, sqrt(epsilon) * exp(-H))", 0.0, 1.0),
        ), step="eta_logits",
        tuning_grid={"T": (0.7, 1.0), "epsilon": (0.0009, 0.004)},
        untuned={"T": 1.0, "epsilon": 0.0009},
        report_temperature="static", truncation=True,
    ),
    Method(
        TOP_N_SIGMA, "A static temperature, then keep the logits >= max - n * std (arXiv 2411.07641).",
        HEURISTIC, (
            _static_temperature(),
            _positive("n", "keep logits >= max - n * std"),
        ), step="top_n_sigma_logits",
        tuning_grid={"T": (0.7, 1.0), "n": (0.5, 1.0)},
        untuned={"T": 1.0, "n": 1.0},
        report_temperature="static", truncation=True,
    ),
    Method(
        TEMPERATURE_HEAD, "The temperature head's per-token T with a static top-p (e.g. MeanShift's P).",
        FACTORIZATION, (ParameterSpec("P", "static top-p (e.g. MeanShift's mean P)", 0.0, 1.0, high_inclusive=True),),
        uses=USES_HEADS,
    ),
    Method(
        TOP_P_HEAD, "The top-p head's per-token P with a static temperature (e.g. MeanShift's T).",
        FACTORIZATION, (_static_temperature("static temperature (e.g. MeanShift's mean T)"),),
        uses=USES_HEADS, report_temperature="static",
    ),
    Method(
        SHUFFLE, "Each token uses a (T, P) pair drawn from AutoDeco's recorded pairs on other problems.",
        CONTROL, uses=USES_POOLS,
    ),
    Method(
        BIN_SHUFFLE, "As shuffle, drawn from the recorded pairs whose base entropy lies in the step's entropy bin.",
        CONTROL, (
            ParameterSpec(
                "bins", "entropy bins (edges at the pool's entropy quantiles)", 1.0, math.inf,
                low_inclusive=True, default=float(DEFAULT_ENTROPY_BINS), integer=True,
            ),
        ), uses=USES_POOLS,
    ),
)}
"""The comparison methods, in report order: one row each (see :class:`Method`)."""

METHOD_KINDS = tuple(COMPARISON_METHODS)
"""The comparison methods: kinds whose settings carry named parameters (keys ``<kind>:<name>=<value>,...``)."""

KINDS = (GREEDY, STATIC, AUTODECO, *METHOD_KINDS)
"""Every decoding kind."""

HEAD_KINDS = (AUTODECO, *(kind for kind, method in COMPARISON_METHODS.items() if method.uses == USES_HEADS))
"""Kinds that run the AutoDeco heads while decoding."""

POOL_KINDS = tuple(kind for kind, method in COMPARISON_METHODS.items() if method.uses == USES_POOLS)
"""Kinds that draw their values from a pool of AutoDeco's recorded per-token values."""

PARAMETERS: dict[str, tuple[ParameterSpec, ...]] = {
    GREEDY: (), STATIC: (), AUTODECO: (), **{kind: method.parameters for kind, method in COMPARISON_METHODS.items()},
}
"""Per kind, its parameters in key order (empty for kinds without parameters)."""


def _format(value: float) -> str:
    """A number as written in keys: at most :data:`PARAMETER_SIGNIFICANT_DIGITS` significant digits."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{PARAMETER_SIGNIFICANT_DIGITS}g}"


def _rounded(value: float) -> float:
    """``value`` rounded to :data:`PARAMETER_SIGNIFICANT_DIGITS` significant digits (``-0`` becomes ``0``)."""
    return float(_format(value)) + 0.0 if math.isfinite(value) else value


def static_setting(temperature: float, top_p: float) -> str:
    """The canonical key of a static setting, e.g. ``"T=0.70,P=1.00"`` (2 decimals).

    Args:
        temperature: sampling temperature, > 0 (use :data:`GREEDY` for T = 0).
        top_p: nucleus mass, in (0, 1].

    Raises:
        ValueError: quoting the bad value, also when it rounds to 0.00.

    Example:
        >>> static_setting(1, 1)
        'T=1.00,P=1.00'
    """
    temperature, top_p = float(temperature), float(top_p)
    if not math.isfinite(temperature) or round(temperature, SETTING_DECIMALS) <= 0.0:
        raise ValueError(
            f"temperature must be a finite number >= 0.01 (keys keep 2 decimals), got {temperature}; "
            f"use the {GREEDY!r} setting for T = 0"
        )
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0 or round(top_p, SETTING_DECIMALS) <= 0.0:
        raise ValueError(f"top_p must be in (0, 1] and >= 0.01 (keys keep 2 decimals), got {top_p}")
    return f"T={temperature:.{SETTING_DECIMALS}f},P={top_p:.{SETTING_DECIMALS}f}"


_ACCEPTED_FORMS = (
    f"expected {GREEDY!r}, {AUTODECO!r}, a static key like 'T=0.70,P=1.00' (as made by static_setting) "
    f"or a method key like 'edt:T0=0.7,N=0.8,theta=1,P=1' (methods: {', '.join(METHOD_KINDS)})"
)


def parse_static_setting(key: str) -> tuple[float, float] | None:
    """``(temperature, top_p)`` of a static setting key; None for every other valid key.

    Valid keys are ``"greedy"``, ``"autodeco"``, static keys and the canonical keys of the method
    settings (as :attr:`DecodingSetting.key` writes them: every parameter, in order, rounded).

    Raises:
        ValueError: for any other string, naming it and the accepted forms.

    Example:
        >>> parse_static_setting("T=0.83,P=0.91")
        (0.83, 0.91)
        >>> parse_static_setting("autodeco") is None
        True
        >>> parse_static_setting("min-p:T=1,min_p=0.1") is None
        True
    """
    if key in (GREEDY, AUTODECO):
        return None
    match = _STATIC_PATTERN.fullmatch(key) if isinstance(key, str) else None
    if match is not None:
        return float(match.group(1)), float(match.group(2))
    if isinstance(key, str) and _method_kind(key) is not None:
        canonical = _parse_method_key(key).key
        if canonical != key:
            raise ValueError(f"setting {key!r} is not written canonically: write it as {canonical!r}")
        return None
    raise ValueError(f"unknown setting {key!r}: {_ACCEPTED_FORMS}")


def _method_kind(key: str) -> str | None:
    """The method kind a key names (``"edt"`` for ``"edt:T0=..."``), or None."""
    kind = key.split(":", 1)[0]
    return kind if kind in METHOD_KINDS else None


def _parse_method_key(key: str) -> "DecodingSetting":
    """A method setting from ``<kind>[:<name>=<value>,...]``; parameters in key order, defaults may be left out."""
    kind, _, text = key.partition(":")
    specs = PARAMETERS[kind]
    if ":" in key and not text:
        raise ValueError(f"setting {key!r} has an empty parameter list: write {kind!r} alone or name the parameters")
    given = {}
    for item in text.split(",") if text else ():
        name, equals, value = item.partition("=")
        if not equals or name in given:
            raise ValueError(f"setting {key!r}: {item!r} is not one new <name>=<value> pair")
        try:
            given[name] = float(value)
        except ValueError:
            raise ValueError(f"setting {key!r}: {name} must be a number, got {value!r}") from None
    names = [spec.name for spec in specs]
    unknown = [name for name in given if name not in names]
    if unknown or list(given) != [name for name in names if name in given]:
        raise ValueError(f"setting {key!r}: {kind} takes the parameters {names} in this order, got {list(given)}")
    missing = [spec.name for spec in specs if spec.name not in given and spec.default is None]
    if missing:
        raise ValueError(f"setting {key!r}: {kind} needs {missing} (parameters: {_describe(kind)})")
    values = tuple((spec.name, given.get(spec.name, spec.default)) for spec in specs)
    return DecodingSetting(kind, params=values)


def _describe(kind: str) -> str:
    return "; ".join(f"{spec.name} {spec.requirement}: {spec.meaning}" for spec in PARAMETERS[kind]) or "none"


@dataclasses.dataclass(frozen=True)
class DecodingSetting:
    """How tokens are chosen: greedily, with a static (T, P), with the heads' values, or with a comparison method.

    Example:
        >>> DecodingSetting.entropy_shift(0.8, 0.5, 0.3, 0.1, 1.5).key
        'entropy-shift:T=0.8,delta=0.5,mean_H=0.3,T_min=0.1,T_max=1.5,P=1'
        >>> DecodingSetting.min_p(1.0, 1.5)
        Traceback (most recent call last):
        ...
        ValueError: min-p: min_p must be in (0, 1], got 1.5
    """

    kind: str
    """One of :data:`KINDS`."""
    temperature: float = 1.0
    """Static temperature (static settings only)."""
    top_p: float = 1.0
    """Static top-p (static settings only)."""
    params: tuple[tuple[str, float], ...] = ()
    """A method's parameters as ``(name, value)`` pairs in the order of :data:`PARAMETERS` (methods only);
    rounded to :data:`PARAMETER_SIGNIFICANT_DIGITS` significant digits when the setting is made."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"decoding kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == STATIC and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(
                f"a static setting needs temperature > 0 and 0 < top_p <= 1, got T={self.temperature}, P={self.top_p}"
                " (use the greedy setting for T = 0)"
            )
        specs = PARAMETERS[self.kind]
        names = [name for name, _ in self.params]
        if names != [spec.name for spec in specs]:
            expected = f"{[spec.name for spec in specs]} in this order" if specs else "none"
            raise ValueError(f"{self.kind}: the parameters must be {expected}, got {names}")
        given = self.params
        try:
            rounded = tuple((name, _rounded(float(value))) for name, value in given)
        except (TypeError, ValueError):
            raise ValueError(f"{self.kind}: parameter values must be numbers, got {given}") from None
        object.__setattr__(self, "params", rounded)
        for spec, (_, value), (_, raw) in zip(specs, rounded, given):
            if not spec.contains(value):
                shown = raw if value == raw else f"{raw} (rounded to {_format(value)})"
                raise ValueError(f"{self.kind}: {spec.name} must be {spec.requirement}, got {shown}")
        method = COMPARISON_METHODS.get(self.kind)
        for low, high in method.ordered if method else ():
            if self.param(high) < self.param(low):
                raise ValueError(
                    f"{self.kind}: {high} must be >= {low}, got {low}={_format(self.param(low))}, "
                    f"{high}={_format(self.param(high))}"
                )

    # ----------------------------------------------------------------------------------- constructors

    @classmethod
    def greedy(cls) -> "DecodingSetting":
        return cls(GREEDY)

    @classmethod
    def static(cls, temperature: float, top_p: float) -> "DecodingSetting":
        return cls(STATIC, round(float(temperature), SETTING_DECIMALS), round(float(top_p), SETTING_DECIMALS))

    @classmethod
    def autodeco(cls) -> "DecodingSetting":
        return cls(AUTODECO)

    @classmethod
    def _method(cls, kind: str, *values: float) -> "DecodingSetting":
        return cls(kind, params=tuple((spec.name, float(value)) for spec, value in zip(PARAMETERS[kind], values)))

    @classmethod
    def of_method(cls, kind: str, values: Mapping[str, float]) -> "DecodingSetting":
        """A method setting from its parameter values by name (the names in keys); left-out ones take their default.

        Raises:
            ValueError: an unknown kind or parameter, or a required parameter left out, naming the parameters.

        Example:
            >>> DecodingSetting.of_method("edt", {"T0": 0.7, "N": 0.8, "theta": 1.0}).key
            'edt:T0=0.7,N=0.8,theta=1,P=1'
        """
        method = COMPARISON_METHODS.get(kind)
        if method is None:
            raise ValueError(f"{kind!r} is not a comparison method; methods: {', '.join(METHOD_KINDS)}")
        unknown = sorted(set(values) - set(method.parameter_names))
        missing = [spec.name for spec in method.parameters if spec.name not in values and spec.default is None]
        if unknown or missing:
            raise ValueError(f"{kind}: unknown parameter(s) {unknown} or missing {missing}; parameters: {_describe(kind)}")
        return cls._method(kind, *(values.get(spec.name, spec.default) for spec in method.parameters))

    @classmethod
    def edt(cls, t0: float, n: float, theta: float, top_p: float = 1.0) -> "DecodingSetting":
        """EDT: ``T = t0 * n^(theta / H)`` per token (t0 > 0, n in (0, 1), theta > 0), then top-p ``top_p``."""
        return cls._method(EDT, t0, n, theta, top_p)

    @classmethod
    def entropy_shift(
        cls, t_base: float, delta: float, mean_entropy: float, t_min: float, t_max: float, top_p: float = 1.0
    ) -> "DecodingSetting":
        """``T = t_base + delta * (H / log V - mean_entropy)`` clamped to ``[t_min, t_max]``, then top-p ``top_p``."""
        return cls._method(ENTROPY_SHIFT, t_base, delta, mean_entropy, t_min, t_max, top_p)

    @classmethod
    def confidence_gated(cls, threshold: float, temperature: float, top_p: float = 1.0) -> "DecodingSetting":
        """Greedy where the top probability exceeds ``threshold``, else ``(temperature, top_p)``."""
        return cls._method(CONFIDENCE_GATED, threshold, temperature, top_p)

    @classmethod
    def min_p(cls, temperature: float, min_p: float) -> "DecodingSetting":
        """Temperature ``temperature``, then min-p truncation with ``min_p`` in (0, 1]."""
        return cls._method(MIN_P, temperature, min_p)

    @classmethod
    def eta(cls, temperature: float, epsilon: float) -> "DecodingSetting":
        """Temperature ``temperature``, then eta sampling with ``epsilon`` in (0, 1)."""
        return cls._method(ETA, temperature, epsilon)

    @classmethod
    def top_n_sigma(cls, temperature: float, n: float) -> "DecodingSetting":
        """Temperature ``temperature``, then top-n-sigma truncation with ``n`` > 0."""
        return cls._method(TOP_N_SIGMA, temperature, n)

    @classmethod
    def temperature_head(cls, top_p: float) -> "DecodingSetting":
        """The temperature head's per-token T with the static top-p ``top_p``."""
        return cls._method(TEMPERATURE_HEAD, top_p)

    @classmethod
    def top_p_head(cls, temperature: float) -> "DecodingSetting":
        """The top-p head's per-token P with the static temperature ``temperature``."""
        return cls._method(TOP_P_HEAD, temperature)

    @classmethod
    def shuffle(cls) -> "DecodingSetting":
        """Per-token (T, P) pairs drawn without replacement from AutoDeco's values on other problems."""
        return cls(SHUFFLE)

    @classmethod
    def bin_shuffle(cls, bins: int = DEFAULT_ENTROPY_BINS) -> "DecodingSetting":
        """As :meth:`shuffle`, within ``bins`` entropy bins (edges at the pool's entropy quantiles)."""
        return cls._method(BIN_SHUFFLE, bins)

    # ----------------------------------------------------------------------------------------- access

    def param(self, name: str) -> float:
        """The value of the parameter ``name``.

        Raises:
            KeyError: naming the parameters this kind has.

        Example:
            >>> DecodingSetting.eta(1.0, 0.0009).param("epsilon")
            0.0009
        """
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(f"{self.kind} has no parameter {name!r}; its parameters: {[key for key, _ in self.params]}")

    @property
    def key(self) -> str:
        """The name used in records: ``greedy``, ``autodeco``, ``T=0.70,P=1.00`` or ``<kind>:<name>=<value>,...``."""
        if self.kind == STATIC:
            return static_setting(self.temperature, self.top_p)
        if not self.params:
            return self.kind
        return f"{self.kind}:" + ",".join(f"{name}={_format(value)}" for name, value in self.params)

    @classmethod
    def from_key(cls, key: str) -> "DecodingSetting":
        """Inverse of :attr:`key`. Method keys may leave out parameters that have a default and spell numbers freely.

        Example:
            >>> DecodingSetting.from_key("bin-shuffle").key
            'bin-shuffle:bins=5'
        """
        if isinstance(key, str) and _method_kind(key) is not None:
            return _parse_method_key(key)
        parsed = parse_static_setting(key)
        return cls(key) if parsed is None else cls.static(*parsed)
