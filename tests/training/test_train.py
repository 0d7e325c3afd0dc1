"""The training recipe on a tiny chat model: outputs, modes, exact gradients, resume after kill -9, CLI."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from autodeco.model.checkpoint import read_checkpoint
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.training import loss_step, recipe, state
from autodeco.training.config import TrainConfig
from autodeco.data.trajectories import TrainingDataError
from autodeco.training.recipe import learning_rate_at, train_heads
from helpers import write_arithmetic


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_arithmetic(tmp_path_factory.mktemp("data") / "trajectories.jsonl")


def settings(train_file, model_dir, output, **overrides):
    values = {
        "data": [str(train_file)], "output_dir": str(output), "base": str(model_dir), "max_steps": 6,
        "learning_rate": 1e-3, "warmup_steps": 1, "per_device_batch_size": 2, "gradient_accumulation_steps": 2,
        "save_every": 3, "log_every": 2,
    }
    values.update(overrides)
    return values


def fresh_heads(model_dir, **kwargs):
    return AutoDecoForCausalLM.from_base(str(model_dir), seed=0, **kwargs).head_state_dict()


def test_end_to_end_run_trains_the_heads_and_writes_everything(train_file, tiny_chat_model_dir, tmp_path):
    output = tmp_path / "run"
    result = train_heads(TrainConfig(**settings(train_file, tiny_chat_model_dir, output)), progress=False)
    assert result.steps == 6 and not result.already_finished and result.resumed_from is None
    trained = read_checkpoint(output / "heads")
    assert trained.config.trained is True
    assert trained.config.training["steps"] == 6 and trained.config.training["examples"] == 16
    assert trained.config.training["settings"]["learning_rate"] == 1e-3
    fresh = fresh_heads(tiny_chat_model_dir)
    assert all(not torch.equal(trained.head_tensors[name], fresh[name]) for name in fresh)
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4, 6]
    for row in log:
        assert row["loss"] == pytest.approx(row["temperature_loss"] + row["top_p_loss"])
        assert 0 < row["kept_tokens"] <= row["labelled_tokens"]
        assert 0 < row["temperature_mean"] < 2 and 0 < row["top_p_mean"] < 1 and row["temperature_std"] > 0
    assert log[0]["learning_rate"] == pytest.approx(learning_rate_at(1, peak=1e-3, warmup_steps=1, total_steps=6, schedule="cosine"))
    assert (output / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (output / "checkpoint-3" / "training_state.safetensors").exists()
    assert json.loads((output / "train_config.json").read_text())["total_steps"] == 6


@pytest.mark.parametrize("mode, trained_prefix, frozen_prefix", [
    ("temperature", "temp_head.", "top_p_head."), ("top-p", "top_p_head.", "temp_head."),
])
def test_single_head_modes_leave_the_other_head_untouched(train_file, tiny_chat_model_dir, tmp_path, mode, trained_prefix, frozen_prefix):
    output = tmp_path / mode
    train_heads(TrainConfig(**settings(train_file, tiny_chat_model_dir, output, mode=mode, max_steps=3)), progress=False)
    trained = read_checkpoint(output / "heads")
    fresh = fresh_heads(tiny_chat_model_dir)
    for name, tensor in trained.head_tensors.items():
        assert torch.equal(tensor, fresh[name]) == name.startswith(frozen_prefix), name
    assert trained.config.enable_temperature_head == (mode == "temperature")
    assert trained.config.enable_top_p_head == (mode == "top-p")
    rows = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert all(row[("top_p" if mode == "temperature" else "temperature") + "_loss"] == 0.0 for row in rows)


def test_gradient_is_the_mean_over_kept_tokens_of_the_global_batch(train_file, tiny_chat_model_dir):
    """Four micro-batches of one (loss sums, float64 accumulation) give the gradient of the batch's mean loss."""
    from transformers import AutoTokenizer

    from autodeco.core import losses
    from autodeco.training.data import build_training_set

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    examples, _ = build_training_set([train_file], tokenizer, max_length=64)
    config = TrainConfig(data=[str(train_file)], output_dir="unused", easy_token_drop=0.9)
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    for example in examples:  # make every other label the base model's argmax, so that easy-token drops happen
        with torch.no_grad():
            argmax = model.llm(example.input_ids[None]).logits[0].argmax(-1)  # (L,)
        labelled = (example.labels[1:] != -100).nonzero().flatten()[::2]
        example.labels[labelled + 1] = argmax[labelled]
    parameters = recipe.trainable_parameters(model)
    items = [(0, index) for index in (3, 0, 7, 5)]
    singles = [recipe.make_micro_batch(examples, [item], tokenizer.pad_token_id, config.seed, "cpu") for item in items]
    temperature_gradient, top_p_gradient, _, _, statistics = loss_step.accumulate_gradients(model, parameters, singles, config)
    values = dict(zip(loss_step.STATISTICS, statistics.tolist()))
    assert 0 < values["kept_tokens"] < values["top_p_tokens"] == values["positions"]  # some easy tokens were dropped
    combined = loss_step.combine_gradients(temperature_gradient, values["kept_tokens"], top_p_gradient, values["top_p_tokens"])

    whole = recipe.make_micro_batch(examples, items, tokenizer.pad_token_id, config.seed, "cpu")
    output = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"])
    loss = losses.temperature_loss(
        output.logits, output.temperature, whole["labels"], easy_token_drop=0.9, random_values=whole["drop_draws"]
    ) + losses.top_p_loss(output.logits, output.temperature, output.top_p, whole["labels"])
    reference = torch.cat([gradient.reshape(-1) for gradient in torch.autograd.grad(loss, parameters)])
    torch.testing.assert_close(combined.float(), reference, rtol=1e-5, atol=1e-8)  # measured: 6e-9 off, max 0.018


