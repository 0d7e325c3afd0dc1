"""Per-token traces: each generated token with the temperature and top-p the heads chose for it.

AutoDeco heads predict a temperature ``T_t`` in (0, 2) and a top-p ``P_t`` in (0, 1) for every
generated token. :class:`GenerationTrace` records those values next to the decoded token pieces,
with summary statistics and a JSON form (:func:`write_json`). Renderings for people (terminal
table, HTML, PNG) live in :mod:`autodeco.views`.

Example:
    >>> trace = GenerationTrace(
    ...     prompt="2+2=",
    ...     tokens=[TokenTrace("4", 0.3, 0.8)],
    ...     model="SmolLM2-135M-Instruct + untrained heads",
    ...     heads_trained=False,
    ... )
    >>> trace.text
    '4'
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autodeco.common.jsonl import write_bytes_atomic

__all__ = ["UNTRAINED_WARNING", "GenerationTrace", "TokenTrace", "write_json"]

UNTRAINED_WARNING = "heads are UNTRAINED: values are not meaningful"
"""What every rendering of a trace says when ``heads_trained`` is False."""


@dataclass(frozen=True)
class TokenTrace:
    """One generated token and the decoding values chosen for it.

    Attributes:
        text: The decoded token piece; may contain spaces or newlines, or be
            empty (for example a byte that only completes a character later).
        temperature: The predicted temperature T_t, expected in (0, 2).
        top_p: The predicted top-p P_t, expected in (0, 1).

    Example:
        >>> TokenTrace(" world", temperature=0.7, top_p=0.9).text
        ' world'
    """

    text: str
    temperature: float
    top_p: float

    def to_dict(self) -> dict[str, Any]:
        """Returns the token as a JSON-ready dict.

        Example:
            >>> TokenTrace("a", 1.0, 0.5).to_dict()
            {'text': 'a', 'temperature': 1.0, 'top_p': 0.5}
        """
        return {"text": self.text, "temperature": self.temperature, "top_p": self.top_p}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenTrace:
        """Builds a token from :meth:`to_dict` output.

        Example:
            >>> TokenTrace.from_dict({"text": "a", "temperature": 1, "top_p": 0.5})
            TokenTrace(text='a', temperature=1.0, top_p=0.5)
        """
        return cls(
            text=str(data["text"]),
            temperature=float(data["temperature"]),
            top_p=float(data["top_p"]),
        )


@dataclass
class GenerationTrace:
    """A generated continuation with its per-token temperature and top-p.

    Attributes:
        prompt: The prompt the model continued.
        tokens: The generated tokens, in order.
        model: Description of the base model and heads, for example
            ``"SmolLM2-135M-Instruct + untrained heads"``.
        heads_trained: False when the heads are untrained, so that every
            rendering warns that the values are not meaningful.

    Example:
        >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
        >>> trace.summary()["temperature"]["mean"]
        0.5
    """

    prompt: str
    tokens: list[TokenTrace] = field(default_factory=list)
    model: str = ""
    heads_trained: bool = False

    @property
    def text(self) -> str:
        """The generated text: all token pieces joined.

        Example:
            >>> GenerationTrace("", [TokenTrace("a", 1, 1), TokenTrace("b", 1, 1)]).text
            'ab'
        """
        return "".join(token.text for token in self.tokens)

    def summary(self) -> dict[str, Any]:
        """Summary statistics of temperature and top-p.

        The standard deviation is the population one (0.0 for a single token).

        Returns:
            ``{"count": n, "temperature": stats, "top_p": stats}`` where
            ``stats`` has the keys ``mean``, ``std``, ``min`` and ``max``;
            for an empty trace the count is 0 and every statistic is None.

        Example:
            >>> trace = GenerationTrace("", [TokenTrace("a", 0.5, 0.9), TokenTrace("b", 1.5, 0.7)])
            >>> trace.summary()["temperature"]
            {'mean': 1.0, 'std': 0.5, 'min': 0.5, 'max': 1.5}
        """
        return {
            "count": len(self.tokens),
            "temperature": _statistics([token.temperature for token in self.tokens]),
            "top_p": _statistics([token.top_p for token in self.tokens]),
        }

    def to_dict(self) -> dict[str, Any]:
        """Returns the trace as a JSON-ready dict (see :meth:`from_dict`).

        Example:
            >>> GenerationTrace("Hi", [], "demo", True).to_dict()["model"]
            'demo'
        """
        return {
            "prompt": self.prompt,
            "model": self.model,
            "heads_trained": self.heads_trained,
            "tokens": [token.to_dict() for token in self.tokens],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationTrace:
        """Builds a trace from :meth:`to_dict` output (for example loaded JSON).

        Example:
            >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
            >>> GenerationTrace.from_dict(trace.to_dict()) == trace
            True
        """
        return cls(
            prompt=str(data["prompt"]),
            tokens=[TokenTrace.from_dict(token) for token in data.get("tokens", [])],
            model=str(data.get("model", "")),
            heads_trained=bool(data.get("heads_trained", False)),
        )


def _statistics(values: list[float]) -> dict[str, float | None]:
    """Mean, population std, min and max of ``values`` (all None if empty)."""
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "max": max(values),
    }


def write_json(trace: GenerationTrace, path: str | os.PathLike[str]) -> Path:
    """Writes the trace as JSON (see :meth:`GenerationTrace.from_dict`), atomically.

    Example:
        >>> import tempfile, os
        >>> trace = GenerationTrace("Hi", [TokenTrace("!", 0.5, 0.9)], "demo", True)
        >>> target = write_json(trace, os.path.join(tempfile.mkdtemp(), "trace.json"))
        >>> GenerationTrace.from_dict(json.loads(target.read_text(encoding="utf-8"))) == trace
        True
    """
    text = json.dumps(trace.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))
