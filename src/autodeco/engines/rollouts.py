"""Choosing the rollout engine of ``autodeco sample`` and ``autodeco eval`` (``--engine hf|vllm``)."""

from __future__ import annotations

from autodeco.engines.base import RolloutEngine
from autodeco.sampling.settings import ENGINES


def check_engine(name: str) -> str:
    """``name`` when it is a known engine.

    Raises:
        ValueError: naming the engines.

    Example:
        >>> check_engine("vllm")
        'vllm'
    """
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    return name


def rollout_engine(
    name: str, loaded, *, heads: str | None = None, base: str | None = None, **engine_args
) -> RolloutEngine:
    """The rollout engine ``name`` for a loaded model (see :func:`autodeco.sampling.inference.load_for_generation`).

    Args:
        name: ``hf`` or ``vllm``.
        loaded: the loaded model and tokenizer (the HF engine uses them; the vLLM engine reads its tokenizer).
        heads: the heads checkpoint the model was loaded from (vLLM loads it itself); None: the loaded
            model's heads (fresh ones are saved to the cache first).
        base: the base model (default: the one the heads record).
        **engine_args: vLLM engine arguments (``dtype``, ``max_model_len``, ...).
    """
    from autodeco.sampling.rollouts import HFRollouts

    if check_engine(name) == "hf":
        return HFRollouts(loaded.model, loaded.tokenizer)
    from autodeco.engines.vllm import VllmEngine, VllmRollouts

    if heads is None:
        from autodeco.engines.vllm_export import saved_heads

        heads = str(saved_heads(loaded.model))
    return VllmRollouts(VllmEngine.from_checkpoint(heads, base=base, **engine_args), loaded.tokenizer)


def base_rollouts(name: str, base: str, **engine_args):
    """A factory ``loaded -> rollout engine`` for runs of the base model alone (``autodeco sample``); None for ``hf``."""
    if check_engine(name) == "hf":
        return None

    def make(loaded):
        from autodeco.engines.vllm import VllmEngine, VllmRollouts
        from autodeco.model.base_model import resolve_base

        return VllmRollouts(VllmEngine(resolve_base(base), **engine_args), loaded.tokenizer)

    return make
