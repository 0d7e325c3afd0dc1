"""On-policy training of the heads: group advantages, the policy-gradient loss step, the reward and rejection recipes,
resume after kill -9, and the command line's refusals.

The tiny chat model answers arithmetic at random and rarely ends within a few tokens, so the recipes' runs here
inject a reward (the library's ``reward=`` argument) that its answers meet about half the time; the production
reward (verified and ended) is tested on hand-written answers.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from autodeco.cli import main
from autodeco.core import losses
from autodeco.core.policy_gradient import (
    advantage_weighted_nll,
    greedy_like,
    group_advantages,
    groups_with_signal,
    head_drift,
)
from autodeco.data.tokens import TrainingExample
from autodeco.model.checkpoint import read_checkpoint
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.problems import Problem
from autodeco.training.config import TrainConfig
from autodeco.training.on_policy import training_problems, verified_reward
from autodeco.training.recipe import trainable_parameters
from autodeco.training.rejection import train_by_rejection
from autodeco.training.reward import train_with_reward
from autodeco.training.reward_config import RejectionConfig, RewardConfig
from autodeco.training.reward_step import step_gradient


def parity_reward(problem, text, finished):
    """About half of the tiny model's random answers: those whose characters' codes add up to an even number."""
    return float(sum(map(ord, text)) % 2 == 0)


def reward_settings(model_dir, output, **overrides):
    values = {"output_dir": str(output), "base": str(model_dir), "limit": 12, "prompts_per_step": 3,
              "answers_per_prompt": 4, "max_new_tokens": 6, "max_steps": 4, "save_every": 2, "learning_rate": 1e-2}
    values.update(overrides)
    return values


# ---------------------------------------------------------------------------------------------- pure pieces


def test_group_advantages_on_hand_computed_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 1.0, 0.5]])
    plain = group_advantages(rewards, normalize=False)
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.0] * 4, [0.0] * 4, [0.0, -0.5, 0.5, 0.0]])
    torch.testing.assert_close(plain, expected)
    # std (unbiased) of [1, 0, 0, 0] is 0.5, of [0.5, 0, 1, 0.5] is sqrt(1/6) = 0.408248
    normalized = group_advantages(rewards, epsilon=0.0)
    torch.testing.assert_close(normalized[0], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    torch.testing.assert_close(normalized[3], torch.tensor([0.0, -1.224745, 1.224745, 0.0]))
    assert torch.equal(normalized[1:3], torch.zeros(2, 4))  # equal rewards: no signal, even divided by std + 0
    assert group_advantages(rewards)[0, 0].item() == pytest.approx(0.75 / (0.5 + 1e-4))
    assert groups_with_signal(rewards).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="at least 2 answers"):
        group_advantages(torch.ones(3, 1))


def test_loss_pieces_on_hand_built_values():
    assert advantage_weighted_nll(torch.tensor([2.0, 1.0, 4.0]), torch.tensor([1.0, 1.0, -0.5])).item() == 1.0
    temperature, top_p = torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.9])
    drift = head_drift(temperature, top_p, torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(drift, torch.tensor([0.0, 0.693147**2 + 0.04]))
    # softmax([ln 3, 0, 0]) = [0.6, 0.2, 0.2]: one token in the nucleus of P <= 0.6, two above
    logits = torch.tensor([[3.0, 1.0, 1.0]]).log().expand(4, 3)
    flags = greedy_like(logits, torch.tensor([1.0, 1.0, 1.0, 0.04]), torch.tensor([0.6, 0.61, 0.99, 0.99]))
    assert flags.tolist() == [True, False, False, True]


def test_top_p_loss_per_token_reduction_matches_the_sum():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator)
    temperature, top_p = torch.rand(2, 5, generator=generator) + 0.5, torch.rand(2, 5, generator=generator)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    per_token = losses.top_p_loss(logits, temperature, top_p, labels, reduction="none", dft_weighting=False)
    total = losses.top_p_loss(logits, temperature, top_p, labels, reduction="sum", dft_weighting=False)
    assert per_token.shape == (5,) and per_token.sum().item() == pytest.approx(total.total.item(), rel=1e-6)
    # row-major order of the predicting positions: (0, 1) -> 3, (0, 2) -> 4, (0, 3) -> 5, (1, 0) -> 1, (1, 1) -> 2
    assert (labels[:, 1:] != -100).nonzero()[:, 0].tolist() == [0, 0, 0, 1, 1]
    assert per_token[3].item() == pytest.approx(
        losses.soft_top_p_nll(logits[1, 0:1], temperature[1, 0:1], top_p[1, 0:1], labels[1, 1:2]).item(), rel=1e-6)
    empty = losses.top_p_loss(logits, temperature, top_p, torch.full((2, 5), -100), reduction="none")
    assert empty.shape == (0,)


def test_positive_advantage_raises_an_answers_probability_and_negative_lowers_it(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                           tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("4, so 4", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    labels = [-100] * len(prompt_ids) + answer_ids
    example = TrainingExample(torch.tensor(prompt_ids + answer_ids), torch.tensor(labels))

    def answer_nll(model):
        with torch.no_grad():
            output = model(input_ids=example.input_ids[None])
            return losses.top_p_loss(output.logits, output.temperature, output.top_p, example.labels[None],
                                     dft_weighting=False).item()

    changes = {}
    for advantage in (1.0, -1.0):
        model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
        parameters = trainable_parameters(model)
        before = answer_nll(model)
        gradient, statistics = step_gradient(model, None, parameters, [example], torch.tensor([advantage]),
                                             steepness=30.0, kl_weight=0.0, batch_size=4, pad_id=0)
        assert statistics[0].item() == len(answer_ids)  # the answer's tokens, not the prompt's
        with torch.no_grad():
            offset = 0
            for parameter in parameters:  # one plain gradient step
                parameter -= 0.05 * gradient[offset : offset + parameter.numel()].view_as(parameter).float()
                offset += parameter.numel()
        changes[advantage] = answer_nll(model) - before
    assert changes[1.0] < 0 < changes[-1.0], changes


def test_verified_reward_counts_a_cut_off_answer_as_wrong():
    reward = verified_reward("exact")
    problem = Problem("p", "What is 6 * 7?", "42", "demo", "arithmetic")
    assert reward(problem, "6 * 7 = \\boxed{42}", True) == 1.0
    assert reward(problem, "6 * 7 = \\boxed{42}", False) == 0.0  # no end token within the limit
    assert reward(problem, "6 * 7 = \\boxed{41}", True) == 0.0


def test_training_prompts_leave_out_the_heldout_questions():
    from autodeco.sampling.trajectories import is_heldout

    problems = training_problems(RewardConfig(limit=40, heldout_fraction=0.25), seed=0)
    assert 0 < len(problems) < 40 and not any(is_heldout(problem.question, 0.25, 0) for problem in problems)
    assert all(problem.id.startswith("arithmetic/train/") for problem in problems)


# ------------------------------------------------------------------------------------------- reward recipe


def test_reward_run_trains_the_heads_and_writes_everything(tiny_chat_model_dir, tmp_path):
    output = tmp_path / "run"
    result = train_with_reward(RewardConfig(**reward_settings(tiny_chat_model_dir, output, kl_weight=0.5)),
                               progress=False, reward=parity_reward)
    assert result.steps == 4 and not result.already_finished
    rows = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert 0 < row["reward_mean"] < 1 and 0 < row["signal_share"] <= 1
        assert 0 < row["temperature_mean"] < 2 and 0 < row["top_p_mean"] < 1 and 0 <= row["greedy_like_share"] <= 1
        assert row["loss"] == pytest.approx(row["policy_loss"] + 0.5 * row["kl"])
        assert 1 <= row["answer_tokens"] <= 6
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0  # the heads left their starting values
    trained = read_checkpoint(output / "heads")
    assert trained.config.trained is True and trained.config.training["objective"] == "reward"
    fresh = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0).head_state_dict()
    assert all(not torch.equal(trained.head_tensors[name], fresh[name]) for name in fresh)
    assert (output / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (output / "checkpoint-2" / "training_state.safetensors").exists()
    stored = json.loads((output / "train_config.json").read_text())
    assert stored["objective"] == "reward" and stored["answers_per_prompt"] == 4 and stored["rollout_processes"] == 1
    again = train_with_reward(RewardConfig(**reward_settings(tiny_chat_model_dir, output, kl_weight=0.5)),
                              progress=False, reward=parity_reward)
    assert again.already_finished
    with pytest.raises(ValueError, match="answers_per_prompt: 4 in the stored run, 5 now"):
        changed = reward_settings(tiny_chat_model_dir, output, kl_weight=0.5, answers_per_prompt=5)
        train_with_reward(RewardConfig(**changed), progress=False, reward=parity_reward)


KILLED_RUN = """
import json, os, signal, sys, torch
torch.set_num_threads(1)
from autodeco.training.reward import train_with_reward
from autodeco.training.reward_config import RewardConfig
settings, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
calls = []
def reward(problem, text, finished):
    calls.append(1)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of a step's rollouts
    return float(sum(map(ord, text)) % 2 == 0)
