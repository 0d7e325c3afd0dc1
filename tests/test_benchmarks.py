"""Every script in ``benchmarks/`` still runs: it answers ``--help``, every name it imports exists, and the
scripts with a cheap run finish one on a tiny random model. The timings themselves are not tested."""

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))

TINY_RUNS = {
    "decode_speed.py": ["--batch-sizes", "1", "--new-tokens", "2", "--repeats", "1", "--min-seconds", "0",
                        "--no-memory", "--threads", "1"],
    "eval_throughput.py": ["--batch-size", "1", "--samples", "2", "--new-tokens", "2", "--repeats", "1",
                           "--prompts", "short", "--settings", "greedy", "autodeco", "T=0.70,P=0.90", "--threads", "1"],
    "compact_rows.py": ["--batch-size", "1", "--samples", "2", "--new-tokens", "2", "--rounds", "1",
                        "--settings", "greedy", "autodeco"],
}
"""Scripts timed on a ``--base`` model folder: the flags of a run of a few tokens on the tiny chat model."""

OTHER_RUNS = {
    "loss_memory.py": ["--vocabulary", "64", "--tokens", "8", "--repeats", "1", "--losses", "temperature",
                       "--no-profile", "--threads", "1"],
    "serve_batching.py": ["--quick", "--threads", "1"],
    "nucleus_speed.py": ["--quick", "--threads", "1"],
}
"""Scripts that build their own inputs: the flags of a tiny run."""

HELP_ONLY = {
    "vllm_speed.py": "needs vLLM (its own environment)",
    "zero3_memory.py": "needs DeepSpeed and two processes under accelerate launch (minutes)",
}
"""Scripts without a cheap run: ``--help`` and the import check only."""


def run_script(name: str, *arguments, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python benchmarks/<name> arguments`` with this interpreter (the project's environment), from the repository."""
    command = [sys.executable, str(BENCHMARKS / name), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=BENCHMARKS.parent)


def imported_names(script: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from autodeco... import name`` or sibling-script import, top level or inside functions."""
    tree = ast.parse(script.read_text(), filename=str(script))
    siblings = {path.stem for path in SCRIPTS}
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        and (node.module.split(".")[0] == "autodeco" or node.module in siblings)
        for alias in node.names
    ]


def top_level_names(script: Path) -> set[str]:
    """Names a script defines or imports at its top level (what a sibling can import from it)."""
    names = set()
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def test_every_script_has_a_decision():
    names = {script.name for script in SCRIPTS}
    assert names == set(TINY_RUNS) | set(OTHER_RUNS) | set(HELP_ONLY), "add a new benchmark to one of the lists"


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_every_name_a_benchmark_imports_exists(script):
    for module_name, name in imported_names(script):
        if module_name.split(".")[0] != "autodeco":  # a sibling script: checked without running it
            assert name in top_level_names(BENCHMARKS / f"{module_name}.py"), f"{script.name}: {module_name}.{name}"
            continue
        module = importlib.import_module(module_name)
        found = hasattr(module, name) or importlib.util.find_spec(f"{module_name}.{name}") is not None
        assert found, f"{script.name} imports {name!r} from {module_name}, which has no such name"


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_every_benchmark_answers_help(script):
    result = run_script(script.name, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]


@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_benchmarks_run_on_a_tiny_model(name, tiny_chat_model_dir):
    result = run_script(name, "--base", tiny_chat_model_dir, *TINY_RUNS[name])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "|---" in result.stdout  # the Markdown table of results


@pytest.mark.parametrize("name", sorted(OTHER_RUNS))
def test_benchmarks_with_their_own_inputs_run_tiny(name):
    result = run_script(name, *OTHER_RUNS[name])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "|---" in result.stdout
