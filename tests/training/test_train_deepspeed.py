"""DeepSpeed ZeRO-3 on two CPU processes: the frozen base is partitioned, the heads equal a one-process run.

``accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m autodeco.cli train ...``
(the README's command; ``zero3_init_flag: true``, so the base is partitioned while it loads) with
``--num_processes 2`` and a float32 copy of ``configs/deepspeed/zero3.json`` (the shipped one is
bfloat16, which a float32 reference run could not match). DeepSpeed's CPU accelerator and gloo
need no GPU. The global batch (4 examples per step) is 2 processes x 1 x 2 accumulation steps
here and 1 x 1 x 4 in the reference.

The run is killed with ``kill -9`` (launcher and both workers) after its first checkpoint and
resumed by the same command. Tolerance: 1e-6 relative to the largest weight of each head tensor,
as in test_train_distributed.py. On CPU (torch 2.13.0, DeepSpeed 0.19.8) the heads come out
bitwise equal: ZeRO-3 only moves the base's float32 weights (all-gather) and the recipe reduces
float64 gradient sums; the bound allows for rounding on other backends (ZeRO-3 computes linear
layers as ``input @ weight.t() + bias`` instead of ``addmm``, which may round differently).

The first launch in an environment JIT-compiles DeepSpeed's shared-memory communication op (about
a minute on 2 cores, cached in ``$TORCH_EXTENSIONS_DIR``, which ``./bin/test`` points into the
venv); later runs of this test take about 20 s. The test skips when DeepSpeed is not installed.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import free_port, write_data

from autodeco.model.checkpoint import read_checkpoint
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.training.config import TrainConfig
from autodeco.training.distributed import configure_deepspeed
from autodeco.training.recipe import train_heads

REPOSITORY = Path(__file__).resolve().parents[2]
ZERO3_CONFIG = REPOSITORY / "configs" / "accelerate" / "deepspeed_zero3.yaml"
ZERO3_JSON = REPOSITORY / "configs" / "deepspeed" / "zero3.json"
RELATIVE_TOLERANCE = 1e-6
STEPS = 12


def float32_deepspeed_json(folder: Path) -> Path:
    settings = json.loads(ZERO3_JSON.read_text())
    settings["bf16"]["enabled"] = False
    path = folder / "zero3_float32.json"
    path.write_text(json.dumps(settings))
    return path


def launch_command(tmp_path: Path, arguments: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CONFIG),
        "--num_processes", "2", "--deepspeed_config_file", str(float32_deepspeed_json(tmp_path)),
        "--main_process_port", str(free_port()), "-m", "autodeco.cli", "train", *arguments,
    ]


def launch_environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def kill_process_tree(pid: int) -> None:
    """``kill -9`` the launcher and every process under it (torchrun starts each worker in its own session)."""
    import psutil

    launcher = psutil.Process(pid)
    for process in [*launcher.children(recursive=True), launcher]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def relative_difference(one: dict, two: dict) -> float:
    return max(((two[name] - tensor).abs().max() / tensor.abs().max()).item() for name, tensor in one.items())


def fake_deepspeed_accelerator(deepspeed_config: dict, num_processes: int = 2):
    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(deepspeed_config=deepspeed_config)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=num_processes,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize("max_grad_norm, expected", [(1.0, 1.0), (0.25, 0.25), (None, 0.0)])
def test_batch_and_clipping_settings_reach_deepspeed_explicitly(tmp_path, max_grad_norm, expected):
    deepspeed_config = json.loads(ZERO3_JSON.read_text())  # "auto" everywhere, as shipped
    config = TrainConfig(data=["t.jsonl"], output_dir=str(tmp_path), dtype="bfloat16", max_grad_norm=max_grad_norm,
                         per_device_batch_size=3, gradient_accumulation_steps=4)
    configure_deepspeed(fake_deepspeed_accelerator(deepspeed_config), config)
    assert deepspeed_config["gradient_clipping"] == expected  # 0.0 written out: DeepSpeed's default would clip at 1.0
    assert deepspeed_config["train_micro_batch_size_per_gpu"] == 3
    assert deepspeed_config["gradient_accumulation_steps"] == 1  # the recipe accumulates by hand
    assert deepspeed_config["train_batch_size"] == 6


def test_a_deepspeed_precision_other_than_the_training_dtype_is_refused_naming_both(tmp_path):
    deepspeed_config = json.loads(ZERO3_JSON.read_text())  # bf16.enabled: true
    config = TrainConfig(data=["t.jsonl"], output_dir=str(tmp_path), dtype="float32")
    with pytest.raises(ValueError, match=r"computes the base in bfloat16 but the training dtype is 'float32'; pass --dtype bfloat16"):
        configure_deepspeed(fake_deepspeed_accelerator(deepspeed_config), config)


@pytest.mark.slow
def test_zero3_partitions_the_base_and_trains_the_same_heads_as_one_process(tiny_chat_model_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install --no-deps -r requirements/lock-deepspeed.txt)")
    data = write_data(tmp_path / "trajectories.jsonl")
    common = {
        "data": [str(data)], "base": str(tiny_chat_model_dir), "max_steps": STEPS, "learning_rate": 1e-3,
        "warmup_steps": 0, "per_device_batch_size": 1, "save_every": 3, "log_every": 1, "easy_token_drop": 0.6,
        "dtype": "float32",
    }
    reference = tmp_path / "one"
    train_heads(TrainConfig(**common, output_dir=str(reference), gradient_accumulation_steps=4), progress=False)

    output = tmp_path / "zero3"
    arguments = [
        str(data), "--base", str(tiny_chat_model_dir), "--output", str(output), "--max-steps", str(STEPS),
        "--learning-rate", "1e-3", "--warmup-steps", "0", "--batch-size", "1", "--gradient-accumulation-steps", "2",
        "--save-every", "3", "--log-every", "1", "--dtype", "float32", "--no-progress",
    ]
    command = launch_command(tmp_path, arguments)
    with open(tmp_path / "launch.log", "w") as launch_log:
        child = subprocess.Popen(command, stdout=launch_log, stderr=subprocess.STDOUT, env=launch_environment())
        deadline = time.monotonic() + 400
        while not (output / "checkpoint-3").exists() and child.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        killed = child.poll() is None
        if killed:
            kill_process_tree(child.pid)
        child.wait()
    first_log = (tmp_path / "launch.log").read_text()
    assert killed, "the run finished before it could be killed:\n" + first_log[-3000:]
    assert not (output / "heads").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, env=launch_environment(), timeout=400)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    resumed_at = re.search(r"resuming from \S*checkpoint-(\d+)", log)
    assert resumed_at is not None and int(resumed_at.group(1)) >= 3, log[-4000:]

    # The base really was partitioned: every one of its large tensors is empty outside its forward pass.
    summary = next(line for line in (first_log + log).splitlines() if line.startswith("ZeRO-3: base partitioned"))
    assert "while loading (zero3_init_flag) across 2 processes" in summary, summary
    assert summary.endswith("DeepSpeed gradient_clipping 1.0"), summary  # TrainConfig.max_grad_norm, explicitly
    partitioned, total_tensors = (int(value) for value in summary.split(": ")[2].split(" tensors")[0].split(" of "))
    assert partitioned >= total_tensors - 5, summary  # the tiny model's norms (32 values) stay whole
    held = [int(value) for value in summary.split("[")[1].split("]")[0].split(", ")]
    total = int(summary.split("] of ")[1].split(";")[0])
    assert all(value < 0.6 * total for value in held), summary

    stored = json.loads((output / "train_config.json").read_text())
    assert stored["num_processes"] == 2 and stored["global_batch_size"] == 4
    one = read_checkpoint(reference / "heads").head_tensors
    zero3 = read_checkpoint(output / "heads")  # an ordinary heads-only checkpoint, gathered
    assert zero3.config.hidden_size == 32 and zero3.config.trained
    assert {name: tensor.shape for name, tensor in zero3.head_tensors.items()} == {
        name: tensor.shape for name, tensor in one.items()
    }
    difference = relative_difference(one, zero3.head_tensors)
    print(f"largest relative difference of the ZeRO-3 heads from the one-process heads: {difference:.2e}")
    assert difference <= RELATIVE_TOLERANCE, f"relative difference {difference:.2e}"
    fresh = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0).head_state_dict()
    assert all(not torch.equal(one[name], fresh[name]) for name in fresh)  # the runs did train
    reloaded = AutoDecoForCausalLM.from_pretrained(output / "heads", base_model=str(tiny_chat_model_dir))
    assert torch.equal(reloaded.head_state_dict()["temp_head.mlp.0.weight"], zero3.head_tensors["temp_head.mlp.0.weight"])

    rows_one = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    rows_zero3 = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows_zero3] == list(range(1, STEPS + 1))
    assert [row["kept_tokens"] for row in rows_one] == [row["kept_tokens"] for row in rows_zero3]
    assert [row["loss"] for row in rows_one] == pytest.approx([row["loss"] for row in rows_zero3], rel=1e-6)
    assert not [folder for folder in output.iterdir() if folder.name.startswith(".")]


def test_heads_take_their_shape_from_ds_shape_when_the_output_head_is_partitioned(tiny_causal_lm):
    import copy

    llm = copy.deepcopy(tiny_causal_lm("llama"))
    weight = llm.lm_head.weight
    full_shape = tuple(weight.shape)
    weight.data = torch.empty(0)  # what ZeRO-3 leaves on every process outside the forward pass
    weight.ds_shape = torch.Size(full_shape)
    model = AutoDecoForCausalLM.from_base(llm, seed=0)
    assert (model.config.vocab_size, model.config.hidden_size) == full_shape == (128, 32)
    assert model.temp_head.mlp[0].weight.shape[1] == 32

    del weight.ds_shape
    with pytest.raises(ValueError, match=r"weight of shape \(0,\).*ds_shape"):
        AutoDecoForCausalLM.from_base(llm, seed=0)
