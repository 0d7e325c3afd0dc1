"""One problem with a checkable answer, and the prompt templates (PAPER.md section 5).

Example:
    >>> Problem("p:1", "What is 2 + 2?", "4", "demo", "arithmetic").prompt().startswith("What is 2 + 2?")
    True
"""

from __future__ import annotations

import dataclasses
import unicodedata

BOXED_INSTRUCTION = "\nMake sure you output the final answer within \\boxed{}."
"""What the paper appends to every math problem (PAPER.md section 5)."""

_BOXED = "{question}" + BOXED_INSTRUCTION.replace("{", "{{").replace("}", "}}")

TEMPLATES: dict[str, str] = {
    "arithmetic": _BOXED,
    "gsm8k": _BOXED,
    "math": _BOXED,
    "competition": _BOXED,
    "generic": _BOXED,
}
"""Prompt template per dataset kind (``str.format`` with ``question``).

All use the paper's math prompt, so that every answer can be read from its ``\\boxed{}``. They
are separate keys so that one kind can change without touching the others.
"""


def question_key(question: str) -> str:
    """A question's text normalised so that copies of one question compare equal: what splits are keyed by.

    Unicode NFKC, case folded, runs of whitespace as one space, no whitespace at the ends.

    Example:
        >>> question_key("  What is 2 +\\n 2? ") == question_key("what is 2 + 2?")
        True
    """
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split())


class DataError(ValueError):
    """A data file or dataset holds bad input (malformed JSON, missing fields, no problems)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem with a checkable answer."""

    id: str
    """Unique within its dataset and stable across runs: ``arithmetic/test/17``, ``gsm8k_test.jsonl:3f2a9c1b07``
    (a hash of question and answer, ``#2`` for a repeat) or the record's own id (MATH's ``unique_id``)."""

    question: str
    """The raw problem text."""

    answer: str
    """The ground truth, always a string (JSON numbers converted with ``str()``)."""

    source: str
    """Dataset name (``arithmetic``, ``gsm8k``, ...), file path, or ``hf:`` id."""

    template: str
    """Key into :data:`TEMPLATES`."""

    difficulty: int | None = None
    """Arithmetic or MATH level (1-5), else None."""

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {self.template!r}")
        if not isinstance(self.answer, str):
            kind = type(self.answer).__name__
            raise TypeError(f"answer must be a str (convert with str()), got {kind} {self.answer!r}")

    def prompt(self) -> str:
        """The user message: the question in its template (no chat template; callers apply it).

        Example:
            >>> Problem("p:1", "What is 2 + 2?", "4", "demo", "arithmetic").prompt()
            'What is 2 + 2?\\nMake sure you output the final answer within \\\\boxed{}.'
        """
        return TEMPLATES[self.template].format(question=self.question)
