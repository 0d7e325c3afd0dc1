"""lm-evaluation-harness support: the model ``autodeco`` (``pip install 'autodeco[lm-eval]'``).

lm-eval 0.4.13 finds models only in its own registry (no entry points), so something must import this
package before lm-eval looks the name up. Two ways:

- the command line: ``python -m autodeco.integrations.lm_eval --model autodeco --model_args pretrained=HEADS
  --tasks ...`` takes every ``lm_eval`` argument; it imports this package, then runs lm-eval's own CLI;
- Python: ``import autodeco.integrations.lm_eval`` and then ``lm_eval.simple_evaluate(model="autodeco", ...)``,
  or pass an :class:`AutoDecoLM` instance as ``model=``.

Importing registers the name ``autodeco`` with lm-eval's model registry (cheap: no model is loaded; doing it
again is a no-op). Without lm-eval installed the import still works and registers nothing.
"""

from __future__ import annotations

from autodeco.integrations.lm_eval.model import AutoDecoLM, Completion
from autodeco.integrations.lm_eval.settings import HarnessSettings, ModelArgsError

MODEL_NAME = "autodeco"
"""The name given to ``lm_eval --model``."""

__all__ = ["MODEL_NAME", "AutoDecoLM", "Completion", "HarnessSettings", "ModelArgsError", "register"]


def register() -> bool:
    """Register :class:`AutoDecoLM` as lm-eval's model ``autodeco``; False where lm-eval is not installed.

    lm-eval's built-in models are registered first (lm-eval imports them only into an empty registry).
    """
    try:
        import lm_eval.models  # noqa: F401 (registers lm-eval's own models lazily)
        from lm_eval.api.registry import model_registry
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("lm_eval"):
            raise
        return False
    if model_registry.get(MODEL_NAME, None) is not AutoDecoLM:
        model_registry.register(MODEL_NAME)(AutoDecoLM)
    return True


register()
