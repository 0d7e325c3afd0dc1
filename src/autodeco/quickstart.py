"""``autodeco quickstart``: the whole pipeline on the embedded model, end to end.

    sample  -> the base answers built-in arithmetic problems; verified answers are kept
    train   -> the heads learn from those answers (base frozen)
    heldout -> held-out NLL of trained heads vs fresh heads vs the best static (T, P)
    eval    -> greedy, default, AutoDeco, MeanShift and the oracle grid on the arithmetic test split
    report  -> report.md, summary.json and plots

Every stage writes into its own folder under the output folder and is resumable; running the
command again reuses finished stages. ``--budget`` picks how many problems and samples to use.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from autodeco.common.jsonl import read_json, write_json_atomic
from autodeco.common.runlock import run_lock
from autodeco.model.base_model import EMBEDDED_MODEL


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of one quickstart run."""

    train_problems: int
    """Arithmetic training problems sampled."""
    samples_per_prompt: int
    """Completions per training problem (k of the rejection sampling)."""
    train_steps: int
    """Optimizer steps of head training."""
    test_problems: int
    """Arithmetic test problems evaluated."""
    seeds: int
    """Evaluation seeds."""
    samples_per_seed: int
    """Evaluation answers per problem and seed."""
    oracle_step: float
    """Step of the oracle's T and P grids (the paper's is 0.1)."""
    max_new_tokens: int = 32
    """Length limit of every answer (arithmetic answers are one short line)."""


BUDGETS = {
    "quick": Budget(train_problems=160, samples_per_prompt=4, train_steps=40, test_problems=32, seeds=2,
                    samples_per_seed=2, oracle_step=0.25),
    "standard": Budget(train_problems=640, samples_per_prompt=4, train_steps=150, test_problems=100, seeds=2,
                       samples_per_seed=4, oracle_step=0.2),
    "large": Budget(train_problems=2000, samples_per_prompt=8, train_steps=400, test_problems=200, seeds=4,
                    samples_per_seed=8, oracle_step=0.1),
}
"""Named budgets: ``quick``, ``standard`` and ``large``; the README's quick start gives their sizes and measured times."""

HELDOUT_FRACTION = 0.2
"""Share of training problems held out: their verified answers measure held-out NLL and give MeanShift's means."""

ROWS_PER_BATCH = 64
"""Sequences generated together (problems x samples): a good size for a CPU."""


