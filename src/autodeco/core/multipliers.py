"""The user's decoding scales: ``temperature`` and ``top_p`` as multipliers on the heads' predictions.

A dynamic-decoding request never sets T or P itself: the heads predict them for every token, and the
user only scales them (``T = T_head * temperature``, ``P = min(1, P_head * top_p)``). :class:`Multipliers`
is that pair, checked once where it is made and passed down unchanged; the command line, the HTTP server
and vLLM translate their own names into it at their boundary.

Example:
    >>> Multipliers(temperature=0.5, top_p=2.0)
    Multipliers(temperature=0.5, top_p=2.0)
    >>> Multipliers(temperature=0).greedy
    True
    >>> Multipliers(top_p=0.0)
    Traceback (most recent call last):
    autodeco.core.multipliers.MultiplierError: top_p must be a finite number > 0 (it multiplies each predicted value; 1 keeps them), but is 0.0
"""

from __future__ import annotations

import dataclasses
import math

MAX_MULTIPLIER = 1e4
"""Largest ``temperature`` and ``top_p`` multiplier accepted. The heads predict ``T_head`` in (0, 2) and
``P_head`` in (0, 1), so ``T_head * temperature`` stays below 2e4 (finite even in float16, whose largest value
is 65504) and ``P_head * top_p`` never turns into ``0 * inf = NaN``; 1e4 is already a uniform draw in effect."""

LOWER_BOUNDS = {"temperature": ">= 0", "top_p": "> 0"}
"""The range each multiplier's lower end allows (a temperature of 0 means greedy decoding)."""

MEANINGS = {"temperature": "0 means greedy", "top_p": "it multiplies each predicted value; 1 keeps them"}
"""What each multiplier's allowed range means, as the error messages explain it."""


class MultiplierError(ValueError):
    """A ``temperature`` or ``top_p`` multiplier out of range.

    Attributes:
        name: ``"temperature"`` or ``"top_p"``.
        value: the value given, as given.
        bound: what was violated: the lower range (``">= 0"`` or ``"> 0"``, also for NaN, infinity and
            non-numbers) or ``"at most 10000"`` (:data:`MAX_MULTIPLIER`). Entry points that speak their own
            names (a command-line flag, a JSON field) phrase their message from these three.
    """

    def __init__(self, name: str, value, bound: str, message: str):
        super().__init__(message)
        self.name, self.value, self.bound = name, value, bound

    @property
    def too_large(self) -> bool:
        """Whether the value is a finite number above :data:`MAX_MULTIPLIER` (else it is out of the lower range)."""
        return self.bound != LOWER_BOUNDS[self.name]


@dataclasses.dataclass(frozen=True)
class Multipliers:
    """How much to scale the heads' temperature and top-p (1 and 1: the heads' own values).

    Raises:
        MultiplierError: (a ``ValueError``, in ``__post_init__``) a NaN, infinite, negative or non-numeric value,
            a ``top_p`` of 0, or a value above :data:`MAX_MULTIPLIER`; quoting the value and the allowed range.
    """

    temperature: float = 1.0
    """Multiplier on each predicted temperature (``T = T_head * temperature``); 0 decodes greedily."""
    top_p: float = 1.0
    """Multiplier on each predicted top-p (``P = min(1, P_head * top_p)``); > 0, values above 1 allowed."""

    def __post_init__(self):
        object.__setattr__(self, "temperature", _checked("temperature", self.temperature))
        object.__setattr__(self, "top_p", _checked("top_p", self.top_p))

    @property
    def greedy(self) -> bool:
        """Whether these multipliers ask for greedy decoding (``temperature == 0``)."""
        return self.temperature == 0.0

    def applied(self) -> Multipliers:
        """The multipliers a decoding step applies: a greedy one (``temperature=0``) takes the argmax and records
        the heads' own T, so its temperature multiplier is 1 there.

        Example:
            >>> Multipliers(temperature=0.0, top_p=0.5).applied()
            Multipliers(temperature=1.0, top_p=0.5)
        """
        return dataclasses.replace(self, temperature=1.0) if self.greedy else self


def _checked(name: str, value) -> float:
    """``value`` as a float within the range of multiplier ``name``; raises :class:`MultiplierError` otherwise."""
    lower = LOWER_BOUNDS[name]
    in_range = f"must be a finite number {lower} ({MEANINGS[name]})"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # not a number, or an integer beyond any float
        raise MultiplierError(name, value, lower, f"{name} {in_range}, but is {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and name == "top_p"):
        raise MultiplierError(name, value, lower, f"{name} {in_range}, but is {value!r}")
    if number > MAX_MULTIPLIER:
        raise MultiplierError(
            name, value, f"at most {MAX_MULTIPLIER:g}",
            f"{name} must be at most {MAX_MULTIPLIER:g} (a multiplier on the heads' value; larger ones overflow to "
            f"infinity), but is {value!r}; pass a value between 0 and {MAX_MULTIPLIER:g}",
        )
    return number
