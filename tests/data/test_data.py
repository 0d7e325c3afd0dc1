"""The data layer: trajectory files read line by line with clear errors, tokenized with completion-only labels, batched."""

import json

import pytest
import torch

from autodeco.data.tokens import TrainingExample, collate, fit_to_length, tokenize_trajectory
from autodeco.data.trajectories import DataReport, TrainingDataError, data_fingerprint, read_trajectories
from helpers import record, write_lines


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
    report = DataReport()
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


def test_collate_right_pads_with_ignored_labels():
    first = TrainingExample(torch.tensor([5, 6, 7, 2]), torch.tensor([-100, -100, 7, 2]))
    second = TrainingExample(torch.tensor([5, 8]), torch.tensor([-100, 8]))
    batch = collate([first, second], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 2], [-100, 8, -100, -100]]


def test_data_fingerprint_follows_content(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [record()])
    before = data_fingerprint([path])
    path.write_text(path.read_text() + record(completion="6") + "\n")
    assert data_fingerprint([path]) != before

