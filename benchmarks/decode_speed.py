#!/usr/bin/env python
"""Decoding speed: AutoDeco's dynamic decoding versus transformers' own static sampling.

Both arms run the same base model through the same ``generate()`` loop (KV cache, same prompt,
same seed, exactly N new tokens) and differ only in how the step's logits are turned into a
sampling distribution:

- **static**: ``llm.generate(do_sample=True, temperature=0.6, top_p=0.95, top_k=0)`` with the base's
  ``generation_config`` sanitized exactly as AutoDeco does (token ids and lengths only), i.e.
  transformers' ``TemperatureLogitsWarper`` + ``TopPLogitsWarper``;
- **autodeco**: ``AutoDecoForCausalLM.generate(do_sample=True)``: the output-head hook, both heads,
  the four probability features and the per-row temperature/top-p warp at every step.

The arms are interleaved (A B, B A, A B, ... after a short warm-up of each), so drift in machine load hits
both alike; the time ratio is computed per repetition pair and summarised by its median and
interquartile range. Run ``python benchmarks/decode_speed.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autodeco import AutoDecoForCausalLM
from autodeco.model.base_model import load_base_model, load_tokenizer
from autodeco.model.generation import sanitized_generation_config

SMOLLM2_135M_SHAPE = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
"""A random Llama with SmolLM2-135M's shape (used with --random-smollm2-shape)."""

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
STATIC_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 0}
WARMUP_TOKENS = 64
"""Each setting's untimed warm-up run of each arm generates min(N, this) tokens."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time AutoDeco's dynamic decoding against transformers' static sampling "
            "(temperature=0.6, top_p=0.95, top_k=0) on the same base, side by side, and print a Markdown table."
        )
    )
    parser.add_argument("--base", default="embedded:SmolLM2-135M-Instruct", help="base model (default: %(default)s)")
    parser.add_argument(
        "--random-smollm2-shape",
        action="store_true",
        help="use a randomly initialised Llama of SmolLM2-135M's shape instead of loading --base",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="default: %(default)s")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256], help="default: %(default)s")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed A/B pairs per setting, at least (default: %(default)s)"
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=25.0,
        help="short settings add pairs until their timed pairs took this long, up to 4 x --repeats (default: %(default)s)",
    )
    parser.add_argument("--prompt-tokens", type=int, default=None, help="truncate the prompt to this many tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--memory-tokens",
        type=int,
        default=32,
        help="new tokens of the profiled run per arm and batch size that measures peak memory (default: %(default)s)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the profiled peak-memory runs")
    parser.add_argument(
        "--quick", action="store_true", help="about a minute: 32 new tokens, batch 1 and 8, 3 pairs, no extra pairs"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results (every timing) to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        if args.new_tokens == [64, 256]:
            args.new_tokens = [32]
        args.min_seconds = 0.0
    return args


# ------------------------------------------------------------------------------------------ models


def build_models(args):
    if args.random_smollm2_shape:
        torch.manual_seed(0)
        llm = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE)).eval()
        base_name = "random LlamaConfig, SmolLM2-135M shape"
        prompt_ids = torch.randint(3, SMOLLM2_135M_SHAPE["vocab_size"], (1, args.prompt_tokens or 24))
    else:
        llm = load_base_model(args.base)
        base_name = args.base
        tokenizer = load_tokenizer(args.base)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(text, return_tensors="pt").input_ids
        if args.prompt_tokens:
            prompt_ids = prompt_ids[:, : args.prompt_tokens]
    model = AutoDecoForCausalLM.from_base(llm, seed=0)
    model.eval()
    static_config = sanitized_generation_config(llm.generation_config)
    return llm, model, static_config, prompt_ids, base_name


def impossible_token_id(llm) -> int:
    """An end-of-sequence id that no step can sample (outside the vocabulary), so every run makes exactly N tokens."""
    return int(llm.get_output_embeddings().weight.shape[0]) + 7


def make_arms(llm, model, static_config, input_ids, new_tokens):
    attention_mask = torch.ones_like(input_ids)
    forced = {"max_new_tokens": new_tokens, "eos_token_id": impossible_token_id(llm)}
    pad = static_config.pad_token_id if static_config.pad_token_id is not None else 0

    def static():
        original = llm.generation_config
        llm.generation_config = static_config  # the same sanitizing AutoDeco does in its own generate()
        try:
            return llm.generate(
                input_ids, attention_mask=attention_mask, do_sample=True, pad_token_id=pad, **STATIC_SAMPLING, **forced
            )
        finally:
            llm.generation_config = original

    def autodeco():
        return model.generate(input_ids, attention_mask=attention_mask, do_sample=True, pad_token_id=pad, **forced)

    return {"static": static, "autodeco": autodeco}


# ------------------------------------------------------------------------------------------ timing


def timed(function, seed: int, expected_tokens: int) -> tuple[float, float, float]:
    """Wall and process CPU seconds of one call (CPU time counts only this process, so it shows less of other
    load), and the median seconds per step spent turning logits into the sampling distribution."""
    torch.manual_seed(seed)
    with LogitsProcessingTimer() as processing:
        wall, cpu = time.perf_counter(), time.process_time()
        output = function()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if output.shape[1] != expected_tokens:
        raise RuntimeError(f"expected {expected_tokens} tokens per row, got {output.shape[1]}")
    return wall, cpu, statistics.median(processing.seconds) if processing.seconds else float("nan")


class LogitsProcessingTimer:
    """Times every call of ``LogitsProcessorList`` inside ``generate()`` (the whole sampling-distribution step).

    Static sampling runs transformers' temperature and top-p warpers there, AutoDeco its heads and warp, so the
    per-step difference isolates the decoding logic from the (much larger, noisier) forward pass.
    """

    def __init__(self):
        self.seconds: list[float] = []

    def __enter__(self):
        from transformers.generation import logits_process

        self._class = logits_process.LogitsProcessorList
        self._original = self._class.__call__
        original, seconds = self._original, self.seconds

        def timed_call(processors, input_ids, scores, **kwargs):
            start = time.perf_counter()
            result = original(processors, input_ids, scores, **kwargs)
            seconds.append(time.perf_counter() - start)
            return result

        self._class.__call__ = timed_call
        return self

    def __exit__(self, *exc):
        self._class.__call__ = self._original
        return False


def peak_torch_cpu_bytes(function) -> int | None:
    """Peak of the bytes torch's CPU allocator holds during one call, above what it held at the start.

    Read from the profiler's allocation events (every allocation and free, in order), so it is exact and
    unaffected by how the C allocator reuses freed memory. None when this torch build does not expose them.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    try:
        events = profiler.profiler.kineto_results.events()
    except AttributeError:
        return None
    changes = sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == "[memory]")
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def quantile(values, q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_memory(arms) -> dict:
    """Peak torch CPU memory of one (untimed, profiled) run of each arm, in MiB."""
    result = {}
    for name in ("static", "autodeco"):
        torch.manual_seed(0)
        peak = peak_torch_cpu_bytes(arms[name])
        result[f"{name}_peak_mib"] = None if peak is None else peak / 2**20
    return result


def run_setting(arms, warmup_arms, batch: int, new_tokens: int, prompt_len: int, args) -> dict:
    expected = prompt_len + new_tokens
    result = {"batch": batch, "new_tokens": new_tokens, "prompt_tokens": prompt_len}
    for name in ("static", "autodeco"):  # untimed warm-up, at most WARMUP_TOKENS long
        warmup_arms[name]()
    walls = {"static": [], "autodeco": []}
    cpus = {"static": [], "autodeco": []}
    steps = {"static": [], "autodeco": []}
    ratios, cpu_ratios = [], []
    timed_seconds, rep = 0.0, 0
    while rep < args.repeats or (timed_seconds < args.min_seconds and rep < 4 * args.repeats):
        order = ("static", "autodeco") if rep % 2 == 0 else ("autodeco", "static")  # A B, B A, A B, ...
        pair = {name: timed(arms[name], 1000 + rep, expected) for name in order}
        for name in order:
            walls[name].append(pair[name][0])
            cpus[name].append(pair[name][1])
            steps[name].append(pair[name][2])
        ratios.append(pair["autodeco"][0] / pair["static"][0])
        cpu_ratios.append(pair["autodeco"][1] / pair["static"][1])
        timed_seconds += pair["autodeco"][0] + pair["static"][0]
        rep += 1
    result.update(
        pairs=rep,
        wall_seconds=walls,
        cpu_seconds=cpus,
        ratios=ratios,
        cpu_ratios=cpu_ratios,
        ratio_median=statistics.median(ratios),
        ratio_q25=quantile(ratios, 0.25),
        ratio_q75=quantile(ratios, 0.75),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        cpu_ratio_median=statistics.median(cpu_ratios),
        processing_step_seconds=steps,
    )
    for name in ("static", "autodeco"):
        result[f"{name}_tokens_per_s"] = batch * new_tokens / statistics.median(walls[name])
        result[f"{name}_processing_ms"] = 1e3 * statistics.median(steps[name])
    # The wall-time ratio if the two arms differed only by their median sampling-step cost (one step per new token).
    extra = (result["autodeco_processing_ms"] - result["static_processing_ms"]) / 1e3 * new_tokens
    result["processing_implied_ratio"] = 1 + extra / statistics.median(walls["static"])
    return result


# ------------------------------------------------------------------------------------------ FLOPs


def flop_counts(llm, model, context: int) -> dict:
    """Analytic forward FLOPs per generated token (2 x multiply-accumulates), at a given context length."""
    config = llm.config
    hidden, vocab = config.hidden_size, llm.get_output_embeddings().weight.shape[0]
    layers = config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = config.intermediate_size
    per_layer = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * inter
    matmul_params = layers * per_layer + hidden * vocab  # + the output head (tied or not)
    attention = layers * 2 * 2 * heads * head_dim * context  # q.k and attn.v over the cache
    base = 2 * matmul_params + attention
    head_params = model.num_head_parameters()
    heads_flops = 2 * head_params
    return {
        "base_matmul_params": matmul_params,
        "base_flops_per_token": base,
        "head_params": head_params,
        "head_flops_per_token": heads_flops,
        "head_over_base": heads_flops / base,
        "context": context,
        "vocab": int(vocab),
    }


# ------------------------------------------------------------------------------------------ output


def markdown_table(results, args) -> str:
    memory = not args.no_memory
    header = (
        "| batch | new tokens | pairs | static tok/s | autodeco tok/s "
        "| wall-time ratio autodeco/static: median [IQR] (min-max) | CPU-time ratio (median) "
        "| sampling step ms static / autodeco | ratio implied by the step |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|"
    if memory:
        header += f" peak torch CPU memory, {args.memory_tokens}-token run: static / autodeco (MiB) |"
        rule += "---|"
    lines = [header, rule]
    for r in results:
        line = (
            f"| {r['batch']} | {r['new_tokens']} | {r['pairs']} | {r['static_tokens_per_s']:.1f} | "
            f"{r['autodeco_tokens_per_s']:.1f} | {r['ratio_median']:.3f} [{r['ratio_q25']:.3f}, {r['ratio_q75']:.3f}] "
            f"({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) | {r['cpu_ratio_median']:.3f} | "
            f"{r['static_processing_ms']:.2f} / {r['autodeco_processing_ms']:.2f} | {r['processing_implied_ratio']:.3f} |"
        )
        if memory:
            static, autodeco = r.get("static_peak_mib"), r.get("autodeco_peak_mib")
            line += " n/a |" if static is None or autodeco is None else f" {static:.1f} / {autodeco:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    llm, model, static_config, prompt_ids, base_name = build_models(args)
    prompt_len = prompt_ids.shape[1]
    print(
        f"base: {base_name} ({llm.config.model_type}, {llm.dtype}), prompt {prompt_len} tokens, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, at least {args.repeats} interleaved pairs per setting",
        file=sys.stderr,
    )
    results = []
    for batch in args.batch_sizes:
        input_ids = prompt_ids.expand(batch, -1).contiguous()
        memory = {}
        if not args.no_memory:
            memory = measure_memory(make_arms(llm, model, static_config, input_ids, args.memory_tokens))
        for new_tokens in args.new_tokens:
            arms = make_arms(llm, model, static_config, input_ids, new_tokens)
            warmup_arms = make_arms(llm, model, static_config, input_ids, min(new_tokens, WARMUP_TOKENS))
            result = run_setting(arms, warmup_arms, batch, new_tokens, prompt_len, args)
            result.update(memory)
            results.append(result)
            print(
                f"  batch {batch}, {new_tokens} tokens: ratio {result['ratio_median']:.3f} "
                f"({time.perf_counter() - started:.0f} s elapsed)",
                file=sys.stderr,
            )
    flops = flop_counts(llm, model, context=prompt_len + max(args.new_tokens) // 2)
    print(markdown_table(results, args))
    print()
    print(
        f"Heads: {flops['head_params']:,} parameters; {flops['head_flops_per_token']:,} FLOPs per token "
        f"(2 x parameters) vs {flops['base_flops_per_token']:,} for the base "
        f"(2 x {flops['base_matmul_params']:,} matmul parameters incl. the output head, plus attention at "
        f"context {flops['context']}) = {100 * flops['head_over_base']:.3f} %."
    )
    print(
        f"Not counted above: static sorts the {flops['vocab']:,} logits (torch.sort) for its top-p, AutoDeco finds "
        f"its nucleus without a sort (a histogram of the probabilities; only the boundary bucket is sorted); both "
        f"take a softmax; AutoDeco's step adds per row the four features, about 7 x V elementwise FLOPs plus V logarithms "
        f"(~{7 * flops['vocab']:,} FLOPs + {flops['vocab']:,} logs, "
        f"{100 * 7 * flops['vocab'] / flops['base_flops_per_token']:.3f} % of the base's FLOPs), and saves static's "
        f"separate temperature division and boolean scatter; no second pass through the "
        "output layer."
    )
    print(
        f"Ratios: autodeco / static within each interleaved pair (A B, B A, ...), after one untimed warm-up run of "
        f"each arm (min(N, {WARMUP_TOKENS}) tokens); tok/s from the median wall time. Sampling step: median time per step of generate()'s logits "
        "processing (static: transformers' temperature + top-p warpers; autodeco: heads, features, warp), and the "
        "wall-time ratio that this difference alone implies (it leaves out the output-head hook). CPU time is this process's user+system time, so it is less "
        "sensitive to other load on the machine than wall time. Peak torch CPU memory: the most bytes torch's CPU "
        "allocator held during one profiled run per arm and batch size above what it held at its start (allocation events: "
        "KV cache, activations, logits and the sampling step's temporaries; not the weights, not Python objects)."
    )
    if args.json:
        payload = {
            "base": base_name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "static_sampling": STATIC_SAMPLING,
            "results": results,
            "flops": flops,
            "elapsed_s": time.perf_counter() - started,
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    print(f"(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
