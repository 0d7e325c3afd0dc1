"""Content fingerprints recorded with a run, so that a resume can tell whether its inputs changed.

A run folder records what it was computed from (problems, heads, base model); a resume whose
inputs hash differently is refused, naming what changed, instead of mixing old and new results.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

LENGTH = 16
"""Hex digits kept of a SHA-256: enough to tell versions of one input apart."""


def text_fingerprint(parts: Iterable[str]) -> str:
    """A short SHA-256 over strings, each length-prefixed (so ``["ab", "c"]`` differs from ``["a", "bc"]``).

    Example:
        >>> text_fingerprint(["ab", "c"]) != text_fingerprint(["a", "bc"])
        True
    """
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()[:LENGTH]


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """A short SHA-256 over the bytes of files, in order.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "t.jsonl"
        >>> _ = path.write_text("")
        >>> files_fingerprint([path])
        'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:LENGTH]


def tensors_fingerprint(tensors: Mapping[str, object]) -> str:
    """A short SHA-256 over named tensors (names, dtypes, shapes and bytes), in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:LENGTH]


def model_reference_fingerprint(reference: str | os.PathLike | None) -> str | None:
    """What identifies a model reference: for a local folder, its ``config.json`` and weight files' names and sizes;
    for a hub id (or None), the reference itself.

    Hashing the weights themselves (gigabytes) would make every resume slow; a changed architecture,
    a replaced weight file of another size or a different folder all change this value.
    """
    if reference is None:
        return None
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        return str(reference)
    parts = []
    config = folder / "config.json"
    if config.is_file():
        parts.append(config.read_text(encoding="utf-8", errors="replace"))
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".pt") and path.is_file():
            parts.append(json.dumps([path.name, path.stat().st_size]))
    return text_fingerprint(parts)
