"""Several heads on one base, chosen per request: the served ids, the one-base check, the plain base.

One engine (HF or vLLM) may serve several heads checkpoints on one base model, and the base itself
without heads; a request's ``model`` (:attr:`~autodeco.engines.base.GenerationRequest.heads` inside the
engine) picks which. The rules shared by both engines and ``autodeco serve`` live here:

- **ids** (:func:`heads_ids`): each checkpoint is served under its folder's name (``shipped:NAME`` under
  ``NAME``); the plain base under its own name (:func:`base_id`). A name already taken gets ``-2``,
  ``-3``, ... in the order given (two folders both called ``heads`` are served as ``heads`` and ``heads-2``).
- **one base** (:func:`check_one_base`): every checkpoint must record the same base model; one that
  records another is refused, naming both bases.
- **the plain base** (:func:`plain_base_heads`): heads with both heads disabled predict ``T = 1`` and
  ``P = 1``, so the request's ``temperature`` and ``top_p`` (multipliers on 1) are the absolute values
  used, as in OpenAI's API, through the very same decoding step.

Example:
    >>> heads_ids(["shipped:smollm2-135m-instruct", "runs/a/heads", "runs/b/heads"])
    ['smollm2-135m-instruct', 'heads', 'heads-2']
    >>> base_id("embedded:SmolLM2-135M-Instruct", taken=["heads"])
    'embedded:SmolLM2-135M-Instruct'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from autodeco.model.checkpoint import CheckpointContents, CheckpointError
from autodeco.model.shipped import SHIPPED_PREFIX, resolve_heads_reference

PLAIN_BASE_TOP_P_MAX = 1.0
"""A plain-base request's ``top_p`` is an absolute value, at most 1 (OpenAI's range)."""


def unique_ids(names: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """``names`` made unique in order: a name already used (or in ``taken``) gets ``-2``, ``-3``, ...

    Example:
        >>> unique_ids(["a", "b", "a", "a"], taken=["b"])
        ['a', 'b-2', 'a-2', 'a-3']
    """
    used = set(taken)
    ids = []
    for name in names:
        candidate, number = name, 1
        while candidate in used:
            number += 1
            candidate = f"{name}-{number}"
        used.add(candidate)
        ids.append(candidate)
    return ids


def heads_name(reference: str | os.PathLike) -> str:
    """The short name of a heads reference: the folder's name, ``NAME`` for ``shipped:NAME``.

    Example:
        >>> heads_name("shipped:smollm2-135m-instruct-control"), heads_name("runs/train/heads/")
        ('smollm2-135m-instruct-control', 'heads')
    """
    text = os.fspath(reference)
    if text.startswith(SHIPPED_PREFIX):
        return text[len(SHIPPED_PREFIX):]
    return Path(text).expanduser().name or text


def heads_ids(references: list[str | os.PathLike]) -> list[str]:
    """The ids under which ``references`` are served (see the module docstring)."""
    return unique_ids(heads_name(reference) for reference in references)


def check_distinct(references: list[str | os.PathLike]) -> None:
    """Refuse a heads checkpoint given twice (by two paths, or as a path and ``shipped:NAME``).

    Raises:
        ValueError: naming the two references.
    """
    seen: dict[Path, str | os.PathLike] = {}
    for reference in references:
        folder = resolve_heads_reference(reference).resolve()
        if folder in seen:
            raise ValueError(f"{os.fspath(reference)!r} and {os.fspath(seen[folder])!r} are the same heads checkpoint; "
                             "give each once")
        seen[folder] = reference


def base_id(reference: str | None, taken: Iterable[str] = ()) -> str:
    """The id of the plain base: its reference (a local folder by its name), made unique against ``taken``.

    Example:
        >>> base_id("/models/SmolLM2", taken=["SmolLM2"])
        'SmolLM2-2'
    """
    name = reference or "base"
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        name = path.name or name
    return unique_ids([name], taken)[0]


def recorded_base(contents: CheckpointContents) -> str | None:
    """The base a checkpoint records, comparable across checkpoints (a local folder as a resolved path)."""
    reference = contents.config.base_model_name_or_path
    if not reference:
        return None
    path = Path(reference).expanduser()
    candidate = contents.path / reference
    if not path.is_absolute() and candidate.exists():
        return str(candidate.resolve())
    return str(path.resolve()) if path.exists() else reference


SERVE_ONE_BASE = "one server runs one base: serve heads of another base from a server of their own"
"""What :func:`check_one_base` tells a user who gave heads of two bases (its default ``remedy``)."""


def check_one_base(checkpoints: list[CheckpointContents], references: list[str], *,
                   remedy: str = SERVE_ONE_BASE) -> str | None:
    """Refuse checkpoints recorded for different bases; return the base they share (None: none recorded).

    Args:
        checkpoints: the read checkpoints.
        references: how the user named each (for the message).
        remedy: what the message tells the user to do instead.

    Raises:
        CheckpointError: naming the two checkpoints and their two bases.
    """
    first = None
    for contents, reference in zip(checkpoints, references):
        base = recorded_base(contents)
        if base is None:
            continue
        if first is None:
            first = (reference, base)
        elif base != first[1]:
            raise CheckpointError(
                f"heads {reference!r} were made for base {base!r}, but heads {first[0]!r} for base {first[1]!r}; "
                + remedy
            )
    return None if first is None else first[1]


def plain_base_heads(hidden_size: int, vocab_size: int):
    """Heads that decode the base as it is: both disabled (``T = 1``, ``P = 1``), so the user's values are absolute.

    Example:
        >>> heads = plain_base_heads(8, 16)
        >>> import torch; heads.predict_temperature(torch.zeros(2, 8)).tolist()
        [1.0, 1.0]
    """
    import torch

    from autodeco.model.config import AutoDecoConfig
    from autodeco.model.heads import AutoDecoHeads

    settings = AutoDecoConfig(hidden_size, vocab_size, use_enhanced_features=False)
    settings.enable_temperature_head = settings.enable_top_p_head = False  # the config refuses this at creation
    with torch.random.fork_rng(devices=[]):  # the unused weights must not move the caller's random state
        return AutoDecoHeads(settings)


def check_plain_base_top_p(top_p: float, name: str) -> None:
    """Refuse a plain-base request's ``top_p`` above 1 (there it is an absolute value, not a multiplier).

    Raises:
        ValueError: quoting the value.
    """
    if top_p > PLAIN_BASE_TOP_P_MAX:
        raise ValueError(
            f"top_p must be in (0, 1] for {name!r} (the base without heads: temperature and top_p are absolute "
            f"values there, as in OpenAI's API), but is {top_p}"
        )


def served_model_names(engine) -> list[str]:
    """Every id an engine answers to: its ``model_names`` when it has them, else its one ``model_name``."""
    names = getattr(engine, "model_names", None)
    return list(names) if names else [engine.model_name]
