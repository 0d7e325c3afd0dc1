"""Decoding control in training (PAPER.md section 7): which examples get a commanded copy, and which command.

A share of the training examples is paired with a copy whose prompt ends with a decoding command
(the phrasings: :mod:`autodeco.data.phrasings`). The copy keeps the same completion tokens; the
recipe runs both in the same micro-batch and a ranking loss
(:func:`autodeco.core.control_losses.ranking_loss`) pushes the copy's mean T and P below (low) or above
(high) the plain example's.

Which examples are paired, in which direction and with which phrasing is a pure function of (seed,
epoch, example index), like every other random choice of the recipe, so any split of a global batch
across processes and accumulation steps pairs the same examples the same way.
"""

from __future__ import annotations

import dataclasses
import random

from autodeco.common.seeds import derived_seed
from autodeco.data.phrasings import DIRECTIONS, HIGH, LOW, ControlPhrasings


@dataclasses.dataclass(frozen=True)
class ControlChoice:
    """The command paired with one training example."""

    kind: str
    """``low`` or ``high``."""
    phrasing: str
    """The command text appended to the prompt."""

    @property
    def direction(self) -> int:
        """-1 for low, +1 for high."""
        return DIRECTIONS[self.kind]


def control_choice(seed: int, epoch: int, example_index: int, share: float, phrasings: ControlPhrasings) -> ControlChoice | None:
    """Whether example ``example_index`` of ``epoch`` is paired with a command, and with which one.

    With probability ``share`` it is; the kind is low or high with equal probability and the
    phrasing is drawn uniformly from that kind's training list. A pure function of its arguments.

    Example:
        >>> from autodeco.data.phrasings import load_phrasings
        >>> phrasings = load_phrasings()
        >>> control_choice(0, 0, 3, 1.0, phrasings) == control_choice(0, 0, 3, 1.0, phrasings)
        True
        >>> control_choice(0, 0, 3, 0.0, phrasings) is None
        True
    """
    choices = control_choices(seed, epoch, example_index, share, phrasings)
    return choices[0] if choices else None


def control_choices(
    seed: int, epoch: int, example_index: int, share: float, phrasings: ControlPhrasings, *, both: bool = False,
) -> tuple[ControlChoice, ...]:
    """The commands example ``example_index`` of ``epoch`` is paired with: none, one, or (``both``) a low and a high one.

    With probability ``share`` the example is paired. Then, by default, with one command whose kind
    is low or high with equal probability (:func:`control_choice`); with ``both``, with one command of
    each kind, so that what the ranking loss asks of the two copies pulls opposite ways wherever the
    heads cannot tell the commands apart. Phrasings are drawn uniformly from the kind's training list.
    A pure function of its arguments.

    Example:
        >>> from autodeco.data.phrasings import load_phrasings
        >>> [choice.kind for choice in control_choices(0, 0, 3, 1.0, load_phrasings(), both=True)]
        ['low', 'high']
    """
    generator = random.Random(derived_seed("control", seed, epoch, example_index))
    if not generator.random() < share:
        return ()
    if both:
        kinds = (LOW, HIGH)
    else:
        kinds = (LOW if generator.random() < 0.5 else HIGH,)
    return tuple(
        ControlChoice(kind, phrasings.train[kind][generator.randrange(len(phrasings.train[kind]))]) for kind in kinds
    )
