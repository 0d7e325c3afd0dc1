"""``autodeco control-eval``: how decoding commands in the prompt move the heads' T and P, and the answers."""

from __future__ import annotations

from autodeco.cli._parser import config_command, config_errors
from autodeco.common.console import say
from autodeco.evaluation.control import ControlEvalConfig

FLAGS: dict[str, str] = {}


@config_command(ControlEvalConfig, flags=FLAGS)
def control_eval(output: str = "runs/control", overwrite: bool = False, no_progress: bool = False, **settings):
    """Measure how the heads react to decoding commands appended to held-out questions (PAPER.md section 7, Table 4).

    Each question of every source (--datasets arithmetic gsm8k) is answered as it is, with a
    low-diversity command ("as certain as possible"), with a high-diversity one ("more innovative and
    diverse") and, where the phrasing file has them, with a neutral sentence; the commands come from
    the file's eval families, one family per question in turn. Every prompt is answered K times with
    the heads' T and P (sampled) and once greedily (greedy), with the same seed. Prints the table of
    every source and mode and writes OUTPUT/control.json, control.md and control.png. Finished batches
    are recorded in OUTPUT as they end: an interrupted run resumes when the same command is run again.
    Every setting is a flag below (from ControlEvalConfig).

    Args:
        output: output folder (locked while the command runs; its report files are replaced).
        overwrite: discard the answers recorded in OUTPUT instead of resuming them.
        no_progress: no progress bar.
    """
    from autodeco.common.runlock import run_lock
    from autodeco.evaluation.control import control_evaluation
    from autodeco.views.control import control_table, same_answer_table, write_control_report

    with config_errors(ControlEvalConfig, FLAGS):
        config = ControlEvalConfig(**settings)
    inputs = {"heads": config.heads, "compared heads": config.compare_heads, "data folder": config.data_dir,
              "base model": config.base, **{f"dataset {source}": source for source in config.datasets}}
    with run_lock(output, "control-eval", inputs=inputs):
        result = control_evaluation(config, output=output, overwrite=overwrite, progress=not no_progress)
        files = write_control_report(output, result)
    for source in result["sources"]:
        for mode in result["by_source"][source]["modes"]:
            say(control_table(result, source, mode) + "\n")
        same = same_answer_table(result, source)
        if same is not None:
            say(f"{source}, the heads alone: the plain sampled answers teacher-forced under each command")
            say(same + "\n")
    goal = result["goal"]
    say(f"goal met: {'yes' if goal['met'] else 'no'} "
          f"({sum(item['met'] for item in goal['criteria'])} of {len(goal['criteria'])} criteria)")
    missed: dict[str, int] = {}
    for item in goal["criteria"]:
        if not item["met"]:
            place = f"{item['source']}, {item['mode']}" if item["measure"] != "accuracy" else f"{item['source']}, accuracy"
            missed[place] = missed.get(place, 0) + 1
    for place, count in missed.items():
        say(f"  not met: {place}: {count} criteria")
    say(f"report: {files['control.md']}")
    return result
