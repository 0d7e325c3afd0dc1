"""``autodeco sample``: rejection sampling of the base model's own verified answers (the training set)."""

from __future__ import annotations

from autodeco.cli._parser import config_command, config_errors
from autodeco.common.console import say
from autodeco.sampling.config import SampleConfig

FLAGS = {"source": "dataset"}


@config_command(SampleConfig, flags=FLAGS)
def sample(output: str = "runs/sample", overwrite: bool = False, **settings):
    """Let the base model answer problems k times and keep its verified-correct answers as training data.

    With --keep all, every answer is written, marked "correct": true or false: data for decoding control
    (autodeco train --control-data), which needs the model's own answers but not correct ones.

    Writes OUTPUT/trajectories.jsonl (for autodeco train) and OUTPUT/heldout.jsonl (held-out
    problems, for held-out NLL and MeanShift), with acceptance statistics. Interrupted runs resume:
    run the same command again. Every sampling setting is a flag below (from SampleConfig).

    Args:
        output: output folder.
        overwrite: discard an existing run in OUTPUT instead of resuming it.
    """
    from autodeco.cli._parser import check_choice
    from autodeco.problems.answers import SCORERS
    from autodeco.sampling.trajectories import sample_trajectories

    check_choice("--scorer", settings.get("scorer"), SCORERS)  # before the run folder is written
    with config_errors(SampleConfig, FLAGS):
        config = SampleConfig(**settings)
    from autodeco.engines.rollouts import base_rollouts

    stats = sample_trajectories(config, output, overwrite=overwrite, rollouts=base_rollouts(config.engine, config.base))
    say(stats.table())
    say(f"\n{stats.train_trajectories} training and {stats.heldout_trajectories} held-out trajectories in {output} "
          f"({stats.problems_with_an_accepted_answer}/{stats.problems} problems have a verified answer)")
    if stats.duplicate_questions:
        say(f"{stats.duplicate_questions} problem(s) repeat an earlier question of the data (after normalising case "
            "and spacing); every copy is in the same split as the first")
    if stats.new_tokens_this_run:
        say(f"this run: {stats.new_tokens_this_run} tokens in {stats.seconds_this_run:.0f} s")
