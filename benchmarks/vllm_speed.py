"""AutoDeco inside vLLM against vLLM's own static sampling, and the vLLM rollout engine against the HF one.

Run in the vLLM environment (``./bin/test-vllm`` builds it), alone on the machine:

    .venv-vllm/bin/python benchmarks/vllm_speed.py [--base embedded:SmolLM2-135M-Instruct] [--tokens 64]

1. One engine (the plugin's model class on the base): batches of 1, 8 and 64 rows decode ``--tokens``
   tokens each, once with AutoDeco (the heads in ``compute_logits``, per-token values recorded) and once
   with static sampling T=0.6, P=0.95 of the same base (rows with ``autodeco: false``: vLLM's sampler
   alone), interleaved, best of ``--repeats``. Prints tok/s of both and the ratio (target: <= 1.05).
2. The rollouts of a small ``autodeco eval`` (greedy, default sampling and AutoDeco on arithmetic
   problems, the runner's own ``prefill``/``complete`` calls) with ``--engine hf`` and ``--engine vllm``.

Measured 2026-12-07 on the 2-core VM, 1 thread, embedded SmolLM2-135M in float32, alone on the machine,
with the exact nucleus that sorts no vocabulary (``core/decoding.nucleus_boundary``): tok/s static / plain /
AutoDeco at batch 1: 13.7 / 14.3 / 14.0, batch 8: 51.3 / 66.7 / 67.2, batch 64: 79.5 / 130.0 / 124.0;
AutoDeco's time over static sampling 0.975 / 0.762 / 0.642 (vLLM's CPU top-p sorts the vocabulary), over plain
sampling (no top-p) 1.020 / 0.992 / 1.049 (target <= 1.05; before the sort-free nucleus: 1.07 / 1.09 / 1.45).
Part 2 (4 problems x 2 samples): HF 31.1 tok/s, vLLM 38.7 tok/s (1.24x).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from autodeco.core.multipliers import Multipliers
from autodeco.engines.vllm import BaseSampling, RowRequest, VllmEngine, VllmRollouts  # vLLM itself is imported on first use
from autodeco.engines.vllm_export import export_for_vllm
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.problems import load_problems
from autodeco.sampling.inference import render_prompt
from autodeco.sampling.rollouts import HFRollouts
from autodeco.sampling.settings import DecodingSetting

MODES = {"static": (0.6, 0.95, False), "plain": (1.0, 1.0, False), "autodeco": (1.0, 1.0, True)}
"""Part 1's rows: vLLM's static sampling (with its top-p), vLLM's plain sampling (no top-p: no sort), AutoDeco."""


def decode_speed(engine, prompt_ids, batch: int, tokens: int, mode: str, seed: int) -> float:
    temperature, top_p, autodeco = MODES[mode]
    decoding = Multipliers(temperature, top_p) if autodeco else BaseSampling(temperature, top_p)
    rows = [RowRequest(prompt_ids, tokens, decoding, seed + row) for row in range(batch)]
    started = time.perf_counter()
    results = engine.generate(rows)
    seconds = time.perf_counter() - started
    return sum(len(result.token_ids) for result in results) / seconds


def rollout_speed(rollouts, tokenizer, problems, settings, samples: int, tokens: int) -> tuple[float, int]:
    started, generated = time.perf_counter(), 0
    batch = rollouts.prefill([render_prompt(tokenizer, problem.prompt()) for problem in problems])
    for setting in settings:
        completions = rollouts.complete(batch, setting, num_samples=1 if setting.kind == "greedy" else samples,
                                        max_new_tokens=tokens, seed=0)
        generated += sum(completion.num_tokens for group in completions for completion in group)
    return generated / (time.perf_counter() - started), generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per row in part 1")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--problems", type=int, default=8, help="arithmetic problems in part 2")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem and setting in part 2")
    arguments = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = tempfile.mkdtemp(prefix="autodeco-vllm-bench-")
    model = AutoDecoForCausalLM.from_base(arguments.base, seed=0, dtype=torch.float32)
    heads = model.save_pretrained(os.path.join(work, "heads"))
    started = time.perf_counter()
    engine = VllmEngine(export_for_vllm(heads, os.path.join(work, "vllm")), dtype="float32", max_model_len=1024,
                        max_num_seqs=64)
    print(f"engine started in {time.perf_counter() - started:.0f} s (threads: {torch.get_num_threads()})")
    tokenizer = engine.tokenizer
    prompt = tokenizer.encode(render_prompt(tokenizer, "Write a short story about a lighthouse."), add_special_tokens=False)
    decode_speed(engine, prompt, 4, 8, "autodeco", 0)  # warm-up
    print(f"\n1. decoding {arguments.tokens} tokens per row, tok/s (best of {arguments.repeats}, modes interleaved)")
    print("| batch | vLLM static (0.6, 0.95) | vLLM plain (1, 1) | AutoDeco in vLLM | time AutoDeco/static | "
          "time AutoDeco/plain |")
    print("|---|---|---|---|---|---|")
    for batch in [int(value) for value in arguments.batches.split(",")]:
        best = dict.fromkeys(MODES, 0.0)
        for repeat in range(arguments.repeats):
            for mode in MODES:
                best[mode] = max(best[mode], decode_speed(engine, prompt, batch, arguments.tokens, mode, 100 * repeat))
        print(f"| {batch} | {best['static']:.1f} | {best['plain']:.1f} | {best['autodeco']:.1f} | "
              f"{best['static'] / best['autodeco']:.3f} | {best['plain'] / best['autodeco']:.3f} |", flush=True)

    problems = load_problems("arithmetic", split="test", limit=arguments.problems, seed=0)
    settings = [DecodingSetting.greedy(), DecodingSetting.static(1.0, 1.0), DecodingSetting.autodeco()]
    print(f"\n2. eval rollouts: {len(problems)} arithmetic problems, greedy + default + autodeco, "
          f"{arguments.samples} samples each, up to 32 tokens")
    hf_rate, hf_tokens = rollout_speed(HFRollouts(model, tokenizer), tokenizer, problems, settings, arguments.samples, 32)
    vllm_rate, vllm_tokens = rollout_speed(VllmRollouts(engine, tokenizer), tokenizer, problems, settings,
                                           arguments.samples, 32)
    print(f"| engine | tok/s | tokens |\n|---|---|---|\n| hf | {hf_rate:.1f} | {hf_tokens} |\n"
          f"| vllm | {vllm_rate:.1f} | {vllm_tokens} |\nvllm/hf speed: {vllm_rate / hf_rate:.2f}x")
    engine.close()


if __name__ == "__main__":
    main()
