"""Stable seeds derived from names, identical on every machine, process and run."""

from __future__ import annotations

import hashlib


def derived_seed(*parts) -> int:
    """A 63-bit seed from any printable parts: SHA-256 of the parts joined by ``\\x1f``.

    Used wherever randomness must not depend on batching, process count or restarts (sampling
    batches, data order, easy-token drops).

    Example:
        >>> derived_seed("eval", 0, "T=1.00,P=1.00") == derived_seed("eval", 0, "T=1.00,P=1.00")
        True
    """
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