RUN_IN_SUBPROCESS = """
import json, sys, torch
torch.set_num_threads(1)
from autodeco.training.config import TrainConfig
from autodeco.training.recipe import train_heads
train_heads(TrainConfig(**json.loads(sys.argv[1])), progress=False)
"""


def test_resume_after_kill_9_ends_with_identical_heads(train_file, tiny_chat_model_dir, tmp_path):
    common = {"max_steps": 16, "save_every": 4, "log_every": 1, "keep_last": 2}
    reference = tmp_path / "uninterrupted"
    train_heads(TrainConfig(**settings(train_file, tiny_chat_model_dir, reference, **common)), progress=False)

    output = tmp_path / "killed"
    run_settings = settings(train_file, tiny_chat_model_dir, output, **common)
    with open(tmp_path / "child.log", "w") as child_log:
        child = subprocess.Popen([sys.executable, "-c", RUN_IN_SUBPROCESS, json.dumps(run_settings)],
                                 stdout=child_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (output / "checkpoint-4").exists():
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not (output / "heads").exists(), "the run finished before it could be killed"

    result = train_heads(TrainConfig(**run_settings), progress=False)
    assert result.resumed_from is not None and result.resumed_from >= 4
    resumed, uninterrupted = read_checkpoint(output / "heads").head_tensors, read_checkpoint(reference / "heads").head_tensors
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)

    def losses_by_step(folder):
        return [(row["step"], row["loss"]) for row in map(json.loads, (folder / "log.jsonl").read_text().splitlines())]

    assert losses_by_step(output) == losses_by_step(reference)  # the log was cut back to the checkpoint, then continued
    assert len([folder for folder in output.iterdir() if folder.name.startswith("checkpoint-")]) <= 2
    assert not [folder for folder in output.iterdir() if folder.name.startswith(".")]  # no half-written leftovers


