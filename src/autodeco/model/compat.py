"""The few names that differ between the transformers releases autodeco supports.

transformers 5.24 renamed the key-value cache from ``past_key_values`` to ``cache``, both as the
keyword that models and ``generate()`` take and as the field of their outputs (the old name still
works there, with a deprecation warning). autodeco uses whichever name the installed release
defines, so it runs without warnings on both sides of the rename.
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_ARGUMENT = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
"""The keyword (and output field) under which the installed transformers passes a model's cache."""


def output_cache(output) -> Any:
    """The cache held by a model output (``None`` when the model returned none)."""
    return output.get(CACHE_ARGUMENT)
