"""Two processes (``accelerate launch`` with configs/accelerate/cpu_2proc.yaml, gloo) train the same heads as one.

The global batch (4 examples per step) is split 2 processes x 1 example x 2 accumulation steps
in the launched run and 1 process x 1 example x 4 steps in the reference. The recipe reduces
loss sums, token counts and float64 gradient sums, so the two runs take the same steps. Tolerance:
1e-6 relative to the largest head weight (float64 accumulation makes them bitwise equal on CPU in
practice; the bound allows for reduction-order rounding on other backends).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodeco.model.checkpoint import read_checkpoint
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.training.config import TrainConfig
from autodeco.training.recipe import train_heads
from helpers import free_port, write_data

REPOSITORY = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPOSITORY / "configs" / "accelerate" / "cpu_2proc.yaml"
RELATIVE_TOLERANCE = 1e-6

DRIVER = """
import json, sys, torch
torch.set_num_threads(1)
from autodeco.training.config import TrainConfig
from autodeco.training.recipe import train_heads
train_heads(TrainConfig(**json.loads(sys.argv[1])), progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("control", [
    {}, {"control_share": 0.5, "control_margin": 0.2}, {"control_share": 0.5, "control_margin": 0.2, "control_anchor": "anchor"},
], ids=["plain", "decoding-control", "decoding-control-anchored"])
def test_two_processes_train_the_same_heads_as_one(tiny_chat_model_dir, tmp_path, control):
    """With decoding control, each commanded copy rides with its plain example wherever the split puts it; an
    anchor's gradient is reduced with the others."""
    data = write_data(tmp_path / "trajectories.jsonl")
    if "control_anchor" in control:  # heads other than the run's fresh ones, so the anchor loss is not 0
        AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=7).save_pretrained(tmp_path / "anchor")
        control = {**control, "control_anchor": str(tmp_path / "anchor")}
    common = {
        "data": [str(data)], "base": str(tiny_chat_model_dir), "max_steps": 3, "learning_rate": 1e-3,
        "warmup_steps": 0, "per_device_batch_size": 1, "save_every": 100, "log_every": 1, "easy_token_drop": 0.6,
        **control,
    }
    single = TrainConfig(**common, output_dir=str(tmp_path / "one"), gradient_accumulation_steps=4)
    train_heads(single, progress=False)

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    launched = {**common, "output_dir": str(tmp_path / "two"), "gradient_accumulation_steps": 2}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
        "--main_process_port", str(free_port()), str(driver), json.dumps(launched),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, check=False, capture_output=True, text=True, env=environment, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    stored = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert stored["num_processes"] == 2 and stored["global_batch_size"] == 4
    one = read_checkpoint(tmp_path / "one" / "heads").head_tensors
    two = read_checkpoint(tmp_path / "two" / "heads").head_tensors
    for name, tensor in one.items():
        scale = tensor.abs().max().item()
        assert (two[name] - tensor).abs().max().item() <= RELATIVE_TOLERANCE * scale, name
    fresh = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0).head_state_dict()
    assert all(not torch.equal(one[name], fresh[name]) for name in fresh)  # both runs did train
    rows_one = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    rows_two = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [row["kept_tokens"] for row in rows_one] == [row["kept_tokens"] for row in rows_two]
    assert [row["loss"] for row in rows_one] == pytest.approx([row["loss"] for row in rows_two], rel=1e-6)
    if control:
        assert sum(row["control_pairs"] for row in rows_one) > 0
        assert [row["control_pairs"] for row in rows_one] == [row["control_pairs"] for row in rows_two]
    if "control_anchor" in control:
        assert all(row["anchor_loss"] > 0 for row in rows_one)
        assert [row["anchor_loss"] for row in rows_one] == pytest.approx([row["anchor_loss"] for row in rows_two], rel=1e-6)
