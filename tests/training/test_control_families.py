"""Decoding control in training with phrasing families, neutral sentences and --control-data (issue 27)."""

import collections
import json
import random

import pytest
import torch

from autodeco.data.phrasings import Command, command_messages, load_phrasings
from autodeco.data.tokens import tokenize_prompt
from autodeco.data.trajectories import TrainingDataError
from autodeco.training import control_losses, loss_step, recipe
from autodeco.training.config import TrainConfig
from autodeco.training.control import control_choices, draw_command
from autodeco.training.data import build_training_set


def family(name, kind, split, phrasings, placement="after"):
    return {"name": name, "kind": kind, "split": split, "placement": placement, "language": "en", "style": "test",
            "phrasings": phrasings}


def write_families(path, *, neutral=True):
    families = [
        family("low-one", "low", "train", ["Be exact."]),
        family("low-many", "low", "train", [f"Be careful number {index}." for index in range(9)], "system"),
        family("low-eval", "low", "eval", ["Stay precise."]),
        family("high-one", "high", "train", ["Be wild."], "before"),
        family("high-eval", "high", "eval", ["Go creative."]),
    ]
    if neutral:
        families += [family("remark", "neutral", "train", ["It rained today."]),
                     family("remark-eval", "neutral", "eval", ["The sun is out."])]
    path.write_text(json.dumps({"version": 2, "families": families}))
    return path


def write_answers(path, count=6, correct=None):
    rows = []
    for a in range(count):
        row = {"prompt": f"What is {a} + {a + 3}?", "completion": f"{a} + {a + 3} = {2 * a + 3}."}
        if correct is not None:
            row["correct"] = correct
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_family_weighs_the_same_however_many_phrasings_it_has(tmp_path):
    phrasings = load_phrasings(write_families(tmp_path / "p.json"))
    generator = random.Random(0)
    families = collections.Counter(draw_command(generator, phrasings, "low").family for _ in range(4000))
    assert set(families) == {"low-one", "low-many"}  # training families only
    assert abs(families["low-one"] / 4000 - 0.5) < 0.04
    commands = [draw_command(generator, phrasings, "low") for _ in range(200)]
    assert {command.placement for command in commands if command.family == "low-many"} == {"system"}
    with pytest.raises(ValueError, match="no training family of kind 'neutral'"):
        draw_command(generator, load_phrasings(write_families(tmp_path / "q.json", neutral=False)), "neutral")


def test_neutral_pairs_come_after_the_commands_and_ask_for_no_change(tmp_path):
    phrasings = load_phrasings(write_families(tmp_path / "p.json"))
    choices = control_choices(0, 0, 3, 1.0, phrasings, both=True, neutral=True)
    assert [(choice.kind, choice.direction) for choice in choices] == [("low", -1), ("high", 1), ("neutral", 0)]
    assert choices[2].command == Command("It rained today.", "neutral", "remark", "after")
    # the commands drawn do not depend on whether neutral sentences are paired too
    assert control_choices(0, 0, 3, 1.0, phrasings, both=True) == choices[:2]


def test_a_version_one_file_draws_the_same_commands_as_before_families(tmp_path):
    old = {"low": {"train": ["a", "b", "c"], "eval": ["d"]}, "high": {"train": ["e", "f"], "eval": ["g"]}}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(old))
    phrasings = load_phrasings(path)
    for index in range(30):
        generator = random.Random(1000 + index)
        expected = random.Random(1000 + index)
        assert draw_command(generator, phrasings, "low").text == old["low"]["train"][expected.randrange(3)]


@pytest.mark.parametrize("placement", ["after", "before", "system"])
def test_a_commanded_copy_places_the_command_and_keeps_the_completion(tokenizer, tmp_path, placement):
    from autodeco.training.data import commanded_example

    examples, _ = build_training_set([write_answers(tmp_path / "t.jsonl")], tokenizer, max_length=128)
    command = Command("Be exact.", "low", "f", placement)
    copy = commanded_example(tokenizer, examples[1], command, 128)
    prompt_ids = tokenize_prompt(tokenizer, command_messages(examples[1].prompt, command))
    completion = examples[1].labels[examples[1].labels != -100].tolist()
    assert copy.input_ids.tolist() == prompt_ids + completion
    assert copy.labels[copy.labels != -100].tolist() == completion
    roles = [message["role"] for message in command_messages(examples[1].prompt, command)]
    assert roles == (["system", "user"] if placement == "system" else ["user"])


