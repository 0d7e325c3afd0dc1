"""Decoding control in training (PAPER.md section 7): which examples get a commanded copy, and which command.

A share of the training examples is paired with a copy whose prompt carries a decoding command
(the phrasing families: :mod:`autodeco.data.phrasings`; after the question, before it or in a system
message, as the family says). The copy keeps the same completion tokens; the recipe runs both in the
same micro-batch and a ranking loss (:func:`autodeco.core.control_losses.ranking_loss`) pushes the
copy's mean T and P below (low) or above (high) the plain example's. With ``neutral``, a copy under a
neutral sentence must keep the plain means (:mod:`autodeco.training.control_losses`).

Which examples are paired, in which direction and with which phrasing is a pure function of (seed,
epoch, example index), like every other random choice of the recipe, so any split of a global batch
across processes and accumulation steps pairs the same examples the same way.
"""

from __future__ import annotations

import dataclasses
import random

from autodeco.common.seeds import derived_seed
from autodeco.data.phrasings import HIGH, KIND_DIRECTIONS, LOW, NEUTRAL, Command, ControlPhrasings


@dataclasses.dataclass(frozen=True)
class ControlChoice:
    """The command paired with one training example."""

    kind: str
    """``low``, ``high`` or ``neutral``."""
    command: Command
    """The command: its text, family and placement (after the question, before it, or a system message)."""

    @property
    def phrasing(self) -> str:
        """The command's text."""
        return self.command.text

    @property
    def direction(self) -> int:
        """-1 for low, +1 for high, 0 for a neutral sentence (the copy's means must stay at the plain ones)."""
        return KIND_DIRECTIONS[self.kind]


def control_choice(seed: int, epoch: int, example_index: int, share: float, phrasings: ControlPhrasings) -> ControlChoice | None:
    """Whether example ``example_index`` of ``epoch`` is paired with a command, and with which one.

    With probability ``share`` it is; the kind is low or high with equal probability and the
    command is drawn as :func:`draw_command` says. A pure function of its arguments.

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
    neutral: bool = False,
) -> tuple[ControlChoice, ...]:
    """The commands example ``example_index`` of ``epoch`` is paired with: none, one, or (``both``) a low and a high one.

    With probability ``share`` the example is paired. Then, by default, with one command whose kind
    is low or high with equal probability (:func:`control_choice`); with ``both``, with one command of
    each kind, so that what the ranking loss asks of the two copies pulls opposite ways wherever the
    heads cannot tell the commands apart. With ``neutral``, a neutral sentence is added to the paired
    commands (its copy must keep the plain means). Commands come from the training families only
    (:func:`draw_command`). A pure function of its arguments.

    Example:
        >>> from autodeco.data.phrasings import load_phrasings
        >>> [choice.kind for choice in control_choices(0, 0, 3, 1.0, load_phrasings(), both=True, neutral=True)]
        ['low', 'high', 'neutral']
    """
    generator = random.Random(derived_seed("control", seed, epoch, example_index))
    if not generator.random() < share:
        return ()
    if both:
        kinds = (LOW, HIGH)
    else:
        kinds = (LOW if generator.random() < 0.5 else HIGH,)
    if neutral:
        kinds = (*kinds, NEUTRAL)
    return tuple(ControlChoice(kind, draw_command(generator, phrasings, kind)) for kind in kinds)


def draw_command(generator: random.Random, phrasings: ControlPhrasings, kind: str) -> Command:
    """A training command of ``kind``: a family drawn uniformly among the kind's training families, then a phrasing
    uniformly within it, so a family of many phrasings weighs no more than a family of few.

    A kind with one training family (every kind of a version-1 phrasing file) draws only the phrasing, as training
    did before families existed, so older runs draw the same commands.

    Raises:
        ValueError: the phrasings have no training family of ``kind`` (naming the file).
    """
    families = training_families(phrasings, kind)
    family = families[generator.randrange(len(families))] if len(families) > 1 else families[0]
    return family.commands()[generator.randrange(len(family.phrasings))]


def training_families(phrasings: ControlPhrasings, kind: str) -> tuple:
    """The training families of ``kind``, in file order.

    Raises:
        ValueError: there is none (naming the file and the kind).
    """
    families = phrasings.families_for("train", kind)
    if not families:
        raise ValueError(f"the phrasing file {phrasings.source!r} has no training family of kind {kind!r}; add one")
    return families
