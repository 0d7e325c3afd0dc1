"""``autodeco sample``: rejection sampling into resumable JSONL, on a tiny random model."""

import json

import pytest

from autodeco.sampling.config import SampleConfig
from autodeco.sampling.trajectories import (
    HELDOUT_FILE,
    PROGRESS_FILE,
    TRAIN_FILE,
    is_heldout,
    sample_trajectories,
)


def config_for(model_dir, **overrides):
    settings = dict(source="arithmetic", split="train", limit=12, samples_per_prompt=8, max_new_tokens=10,
                    batch_size=4, base=str(model_dir), heldout_fraction=0.25)
    return SampleConfig(**{**settings, **overrides})


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sampling_keeps_only_verified_answers_and_records_progress(tiny_chat_model_dir, tmp_path):
    from autodeco.problems import load_problems
    from autodeco.problems.answers import score

    questions = {problem.id: problem.question for problem in load_problems("arithmetic", split="train", limit=12)}
    stats = sample_trajectories(config_for(tiny_chat_model_dir), tmp_path, progress=False)
    progress = lines(tmp_path / PROGRESS_FILE)
    kept = lines(tmp_path / TRAIN_FILE) + lines(tmp_path / HELDOUT_FILE)
    assert len(progress) == stats.problems == 12 and stats.attempts == 96
    assert stats.accepted == len(kept) == sum(row["accepted"] for row in progress)
    assert kept, "the seeded tiny model is expected to guess a few answers"
    for row in kept:
        assert score(row["completion"], row["answer"])[1]
        assert set(row) >= {"prompt", "completion", "answer", "source", "seed", "problem_id"}
        assert (row in lines(tmp_path / HELDOUT_FILE)) == is_heldout(questions[row["problem_id"]], 0.25, 0)
    assert "| all | 12 | 96 |" in stats.table()


def test_restart_skips_finished_problems_and_drops_answers_of_a_killed_batch(tiny_chat_model_dir, tmp_path):
    config = config_for(tiny_chat_model_dir)
    sample_trajectories(config, tmp_path, progress=False)
    complete_progress = lines(tmp_path / PROGRESS_FILE)
    complete_answers = lines(tmp_path / TRAIN_FILE) + lines(tmp_path / HELDOUT_FILE)
    # Simulate a kill after the last batch's answers were appended but before its progress lines were:
    progress_text = (tmp_path / PROGRESS_FILE).read_text().splitlines(keepends=True)
    (tmp_path / PROGRESS_FILE).write_text("".join(progress_text[:-4]) + '{"problem_id": "arith')  # torn line too
    stats = sample_trajectories(config, tmp_path, progress=False)
    assert stats.problems == 12
    assert stats.new_tokens_this_run > 0  # the last batch ran again
    assert [row["problem_id"] for row in lines(tmp_path / PROGRESS_FILE)] == [row["problem_id"] for row in complete_progress]
    # The re-run batch holds the same problems, hence the same seed: the files equal the uninterrupted run's.
    assert lines(tmp_path / TRAIN_FILE) + lines(tmp_path / HELDOUT_FILE) == complete_answers
    again = sample_trajectories(config, tmp_path, progress=False)
    assert again.new_tokens_this_run == 0


