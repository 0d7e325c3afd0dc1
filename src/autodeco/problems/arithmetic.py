"""Procedural arithmetic word problems with exact integer answers, in graded levels.

Levels (every answer is a non-negative integer):

1. one-digit sums: ``What is 3 + 5?``, ``What is the sum of 3 and 5?``, or a one-step story
   (``Mia has 3 shells and finds 5 more. ...``).
2. one-digit ``+``, ``-`` or ``*`` (subtraction never goes below zero), bare or as a story.
3. two-digit ``+`` and ``-`` (10-99, never below zero), bare or as a story.
4. two-step word problems: ``a + b * c``, ``a * b - c`` or ``a + b - c``
   (``Sam has 12 apples and buys 3 bags of 4 apples each. ...``).
5. multi-step word problems with three operations: ``a * b + c - d``, ``a * b - c * d`` or
   ``(a + b) / c + d`` (the division is always exact).

``DEFAULT_LEVELS`` is (1, 2, 3, 4): three quarters levels 1-3 and one quarter level 4, for a
model of about 135M parameters that solves one-digit arithmetic about half the time.

How a list is drawn (:func:`generate_items`): problem ``i`` has level ``levels[i % len(levels)]``
(repeat a level in ``levels`` to weight it); candidates are drawn from ``random.Random(seed)``
and kept only when they belong to the requested split and are new. The split of a question is
fixed by a SHA-256 hash of its text (:func:`split_of`), so train and test share no question text
whatever the seeds and counts; the same sum can still appear in both in different words. The
first ``n`` problems of a longer list equal the list of ``n``.

Answers are computed from the drawn numbers, never parsed back from the text; each item also
carries the arithmetic ``expression`` it was computed from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence

from autodeco.problems.problem import Problem

LEVELS = (1, 2, 3, 4, 5)
"""Every difficulty level the generator knows."""

DEFAULT_LEVELS = (1, 2, 3, 4)
"""Levels used when none are given: mostly 1-3, one quarter level 4."""

SPLITS = ("train", "test")
"""The two disjoint splits."""

DEFAULT_COUNTS = {"train": 2000, "test": 200}
"""How many problems :func:`autodeco.problems.load_problems` makes when no limit is given."""

TEST_SHARE = 0.5
"""Fraction of all possible questions that belong to the test split (by hash)."""

MAX_DRAWS_PER_PROBLEM = 10_000
"""Give up (ValueError) when this many candidates in a row were in the wrong split or repeated."""

TEMPLATE = "arithmetic"
"""Key of the prompt template in :data:`autodeco.problems.TEMPLATES`."""

NAMES = (
    "Sam", "Mia", "Leo", "Ava", "Ben", "Zoe", "Omar", "Lina",
    "Ravi", "Emma", "Jack", "Nora", "Ivan", "Sara", "Kofi", "Yuki",
)  # fmt: skip
ITEMS = (
    "apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "stamps",
    "shells", "cards", "balloons", "eggs", "beads", "flowers", "toy cars",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ArithmeticItem:
    """One generated problem before it becomes a :class:`Problem`."""

    question: str
    """The problem text."""

    answer: int
    """The exact answer, computed from the drawn numbers."""

    level: int
    """Difficulty level, 1-5 (see the module docstring)."""

    expression: str
    """The computation behind the answer, in Python syntax, e.g. ``"12 + 3 * 4"``."""


# Levels ----------------------------------------------------------------------------------------


def _story(rng: random.Random) -> tuple[str, str]:
    return rng.choice(NAMES), rng.choice(ITEMS)


def _one_operation(rng: random.Random, a: int, b: int, operator: str, level: int) -> ArithmeticItem:
    """``a operator b`` as a bare question or a one-step story (numbers in stories are at least 2)."""
    answer = {"+": a + b, "-": a - b, "*": a * b}[operator]
    expression = f"{a} {operator} {b}"
    style = rng.randrange(3)
    if style == 2 and min(a, b) >= 2:
        name, items = _story(rng)
        question = {
            "+": f"{name} has {a} {items} and finds {b} more. How many {items} does {name} have now?",
            "-": f"{name} has {a} {items} and gives away {b}. How many {items} does {name} have left?",
            "*": f"{name} has {a} boxes with {b} {items} in each box. How many {items} does {name} have in total?",
        }[operator]
    elif style == 1:
        word = {"+": "plus", "-": "minus", "*": "times"}[operator]
        question = f"What is {a} {word} {b}?"
    else:
        question = f"What is {expression}?"
    return ArithmeticItem(question, answer, level, expression)


def _level_1(rng: random.Random) -> ArithmeticItem:
    return _one_operation(rng, rng.randint(0, 9), rng.randint(0, 9), "+", 1)


def _level_2(rng: random.Random) -> ArithmeticItem:
    operator = rng.choice("+-*")
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if operator == "-" and a < b:
        a, b = b, a
    return _one_operation(rng, a, b, operator, 2)


def _level_3(rng: random.Random) -> ArithmeticItem:
    operator = rng.choice("+-")
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if operator == "-" and a < b:
        a, b = b, a
    return _one_operation(rng, a, b, operator, 3)


def _level_4(rng: random.Random) -> ArithmeticItem:
    name, items = _story(rng)
    form = rng.randrange(3)
    if form == 0:
        a, b, c = rng.randint(2, 30), rng.randint(2, 5), rng.randint(2, 9)
        question = (
            f"{name} has {a} {items} and buys {b} bags of {c} {items} each. "
            f"How many {items} does {name} have now?"
        )
        return ArithmeticItem(question, a + b * c, 4, f"{a} + {b} * {c}")
    if form == 1:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(2, a * b - 1)
        question = (
            f"{name} has {a} boxes of {b} {items} and gives away {c} {items}. "
            f"How many {items} does {name} have left?"
        )
        return ArithmeticItem(question, a * b - c, 4, f"{a} * {b} - {c}")
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    c = rng.randint(2, a + b - 1)
    question = (
        f"{name} has {a} {items}, finds {b} more, and then loses {c}. "
        f"How many {items} does {name} have now?"
    )
    return ArithmeticItem(question, a + b - c, 4, f"{a} + {b} - {c}")


def _level_5(rng: random.Random) -> ArithmeticItem:
    name, items = _story(rng)
    form = rng.randrange(3)
    if form == 0:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 20)
        d = rng.randint(2, a * b + c - 1)
        question = (
            f"{name} buys {a} packs of {b} {items}, gets {c} more from a friend, and then gives {d} away. "
            f"How many {items} does {name} have now?"
        )
        return ArithmeticItem(question, a * b + c - d, 5, f"{a} * {b} + {c} - {d}")
    if form == 1:
        a, b = rng.randint(3, 9), rng.randint(3, 9)
        c = rng.randint(2, 4)
        d = rng.randint(2, (a * b) // c)  # c * d <= a * b: nothing goes below zero
        question = (
            f"{name} buys {a} boxes of {b} {items} and gives {c} friends {d} {items} each. "
            f"How many {items} does {name} have left?"
        )
        return ArithmeticItem(question, a * b - c * d, 5, f"{a} * {b} - {c} * {d}")
    c, share, d = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 9)
    total = c * share  # chosen first so that the division is exact
    a = rng.randint(2, total - 2)
    b = total - a
    question = (
        f"{name} has {a} {items} and finds {b} more, then shares all of them equally among {c} friends. "
        f"Each friend then gets {d} more. How many {items} does each friend have now?"
    )
    return ArithmeticItem(question, share + d, 5, f"({a} + {b}) / {c} + {d}")


_DRAW: dict[int, Callable[[random.Random], ArithmeticItem]] = {
    1: _level_1, 2: _level_2, 3: _level_3, 4: _level_4, 5: _level_5,
}  # fmt: skip


def draw_item(rng: random.Random, level: int) -> ArithmeticItem:
    """One random problem of ``level``, drawn from ``rng`` (any split).

    Example:
        >>> item = draw_item(random.Random(0), 1)
        >>> item.level, item.answer == eval(item.expression)
        (1, True)
    """
    if level not in _DRAW:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return _DRAW[level](rng)


# Splits ----------------------------------------------------------------------------------------


def split_of(question: str) -> str:
    """The split a question belongs to, from a SHA-256 hash of its text (stable across runs and machines).

    Example:
        >>> split_of("What is 3 + 5?") in SPLITS
        True
    """
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "test" if position < TEST_SHARE else "train"


def generate_items(
    split: str, count: int, *, seed: int = 0, levels: Sequence[int] = DEFAULT_LEVELS
) -> list[ArithmeticItem]:
    """``count`` distinct problems of ``split``; problem ``i`` has level ``levels[i % len(levels)]``.

    Args:
        split: ``"train"`` or ``"test"``.
        count: number of problems, at least 1.
        seed: seed of the ``random.Random`` the numbers and wordings are drawn from.
        levels: levels to cycle through; repeat one to weight it.

    Returns:
        The problems, reproducible from ``(split, seed, levels)``; a shorter list is a prefix.

    Raises:
        ValueError: for an unknown split, a bad count or level, or when a level runs out of
            new questions in this split.

    Example:
        >>> [item.level for item in generate_items("test", 5, levels=(1, 3))]
        [1, 3, 1, 3, 1]
    """
    _check_arguments(split, count, levels)
    rng = random.Random(seed)
    seen: set[str] = set()
    items: list[ArithmeticItem] = []
    for index in range(count):
        level = levels[index % len(levels)]
        for _ in range(MAX_DRAWS_PER_PROBLEM):
            item = draw_item(rng, level)
            if item.question not in seen and split_of(item.question) == split:
                break
        else:
            raise ValueError(
                f"level {level} ran out of new {split} questions after {len(items)} problems; "
                f"ask for fewer than {count} or add other levels"
            )
        seen.add(item.question)
        items.append(item)
    return items


def generate_problems(
    split: str, count: int, *, seed: int = 0, levels: Sequence[int] = DEFAULT_LEVELS
) -> list[Problem]:
    """:func:`generate_items` as :class:`Problem` s with ids ``arithmetic/<split>/<index>`` (0-based).

    Ids are stable for a given ``(split, seed, levels)``; the answer is the integer as a string.

    Example:
        >>> problem = generate_problems("train", 3, seed=1)[0]
        >>> problem.id, problem.source, problem.difficulty
        ('arithmetic/train/0', 'arithmetic', 1)
    """
    return [
        Problem(
            id=f"arithmetic/{split}/{index}",
            question=item.question,
            answer=str(item.answer),
            source="arithmetic",
            template=TEMPLATE,
            difficulty=item.level,
        )
        for index, item in enumerate(generate_items(split, count, seed=seed, levels=levels))
    ]


def _check_arguments(split: str, count: int, levels: Sequence[int]) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} for arithmetic problems, got {split!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    if not isinstance(levels, (tuple, list)) or not levels:
        raise ValueError(f"levels must be a non-empty sequence of levels from {LEVELS}, got {levels!r}")
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"levels must be drawn from {LEVELS}, got {tuple(levels)!r} (unknown: {unknown})")