def test_resume_with_different_settings_is_refused_naming_them(train_file, tiny_chat_model_dir, tmp_path):
    output = tmp_path / "run"
    train_heads(TrainConfig(**settings(train_file, tiny_chat_model_dir, output, max_steps=2)), progress=False)
    changed = TrainConfig(**settings(train_file, tiny_chat_model_dir, output, max_steps=2, learning_rate=2e-3, seed=1))
    with pytest.raises(ValueError) as error:
        train_heads(changed, progress=False)
    message = str(error.value)
    assert "learning_rate: 0.001 in the stored run, 0.002 now" in message and "seed: 0 in the stored run, 1 now" in message
    assert "--overwrite" in message and "--output" in message
    # Bookkeeping and the split of the same global batch may change.
    same = settings(train_file, tiny_chat_model_dir, output, max_steps=2, log_every=1, per_device_batch_size=4,
                    gradient_accumulation_steps=1)
    assert train_heads(TrainConfig(**same), progress=False).already_finished
    result = train_heads(changed, overwrite=True, progress=False)
    assert not result.already_finished and read_checkpoint(output / "heads").config.training["settings"]["seed"] == 1


def test_finished_run_reinvoked_does_nothing_and_says_so(train_file, tiny_chat_model_dir, tmp_path, capsys, monkeypatch):
    config = TrainConfig(**settings(train_file, tiny_chat_model_dir, tmp_path / "run", max_steps=2))
    train_heads(config, progress=False)
    heads_file = tmp_path / "run" / "heads" / "model.safetensors"
    before = heads_file.stat().st_mtime_ns
    capsys.readouterr()
    monkeypatch.setattr(recipe, "load_model", lambda *args: pytest.fail("a finished run must not load the model"))
    result = train_heads(config, progress=False)
    assert result.already_finished and result.steps == 2
    assert "already finished" in capsys.readouterr().err
    assert heads_file.stat().st_mtime_ns == before


