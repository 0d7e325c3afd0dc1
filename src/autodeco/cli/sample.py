"""``autodeco sample``: rejection sampling of the base model's own verified answers (the training set)."""

from __future__ import annotations

from autodeco.model.base_model import EMBEDDED_MODEL
from autodeco.sampling.trajectories import SampleConfig, sample_trajectories


def sample(
    dataset: str = "arithmetic",
    output: str = "runs/sample",
    split: str = "train",
    limit: int | None = 160,
    samples_per_prompt: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    scorer: str = "math-verify",
    base: str = EMBEDDED_MODEL,
    data_dir: str | None = None,
    overwrite: bool = False,
):
    """Let the base model answer problems k times and keep its verified-correct answers as training data.

    Writes OUTPUT/trajectories.jsonl (for autodeco train) and OUTPUT/heldout.jsonl (held-out
    problems, for held-out NLL and MeanShift), with acceptance statistics. Interrupted runs resume:
    run the same command again.

    Args:
        dataset: arithmetic (built-in, offline), a known name (gsm8k, math500, aime24, aime25, hmmt25, brumo25, beyondaime; files found in --data-dir), a JSONL file, or hf:NAME for a Hugging Face dataset.
        output: output folder.
        split: dataset split (arithmetic and gsm8k: train or test).
        limit: number of problems (0 = all).
        samples_per_prompt: completions per problem (k).
        temperature: sampling temperature (0 = greedy, one completion).
        top_p: sampling top-p.
        max_new_tokens: length limit of each completion (default: 32 for arithmetic, 1024 otherwise).
        batch_size: problems per generation batch.
        heldout_fraction: share of problems held out from training (their answers go to heldout.jsonl).
        seed: random seed.
        scorer: answer checker: math-verify (symbolic) or exact (the paper's string match).
        base: base model: hub id, local folder or embedded:SmolLM2-135M-Instruct.
        data_dir: folder with dataset files (default: $AUTODECO_DATA_DIR).
        overwrite: discard an existing run in OUTPUT instead of resuming it.
    """
    config = SampleConfig(
        source=dataset, split=split, limit=limit or None, samples_per_prompt=samples_per_prompt,
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
        heldout_fraction=heldout_fraction, seed=seed, scorer=scorer, base=base, data_dir=data_dir,
    )
    stats = sample_trajectories(config, output, overwrite=overwrite)
    print(stats.table())
    print(f"\n{stats.train_trajectories} training and {stats.heldout_trajectories} held-out trajectories in {output} "
          f"({stats.problems_with_an_accepted_answer}/{stats.problems} problems have a verified answer)")
    if stats.new_tokens_this_run:
        print(f"this run: {stats.new_tokens_this_run} tokens in {stats.seconds_this_run:.0f} s")
