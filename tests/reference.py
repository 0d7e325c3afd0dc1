"""Plain reference versions of the optimised decoding math, for tests to compare against.

Each is the straightforward formula: a comparison sort, a boolean mask, a scatter, fresh tensors.
The package runs the optimised versions (``autodeco.core.decoding``, ``autodeco.core.heads``).
"""

import torch

from autodeco.core.decoding import MIN_SAMPLING_TEMPERATURE, nucleus_removal_mask
from autodeco.core.heads import ENTROPY_LOG_EPSILON, TOP_MASS_TOKENS


def reference_warp_logits(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` logits / T with ``-inf`` outside each row's top-p nucleus (Hugging Face's top-p rule)."""
    scaled_logits = logits.float() / temperature.float().clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1)
    sorted_logits, sorted_indices = scaled_logits.sort(dim=-1)  # (B, V), ascending
    removed = nucleus_removal_mask(sorted_logits.softmax(dim=-1), top_p.float())  # (B, V), sorted order
    kept_sorted = sorted_logits.masked_fill(removed, float("-inf"))
    return torch.empty_like(kept_sorted).scatter_(-1, sorted_indices, kept_sorted)  # (B, V), vocabulary order


def reference_features_from_sorted(ascending_probs: torch.Tensor) -> torch.Tensor:
    """The four top-p features (max, entropy, unbiased variance, top-5 mass) of sorted probabilities."""
    top_probs = ascending_probs[..., -TOP_MASS_TOKENS:]
    entropy = -(ascending_probs * torch.log(ascending_probs + ENTROPY_LOG_EPSILON)).sum(dim=-1)
    return torch.stack([top_probs.amax(dim=-1), entropy, ascending_probs.var(dim=-1), top_probs.sum(dim=-1)], dim=-1)
