"""The package's folders are the pipeline: each layer imports only from the layers before it.

Every ``import`` counts, including those inside functions (a deferred import is still a dependency).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "autodeco"

LAYERS = [
    ("common",),  # jsonl files, seeds: no autodeco imports
    ("core",),  # pure tensor math: heads, decoding, losses
    ("model", "pretrained"),  # config, checkpoints, base models, AutoDecoForCausalLM, transformers glue
    ("problems",),  # prompts with checkable answers, answer checking
    ("sampling",),  # decoding settings, prompts -> completions, rejection sampling
    ("data",),  # trajectory files, their tokens, decoding-command phrasings: shared by training and evaluation
    ("engines",),  # generation engines (HF, vLLM): a request in, tokens with their T and P out
    ("serving",),  # the OpenAI-compatible HTTP API over an engine
    ("training",),  # verified trajectories -> trained heads
    ("evaluation",),  # held-out NLL, methods side by side, metrics
    ("views",),  # traces, reports and figures rendered for people
    ("integrations",),  # autodeco inside other tools' own loops (lm-evaluation-harness)
    ("quickstart", "cli"),  # whole pipelines and the command line
]
"""Layer order: a module may import from its own layer and the layers listed above it."""


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "autodeco":
        raise ValueError(module)
    if len(parts) == 1:
        return -1  # the package root only holds lazy re-exports
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"autodeco.{parts[1]} belongs to no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                # "from autodeco.core import losses" depends on autodeco.core.losses, not on autodeco.core
                submodule = f"{node.module}.{alias.name}"
                modules.add(submodule if _known(submodule) else node.module)
    return {module for module in modules if module.split(".")[0] == "autodeco" and _known(module)}


SOURCES = sorted(PACKAGE.rglob("*.py"))


def _known(module: str) -> bool:
    path = PACKAGE.parent / Path(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: module_name(path))
def test_no_backward_import(path):
    module = module_name(path)
    own = layer_of(module)
    backward = sorted(target for target in imported_modules(path) if layer_of(target) > own)
    assert not backward, f"{module} (layer {LAYERS[own]}) imports from later layers: {backward}"


def test_evaluation_does_not_import_training():
    """Evaluation measures heads from any source: what it shares with training (trajectory files, their
    tokens, the command phrasings) lives in ``autodeco.data``, below both."""
    arrows = sorted(
        f"{module_name(path)} -> {target}"
        for path in SOURCES
        if module_name(path).startswith("autodeco.evaluation")
        for target in imported_modules(path)
        if target == "autodeco.training" or target.startswith("autodeco.training.")
    )
    assert not arrows, f"evaluation imports training; move what both need to autodeco.data: {arrows}"


def test_no_import_cycle():
    graph = {module_name(path): imported_modules(path) - {module_name(path)} for path in SOURCES}
    done, trail = set(), []

    def visit(module):
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        if module in done:
            return
        trail.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        trail.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_every_subpackage_is_in_a_layer():
    for child in PACKAGE.iterdir():
        if child.name.startswith(("_", ".")) or child.suffix not in (".py", ""):
            continue
        if child.suffix == "" and not (child / "__init__.py").exists():
            continue
        layer_of(f"autodeco.{child.stem}")


TESTS = Path(__file__).resolve().parent
TEST_SUPPORT = {"fixtures", "__pycache__"}
"""Folders of ``tests/`` that hold data or caches, not tests of a package folder."""


def test_test_folders_mirror_the_package():
    """``tests/<folder>/`` tests ``autodeco/<folder>/``: a reader finds a module's tests by its path."""
    test_folders = {child.name for child in TESTS.iterdir() if child.is_dir() and child.name not in TEST_SUPPORT}
    package_folders = {child.name for child in PACKAGE.iterdir() if (child / "__init__.py").exists()}
    strays = sorted(test_folders - package_folders)
    assert not strays, f"tests/ folders with no autodeco folder of the same name: {strays}"
    unplaced = sorted(
        path.name for path in TESTS.glob("test_*.py") if path.stem.removeprefix("test_") not in {"layers", "benchmarks"}
    )
    assert not unplaced, f"tests at the top of tests/ instead of the folder of the code they test: {unplaced}"
