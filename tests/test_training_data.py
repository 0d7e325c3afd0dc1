"""Training data: validation with file:line errors, completion-only labels, length limits, batching and order."""

import json

import pytest
import torch

from autodeco.training import data
from autodeco.training.data import (
    TrainingDataError,
    build_training_set,
    collate,
    drop_draws,
    fit_to_length,
    global_batch,
    micro_batch_slice,
    read_trajectories,
    tokenize_trajectory,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def record(prompt="What is 2 + 3?", completion="2 + 3 = 5", **extra):
    return json.dumps({"problem_id": "p", "prompt": prompt, "completion": completion, "answer": "5", **extra})


def test_prompt_is_chat_rendered_and_masked_completion_and_eos_are_labelled(tokenizer, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record(prompt="Hi", completion="ok")])
    examples, report = build_training_set([path], tokenizer, max_length=64)
    example = examples[0]
    # Character-level tokenizer: <u> H i </s> <a> | o k </s>
    expected_prompt = tokenizer.convert_tokens_to_ids(["<u>", "H", "i", "</s>", "<a>"])
    expected_completion = tokenizer.convert_tokens_to_ids(["o", "k"]) + [tokenizer.eos_token_id]
    assert example.input_ids.tolist() == expected_prompt + expected_completion
    assert example.labels.tolist() == [-100] * 5 + expected_completion
    assert example.num_labelled == 3
    assert example.location == f"{path}:1"
    assert report.examples == 1 and report.lines == 1


def test_tokenize_trajectory_splits_prompt_and_completion(tokenizer):
    prompt_ids, completion_ids = tokenize_trajectory(tokenizer, "Hi", "ok")
    assert tokenizer.convert_ids_to_tokens(prompt_ids) == ["<u>", "H", "i", "</s>", "<a>"]
    assert completion_ids[-1] == tokenizer.eos_token_id and len(completion_ids) == 3


def test_malformed_line_stops_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record(), "", '{"prompt": "x", "completion": ', record()])
    with pytest.raises(TrainingDataError, match=rf"{path}:3: not valid JSON.*--on-bad-line skip"):
        read_trajectories([path])


def test_missing_or_empty_field_is_named(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record(), json.dumps({"prompt": "only a prompt"})])
    with pytest.raises(TrainingDataError, match=rf"{path}:2: field 'completion' must be a non-empty string, got missing"):
        read_trajectories([path])
    path.write_text(json.dumps({"prompt": "", "completion": "x"}) + "\n")
    with pytest.raises(TrainingDataError, match=r":1: field 'prompt' must be a non-empty string, got ''"):
        read_trajectories([path])
    path.write_text("[1, 2]\n")
    with pytest.raises(TrainingDataError, match=r":1: expected a JSON object, got list"):
        read_trajectories([path])


def test_skip_counts_and_names_bad_lines(tmp_path):
    first = write_lines(tmp_path / "a.jsonl", [record(), "not json", record()])
    second = write_lines(tmp_path / "b.jsonl", [json.dumps({"completion": "no prompt"}), record()])
    report = data.DataReport()
    trajectories = read_trajectories([first, second], on_bad_line="skip", report=report)
    assert len(trajectories) == 3 and report.lines == 5
    assert [line.split(": ")[0] for line in report.bad_lines] == [f"{first}:2", f"{second}:1"]
    assert "2 malformed lines skipped" in report.summary()


def test_missing_file_and_folder_are_reported(tmp_path):
    with pytest.raises(TrainingDataError, match="does not exist"):
        read_trajectories([tmp_path / "nope.jsonl"])
    with pytest.raises(TrainingDataError, match="is a folder"):
        read_trajectories([tmp_path])
    with pytest.raises(ValueError, match="on_bad_line must be one of"):
        read_trajectories([tmp_path / "x.jsonl"], on_bad_line="ignore")


