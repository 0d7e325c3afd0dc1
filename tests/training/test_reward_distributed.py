"""Two processes (``accelerate launch``, configs/accelerate/cpu_2proc.yaml, gloo) train the same reward heads as one.

With ``rollout_batch_size=1`` every prompt's answers are drawn with a seed of their own (derived from the seed,
the step and the problem id), so they do not depend on which process draws them; each process takes every
second prompt of the step, and the float64 gradient sums and statistics are all-reduced, so both runs take
the same steps. ``forward_batch_size=1`` gives every teacher-forced answer the same padded shape in both runs
(with 16 rows in one forward and 8 in another, float rounding differed by about 1e-8, which AdamW's
normalisation grew to 1e-5 of the weights in 3 steps).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodeco.model.checkpoint import read_checkpoint
from autodeco.training.reward import train_with_reward
from autodeco.training.reward_config import RewardConfig
from helpers import free_port

REPOSITORY = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPOSITORY / "configs" / "accelerate" / "cpu_2proc.yaml"

DRIVER = """
import json, sys, torch
torch.set_num_threads(1)
from autodeco.training.reward import train_with_reward
from autodeco.training.reward_config import RewardConfig
def reward(problem, text, finished):
    return float(sum(map(ord, text)) % 2 == 0)
train_with_reward(RewardConfig(**json.loads(sys.argv[1])), progress=False, reward=reward)
"""


def parity_reward(problem, text, finished):
    return float(sum(map(ord, text)) % 2 == 0)


@pytest.mark.slow
def test_two_processes_train_the_same_reward_heads_as_one(tiny_chat_model_dir, tmp_path):
    common = {"base": str(tiny_chat_model_dir), "limit": 12, "prompts_per_step": 4, "answers_per_prompt": 4,
              "max_new_tokens": 6, "max_steps": 3, "save_every": 100, "learning_rate": 1e-2, "rollout_batch_size": 1,
              "forward_batch_size": 1, "kl_weight": 0.5}
    train_with_reward(RewardConfig(**common, output_dir=str(tmp_path / "one")), progress=False, reward=parity_reward)

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
        "--main_process_port", str(free_port()), str(driver),
        json.dumps({**common, "output_dir": str(tmp_path / "two")}),
    ]
    finished = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["rollout_processes"] == 2
    one = read_checkpoint(tmp_path / "one" / "heads").head_tensors
    two = read_checkpoint(tmp_path / "two" / "heads").head_tensors
    for name, tensor in one.items():
        assert (two[name] - tensor).abs().max().item() <= 1e-6 * tensor.abs().max().item(), name
    rows_one = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    rows_two = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [row["reward_mean"] for row in rows_one] == [row["reward_mean"] for row in rows_two]
    assert [row["loss"] for row in rows_one] == pytest.approx([row["loss"] for row in rows_two], rel=1e-6)
    assert not torch.equal(one["temp_head.mlp.2.bias"], two["temp_head.mlp.2.bias"] * 0)  # heads are not zero
