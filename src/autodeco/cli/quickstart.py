"""``autodeco quickstart``: sample -> train -> evaluate -> report on the embedded model, in one command."""

from __future__ import annotations

from autodeco.common.console import say
from autodeco.model.base_model import EMBEDDED_MODEL


def quickstart(output: str = "runs/quickstart", budget: str = "quick", base: str = EMBEDDED_MODEL, seed: int = 0):
    """Train AutoDeco heads on the model's own verified answers and compare every decoding method.

    Stages (each resumable; running the command again reuses finished ones): sample the base model
    on built-in arithmetic problems and keep its verified answers; train the heads; measure held-out
    NLL; evaluate greedy, default sampling, AutoDeco, MeanShift and the oracle grid on the
    arithmetic test split; write a report with tables and plots.

    Args:
        output: folder for every stage's outputs.
        budget: quick, standard or large (their sizes and measured times: the README, or autodeco.quickstart.BUDGETS).
        base: base model (default: the embedded SmolLM2-135M-Instruct).
        seed: random seed of every stage.
    """
    from autodeco.quickstart import BUDGETS, run_quickstart

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    result = run_quickstart(output, budget, base=base, seed=seed)
    from autodeco.views.report_markdown import headline_table

    say("\n" + headline_table(result["summary"]))
    seconds = result["seconds_this_run"]
    say(f"\nreport: {result['report']}")
    say("time this run: " + ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items()))
