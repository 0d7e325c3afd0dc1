"""What ``autodeco eval`` evaluates: :class:`EvalConfig`, one documented field per setting, checked when made.

The fields' docstrings are also the help of ``autodeco eval``'s flags (``--samples-per-seed`` for
``samples_per_seed``; see :mod:`autodeco.cli._parser`), so they are written for both readers.
This module imports no torch: the command line builds its parser from it.

Example:
    >>> config = EvalConfig(methods=("greedy", "autodeco"), seeds=(0, 1), samples_per_seed=3)
    >>> config.samples_per_problem, config.max_new_tokens
    (6, 32)
    >>> EvalConfig(samples_per_seed=0)
    Traceback (most recent call last):
    ...
    ValueError: samples_per_seed must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses

from autodeco.evaluation.methods import (
    CONTROL_METHODS,
    HEURISTIC_METHODS,
    METHODS,
    PAPER_METHODS,
    check_methods,
)
from autodeco.evaluation.summary import SCORINGS
from autodeco.problems import default_max_new_tokens
from autodeco.problems.answers import SCORERS
from autodeco.sampling.settings import AUTODECO, ENGINES, static_setting

__all__ = [
    "DEFAULT_TEMPERATURE_GRID",
    "DEFAULT_TOP_P_GRID",
    "EvalConfig",
    "oracle_grid",
]

DEFAULT_TEMPERATURE_GRID = tuple(round(0.1 * step, 1) for step in range(1, 11))
"""The oracle's temperature grid: 0.1, 0.2, ..., 1.0 (searched at P = 1.0)."""

DEFAULT_TOP_P_GRID = tuple(round(0.1 * step, 1) for step in range(1, 11))
"""The oracle's top-p grid: 0.1, ..., 1.0 (searched at the best temperature)."""

MAX_ORACLE_TEMPERATURE = 100.0
"""Largest temperature an oracle grid may hold."""


