"""AutoDeco checkpoints in transformers' Auto classes and ``pipeline()``, with no ``trust_remote_code``.

Once registered, ``AutoConfig.from_pretrained(HEADS)`` returns an
:class:`~autodeco.model.config.AutoDecoConfig` and ``AutoModelForCausalLM.from_pretrained(HEADS, dtype=...,
device_map=...)`` an :class:`~autodeco.model.modeling.AutoDecoForCausalLM` (whose own ``from_pretrained``
does the loading), for every checkpoint with ``model_type: autodeco``: ours, the official heads-only
ones and merged ones.

When it is registered:

- ``import autodeco`` calls :func:`register_when_transformers_loads`. transformers' Auto modules load
  torch (3 to 4 s), and ``import autodeco`` runs before every ``autodeco --help``, so it imports nothing:
  it registers at once if transformers' Auto modules are loaded already, and otherwise puts a one-shot
  hook on ``sys.meta_path`` that registers the moment transformers loads them (the config when
  ``configuration_auto`` finishes loading, the model when ``modeling_auto`` does). For the model it
  registers :class:`DeferredAutoDecoForCausalLM`, which imports the real class only when
  ``from_pretrained`` is called: importing torch-heavy code from inside transformers' own import could
  meet a half-initialised transformers module.
- importing :mod:`autodeco.model.modeling` (so ``from autodeco import AutoDecoForCausalLM``) registers the
  real class (``register_with_transformers`` there; this module imports it, not the other way round).

Every registration passes ``exist_ok=True`` and registers the same classes: running it twice changes nothing.
"""

from __future__ import annotations

import sys
import warnings

CONFIGURATION_MODULE = "transformers.models.auto.configuration_auto"
MODELING_MODULE = "transformers.models.auto.modeling_auto"


def register() -> None:
    """Register AutoDeco with ``AutoConfig`` and ``AutoModelForCausalLM`` now (loads torch and transformers).

    Example:
        >>> from autodeco.model.auto import register
        >>> register()
        >>> from transformers import CONFIG_MAPPING
        >>> CONFIG_MAPPING["autodeco"].__name__
        'AutoDecoConfig'
    """
    from autodeco.model.modeling import register_with_transformers

    register_with_transformers()


class DeferredAutoDecoForCausalLM:
    """Stands in for ``AutoDecoForCausalLM`` in ``AutoModelForCausalLM``'s table until the model module is imported.

    ``AutoModelForCausalLM.from_pretrained`` calls :meth:`from_pretrained` on it, which imports
    :mod:`autodeco.model.modeling` (registering the real class in its place) and returns what
    ``AutoDecoForCausalLM.from_pretrained`` returns.
    """

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        from autodeco.model.modeling import AutoDecoForCausalLM

        return AutoDecoForCausalLM.from_pretrained(*args, **kwargs)


def _register_config(configuration_auto) -> None:
    from autodeco.model.config import AutoDecoConfig

    configuration_auto.AutoConfig.register(AutoDecoConfig.model_type, AutoDecoConfig, exist_ok=True)


def _register_model(modeling_auto) -> None:
    from autodeco.model.config import AutoDecoConfig

    modeling = sys.modules.get("autodeco.model.modeling")
    model_class = getattr(modeling, "AutoDecoForCausalLM", None) or DeferredAutoDecoForCausalLM
    modeling_auto.AutoModelForCausalLM.register(AutoDecoConfig, model_class, exist_ok=True)


_ON_IMPORT = {CONFIGURATION_MODULE: ("AutoConfig", _register_config), MODELING_MODULE: ("AutoModelForCausalLM", _register_model)}
"""transformers module -> (the name it must define, the registration to run once it is loaded)."""


def _run(module_name: str, module) -> None:
    """Run the registration for a loaded transformers module; a failure warns instead of breaking the user's import."""
    try:
        _ON_IMPORT[module_name][1](module)
    except Exception as error:  # a transformers release that changed its registration API
        warnings.warn(
            f"autodeco could not register with transformers' {module_name} ({type(error).__name__}: {error}); "
            "AutoConfig/AutoModelForCausalLM will not know model_type 'autodeco'. Load checkpoints with "
            "autodeco.AutoDecoForCausalLM.from_pretrained instead, and report the transformers version",
            stacklevel=2,
        )


class _LoaderThenRegister:
    """Wraps a module's loader: runs the module, then the registration; every other attribute is the loader's."""

    def __init__(self, loader, module_name: str):
        self.loader = loader
        self.module_name = module_name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _run(self.module_name, module)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class _RegisterOnImport:
    """A ``sys.meta_path`` finder that finds nothing itself: it wraps the loader of the two watched modules."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in _ON_IMPORT:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _LoaderThenRegister(spec.loader, fullname)
        return spec


_HOOK = _RegisterOnImport()


def register_when_transformers_loads() -> None:
    """Register now for the transformers Auto modules already loaded, and on import for the others.

    Imports nothing (what ``import autodeco`` calls, so ``autodeco --help`` stays fast); idempotent.
    """
    pending = False
    for module_name, (defined, _) in _ON_IMPORT.items():
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, defined):
            _run(module_name, module)
        else:
            pending = True
    if pending and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