def test_neutral_rows_cost_their_shift_and_do_not_count_as_moved():
    config = TrainConfig(data=["unused"], output_dir="unused", control_share=1.0, control_margin=0.1,
                         control_temperature_scale="linear", control_top_p_scale="probability", control_neutral=True,
                         control_neutral_tolerance=0.0)
    labels = torch.tensor([[-100, 5, 6, 2]] * 4)
    temperature = torch.tensor([[0.5] * 4, [0.3] * 4, [0.8] * 4, [0.6] * 4], requires_grad=True)  # plain, low, high, neutral
    top_p = torch.tensor([[0.9] * 4, [0.7] * 4, [0.95] * 4, [0.85] * 4], requires_grad=True)
    batch = {"labels": labels, "control_rows": torch.tensor([0, 0, 0]), "control_directions": torch.tensor([-1.0, 1.0, 0.0])}
    result = control_losses.control_losses(temperature, top_p, batch, config)
    assert result.pairs == 3 and result.directed_pairs == 2
    assert result.temperature_moved == 2 and result.top_p_moved == 2
    assert result.neutral_temperature_shift_sum == pytest.approx(0.1, abs=1e-6)
    assert result.neutral_top_p_shift_sum == pytest.approx(0.05, abs=1e-6)
    # low and high already beyond their margins (T) / within for P high (0.05 < 0.1): only P high and the shifts cost
    assert result.total.item() == pytest.approx(0.1 + 0.05 + (0.1 - 0.05), abs=1e-6)
    result.total.backward()
    assert temperature.grad[3, :3].sum().item() == pytest.approx(1.0)  # d|mean - 0.5| / d mean, spread over 3 positions
    assert temperature.grad[0].abs().sum().item() == 0  # the plain side is detached
    tolerant = TrainConfig(data=["unused"], output_dir="unused", control_share=1.0, control_margin=0.1,
                           control_temperature_scale="linear", control_top_p_scale="probability", control_neutral=True,
                           control_neutral_tolerance=0.06)
    within = control_losses.control_losses(temperature, top_p, batch, tolerant)  # T shifts 0.1 (> 0.06), P 0.05 (<)
    assert within.total.item() == pytest.approx(0.04 + 0.05, abs=1e-6)  # the T shift beyond the tolerance, P high
    assert within.neutral_top_p_shift_sum == pytest.approx(0.05, abs=1e-6)  # the logged shift is the whole shift


def test_metrics_divide_gaps_by_the_directed_pairs_when_neutral_pairs_are_trained():
    values = dict.fromkeys(loss_step.STATISTICS, 0.0)
    values.update(control_pairs=3, control_directed_pairs=2, control_temperature_moved=2, control_top_p_moved=1,
                  control_neutral_temperature_shift_sum=0.3, control_neutral_top_p_shift_sum=0.1)
    metrics = loss_step.step_metrics(torch.tensor([values[name] for name in loss_step.STATISTICS]), control=True,
                                     neutral=True)
    assert metrics["control_temperature_moved"] == 1.0 and metrics["control_top_p_moved"] == 0.5
    assert metrics["control_neutral_temperature_shift"] == pytest.approx(0.3)
    without = loss_step.step_metrics(torch.tensor([values[name] for name in loss_step.STATISTICS]), control=True)
    assert "control_neutral_temperature_shift" not in without and without["control_temperature_moved"] == pytest.approx(2 / 3)


def test_unverified_answers_are_control_data_only(tokenizer, tmp_path):
    unverified = write_answers(tmp_path / "all.jsonl", correct=False)
    with pytest.raises(TrainingDataError, match="--control-data"):
        build_training_set([unverified], tokenizer, max_length=128)
    examples, _ = build_training_set([unverified], tokenizer, max_length=128, control_only=True)
    assert all(example.control_only for example in examples)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b", "correct": "yes"}) + "\n")
    with pytest.raises(TrainingDataError, match="'correct' must be true or false"):
        build_training_set([bad], tokenizer, max_length=128, control_only=True)
    with pytest.raises(ValueError, match="decoding control is off"):
        TrainConfig(data=["x"], output_dir="y", control_data=[str(unverified)])