def oracle_grid(step: float = 0.1) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The oracle's temperature and top-p grids with the given step: ``step, 2 * step, ..., 1.0``.

    Raises:
        ValueError: a step outside (0, 0.5] or one that does not divide 1.0 evenly.

    Example:
        >>> oracle_grid(0.25)
        ((0.25, 0.5, 0.75, 1.0), (0.25, 0.5, 0.75, 1.0))
    """
    if not 0 < step <= 0.5:
        raise ValueError(f"the oracle grid step must be in (0, 0.5], got {step}")
    count = round(1.0 / step)
    if abs(count * step - 1.0) > 1e-6:
        raise ValueError(f"the oracle grid step must divide 1.0 evenly (0.1, 0.2, 0.25, 0.5), got {step}")
    grid = tuple(round(step * index, 4) for index in range(1, count + 1))
    return grid, grid


@dataclasses.dataclass
class EvalConfig:
    """What to evaluate and with how many samples."""

    dataset: str = "arithmetic"
    """Dataset: arithmetic (built-in), a known name (gsm8k, math500, aime24, aime25, hmmt25, brumo25, beyondaime;
    files in --data-dir), a JSONL file, or hf:NAME."""
    split: str = "test"
    """Dataset split."""
    limit: int | None = None
    """Number of problems: the first LIMIT in file order (the built-in arithmetic generator: the first LIMIT it
    makes for --seed, so a smaller limit is a prefix of a larger one); default: all (arithmetic test split: 200)."""
    heads: str | None = None
    """Heads checkpoint; default: the heads shipped for the embedded default model."""
    base: str | None = None
    """Base model; default: the one the heads record."""
    methods: tuple[str, ...] = METHODS
    """Methods to run; default: every one, in report order: the paper's five (greedy default autodeco meanshift
    oracle), the heuristic samplers, head factorization and the shuffle controls (autodeco.evaluation.methods;
    a wrong name is refused with the list). With --engine vllm the default is the paper's five."""
    static: tuple[tuple[float, float], ...] = ()
    """Extra user static (T, P) pairs."""
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    """Sampling seeds; each draws samples_per_seed answers per problem (paper: 8 seeds x 16)."""
    samples_per_seed: int = 4
    """Answers per problem and seed."""
    max_new_tokens: int | None = None
    """Length limit of each answer; default: 32 for arithmetic, 1024 for other datasets."""
    batch_size: int = 16
    """Problems per generation batch (each with samples-per-seed rows)."""
    scorer: str = "math-verify"
    """Answer checker: math-verify (symbolic) or exact (the paper's string match)."""
    oracle_temperatures: tuple[float, ...] = DEFAULT_TEMPERATURE_GRID
    """Oracle temperature grid (searched at P = 1.0)."""
    oracle_top_ps: tuple[float, ...] = DEFAULT_TOP_P_GRID
    """Oracle top-p grid (searched at the best temperature; must hold 1.0)."""
    meanshift: tuple[float, float] | None = None
    """MeanShift's (T, P) given directly; None: measured on meanshift_data or recorded with the heads."""
    meanshift_data: str | None = None
    """Held-out verified trajectories (JSONL, e.g. heldout.jsonl from autodeco sample) for MeanShift's
    teacher-forced means."""
    data_dir: str | None = None
    """Folder of dataset files for known names; default: $AUTODECO_DATA_DIR."""
    seed: int = 0
    """Seed of the arithmetic generator (the problems), independent of the sampling seeds."""
    scoring: str = "lenient"
    """lenient scores the answer found in a text cut off at max-new-tokens (the paper's practice); strict counts
    it as wrong. The report shows both; this one ranks the table and picks the oracle."""
    tune_problems: int = 32
    """Problems of the training split on which the heuristic methods' parameters are tuned (0: their untuned
    defaults)."""
    tune_dataset: str | None = None
    """Dataset of the tuning problems; default: the evaluated dataset. It must share no problem with the evaluated
    ones."""
    tune_split: str = "train"
    """Split of the tuning problems."""
    engine: str = "hf"
    """Rollout engine: hf (Hugging Face generate) or vllm (needs vLLM; the paper's methods and static pairs only)."""

    def __post_init__(self):
        if self.max_new_tokens is None:
            self.max_new_tokens = default_max_new_tokens(self.dataset)
        self.methods = check_methods(self.methods)
        self._check_choices()
        self._check_methods_fit()
        self._check_counts()
        for temperature, top_p in self.static:
            static_setting(temperature, top_p)  # raises, quoting the bad value
        if "oracle" in self.methods:
            self._check_oracle_grids()

    @property
    def samples_per_problem(self) -> int:
        """Answers per problem of each sampled method: seeds x samples per seed."""
        return len(self.seeds) * self.samples_per_seed

    @property
    def heuristics(self) -> list[str]:
        """The heuristic methods among :attr:`methods`, in :data:`HEURISTIC_METHODS` order (tuned first)."""
        return [name for name in HEURISTIC_METHODS if name in self.methods]

    @property
    def controls(self) -> list[str]:
        """The shuffle controls among :attr:`methods` (they run after AutoDeco, from its samples)."""
        return [name for name in CONTROL_METHODS if name in self.methods]

    def _check_choices(self) -> None:
        for name, value, choices in (
            ("engine", self.engine, ENGINES),
            ("scoring", self.scoring, SCORINGS),
            ("scorer", self.scorer, SCORERS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

    def _check_methods_fit(self) -> None:
        per_step = [name for name in self.methods if name not in PAPER_METHODS]
        if self.engine == "vllm" and per_step:
            raise ValueError(
                f"the vLLM engine runs the paper's methods ({', '.join(PAPER_METHODS)}) and static pairs; "
                f"{', '.join(per_step)} need per-step logic outside the model: run them with --engine hf, or pass "
                f"--methods {' '.join(PAPER_METHODS)}"
            )
        if self.controls and AUTODECO not in self.methods:
            raise ValueError(
                f"{' and '.join(self.controls)} draw AutoDeco's per-token values from its samples: add "
                "autodeco to --methods"
            )
        if not self.methods and not self.static:
            raise ValueError(f"no methods to run; choose some of {', '.join(METHODS)} or give static pairs")

    def _check_counts(self) -> None:
        if self.tune_problems < 0:
            raise ValueError(f"tune_problems must be >= 0 (0: untuned defaults), got {self.tune_problems}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        for name in ("samples_per_seed", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit} (leave --limit out, or None, for all problems)")

    def _check_oracle_grids(self) -> None:
        for name, grid, highest in (
            ("oracle_temperatures", self.oracle_temperatures, MAX_ORACLE_TEMPERATURE),
            ("oracle_top_ps", self.oracle_top_ps, 1.0),
        ):
            if not grid or any(not 0 < value <= highest for value in grid):
                raise ValueError(f"{name} must be a non-empty grid of values in (0, {highest:g}], got {list(grid)}")
        if 1.0 not in self.oracle_top_ps:
            raise ValueError(
                f"oracle_top_ps must contain 1.0 (the temperature search runs at P = 1.0), got "
                f"{list(self.oracle_top_ps)}"
            )