def run_quickstart(output: str | Path = "runs/quickstart", budget: str = "quick", *, base: str = EMBEDDED_MODEL,
                   seed: int = 0, progress: bool = True) -> dict:
    """Run (or resume) every stage; returns a dict of where things are plus the evaluation summary."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    sizes = BUDGETS[budget]
    output = Path(output)
    with run_lock(output, "quickstart"):  # each stage also locks its own folder
        return _run_stages(output, budget, sizes, base, seed, progress)


def _run_stages(output: Path, budget: str, sizes: Budget, base: str, seed: int, progress: bool) -> dict:
    timings = {}

    def timed(stage: str, function, *args):
        started = time.perf_counter()
        value = function(*args)
        timings[stage] = time.perf_counter() - started
        return value

    sample_dir = timed("sample", _sample_stage, output, sizes, base, seed, progress)
    heads = timed("train", _train_stage, output, sizes, sample_dir, base, seed, progress)
    heldout = timed("heldout", _heldout_stage, output, heads, sample_dir, base, seed)
    result = timed("eval", _eval_stage, output, sizes, heads, sample_dir, seed, progress)

    overview = {
        "budget": budget, "sizes": dataclasses.asdict(sizes), "heads": str(heads),
        "report": str(result.output / "report.md"), "heldout": heldout,
        "seconds_this_run": {stage: round(value, 1) for stage, value in timings.items()},
    }
    write_json_atomic(output / "quickstart.json", overview)
    return {**overview, "summary": result.summary, "eval": result}


def _has_lines(path: Path) -> bool:
    return path.exists() and any(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


def _stage_banner(name: str, detail: str) -> None:
    print(f"\n== {name}: {detail}", flush=True)


def _sample_stage(output: Path, sizes: Budget, base: str, seed: int, progress: bool) -> Path:
    from autodeco.sampling.config import SampleConfig
    from autodeco.sampling.trajectories import sample_trajectories

    folder = output / "sample"
    _stage_banner("1/4 sample", f"{sizes.train_problems} arithmetic problems x {sizes.samples_per_prompt} answers "
                  "at T = 1, P = 1; verified answers kept")
    config = SampleConfig(
        source="arithmetic", split="train", limit=sizes.train_problems, samples_per_prompt=sizes.samples_per_prompt,
        max_new_tokens=sizes.max_new_tokens, seed=seed, base=base,
        batch_size=max(1, ROWS_PER_BATCH // sizes.samples_per_prompt), heldout_fraction=HELDOUT_FRACTION,
    )
    stats = sample_trajectories(config, folder, progress=progress)
    print(stats.table())
    if stats.train_trajectories == 0:
        raise ValueError("the base model answered no training problem correctly: nothing to train on")
    return folder


def _train_stage(output: Path, sizes: Budget, sample_dir: Path, base: str, seed: int, progress: bool) -> Path:
    from autodeco.training.config import TrainConfig
    from autodeco.training.recipe import train_heads

    folder = output / "train"
    _stage_banner("2/4 train", f"{sizes.train_steps} steps on {sample_dir / 'trajectories.jsonl'} (base frozen)")
    config = TrainConfig.from_preset(
        "quick", data=[str(sample_dir / "trajectories.jsonl")], output_dir=str(folder), base=base,
        max_steps=sizes.train_steps, seed=seed,
    )
    result = train_heads(config, progress=progress)
    return Path(result.heads_dir)


def _heldout_stage(output: Path, heads: Path, sample_dir: Path, base: str, seed: int) -> dict | None:
    from autodeco.evaluation.heldout import heldout_report
    from autodeco.sampling.inference import load_for_generation
    from autodeco.data.trajectories import read_trajectories

    path = output / "heldout.json"
    if path.exists():
        return read_json(path, what="held-out report", fix="delete it to measure again")
    trajectories = read_trajectories([sample_dir / "heldout.jsonl"]) if _has_lines(sample_dir / "heldout.jsonl") else []
    _stage_banner("3/4 held-out", f"soft top-p NLL on {len(trajectories)} held-out verified answers")
    if not trajectories:
        print("no held-out trajectory (no held-out problem was answered correctly): skipped")
        return None
    trained = load_for_generation(str(heads), base)
    fresh = load_for_generation(None, base, seed=seed)
    report = {
        "trained": heldout_report(trained.model, trained.tokenizer, trajectories),
        "fresh": heldout_report(fresh.model, fresh.tokenizer, trajectories, grid_temperatures=()),
    }
    write_json_atomic(path, report)
    best = report["trained"]["best_static"]["nll_dft"]
    print(f"soft top-p NLL (DFT-weighted) on {report['trained']['num_tokens']} held-out tokens: "
          f"trained heads {report['trained']['heads']['nll_dft']:.4f}, fresh heads {report['fresh']['heads']['nll_dft']:.4f}, "
          f"best static T={best['temperature']:.1f} P={best['top_p']:.1f}: {best['value']:.4f}")
    return report


def _eval_stage(output: Path, sizes: Budget, heads: Path, sample_dir: Path, seed: int, progress: bool):
    from autodeco.evaluation.config import EvalConfig, oracle_grid
    from autodeco.evaluation.methods import PAPER_METHODS
    from autodeco.evaluation.runner import evaluate
    from autodeco.views.report import write_report

    _stage_banner("4/4 eval", f"{sizes.test_problems} test problems x {sizes.seeds} seeds x {sizes.samples_per_seed} "
                  f"answers; oracle grid step {sizes.oracle_step}")
    temperatures, top_ps = oracle_grid(sizes.oracle_step)
    meanshift_data = sample_dir / "heldout.jsonl"
    if not _has_lines(meanshift_data):
        meanshift_data = sample_dir / "trajectories.jsonl"
        print("no held-out trajectory: MeanShift's means come from the training trajectories instead")
    config = EvalConfig(
        dataset="arithmetic", split="test", limit=sizes.test_problems, heads=str(heads), methods=PAPER_METHODS,
        seeds=tuple(range(sizes.seeds)), samples_per_seed=sizes.samples_per_seed,
        max_new_tokens=sizes.max_new_tokens, oracle_temperatures=temperatures, oracle_top_ps=top_ps,
        meanshift_data=str(meanshift_data), seed=seed,
        batch_size=max(1, ROWS_PER_BATCH // sizes.samples_per_seed),
    )
    return evaluate(config, output / "eval", progress=progress, write_report=write_report)
