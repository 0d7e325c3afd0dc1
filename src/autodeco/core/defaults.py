"""The paper's loss settings (PAPER.md section 3), without importing torch.

Configs and the command line read these defaults without loading torch; :mod:`autodeco.core.losses`
uses (and re-exports) them.
"""

IGNORE_INDEX = -100
"""Labels equal to this are not trained on (prompt tokens, padding)."""

EASY_TOKEN_DROP = 0.6
"""Probability of dropping a token whose base-model argmax already equals the label."""

STEEPNESS = 30.0
"""Slope ``alpha`` of the soft top-p mask ``exp(-alpha * relu(c - P))``."""

CONTROL_MARGIN = 0.1
"""Default margin of the decoding-control ranking loss (PAPER.md section 7 gives none): how far the
commanded answer's mean T (and P) must sit below (low) or above (high) the plain answer's before the
loss is zero. The paper's trained model moved mean T by about 0.1 either way."""
