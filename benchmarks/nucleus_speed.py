#!/usr/bin/env python
"""Nucleus speed: AutoDeco's decoding step, whose top-p no longer sorts the vocabulary, against plain sampling.

Two measurements, each with its arms interleaved (A B C, B C A, C A B, ...) and summarised by medians, since
the machine may be shared and noisy:

1. **generate()** on the same base, prompt and seed, exactly N new tokens per row (the end-of-sequence id is
   set outside the vocabulary): AutoDeco's ``generate(do_sample=True)`` (heads, features, per-row T and top-p);
   **temperature**, the base's own ``generate()`` at the heads' mean T without top-p (transformers'
   ``TemperatureLogitsWarper``); **static top-p**, the same with the heads' mean P (plus ``TopPLogitsWarper``,
   which sorts). The heads' mean T and P come from one untimed AutoDeco run at each batch size.
2. **the warp alone**: ``autodeco.core.decoding.warp_logits`` (window stages, then the bucketing for the rows
   they leave) against the bucketing alone (the warp before the window stages) and the sort-based warp the
   bucketing replaced (both kept below as baselines), microseconds per row, on the logits of one AutoDeco
   ``generate()`` step midway with the T and P the heads chose for each row, and on the same logits sharpened 8x
   (a small nucleus); which stage settled how many rows; and how many rows' nuclei differ from the sort path's.

Run ``python benchmarks/nucleus_speed.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from decode_speed import SMOLLM2_135M_SHAPE, LogitsProcessingTimer, impossible_token_id
from transformers import LlamaConfig, LlamaForCausalLM

from autodeco import AutoDecoForCausalLM
from autodeco.core import decoding
from autodeco.core.decoding import MIN_SAMPLING_TEMPERATURE, scale_logits, warp_logits
from autodeco.model.generation import generate_with_base

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
SHARPENING = 8.0
"""The warp-alone table's second kind of logits: the model's logits times this (a small nucleus)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time AutoDeco's generate() against plain temperature sampling and static top-p on the same base, and "
            "its top-p warp against the sort-based one it replaced; print Markdown tables."
        )
    )
    parser.add_argument("--embedded", action="store_true",
                        help="the embedded SmolLM2-135M-Instruct with its shipped heads (default: a random Llama "
                             "of SmolLM2-135M's shape with fresh heads, seed 0)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64], help="default: %(default)s")
    parser.add_argument("--new-tokens", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the three generate() arms per batch size (default: %(default)s)")
    parser.add_argument("--warp-rounds", type=int, default=15,
                        help="interleaved rounds of the two warps per batch size and kind (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of about 20 s: batch 1 and 2, 4 new tokens, 1 round, 3 warp rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.new_tokens, args.rounds, args.warp_rounds = [1, 2], 4, 1, 3
    return args


# ------------------------------------------------------------------------------------------ the baseline


def sort_path_warp_logits(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The warp this replaced: radix-sort the logits, divide, softmax, ascending cumsum, scatter back."""
    sorted_logits, sorted_indices = _sort_ascending(logits.float())  # (B, V)
    scaled = sorted_logits.div_(temperature.float().clamp(min=MIN_SAMPLING_TEMPERATURE).unsqueeze(-1))
    probs = scaled.softmax(dim=-1)
    cumulative = torch.cumsum(probs, dim=-1, out=torch.empty_like(probs))  # (B, V)
    removed_counts = torch.searchsorted(cumulative, (1 - top_p.float()).unsqueeze(-1), right=True)
    removed_counts.clamp_(max=logits.shape[-1] - 1)  # (B, 1): the most likely token stays
    positions = torch.arange(logits.shape[-1])  # (V,)
    scaled.masked_fill_(positions < removed_counts, -math.inf)
    return cumulative.scatter_(-1, sorted_indices, scaled)


def _sort_ascending(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.sort(stable=True)`` on CPU through torch's radix sort of 1-D int32 keys in float order."""
    rows, vocab = logits.shape
    bits = logits.contiguous().view(torch.int32)
    magnitude = bits & 0x7FFFFFFF
    keys = torch.where(bits < 0, magnitude.neg(), magnitude)
    values, indices = torch.empty_like(logits), torch.empty((rows, vocab), dtype=torch.long)
    sorted_keys = torch.empty(vocab, dtype=torch.int32)
    for row in range(rows):
        torch.sort(keys[row], stable=True, out=(sorted_keys, indices[row]))
        torch.index_select(logits[row], 0, indices[row], out=values[row])
    return values, indices


# ------------------------------------------------------------------------------------------ models


def build_model(args):
    """``(model, prompt_ids (1, L), description)``."""
    if args.embedded:
        from autodeco.model.shipped import shipped_heads_path
        from autodeco.sampling.inference import load_for_generation, render_prompt

        heads = shipped_heads_path()
        if heads is None:
            sys.exit("--embedded: the shipped heads of the embedded SmolLM2 are not in this installation")
        loaded = load_for_generation(str(heads))
        prompt_ids = loaded.tokenizer(render_prompt(loaded.tokenizer, PROMPT), return_tensors="pt").input_ids
        return loaded.model.eval(), prompt_ids, loaded.description
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE)).eval()
    prompt_ids = torch.randint(3, SMOLLM2_135M_SHAPE["vocab_size"], (1, 24))
    description = "random Llama of SmolLM2-135M's shape, fresh heads (seed 0)"
    return AutoDecoForCausalLM.from_base(llm, seed=0).eval(), prompt_ids, description


def make_arms(model, input_ids: torch.Tensor, new_tokens: int, temperature: float, top_p: float) -> dict:
    """The three generate() calls, each making exactly ``new_tokens`` per row."""
    llm = model.llm
    common = {"attention_mask": torch.ones_like(input_ids), "max_new_tokens": new_tokens,
              "eos_token_id": impossible_token_id(llm), "pad_token_id": 0}
    return {
        "autodeco": lambda: model.generate(input_ids, do_sample=True, **common),
        "temperature": lambda: generate_with_base(llm, input_ids, sample=True, temperature=temperature, **common),
        "static top-p": lambda: generate_with_base(
            llm, input_ids, sample=True, temperature=temperature, top_p=top_p, **common
        ),
    }


def heads_means(model, input_ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """The heads' mean T and P over one untimed AutoDeco run (it also warms the arm up)."""
    torch.manual_seed(0)
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                            max_new_tokens=new_tokens, eos_token_id=impossible_token_id(model.llm), pad_token_id=0,
                            return_dict_in_generate=True)
    return round(float(output.temperatures.mean()), 2), round(float(output.top_ps.mean()), 2)


# ------------------------------------------------------------------------------------------ timing


def interleaved(arms: dict, rounds: int, steps: dict | None = None) -> dict[str, list[tuple[float, float]]]:
    """``{arm: [(wall s, CPU s), ...]}``: each round runs every arm once, the order rotating (A B C, B C A, ...).

    With ``steps``, each arm's generate() steps are timed too: ``steps[arm]`` gets the seconds of every call of
    its logits processing (temperature: transformers' warper; static top-p: its two warpers; AutoDeco: heads,
    features and nucleus).
    """
    names, timings = list(arms), {name: [] for name in arms}
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            torch.manual_seed(1000 + round_)
            with LogitsProcessingTimer() as processing:
                wall, cpu = time.perf_counter(), time.process_time()
                arms[name]()
                timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            if steps is not None:
                steps.setdefault(name, []).extend(processing.seconds)
    return timings


def ratio_summary(numerator: list, denominator: list, which: int) -> str:
    ratios = [a[which] / b[which] for a, b in zip(numerator, denominator)]
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def generate_row(model, input_ids, temperature: float, top_p: float, args) -> str:
    batch = input_ids.shape[0]
    arms = make_arms(model, input_ids, args.new_tokens, temperature, top_p)
    for arm in arms.values():  # untimed warm-up
        arm()
    steps = {}
    timings = interleaved(arms, args.rounds, steps)
    per_token = {name: 1e3 * statistics.median(wall for wall, _ in values) / args.new_tokens
                 for name, values in timings.items()}
    step_ms = {name: 1e3 * statistics.median(values) for name, values in steps.items()}
    implied = 1 + (step_ms["autodeco"] - step_ms["temperature"]) / per_token["temperature"]
    auto, plain, static = timings["autodeco"], timings["temperature"], timings["static top-p"]
    return (f"| {batch} | {args.new_tokens} | {args.rounds} | {temperature:.2f} / {top_p:.2f} "
            f"| {per_token['temperature']:.1f} | {per_token['static top-p']:.1f} | {per_token['autodeco']:.1f} "
            f"| {ratio_summary(auto, plain, 0)} | {ratio_summary(auto, plain, 1)} "
            f"| {ratio_summary(auto, static, 0)} | {step_ms['temperature']:.2f} / {step_ms['static top-p']:.2f} / "
            f"{step_ms['autodeco']:.2f} | {implied:.3f} |")


def decoding_steps(model, input_ids, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits of one AutoDeco ``generate()`` step midway (rows diverged by sampling) and the T and P the heads
    chose for each row there: ``(B, V)``, ``(B,)``, ``(B,)``."""
    import autodeco.model.generation as generation

    steps = []
    step = generation.dynamic_step

    def recording_step(heads, hidden, logits, *arguments, **options):
        warped, temperature, top_p = step(heads, hidden, logits, *arguments, **options)
        steps.append((logits.float().clone(), temperature.float(), top_p.float()))
        return warped, temperature, top_p

    generation.dynamic_step = recording_step
    try:
        with torch.no_grad():
            model.generate(input_ids, do_sample=True, max_new_tokens=new_tokens)
    finally:
        generation.dynamic_step = step
    return steps[len(steps) // 2]


def bucketing_warp_logits(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The warp before the window stages: every row's cut found by the bucketing (kept here as a baseline)."""
    scaled = scale_logits(logits, temperature)
    probs = scaled.softmax(dim=-1)
    boundary = decoding._bucket_boundary(scaled, probs, top_p, decoding.tail_bound(top_p))
    decoding._remove_below(scaled, boundary.logit)
    scaled[boundary.removed_ties.unbind(1)] = -math.inf
    return scaled


def settled_by_stage(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> str:
    """How many rows the narrow window, the wide window and the bucketing each settled, as ``n / n / n``."""
    decided = []
    window = decoding._window_boundary

    def counting_window(*arguments, **options):
        result = window(*arguments, **options)
        decided.append(int(result.decided.sum()))
        return result

    decoding._window_boundary = counting_window
    try:
        warp_logits(logits, temperature, top_p)
    finally:
        decoding._window_boundary = window
    decided += [0] * (2 - len(decided))
    return f"{decided[0]} / {decided[1]} / {logits.shape[0] - sum(decided)}"


def warp_rows(model, input_ids, args) -> list[str]:
    """The warp alone on one generate() step's logits and on them sharpened, at the T and P the heads chose."""
    batch = input_ids.shape[0]
    logits, temperature, top_p = decoding_steps(model, input_ids, max(2, args.new_tokens // 2))
    lines = []
    for kind, kind_logits in (("model's", logits), (f"sharpened x{SHARPENING:g}", SHARPENING * logits)):
        arms = {"sort path": lambda: sort_path_warp_logits(kind_logits, temperature, top_p),
                "bucketing only": lambda: bucketing_warp_logits(kind_logits, temperature, top_p),
                "windows": lambda: warp_logits(kind_logits, temperature, top_p)}
        timings = interleaved(arms, args.warp_rounds)
        micros = {name: 1e6 * statistics.median(wall for wall, _ in values) / batch for name, values in timings.items()}
        new, old = warp_logits(kind_logits, temperature, top_p), sort_path_warp_logits(kind_logits, temperature, top_p)
        assert torch.equal(new, bucketing_warp_logits(kind_logits, temperature, top_p)), "the stages disagree"
        differing = int((new.isinf() != old.isinf()).any(dim=-1).sum())
        kept = torch.isfinite(new).sum(dim=-1).float().median()
        lines.append(f"| {batch} | {kind} | {int(kept)} | {settled_by_stage(kind_logits, temperature, top_p)} "
                     f"| {micros['sort path']:.0f} | {micros['bucketing only']:.0f} | {micros['windows']:.0f} "
                     f"| {micros['bucketing only'] / micros['windows']:.2f} | {differing}/{batch} |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, prompt_ids, description = build_model(args)
    print(f"{description}; prompt {prompt_ids.shape[1]} tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    generate_lines, warp_lines = [], []
    for batch in args.batch_sizes:
        input_ids = prompt_ids.expand(batch, -1).contiguous()
        temperature, top_p = heads_means(model, input_ids, args.new_tokens)
        generate_lines.append(generate_row(model, input_ids, temperature, top_p, args))
        warp_lines.extend(warp_rows(model, input_ids, args))
        print(f"  batch {batch} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print("| batch | new tokens | rounds | heads' mean T / P | temperature ms/token | static top-p ms/token "
          "| autodeco ms/token | autodeco / temperature: wall, median (min-max) | same, CPU time "
          "| autodeco / static top-p: wall | sampling step ms: temperature / static top-p / autodeco "
          "| autodeco / temperature implied by the step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(generate_lines))
    print()
    print("| batch | logits | nucleus size (median) | rows settled: narrow / wide window / bucketing "
          "| sort path µs/row | bucketing only µs/row | windows µs/row | bucketing only / windows "
          "| rows whose nucleus differs from the sort path's |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(warp_lines))
    print()
    print("ms/token: median wall time of a generate() call / new tokens (all rows together); ratios within each "
          "interleaved round. Sampling step: median time of one step's logits processing, and the ratio its "
          "difference alone implies (less noisy than the wall ratio: the forward pass is left out). Warp: median "
          f"over {args.warp_rounds} interleaved rounds, on the logits of one generate() step midway with the T and P the heads "
          "chose for each row; bucketing only: every row's cut by the bucketing, as before the window stages; the sort "
          "path is the warp the bucketing replaced (its nucleus differs "
          "where its softmax of the sorted row rounds differently, or ties straddle the cut). "
          f"{time.perf_counter() - started:.0f} s in all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