def test_empty_training_set_fails_before_any_model_is_loaded(tiny_chat_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "bad.jsonl"
    data.write_text('not json\n{"prompt": "p"}\n')
    monkeypatch.setattr(recipe, "load_model", lambda *args: pytest.fail("the model was loaded"))
    config = TrainConfig(data=[str(data)], output_dir=str(tmp_path / "run"), base=str(tiny_chat_model_dir), on_bad_line="skip")
    with pytest.raises(TrainingDataError, match="no trajectory left to train on"):
        train_heads(config, progress=False)
    config.on_bad_line = "stop"
    with pytest.raises(TrainingDataError, match=rf"{data}:1: not valid JSON"):
        train_heads(config, progress=False)


def test_config_validation_quotes_the_bad_value_and_presets_differ():
    base = {"data": ["t.jsonl"], "output_dir": "run"}
    with pytest.raises(ValueError, match=r"mode must be one of \['joint', 'temperature', 'top-p'\], got 'both'"):
        TrainConfig(**base, mode="both")
    with pytest.raises(ValueError, match="learning_rate must be > 0, got -0.1"):
        TrainConfig(**base, learning_rate=-0.1)
    with pytest.raises(ValueError, match="easy_token_drop must be a probability in \\[0, 1\\], got 1.5"):
        TrainConfig(**base, easy_token_drop=1.5)
    with pytest.raises(ValueError, match="per_device_batch_size must be an integer >= 1, got 0"):
        TrainConfig(**base, per_device_batch_size=0)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        TrainConfig.from_preset("fast", **base)
    paper = TrainConfig.from_preset("paper", **base)
    assert (paper.learning_rate, paper.per_device_batch_size, paper.gradient_accumulation_steps, paper.max_length,
            paper.num_epochs) == (5e-6, 1, 4, 12_000, 1.0)
    assert (paper.easy_token_drop, paper.dft_weighting, paper.steepness) == (0.6, True, 30.0)
    assert TrainConfig.from_preset("paper", **base, learning_rate=1e-5).learning_rate == 1e-5
    assert TrainConfig(**base).total_steps(num_examples=6000, num_processes=8) == 24  # quick: max_steps
    assert TrainConfig(**base, max_steps=None, num_epochs=2.0).total_steps(6000, 8) == math.ceil(2 * 6000 / 32)
    assert paper.total_steps(num_examples=6000, num_processes=8) == 188  # 6000 / (1 * 8 * 4), rounded up


def test_learning_rate_warms_up_linearly_then_follows_the_schedule():
    constant = [learning_rate_at(step, peak=1.0, warmup_steps=4, total_steps=10, schedule="constant") for step in range(10)]
    assert constant == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    cosine = [learning_rate_at(step, peak=1.0, warmup_steps=0, total_steps=4, schedule="cosine") for step in range(4)]
    assert cosine == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    from safetensors.torch import load_file, save_file

    parameter = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([parameter], lr=0.1, weight_decay=0.05)
    for _ in range(2):
        parameter.grad = torch.randn(3, 2)
        optimizer.step()
    tensors, scalars = state.optimizer_state_to_flat(optimizer)
    save_file(tensors, tmp_path / "optimizer.safetensors")
    loaded = load_file(tmp_path / "optimizer.safetensors")
    scalars = json.loads(json.dumps(scalars))
    copy = torch.nn.Parameter(parameter.detach().clone())
    restored = torch.optim.AdamW([copy], lr=0.1, weight_decay=0.05)
    restored.load_state_dict(state.optimizer_state_from_flat(restored, loaded, scalars))
    gradient = torch.randn(3, 2)
    parameter.grad, copy.grad = gradient, gradient.clone()
    optimizer.step()
    restored.step()
    assert torch.equal(parameter, copy)


def test_cli_train_flags_override_the_preset(train_file, tiny_chat_model_dir, tmp_path, capsys):
    import argparse

    from autodeco.cli._parser import add_command
    from autodeco.cli.train import heldout, train

    parser = argparse.ArgumentParser(prog="autodeco")
    subparsers = parser.add_subparsers(dest="command")
    add_command(subparsers, "train", train)
    add_command(subparsers, "heldout", heldout)
    arguments = vars(parser.parse_args(["train", str(train_file), "--preset", "paper", "--max-steps", "2",
                                        "--batch-size", "2", "--max-length", "64", "--dtype", "float32",
                                        "--base", str(tiny_chat_model_dir), "--output", str(tmp_path / "run"),
                                        "--no-progress"]))
    function = arguments.pop("_function")
    arguments.pop("command")
    result = function(**arguments)
    stored = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (stored["learning_rate"], stored["max_steps"], stored["per_device_batch_size"], stored["max_length"],
            stored["gradient_accumulation_steps"]) == (5e-6, 2, 2, 64, 4)
    assert result.steps == 2 and "heads: " in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown preset 'slow'"):
        train([str(train_file)], preset="slow")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--gradient-accumulation-steps" in help_text and "--on-bad-line" in help_text and "--overwrite" in help_text


def test_cli_num_epochs_replaces_the_quick_step_count(train_file, tmp_path, monkeypatch):
    from autodeco.cli.train import train

    seen = []

    def record(config, **kwargs):
        seen.append(config)
        return recipe.TrainResult(tmp_path, tmp_path / "heads", 1, None, True, None, None)

    monkeypatch.setattr(recipe, "train_heads", record)
    train([str(train_file)], output=str(tmp_path))
    train([str(train_file)], output=str(tmp_path), num_epochs=3.0)
    train([str(train_file)], output=str(tmp_path), num_epochs=3.0, max_steps=5, dft_weighting=False, use_enhanced_features=False)
    assert [(config.max_steps, config.num_epochs) for config in seen] == [(24, 1.0), (None, 3.0), (5, 3.0)]
    assert seen[2].dft_weighting is False and seen[2].use_enhanced_features is False


def test_a_run_without_deepspeed_never_imports_it(train_file, tiny_chat_model_dir, tmp_path):
    """DeepSpeed prints on import (to standard output): only a DeepSpeed run may import it."""
    config = settings(train_file, tiny_chat_model_dir, tmp_path / "run", max_steps=2, save_every=1)
    script = (
        "import json, sys\n"
        "from autodeco.training.config import TrainConfig\n"
        "from autodeco.training.recipe import train_heads\n"
        "train_heads(TrainConfig(**json.loads(sys.argv[1])), progress=False)\n"
        "print('deepspeed' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, json.dumps(config)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout
