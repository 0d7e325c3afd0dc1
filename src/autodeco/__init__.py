"""AutoDeco: language models that choose their own temperature and top-p, token by token.

The pipeline, module by module:

    problems/ (prompts with checkable answers) + answers (extraction, verification)
    -> trajectories (the base model's own verified answers, by rejection sampling)
    -> training/ (heads trained on those answers, base frozen; losses in losses)
    -> checkpoint (heads-only safetensors) -> modeling + generation (dynamic decoding)
    -> rollouts (many samples per prompt, shared prefill) -> evaluation/ (Pass@k, baselines, reports)

``quickstart`` runs the whole chain. The tensor math lives in :mod:`autodeco.core.heads`,
:mod:`autodeco.core.decoding` and :mod:`autodeco.core.losses`.

The model classes are imported on first use, so ``import autodeco.problems.answers`` (say) does not load torch.
"""

__all__ = ["AutoDecoConfig", "AutoDecoForCausalLM", "AutoDecoGenerateOutput", "AutoDecoOutput"]
__version__ = "0.1.0"

_LAZY = {
    "AutoDecoConfig": "autodeco.model.config",
    "AutoDecoForCausalLM": "autodeco.model.modeling",
    "AutoDecoGenerateOutput": "autodeco.model.modeling",
    "AutoDecoOutput": "autodeco.model.modeling",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autodeco' has no attribute {name!r}")
