"""Finding the heads shipped in :mod:`autodeco.pretrained`, and the default heads of a base model.

The embedded default base model decodes with trained heads out of the box: when no heads are named, its
shipped heads are used (:func:`heads_or_default`). Any shipped checkpoint can be named wherever a heads
folder is expected as ``shipped:<folder>`` (e.g. ``--heads shipped:smollm2-135m-instruct-control``, the
heads trained with decoding control).
"""

from __future__ import annotations

import os
from pathlib import Path

from autodeco.model.base_model import EMBEDDED_MODEL
from autodeco.pretrained import PRETRAINED_DIR

SHIPPED_HEADS = {EMBEDDED_MODEL: "smollm2-135m-instruct"}
"""Base model reference -> folder of its shipped default heads."""

SHIPPED_PREFIX = "shipped:"
"""Prefix of a named shipped heads reference: ``shipped:<folder under autodeco/pretrained>``."""


def shipped_heads_path(base: str = EMBEDDED_MODEL) -> Path | None:
    """The folder of the heads shipped for ``base``, or None when there are none (or they are not built yet)."""
    name = SHIPPED_HEADS.get(base)
    if name is None:
        return None
    folder = PRETRAINED_DIR / name
    return folder if (folder / "config.json").exists() else None


def default_heads_for(base: str | None) -> str | None:
    """Heads to use when the user names none: the shipped ones for the embedded default, else None (fresh heads)."""
    path = shipped_heads_path(base or EMBEDDED_MODEL)
    return str(path) if path is not None else None


def heads_or_default(heads: str | os.PathLike | None, base: str | None) -> str | None:
    """The heads the user named, else the default heads of ``base`` (:func:`default_heads_for`; None: fresh heads).

    Example:
        >>> heads_or_default("runs/train/heads", None)
        'runs/train/heads'
        >>> heads_or_default(None, None) == default_heads_for(None)
        True
    """
    return os.fspath(heads) if heads else default_heads_for(base)


def shipped_names() -> list[str]:
    """Names of the shipped heads checkpoints (usable as ``shipped:<name>``).

    Example:
        >>> "smollm2-135m-instruct" in shipped_names()
        True
    """
    return sorted(folder.name for folder in PRETRAINED_DIR.iterdir() if (folder / "config.json").is_file())


def resolve_heads_reference(reference: str | os.PathLike) -> Path:
    """A heads folder for ``reference``: ``shipped:<name>`` names a shipped checkpoint, anything else is a path.

    Raises:
        ValueError: an unknown shipped name (listing the known ones).

    Example:
        >>> resolve_heads_reference("shipped:smollm2-135m-instruct").name
        'smollm2-135m-instruct'
        >>> resolve_heads_reference("runs/train/heads")
        PosixPath('runs/train/heads')
    """
    text = os.fspath(reference)
    if not text.startswith(SHIPPED_PREFIX):
        return Path(text).expanduser()
    name = text[len(SHIPPED_PREFIX) :]
    if name not in shipped_names():
        raise ValueError(
            f"no shipped heads named {name!r} ({text!r}); shipped: "
            f"{', '.join(SHIPPED_PREFIX + known for known in shipped_names())}"
        )
    return PRETRAINED_DIR / name
