"""AutoDeco inside other people's tools: evaluation harnesses and the like.

``integrations.lm_eval`` is the lm-evaluation-harness model ``autodeco`` (``pip install 'autodeco[lm-eval]'``).
Nothing in the package imports this layer; each integration imports its tool only when it is installed.
"""
