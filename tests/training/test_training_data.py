"""Training data: validation with file:line errors, completion-only labels, length limits, batching and order."""

import pytest
import torch

from autodeco.data.trajectories import TrainingDataError
from autodeco.training.data import build_training_set, collate_drop_draws, drop_draws, global_batch, micro_batch_slice
from helpers import record, write_lines


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
    padded = collate_drop_draws([drop_draws(1, 0, 7, 20), drop_draws(1, 0, 3, 5)], width=20)
    assert padded.shape == (2, 19) and torch.equal(padded[0], draws) and torch.all(padded[1, 4:] == 1.0)