train_with_reward(RewardConfig(**settings), progress=False, reward=reward)
"""


def test_reward_run_killed_with_kill_9_resumes_to_bitwise_identical_heads(tiny_chat_model_dir, tmp_path):
    common = {"max_steps": 6, "save_every": 2, "keep_last": 1}
    reference = tmp_path / "uninterrupted"
    train_with_reward(RewardConfig(**reward_settings(tiny_chat_model_dir, reference, **common)), progress=False,
                      reward=parity_reward)

    output = tmp_path / "killed"
    settings = reward_settings(tiny_chat_model_dir, output, **common)
    answers_per_step = settings["prompts_per_step"] * settings["answers_per_prompt"]
    kill_at = 3 * answers_per_step + 5  # during step 4: checkpoint-2 is the newest, step 3's log row was written
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(settings), str(kill_at)], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert not (output / "heads").exists() and (output / "checkpoint-2").exists()
    assert len((output / "log.jsonl").read_text().splitlines()) == 3  # one row past the checkpoint

    result = train_with_reward(RewardConfig(**settings), progress=False, reward=parity_reward)
    assert result.resumed_from == 2
    resumed = read_checkpoint(output / "heads").head_tensors
    uninterrupted = read_checkpoint(reference / "heads").head_tensors
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)

    def rows(folder):
        return [{key: value for key, value in json.loads(line).items() if not key.endswith("seconds")}
                for line in (folder / "log.jsonl").read_text().splitlines()]

    assert rows(output) == rows(reference)  # cut back to the checkpoint, then the same rollouts again
    assert [folder.name for folder in output.iterdir() if folder.name.startswith("checkpoint-")] == ["checkpoint-4"]


# ---------------------------------------------------------------------------------------- rejection rounds


def test_rejection_rounds_sample_keep_and_train_from_the_previous_round(tiny_chat_model_dir, tmp_path):
    output = tmp_path / "rounds"
    config = RejectionConfig(output_dir=str(output), rounds=2, limit=6, answers_per_prompt=2, max_new_tokens=5)
    likelihood = TrainConfig(data=["<rounds>"], output_dir=str(output), base=str(tiny_chat_model_dir), max_steps=2,
                             per_device_batch_size=2, max_length=512, save_every=1, warmup_steps=0)
    result = train_by_rejection(config, likelihood, progress=False, reward=parity_reward)
    assert [row["round"] for row in result.rows] == [1, 2] and not result.already_finished
    for row in result.rows:
        kept = (output / f"round-{row['round']}" / "trajectories.jsonl").read_text().splitlines()
        assert 0 < row["kept"] == len(kept) <= row["answers"] == 2 * row["problems"] and row["train_steps"] == 2
        assert row["reward_mean"] == pytest.approx(row["kept"] / row["answers"], abs=0.2)  # empty answers are not kept
    round_one = read_checkpoint(output / "round-1" / "train" / "heads")
    second_start = json.loads((output / "round-2" / "train" / "train_config.json").read_text())
    assert second_start["heads"] == str(output / "round-1" / "train" / "heads")
    final = read_checkpoint(output / "heads")
    round_two = read_checkpoint(output / "round-2" / "train" / "heads")
    assert all(torch.equal(final.head_tensors[name], round_two.head_tensors[name]) for name in round_two.head_tensors)
    assert any(not torch.equal(round_one.head_tensors[name], tensor) for name, tensor in round_two.head_tensors.items())
    assert final.config.training["objective"] == "rejection" and final.config.training["rounds"] == 2
    assert len((output / "log.jsonl").read_text().splitlines()) == 2
    assert (output / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    # A lost final copy (a kill after the last round): the rounds are not redone, only the copy is written again.
    (output / "heads" / "config.json").unlink()
    resumed = train_by_rejection(config, likelihood, progress=False,
                                 reward=lambda *args: pytest.fail("a finished round sampled again"))
    assert [row["kept"] for row in resumed.rows] == [row["kept"] for row in result.rows]
    assert train_by_rejection(config, likelihood, progress=False).already_finished


# -------------------------------------------------------------------------------------------- command line


def refused(capsys, *argv, says):
    status = main([str(argument) for argument in argv])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("autodeco: error: ")]
    assert len(lines) == 1, err
    for text in says:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


@pytest.mark.parametrize("argv, says", [
    (["--objective", "reward", "--answers-per-prompt", "1"], ("--answers-per-prompt", "must be >= 2", "got 1")),
    (["--objective", "rejection", "--answers-per-prompt", "1"], ("--answers-per-prompt", "must be >= 2")),
    (["--objective", "reward", "--prompts-per-step", "0"], ("--prompts-per-step", ">= 1", "got 0")),
    (["--objective", "reward", "--kl-weight", "-0.1"], ("--kl-weight", ">= 0", "-0.1")),
    (["--objective", "bandit"], ("--objective must be one of likelihood, reward, rejection", "'bandit'")),
    (["t.jsonl", "--kl-weight", "0.1"], ("--kl-weight applies to --objective reward, not likelihood",)),
    (["--objective", "reward", "--rounds", "3"], ("--rounds applies to --objective rejection, not reward",)),
    (["--objective", "reward", "--num-epochs", "2"], ("--num-epochs applies to --objective likelihood and rejection",)),
    (["--objective", "rejection", "--no-normalize-advantages"], ("--normalize-advantages applies to --objective reward",
                                                                  "not rejection")),
    (["--objective", "reward", "t.jsonl"], ("reads no trajectory files", "t.jsonl", "--objective likelihood")),
    (["--objective", "reward", "--preset", "paper"], ("--preset paper", "drop --preset")),
])
def test_bad_on_policy_settings_are_refused_in_one_line(capsys, tmp_path, argv, says):
    refused(capsys, "train", "--output", tmp_path / "run", *argv, says=says)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_reward_run_with_the_production_verifier(capsys, tiny_chat_model_dir, tmp_path):
    status = main(["train", "--objective", "reward", "--base", str(tiny_chat_model_dir),
                   "--output", str(tmp_path / "run"), "--limit", "4", "--prompts-per-step", "2", "--answers-per-prompt", "2", "--max-new-tokens", "3",
                   "--max-steps", "2", "--scorer", "exact", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0 and "trained 2 steps" in out and "heads: " in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["reward_mean"] for row in rows] == [0.0, 0.0]  # a random tiny model is never right in 3 tokens


def test_every_on_policy_setting_is_a_documented_flag(capsys):
    import dataclasses

    from autodeco.cli._parser import field_docs
    from autodeco.cli.train import FLAGS, OWN_SETTINGS
    from autodeco.training.reward_config import RolloutSettings

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for config_class in (RewardConfig, RejectionConfig):
        for field in dataclasses.fields(config_class):
            if field.name in OWN_SETTINGS:
                continue
            flag = "--" + FLAGS.get(field.name, field.name.replace("_", "-"))
            assert flag in text, f"{config_class.__name__}.{field.name} has no flag {flag}"
            if field.name in {field.name for field in dataclasses.fields(TrainConfig)}:
                continue  # a shared name (--learning-rate, ...): its help is TrainConfig's
            owner = RolloutSettings if field.name in field_docs(RolloutSettings) else config_class
            assert " ".join(field_docs(owner)[field.name].split()[:4]) in text, field.name
