"""``autodeco control-eval``: how decoding commands in the prompt move the heads' T and P, and the answers."""

from __future__ import annotations

from autodeco.cli._parser import config_command, config_errors
from autodeco.common.console import say
from autodeco.evaluation.control import ControlEvalConfig

FLAGS: dict[str, str] = {}


@config_command(ControlEvalConfig, flags=FLAGS)
def control_eval(output: str = "runs/control", overwrite: bool = False, no_progress: bool = False, **settings):
    """Measure how the heads react to decoding commands appended to held-out questions (PAPER.md section 7, Table 4).

    Each question is answered K times as it is, with a low-diversity command ("as certain as
    possible") and with a high-diversity one ("more innovative and diverse"), with the same seed.
    Prints the table and writes OUTPUT/control.json, control.md and control.png. Finished batches are
    recorded in OUTPUT as they end: an interrupted run resumes when the same command is run again.
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
    inputs = {"heads": config.heads, "compared heads": config.compare_heads, "dataset": config.dataset,
              "data folder": config.data_dir, "base model": config.base}
    with run_lock(output, "control-eval", inputs=inputs):
        result = control_evaluation(config, output=output, overwrite=overwrite, progress=not no_progress)
        files = write_control_report(output, result)
    say(control_table(result))
    same = same_answer_table(result)
    if same is not None:
        say("\nthe heads alone: the plain answers teacher-forced under each command")
        say(same)
    goal = result["goal"]
    say(f"\ngoal met: {'yes' if goal['met'] else 'no'} "
          f"({sum(item['met'] for item in goal['criteria'])} of {len(goal['criteria'])} criteria)")
    say(f"report: {files['control.md']}")
    return result
