"""``autodeco eval``: Pass@k of every decoding method side by side, with seeds, error bars and plots."""

from __future__ import annotations

import math

from autodeco.cli._parser import check_at_least, config_command, config_errors
from autodeco.common.console import say
from autodeco.evaluation.config import EvalConfig, oracle_grid
from autodeco.evaluation.methods import NEEDS_MEANSHIFT, PAPER_METHODS
from autodeco.views.report import write_report
from autodeco.views.report_markdown import headline_table

FLAGS: dict[str, str] = {}
"""EvalConfig fields whose flag is not their kebab-case name (none)."""

SET_BY_THE_COMMAND = ("oracle_temperatures", "oracle_top_ps")
"""EvalConfig fields that are no flags: ``--oracle-step`` sets both grids."""


@config_command(EvalConfig, exclude=SET_BY_THE_COMMAND, flags=FLAGS)
def evaluate_command(
    output: str = "runs/eval",
    seeds: int = 4,
    static: list[str] | None = None,
    meanshift: str | None = None,
    oracle_step: float = 0.1,
    overwrite: bool = False,
    **settings,
):
    """Evaluate AutoDeco next to greedy, default sampling, MeanShift, the oracle grid, heuristic adaptive samplers,
    head factorization and shuffle controls, on the same problems with the same budget.

    Prints the plan (samples and new tokens of every stage) and a time estimate from a short warm-up first.
    Writes OUTPUT/samples.jsonl (every answer, as produced: a killed run resumes), tuning.jsonl (the heuristics'
    tuning on the training split), summary.json, report.md (a table like the paper's Table 1, with paired
    confidence intervals, the share of answers cut off at the token limit and strict scoring) and PNG plots.
    Every other setting is a flag below (from EvalConfig).

    Args:
        output: output folder.
        seeds: number of seeds (0, 1, ...); each draws --samples-per-seed answers per problem.
        static: extra static settings, each T,P (e.g. 0.7,0.95).
        meanshift: MeanShift's pair as T,P (default: measured on --meanshift-data or recorded with the heads).
        oracle_step: step of the oracle's temperature and top-p grids (paper: 0.1).
        overwrite: discard an existing evaluation in OUTPUT instead of resuming it.
    """
    # The runner loads torch: imported here so that `autodeco --help` stays light.
    from autodeco.evaluation.runner import evaluate

    config = eval_config(seeds, static, meanshift, oracle_step, settings)
    result = evaluate(config, output, overwrite=overwrite, write_report=write_report)
    print_result(result)


def eval_config(
    seeds: int,
    static: list[str] | None,
    meanshift: str | None,
    oracle_step: float,
    settings: dict,
) -> EvalConfig:
    """The EvalConfig of the command's flags, checked before anything is loaded or written.

    Example:
        >>> eval_config(2, ["0.7,0.95"], None, 0.5, {"methods": ["greedy", "autodeco"]}).static
        ((0.7, 0.95),)
    """
    check_at_least("--seeds", seeds)
    if settings.get("engine") == "vllm":  # the vLLM engine runs the paper's methods only
        settings.setdefault("methods", PAPER_METHODS)
    temperatures, top_ps = oracle_grid(oracle_step)
    with config_errors(EvalConfig, FLAGS, flag_only=True):
        config = EvalConfig(
            **settings,
            seeds=tuple(range(seeds)),
            static=tuple(_pair(text, "--static") for text in static or []),
            meanshift=_pair(meanshift, "--meanshift") if meanshift else None,
            oracle_temperatures=temperatures,
            oracle_top_ps=top_ps,
        )
    for flag, value in (
        ("--meanshift", meanshift),
        ("--meanshift-data", config.meanshift_data),
    ):
        if value is not None and not any(name in config.methods for name in NEEDS_MEANSHIFT):
            raise ValueError(
                f"{flag} {value} is only used by the meanshift method (and {', '.join(NEEDS_MEANSHIFT[1:])}), "
                f"which --methods ({' '.join(config.methods)}) leaves out: add meanshift to --methods, or "
                f"drop {flag}"
            )
    return config


def print_result(result) -> None:
    """Print the headline table and where the report is."""
    say(headline_table(result.summary))
    say(f"\nreport: {result.files.get('report.md', result.output / 'report.md')}")
    throughput = result.summary.get("throughput", {})
    if throughput.get("samples_per_second"):
        say(
            f"this run: {throughput['samples_generated_this_run']} samples, "
            f"{throughput['samples_per_second']:.2f} samples/s, {throughput['tokens_per_second']:.0f} tokens/s"
        )


def _pair(text: str, flag: str) -> tuple[float, float]:
    """``(T, P)`` from ``"T,P"``, refusing anything but two finite numbers (naming ``flag``)."""
    try:
        temperature, top_p = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} takes T,P (two numbers separated by a comma, e.g. 0.7,0.95), got {text!r}") from None
    if not (math.isfinite(temperature) and math.isfinite(top_p)):
        raise ValueError(f"{flag} takes two finite numbers T,P (e.g. 0.7,0.95), got {text!r}")
    return temperature, top_p
