"""What ``autodeco sample`` draws: :class:`SampleConfig` (imports no torch, so ``--help`` stays fast)."""

from __future__ import annotations

import dataclasses
import math

from autodeco.model.base_model import EMBEDDED_MODEL
from autodeco.sampling.settings import ENGINES, DecodingSetting


KEEP_CHOICES = ("verified", "all")
"""Which answers ``autodeco sample`` writes: the verified ones, or all of them marked correct or not."""


@dataclasses.dataclass
class SampleConfig:
    """What to sample. Defaults are the quick settings for the embedded model on this kind of machine."""

    source: str = "arithmetic"
    """Dataset: ``arithmetic``, a known name (``gsm8k``, ``math500``, ...), a JSONL path or ``hf:...``."""
    split: str = "train"
    """Split of the dataset (built-in arithmetic and GSM8K have train and test)."""
    limit: int | None = 160
    """Number of problems (None, ``--limit none`` on the command line: all)."""
    samples_per_prompt: int = 4
    """Completions drawn per problem (k)."""
    temperature: float = 1.0
    """Absolute sampling temperature of the base model (no heads are involved, so not a multiplier;
    paper: default sampling, T = 1; 0 = greedy, one completion)."""
    top_p: float = 1.0
    """Absolute sampling top-p of the base model (paper: 1)."""
    max_new_tokens: int | None = None
    """Generation length limit per completion (None: 32 for arithmetic, 1024 for other datasets)."""
    batch_size: int = 16
    """Problems per generation batch (each with ``samples_per_prompt`` rows)."""
    heldout_fraction: float = 0.1
    """Share of problems whose accepted answers go to ``heldout.jsonl`` instead of training."""
    seed: int = 0
    """Seed for sampling and for the arithmetic generator."""
    scorer: str = "math-verify"
    """Answer checker: ``math-verify`` (symbolic) or ``exact`` (the paper's string match)."""
    base: str = EMBEDDED_MODEL
    """Base model: hub id, local folder or the embedded default."""
    data_dir: str | None = None
    """Folder holding dataset files for known names (default: $AUTODECO_DATA_DIR)."""
    keep: str = "verified"
    """Which answers to write: ``verified`` (the training set of the paper's losses) or ``all``, every answer with
    ``"correct": true/false`` (for ``autodeco train --control-data``, which needs answers of the model's own but not
    correct ones; ``autodeco train`` refuses such a file as ordinary data)."""
    engine: str = "hf"
    """Rollout engine: ``hf`` (Hugging Face generate) or ``vllm`` (needs vLLM; same records, serving speed)."""

    def __post_init__(self):
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; use one of {', '.join(ENGINES)}")
        if self.max_new_tokens is None:
            from autodeco.problems import default_max_new_tokens

            self.max_new_tokens = default_max_new_tokens(self.source)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all), got {self.limit}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0) or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature} and {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens} and {self.batch_size}"
            )
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        from autodeco.problems.answers import SCORERS

        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; use one of {', '.join(SCORERS)}")

    @property
    def setting(self) -> DecodingSetting:
        if self.temperature == 0:
            return DecodingSetting.greedy()
        return DecodingSetting.static(self.temperature, self.top_p)

    @property
    def num_samples(self) -> int:
        return 1 if self.temperature == 0 else self.samples_per_prompt
