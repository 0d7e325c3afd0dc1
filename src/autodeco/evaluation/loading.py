"""The model an evaluation runs: the heads on their base, the tokenizer and the rollout engine (``--engine``)."""

from __future__ import annotations

import dataclasses

from autodeco.engines.rollouts import rollout_engine
from autodeco.evaluation.config import EvalConfig
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.model.shipped import heads_or_default
from autodeco.sampling.inference import load_for_generation

__all__ = ["FRESH_HEADS", "EvalModel", "load_eval_model"]

FRESH_HEADS = "none: fresh, untrained heads"
"""What ``run.json`` records as the heads when none were given and none are shipped for the base."""


@dataclasses.dataclass
class EvalModel:
    """The evaluated model, its tokenizer and the rollout engine every generation of the run goes through."""

    model: AutoDecoForCausalLM
    tokenizer: object
    description: str
    """e.g. ``embedded:SmolLM2-135M-Instruct + untrained heads``."""
    heads_reference: str
    """The heads checkpoint as ``run.json`` records it (:data:`FRESH_HEADS` when there is none)."""
    rollouts: object
    """The rollout engine of ``--engine`` (``prefill()`` and ``complete()``; see :mod:`autodeco.engines.rollouts`)."""


def load_eval_model(config: EvalConfig) -> EvalModel:
    """The heads of ``config`` (or the shipped default for its base) on their base, with the rollout engine."""
    heads = heads_or_default(config.heads, config.base)
    loaded = load_for_generation(heads, config.base)
    return EvalModel(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        description=loaded.description,
        heads_reference=heads or FRESH_HEADS,
        rollouts=rollout_engine(config.engine, loaded, heads=heads, base=config.base),
    )
