"""AutoDeco: language models that choose their own temperature and top-p, token by token.

The data flow, folder by folder (which folder may import which: ``tests/test_layers.py``):

    problems/ (prompts with checkable answers, answer checking)
    -> sampling/ (decoding settings, the base's own answers, rejection sampling: ``autodeco sample``)
    -> data/ (trajectory files, their tokens, decoding-command phrasings)
    -> training/ (heads trained on verified answers, base frozen: ``autodeco train``)
    -> model/ checkpoints (heads-only safetensors) -> engines/ and serving/ (dynamic decoding: HF, vLLM, HTTP)
    -> evaluation/ (held-out NLL, every method side by side, diagnosis, control) -> views/ (reports, traces)

``core/`` holds the tensor math (heads, decoding, the dynamic step, losses), ``model/`` the
:class:`AutoDecoForCausalLM` and its ``generate()``; ``quickstart`` runs the whole chain.

The model classes are imported on first use, so ``import autodeco.problems.answers`` (say) does not load torch.

``import autodeco`` registers ``model_type: autodeco`` with transformers' ``AutoConfig`` and
``AutoModelForCausalLM`` without importing either: transformers' Auto modules load torch, which would
make every ``autodeco --help`` seconds slower, so an import hook registers when transformers loads them
(:mod:`autodeco.model.auto`).
"""

import importlib as _importlib

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
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autodeco' has no attribute {name!r}")


# Registers with transformers' Auto classes when transformers loads them; imports neither transformers nor torch.
_importlib.import_module("autodeco.model.auto").register_when_transformers_loads()