def test_a_different_configuration_is_refused_naming_the_setting(tiny_chat_model_dir, tmp_path):
    sample_trajectories(config_for(tiny_chat_model_dir, limit=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"samples_per_prompt: 8 there, 2 now.*--overwrite"):
        sample_trajectories(config_for(tiny_chat_model_dir, limit=4, samples_per_prompt=2), tmp_path, progress=False)
    stats = sample_trajectories(
        config_for(tiny_chat_model_dir, limit=4, samples_per_prompt=2), tmp_path, overwrite=True, progress=False
    )
    assert stats.attempts == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(samples_per_prompt=0), "samples_per_prompt must be >= 1, got 0"),
        (dict(top_p=1.5), "0 < top_p <= 1"),
        (dict(heldout_fraction=1.0), "heldout_fraction must be in"),
        (dict(limit=0), "limit must be >= 1"),
    ],
)
def test_bad_settings_are_rejected(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        SampleConfig(**overrides)


def test_unknown_dataset_lists_the_valid_names(tiny_chat_model_dir, tmp_path):
    with pytest.raises(ValueError, match="gsm8k"):
        sample_trajectories(config_for(tiny_chat_model_dir, source="no-such-set"), tmp_path, progress=False)
    assert not (tmp_path / PROGRESS_FILE).exists()


# Splits: copies of one question ----------------------------------------------------------------


class AlwaysRight:
    """A rollout engine that answers every prompt with ``\\boxed{7}`` (every answer in the test data is 7)."""

    def __init__(self, loaded):
        pass

    def prefill(self, rendered_prompts):
        return rendered_prompts

    def complete(self, batch, setting, *, num_samples, max_new_tokens, seed):
        from autodeco.sampling.rollouts import Completion

        return [[Completion("\\boxed{7}", [1, 2, 3]) for _ in range(num_samples)] for _ in batch]


def test_copies_of_a_question_land_in_one_split_and_are_counted(tiny_chat_model_dir, tmp_path):
    from autodeco.problems import load_problems
    from autodeco.problems.problem import question_key

    unique = [f"What is {number} + {number}?" for number in range(40)]
    copies = [unique[i] for i in range(0, 8)]  # exact copies
    copies += [unique[i].upper() for i in range(8, 14)]  # other case
    copies += ["  " + unique[i].replace(" ", "\n ") for i in range(14, 20)]  # other spacing
    records = [{"question": question, "answer": "7"} for question in unique + copies]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = tmp_path / "run"
    config = config_for(tiny_chat_model_dir, source=str(data), limit=None, samples_per_prompt=1, heldout_fraction=0.3)
    stats = sample_trajectories(config, output, progress=False, rollouts=AlwaysRight)
    questions = {problem.id: question_key(problem.question) for problem in load_problems(str(data))}
    splits = {name: {questions[row["problem_id"]] for row in lines(output / name)}
              for name in (TRAIN_FILE, HELDOUT_FILE)}
    assert stats.accepted == 60 and splits[TRAIN_FILE] and splits[HELDOUT_FILE]
    assert not splits[TRAIN_FILE] & splits[HELDOUT_FILE]  # before: 9 of 60 questions were in both
    assert stats.duplicate_questions == 20
    assert json.loads((output / "stats.json").read_text())["duplicate_questions"] == 20


def test_held_out_split_follows_the_normalised_question_not_the_id():
    from autodeco.sampling.trajectories import duplicate_questions

    questions = [f"Question {index}: how many?" for index in range(200)]
    shares = [is_heldout(question, 0.3, 0) for question in questions]
    assert 0.2 < sum(shares) / len(shares) < 0.4
    for question, held in zip(questions, shares):
        assert is_heldout(question.upper(), 0.3, 0) == held
        assert is_heldout(f"  {question}\t", 0.3, 0) == held
        assert is_heldout(question.replace(" ", "\u00a0"), 0.3, 0) == held  # NFKC: a no-break space is a space
    assert not any(is_heldout(question, 0.0, 0) for question in questions)
    assert duplicate_questions([]) == 0


def test_a_run_split_by_another_key_is_not_resumed(tiny_chat_model_dir, tmp_path):
    sample_trajectories(config_for(tiny_chat_model_dir, limit=4), tmp_path, progress=False)
    stored = json.loads((tmp_path / "sample_config.json").read_text())
    del stored["heldout_key"]  # a run from before the split followed the question
    (tmp_path / "sample_config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"heldout_key: None there, 'normalised question' now.*--overwrite"):
        sample_trajectories(config_for(tiny_chat_model_dir, limit=4), tmp_path, progress=False)
