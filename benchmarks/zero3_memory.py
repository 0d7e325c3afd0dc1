#!/usr/bin/env python
"""Resident memory of the frozen base per process: DeepSpeed ZeRO-3 versus the plain path, 2 processes.

A random Llama (float32, about 1.2 GB by default; built from a config, no download) is saved as
safetensors once. Then ``autodeco``'s own training setup (``make_accelerator``,
``configure_deepspeed``, ``load_model``, ``place_model``) runs under ``accelerate launch`` with two
CPU processes in three arms:

- **plain**: ``configs/accelerate/cpu_2proc.yaml`` (gloo): every process holds the whole base;
- **zero3, init**: ``configs/accelerate/deepspeed_zero3.yaml`` as shipped (``zero3_init_flag: true``,
  the base is partitioned while it loads), with a float32 copy of ``configs/deepspeed/zero3.json``;
- **zero3, no init**: the same with ``zero3_init_flag: false`` (each process loads the whole base,
  then DeepSpeed partitions it).

Each process reports its resident set (``VmRSS``) before the model is loaded, after it is placed,
and after one training step (forward of a 1 x ``--tokens`` batch and the heads' gradients), and
its high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before each phase) during
the load and during the step. The table shows each figure minus the resident set before loading:
what the base (and, for the step, the activations and ZeRO-3's gathered layers) cost that process.

    python benchmarks/zero3_memory.py                       # ~3 min on 2 cores
    python benchmarks/zero3_memory.py --hidden-size 2048 --layers 12
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PLAIN_CONFIG = REPOSITORY / "configs" / "accelerate" / "cpu_2proc.yaml"
ZERO3_CONFIG = REPOSITORY / "configs" / "accelerate" / "deepspeed_zero3.yaml"
ZERO3_JSON = REPOSITORY / "configs" / "deepspeed" / "zero3.json"
MIB = 2**20
PHASES = ("loaded", "load_peak", "stepped", "step_peak")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Per-process resident memory of the base: ZeRO-3 vs plain, 2 CPU processes.")
    parser.add_argument("--hidden-size", type=int, default=1536, help="default: %(default)s")
    parser.add_argument("--layers", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--intermediate-size", type=int, default=4096, help="default: %(default)s")
    parser.add_argument("--vocabulary", type=int, default=32000, help="default: %(default)s")
    parser.add_argument("--shard-mib", type=int, default=100,
                        help="safetensors shard size of the saved base (default: %(default)s; real checkpoints use ~5 GB shards)")
    parser.add_argument("--max-live-parameters", type=int,
                        help="override stage3_max_live_parameters and stage3_max_reuse_distance of zero3.json "
                        "(shipped: 1e9, more than this whole base, so a forward pass keeps every gathered layer)")
    parser.add_argument("--tokens", type=int, default=64, help="sequence length of the training step (default: %(default)s)")
    parser.add_argument("--arms", nargs="+", default=["plain", "zero3-init", "zero3-no-init"],
                        choices=["plain", "zero3-init", "zero3-no-init"])
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one process of an arm, write to this folder
    parser.add_argument("--base", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -------------------------------------------------------------------------------- inside one process


def memory_status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` and ``RssShmem`` of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def release_free_memory() -> None:
    """Collect garbage and hand the C allocator's free pages back to the system (``malloc_trim(0)``).

    Tensors below glibc's mmap threshold (up to 32 MiB) live on the heap; when ZeRO-3 frees a
    whole weight after partitioning it, glibc keeps the pages, and ``VmRSS`` would count them.
    """
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def run_worker(arguments: argparse.Namespace) -> None:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported before the first reading:

    from autodeco.model.modeling import AutoDecoForCausalLM  # noqa: F401   their code is not the base's memory)
    from autodeco.training.config import TrainConfig
    from autodeco.training.recipe import (
        accumulate_gradients,
        base_loading,
        configure_deepspeed,
        is_partitioned,
        load_model,
        make_accelerator,
        place_model,
        trainable_parameters,
    )

    torch.set_num_threads(1)
    accelerator = make_accelerator()
    config = TrainConfig(data=["unused.jsonl"], output_dir=arguments.worker, base=arguments.base, dtype="float32",
                         per_device_batch_size=1, gradient_accumulation_steps=1)
    configure_deepspeed(accelerator, config)
    release_free_memory()
    before = memory_status()["VmRSS"]
    reset_peak()
    with base_loading(accelerator):
        model = load_model(config, arguments.base)
    partitioned_while_loading = is_partitioned(model.llm)
    model = place_model(model, accelerator, config)
    load_peak = memory_status()["VmHWM"]
    release_free_memory()
    loaded = memory_status()
    parameters = trainable_parameters(model)
    generator = torch.Generator().manual_seed(accelerator.process_index)
    input_ids = torch.randint(3, model.config.vocab_size, (1, arguments.tokens), generator=generator)
    batch = {
        "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone(),
        "drop_draws": torch.rand(1, arguments.tokens - 1, generator=generator),
    }
    model.train()
    accumulate_gradients(model, parameters, [batch], config)  # warm-up: ZeRO-3 records the module order
    release_free_memory()
    reset_peak()
    accumulate_gradients(model, parameters, [batch], config)
    step_peak = memory_status()["VmHWM"]
    release_free_memory()
    stepped = memory_status()
    record = {
        "process": accelerator.process_index, "before": before, "partitioned_while_loading": partitioned_while_loading,
        "loaded": loaded["VmRSS"] - before, "load_peak": load_peak - before,
        "stepped": stepped["VmRSS"] - before, "step_peak": step_peak - before,
        "loaded_status": loaded, "stepped_status": stepped,
        "base_parameters": sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in model.llm.parameters()),
    }
    Path(arguments.worker, f"process-{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------ driver


def build_base(folder: Path, arguments: argparse.Namespace) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=arguments.vocabulary, hidden_size=arguments.hidden_size, intermediate_size=arguments.intermediate_size,
        num_hidden_layers=arguments.layers, num_attention_heads=arguments.hidden_size // 128, num_key_value_heads=min(4, arguments.hidden_size // 128),
        head_dim=128, max_position_embeddings=4096, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, max_shard_size=f"{arguments.shard_mib}MB")
    return sum(parameter.numel() for parameter in model.parameters())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_arm(arm: str, base: Path, work: Path, arguments: argparse.Namespace) -> list[dict]:
    folder = work / arm
    folder.mkdir()
    if arm == "plain":
        launcher = ["--config_file", str(PLAIN_CONFIG)]
    else:
        float32_json = work / "zero3_float32.json"
        settings = json.loads(ZERO3_JSON.read_text())
        settings["bf16"]["enabled"] = False
        if arguments.max_live_parameters is not None:
            for name in ("stage3_max_live_parameters", "stage3_max_reuse_distance"):
                settings["zero_optimization"][name] = arguments.max_live_parameters
            settings["zero_optimization"]["stage3_prefetch_bucket_size"] = 0
        float32_json.write_text(json.dumps(settings))
        accelerate_config = ZERO3_CONFIG
        if arm == "zero3-no-init":  # (accelerate launch's --zero3_init_flag false does not override the file's true)
            accelerate_config = work / "deepspeed_zero3_no_init.yaml"
            shipped = ZERO3_CONFIG.read_text()
            assert "zero3_init_flag: true" in shipped, "configs/accelerate/deepspeed_zero3.yaml changed; update this script"
            accelerate_config.write_text(shipped.replace("zero3_init_flag: true", "zero3_init_flag: false"))
        launcher = ["--config_file", str(accelerate_config), "--num_processes", "2", "--deepspeed_config_file", str(float32_json)]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--main_process_port", str(free_port()),
        __file__, "--worker", str(folder), "--base", str(base), "--tokens", str(arguments.tokens),
    ]
    # A fixed mmap threshold: every tensor above 1 MiB is mapped and unmapped whole, so that the
    # resident set follows the live tensors (with glibc's dynamic threshold, the gathered 24 MiB
    # layers of ZeRO-3 would land on the heap, and freed heap pages stay resident).
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(MIB)}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPOSITORY)
    if finished.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}")
    return [json.loads((folder / f"process-{index}.json").read_text()) for index in range(2)]


def mib(value: int) -> str:
    return f"{value / MIB:,.0f}"


def main(argv=None) -> None:
    arguments = parse_args(argv)
    if arguments.worker:
        run_worker(arguments)
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="zero3-memory-") as temporary:
        work = Path(temporary)
        parameters = build_base(work / "base", arguments)
        print(f"base: random Llama, {parameters / 1e6:.0f}M parameters, float32 = {mib(4 * parameters)} MiB", file=sys.stderr)
        for arm in arguments.arms:
            print(f"running {arm} ...", file=sys.stderr, flush=True)
            results[arm] = launch_arm(arm, work / "base", work, arguments)
    print(f"\nbase: {parameters / 1e6:.0f}M parameters, float32 ({mib(4 * parameters)} MiB); 2 CPU processes; "
          f"MiB above each process's resident set before loading\n")
    print("| arm | process | after placement | peak during load | after a training step | peak during the step |")
    print("|---|---|---|---|---|---|")
    for arm, records in results.items():
        for record in records:
            if arm == "zero3-init" and not record["partitioned_while_loading"]:
                raise SystemExit("zero3-init: the base was not partitioned while loading (zero3_init_flag ignored?)")
            if arm == "zero3-no-init" and record["partitioned_while_loading"]:
                raise SystemExit("zero3-no-init: the base was partitioned while loading (zero3_init_flag: false ignored?)")
            print(f"| {arm} | {record['process']} | " + " | ".join(mib(record[phase]) for phase in PHASES) + " |")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps({"parameters": parameters, "results": results}, indent=2))


if __name__ == "__main__":
    main()