def test_fit_to_length_truncates_completion_or_skips():
    assert fit_to_length([1, 2], [3, 4, 9], max_length=5) == ([1, 2, 3, 4, 9], [-100, -100, 3, 4, 9])
    assert fit_to_length([1, 2], [3, 4, 9], max_length=3) == ([1, 2, 3], [-100, -100, 3])
    assert fit_to_length([1, 2], [3, 4, 9], max_length=3, overlong="skip") is None
    assert fit_to_length([1, 2, 3], [4, 9], max_length=3) is None  # no room for one completion token


def test_overlong_truncate_and_skip_are_counted(tokenizer, tmp_path):
    # Rendered prompt "<u>Hi</s><a>" is 5 tokens; completions of 2, 9 and 30 characters (+ EOS).
    path = write_lines(tmp_path / "train.jsonl", [
        record(prompt="Hi", completion="ok"), record(prompt="Hi", completion="123456789"),
        record(prompt="Hi", completion="x" * 30),
    ])
    examples, report = build_training_set([path], tokenizer, max_length=12)
    assert report.truncated == 2 and report.skipped_overlong == 0 and report.examples == 3
    assert [example.input_ids.shape[0] for example in examples] == [8, 12, 12]
    assert examples[1].labels[-1].item() != tokenizer.eos_token_id  # cut before the end
    examples, report = build_training_set([path], tokenizer, max_length=12, overlong="skip")
    assert report.skipped_overlong == 2 and report.examples == 1
    assert "2 longer than max_length skipped" in report.summary()


def test_nothing_left_is_a_clear_error(tokenizer, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", ["garbage", record(prompt="Hi", completion="x" * 40)])
    with pytest.raises(TrainingDataError, match=r"no trajectory left to train on \(0 of 2 trajectories kept"):
        build_training_set([path], tokenizer, max_length=10, on_bad_line="skip", overlong="skip")


def test_collate_right_pads_with_ignored_labels():
    first = data.TrainingExample(torch.tensor([5, 6, 7, 2]), torch.tensor([-100, -100, 7, 2]))
    second = data.TrainingExample(torch.tensor([5, 8]), torch.tensor([-100, 8]))
    batch = collate([first, second], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 2], [-100, 8, -100, -100]]


def test_global_batches_cover_each_epoch_once_and_cycle():
    seen = [item for step in range(5) for item in global_batch(step, 4, num_examples=10, seed=3)]
    assert sorted(index for epoch, index in seen if epoch == 0) == list(range(10))
    assert [epoch for epoch, _ in seen].count(1) == 10
    assert seen[:10] != seen[10:20]  # a new permutation each epoch
    assert global_batch(2, 4, 10, seed=3) == global_batch(2, 4, 10, seed=3)


def test_micro_batch_slices_partition_the_global_batch():
    batch = list(range(12))
    for processes, per_device, accumulation in ((1, 4, 3), (2, 2, 3), (3, 1, 4), (2, 3, 2)):
        parts = [
            micro_batch_slice(batch, micro_step=step, process_index=rank, num_processes=processes, per_device_batch_size=per_device)
            for step in range(accumulation) for rank in range(processes)
        ]
        assert sorted(item for part in parts for item in part) == batch and all(len(part) == per_device for part in parts)


def test_drop_draws_depend_only_on_seed_epoch_and_example():
    draws = drop_draws(seed=1, epoch=0, example_index=7, length=20)
    assert draws.shape == (19,) and torch.all((draws >= 0) & (draws < 1))
    torch.manual_seed(123)  # the global random state plays no part
    assert torch.equal(draws, drop_draws(1, 0, 7, 20))
    assert not torch.equal(draws, drop_draws(1, 1, 7, 20)) and not torch.equal(draws, drop_draws(1, 0, 8, 20))
    padded = data.collate_drop_draws([drop_draws(1, 0, 7, 20), drop_draws(1, 0, 3, 5)], width=20)
    assert padded.shape == (2, 19) and torch.equal(padded[0], draws) and torch.all(padded[1, 4:] == 1.0)


def test_data_fingerprint_follows_content(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record()])
    before = data.data_fingerprint([path])
    path.write_text(path.read_text() + record(completion="6") + "\n")
    assert data.data_fingerprint([path]) != before
