"""Prompts with checkable answers: generated arithmetic, benchmark files and hub datasets.

>>> from autodeco.problems import load_problems
>>> problem = load_problems("arithmetic", split="test", limit=1)[0]
>>> problem.prompt().endswith("within \\\\boxed{}.")
True

Answers are checked with :mod:`autodeco.problems.answers`.
"""

from autodeco.problems.arithmetic import DEFAULT_LEVELS, LEVELS, generate_problems
from autodeco.problems.datasets import DATASET_NAMES, dataset_path, default_max_new_tokens, load_problems, read_jsonl
from autodeco.problems.problem import TEMPLATES, DataError, Problem

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_LEVELS",
    "LEVELS",
    "TEMPLATES",
    "DataError",
    "Problem",
    "dataset_path",
    "default_max_new_tokens",
    "generate_problems",
    "load_problems",
    "read_jsonl",
]
