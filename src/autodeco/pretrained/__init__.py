"""Heads shipped inside the package: data only.

Each sub-folder is an ordinary heads-only checkpoint (``config.json`` + safetensors) with a model card
(``README.md``) giving its training recipe and measured results. :mod:`autodeco.model.shipped` finds and
names them (``shipped:<folder>``, the default heads of the embedded base model).
"""

from pathlib import Path

PRETRAINED_DIR = Path(__file__).parent
"""The folder holding the shipped heads checkpoints, one sub-folder each."""