def test_the_paper_losses_leave_control_data_rows_out(tokenizer, tiny_chat_model_dir, tmp_path):
    from autodeco.model.modeling import AutoDecoForCausalLM

    verified, _ = build_training_set([write_answers(tmp_path / "v.jsonl", 3)], tokenizer, max_length=128)
    more, _ = build_training_set([write_answers(tmp_path / "m.jsonl", 3, correct=False)], tokenizer, max_length=128,
                                 control_only=True)
    examples = verified + more
    config = TrainConfig(data=["unused"], output_dir="unused", easy_token_drop=0.0)
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    mixed = recipe.make_micro_batch(examples, [(0, 0), (0, 4), (0, 1)], tokenizer.pad_token_id, 0, "cpu")
    assert mixed["paper_rows"].tolist() == [True, False, True]
    alone = recipe.make_micro_batch(examples, [(0, 0), (0, 1)], tokenizer.pad_token_id, 0, "cpu")
    assert "paper_rows" not in alone
    with torch.no_grad():
        both = loss_step.micro_batch_losses(model, mixed, config)
        only = loss_step.micro_batch_losses(model, alone, config)
    torch.testing.assert_close(both.temperature.total, only.temperature.total, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(both.top_p.total, only.top_p.total, rtol=1e-5, atol=1e-7)
    assert both.temperature.count == only.temperature.count


def test_tiny_run_with_families_neutral_sentences_and_control_data(tiny_chat_model_dir, tmp_path):
    from autodeco.training.recipe import train_heads
    from autodeco.training.state import run_settings

    config = TrainConfig(
        data=[str(write_answers(tmp_path / "v.jsonl"))], base=str(tiny_chat_model_dir), output_dir=str(tmp_path / "run"),
        max_steps=3, warmup_steps=0, per_device_batch_size=2, log_every=1, save_every=100,
        control_share=1.0, control_pairing="both", control_neutral=True,
        control_phrasings=str(write_families(tmp_path / "p.json")),
        control_data=[str(write_answers(tmp_path / "m.jsonl", 4, correct=False))],
    )
    train_heads(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(row["control_pairs"] == 6 for row in rows)  # 2 examples x (low, high, neutral)
    assert all(row["control_neutral_temperature_shift"] >= 0 for row in rows)
    settings = run_settings(config, 1)
    assert settings["control_neutral"] is True and len(settings["control_data_fingerprint"]) == 64
    older = run_settings(TrainConfig(data=config.data, output_dir="x", control_share=1.0), 1)
    assert "control_neutral" not in older and "control_data" not in older  # recorded as before the options
    missing = TrainConfig(**{**_fields(config), "output_dir": str(tmp_path / "other"),
                             "control_phrasings": str(write_families(tmp_path / "q.json", neutral=False))})
    with pytest.raises(ValueError, match="no training family of kind 'neutral'"):
        train_heads(missing, progress=False)


def _fields(config):
    import dataclasses

    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(config) if field.name != "control"}
    return {**values, **config.control.flat()}


def test_sample_keep_setting_is_checked_and_recorded_only_when_not_the_default():
    from autodeco.sampling.config import SampleConfig
    from autodeco.sampling.trajectories import _run_record

    with pytest.raises(ValueError, match="keep must be one of verified, all"):
        SampleConfig(keep="some")
    assert "keep" not in _run_record(SampleConfig(), [])
    assert _run_record(SampleConfig(keep="all"), [])["keep"] == "all"


def test_a_saturated_top_p_head_still_moves_on_the_bounded_scale(tokenizer, tiny_chat_model_dir, tmp_path):
    """Where float32 rounds P to exactly 1, the bounded scale's gradient reaches the head's pre-sigmoid output."""
    from autodeco.model.modeling import AutoDecoForCausalLM

    examples, _ = build_training_set([write_answers(tmp_path / "t.jsonl")], tokenizer, max_length=128)
    phrasings = load_phrasings(write_families(tmp_path / "p.json"))
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    with torch.no_grad():
        model.top_p_head.mlp[2].bias.fill_(40.0)  # sigmoid(40) is 1.0 in float32
    config = TrainConfig(data=["unused"], output_dir="unused", control_share=1.0, control_pairing="both",
                         control_top_p_scale="bounded", control_heads="top-p")
    from autodeco.training.data import CommandedExamples

    pairs = CommandedExamples(tokenizer, examples, phrasings, share=1.0, seed=0, max_length=128, both=True)
    batch = recipe.make_micro_batch(examples, [(0, 0), (0, 1)], tokenizer.pad_token_id, 0, "cpu", pairs)
    with loss_step.top_p_head_logits(model, config) as caught:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert bool((output.top_p == 1.0).all()) and caught["values"].shape == output.top_p.shape
    torch.testing.assert_close(torch.sigmoid(caught["values"]), output.top_p)
    parts = loss_step.micro_batch_losses(model, batch, config)
    assert parts.control.top_p_loss_sum > 0
    gradient = torch.autograd.grad(parts.control.total, model.top_p_head.mlp[2].weight, allow_unused=True)[0]
    assert gradient is not None and gradient.abs().sum() > 0
    through_p = control_losses.control_losses(output.temperature, output.top_p, batch, config)  # no head outputs
    lost = torch.autograd.grad(through_p.total, model.top_p_head.mlp[2].weight, allow_unused=True)[0]
    assert lost is None or lost.abs().sum() == 0  # through P's logit the gradient is lost at P = 1
    off = TrainConfig(data=["unused"], output_dir="unused", control_share=1.0, control_top_p_scale="logit")
    with loss_step.top_p_head_logits(model, off) as caught:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert caught == {}  # only the bounded scale uses them
