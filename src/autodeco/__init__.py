"""AutoDeco: language models that choose their own temperature and top-p, token by token.

The pipeline, module by module:
prompts and answer checking -> self-sampled verified trajectories -> head training ->
heads checkpoint (:mod:`autodeco.checkpoint`) -> dynamic decoding (:mod:`autodeco.generation`)
-> evaluation and reports. The tensor math lives in :mod:`autodeco.heads`,
:mod:`autodeco.decoding` and :mod:`autodeco.losses`.
"""

from autodeco.config import AutoDecoConfig
from autodeco.modeling import AutoDecoForCausalLM, AutoDecoGenerateOutput, AutoDecoOutput

__all__ = ["AutoDecoConfig", "AutoDecoForCausalLM", "AutoDecoGenerateOutput", "AutoDecoOutput"]
__version__ = "0.1.0"
