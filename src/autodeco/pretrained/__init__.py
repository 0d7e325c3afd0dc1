"""Heads shipped inside the package, so the embedded default model decodes with trained heads out of the box.

Each sub-folder is an ordinary heads-only checkpoint (``config.json`` + safetensors) with a model
card (``README.md``) giving its training recipe and measured results.
"""

from __future__ import annotations

from pathlib import Path

from autodeco.model.base_model import EMBEDDED_MODEL

SHIPPED_HEADS = {EMBEDDED_MODEL: "smollm2-135m-instruct"}
"""Base model reference -> folder of its shipped heads."""


def shipped_heads_path(base: str = EMBEDDED_MODEL) -> Path | None:
    """The folder of the heads shipped for ``base``, or None when there are none (or they are not built yet)."""
    name = SHIPPED_HEADS.get(base)
    if name is None:
        return None
    folder = Path(__file__).parent / name
    return folder if (folder / "config.json").exists() else None


def default_heads_for(base: str | None) -> str | None:
    """Heads to use when the user names none: the shipped ones for the embedded default, else None (fresh heads)."""
    path = shipped_heads_path(base or EMBEDDED_MODEL)
    return str(path) if path is not None else None
