"""Decoding settings: how tokens are chosen, as one small typed object with one key format.

A :class:`DecodingSetting` is greedy, a static ``(T, P)`` pair, or AutoDeco (the heads' per-token
values). Its :attr:`~DecodingSetting.key` names it in records, reports and on the command line
(``greedy``, ``autodeco`` or ``T=0.70,P=1.00``); :meth:`DecodingSetting.from_key` reads it back.
Static values are rounded to :data:`SETTING_DECIMALS` decimals once, when the setting is made, so a
setting and its key always agree.

Example:
    >>> DecodingSetting.static(0.7, 1).key
    'T=0.70,P=1.00'
    >>> DecodingSetting.from_key("T=0.70,P=1.00") == DecodingSetting.static(0.7, 1.0)
    True
    >>> DecodingSetting.from_key("greedy").kind
    'greedy'
"""

from __future__ import annotations

import dataclasses
import math
import re

GREEDY = "greedy"
"""Key (and kind) of greedy decoding (one deterministic sample per problem, seed 0)."""

STATIC = "static"
"""Kind of a static (T, P) setting; its key is ``T=<t>,P=<p>``."""

AUTODECO = "autodeco"
"""Key (and kind) of decoding with the AutoDeco heads (per-token T and P)."""

ENGINES = ("hf", "vllm")
"""Rollout engines of ``autodeco sample``/``eval``: Hugging Face ``generate()`` (default) or vLLM with the plugin."""

SETTING_DECIMALS = 2
"""Decimals of T and P in a static setting (values are rounded to them when the setting is made)."""

_STATIC_PATTERN = re.compile(r"T=(\d+\.\d{2}),P=(\d+\.\d{2})")


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


def parse_static_setting(key: str) -> tuple[float, float] | None:
    """``(temperature, top_p)`` of a static setting key; None for ``"greedy"`` and ``"autodeco"``.

    Raises:
        ValueError: for any other string, naming it and the accepted forms.

    Example:
        >>> parse_static_setting("T=0.83,P=0.91")
        (0.83, 0.91)
        >>> parse_static_setting("autodeco") is None
        True
    """
    if key in (GREEDY, AUTODECO):
        return None
    match = _STATIC_PATTERN.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise ValueError(
            f"unknown setting {key!r}: expected {GREEDY!r}, {AUTODECO!r} or a static key like 'T=0.70,P=1.00' "
            "(as made by static_setting)"
        )
    return float(match.group(1)), float(match.group(2))


@dataclasses.dataclass(frozen=True)
class DecodingSetting:
    """How tokens are chosen: greedily, with a static (T, P), or with the heads' per-token values."""

    kind: str
    """``"greedy"``, ``"static"`` or ``"autodeco"``."""
    temperature: float = 1.0
    """Static temperature (static settings only)."""
    top_p: float = 1.0
    """Static top-p (static settings only)."""

    def __post_init__(self):
        if self.kind not in (GREEDY, STATIC, AUTODECO):
            raise ValueError(f"decoding kind must be one of greedy, static, autodeco; got {self.kind!r}")
        if self.kind == STATIC and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(
                f"a static setting needs temperature > 0 and 0 < top_p <= 1, got T={self.temperature}, P={self.top_p}"
                " (use the greedy setting for T = 0)"
            )

    @classmethod
    def greedy(cls) -> "DecodingSetting":
        return cls(GREEDY)

    @classmethod
    def static(cls, temperature: float, top_p: float) -> "DecodingSetting":
        return cls(STATIC, round(float(temperature), SETTING_DECIMALS), round(float(top_p), SETTING_DECIMALS))

    @classmethod
    def autodeco(cls) -> "DecodingSetting":
        return cls(AUTODECO)

    @property
    def key(self) -> str:
        """The name used in records: ``greedy``, ``autodeco`` or ``T=0.70,P=1.00``."""
        if self.kind == STATIC:
            return static_setting(self.temperature, self.top_p)
        return self.kind

    @classmethod
    def from_key(cls, key: str) -> "DecodingSetting":
        """Inverse of :attr:`key`."""
        parsed = parse_static_setting(key)
        return cls(key) if parsed is None else cls.static(*parsed)
