"""One dynamic-decoding step: the heads' T and P for each row, and the logits they warp to.

Pure tensor code (torch only). Every engine runs this step: ``generate()``'s logits processor
(:mod:`autodeco.model.generation`), the compacting decode loop, the batching HF engine and the vLLM
model class. The heads and their policy come in as ``heads``: any object with ``predict_temperature``,
``predict_top_p`` and ``reads_probability_features`` (:class:`autodeco.model.heads.AutoDecoHeads`, which
:class:`~autodeco.model.modeling.AutoDecoForCausalLM` is).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autodeco.core.decoding import MIN_SAMPLING_TEMPERATURE, combine_with_user_values, mask_outside_nucleus, row_chunks, scale_logits
from autodeco.core.heads import FEATURE_TEMPERATURE_EPSILON, NUM_PROBABILITY_FEATURES, probability_features_from_probs


def dynamic_step(
    heads,
    hidden: torch.Tensor,
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    top_p: float | torch.Tensor,
    sample: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step: heads -> (T, P) -> warped logits, without sorting the vocabulary.

    Args:
        heads: the heads with their policy (:class:`~autodeco.model.heads.AutoDecoHeads`, e.g. the model).
        hidden: ``(B, H)`` final hidden states.
        logits: ``(B, V)`` logits of the step (float32 in ``generate()``); never modified.
        temperature, top_p: the user's multipliers: one for every row, or one per row (``(B,)`` tensors).
        sample: return warped logits; else return the logits unchanged.

    Returns:
        ``(warped_logits (B, V), temperature (B,), top_p (B,))``, the values actually used.

    The vocabulary-sized work is one division and one softmax shared by the features and the nucleus
    (a second of each when ``T + 1e-8``, the features' scale, differs from the final T in float32: the
    user's multiplier is not 1, or T < 0.25), the features' passes
    (:func:`~autodeco.core.heads.probability_features_from_probs`, their top 5 through block maxima) and the
    nucleus (:func:`~autodeco.core.decoding.mask_outside_nucleus`, in place on the scaled logits).
    The heads' policy (disabled heads, detached T) is that of ``heads.predict_top_p``, as in a teacher-forced
    forward.
    """
    head_temperature = heads.predict_temperature(hidden)  # (B,)
    feature_scale = feature_logits = feature_probs = features = None
    if heads.reads_probability_features:
        with torch.no_grad():
            feature_scale = head_temperature.detach().float() + FEATURE_TEMPERATURE_EPSILON  # (B,)
            feature_logits, feature_probs, features = _features_by_chunks(logits, feature_scale)
    head_top_p = heads.predict_top_p(hidden, head_temperature, features)  # (B,)
    final_temperature, final_top_p = combine_with_user_values(head_temperature, head_top_p, temperature, top_p)
    final_temperature, final_top_p = final_temperature.float(), final_top_p.float()
    if not sample:
        return logits, final_temperature, final_top_p
    with torch.no_grad():
        scale = final_temperature.detach().clamp(min=MIN_SAMPLING_TEMPERATURE)  # (B,)
        if feature_scale is not None and torch.equal(scale, feature_scale):
            scaled, probs = feature_logits, feature_probs  # the very same division: reuse it and its softmax
        else:
            scaled = scale_logits(logits, scale)  # (B, V), fresh
            probs = scaled.softmax(dim=-1)
        warped = mask_outside_nucleus(scaled, probs, final_top_p.detach())
    return warped, final_temperature, final_top_p


def _features_by_chunks(logits: torch.Tensor, feature_scale: torch.Tensor):
    """``logits / (T + 1e-8)`` ``(B, V)``, its softmax ``(B, V)`` and the four features ``(B, 4)``, computed a
    cache-sized chunk of rows at a time (:func:`~autodeco.core.decoding.row_chunks`); each row's values are
    those of the whole-batch computation."""
    feature_logits = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)  # (B, V)
    feature_probs = torch.empty_like(feature_logits)  # (B, V) in vocabulary order
    chunks = row_chunks(*logits.shape)
    work = feature_logits.new_empty((chunks[0].stop if chunks else 0, logits.shape[1]))  # (R, V) for every chunk
    features = [feature_logits.new_empty((0, NUM_PROBABILITY_FEATURES))]
    for rows in chunks:
        torch.div(logits[rows].float(), feature_scale[rows].unsqueeze(-1), out=feature_logits[rows])
        torch.softmax(feature_logits[rows], dim=-1, out=feature_probs[rows])
        features.append(probability_features_from_probs(feature_probs[rows], work[: rows.stop - rows.start]))
    return feature_logits, feature_probs, torch.cat(features)  # features (B, 4)


def blank_after_end(sequences: torch.Tensor, values: Sequence[torch.Tensor], end_ids) -> list[torch.Tensor]:
    """Per-step values with NaN at the steps after each row's first end token (those steps generated nothing).

    Args:
        sequences: ``(B, L + steps)`` ids, the last ``steps`` generated.
        values: tensors of shape ``(B, steps)`` (e.g. the temperatures and top-ps used).
        end_ids: an end-of-sequence id, a list of them, or None (nothing is blanked).

    Returns:
        the tensors of ``values``, blanked, in order.

    Example (token 2 ends the row at the 2nd generated step; the 3rd step comes after it):
        >>> blank_after_end(torch.tensor([[9, 4, 2, 0]]), [torch.tensor([[0.5, 0.6, 0.7]])], end_ids=2)
        [tensor([[0.5000, 0.6000,    nan]])]
    """
    steps = values[0].shape[1] if values else 0
    if end_ids is None or steps == 0:
        return list(values)
    end_ids = torch.tensor(end_ids if isinstance(end_ids, (list, tuple)) else [end_ids], device=sequences.device)
    is_end = torch.isin(sequences[:, -steps:], end_ids)  # (B, steps)
    ended_before = (is_end.cumsum(dim=1) - is_end.long()) > 0  # (B, steps): an end token at an earlier step
    return [value.masked_fill(ended_before.to(value.device), float("nan")) for value in values]
