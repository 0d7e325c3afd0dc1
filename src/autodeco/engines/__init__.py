"""Generation engines behind the server and the rollouts: one request in, a stream of tokens with their T and P out.

``engines.base`` is the contract (:class:`~autodeco.engines.base.GenerationRequest`,
:class:`~autodeco.engines.base.TokenEvent`, :class:`~autodeco.engines.base.Engine`); ``engines.hf`` runs it on
:class:`~autodeco.model.modeling.AutoDecoForCausalLM`; ``engines.vllm`` on vLLM with the autodeco plugin.
"""
