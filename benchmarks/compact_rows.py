#!/usr/bin/env python
"""Dropping ended rows from the batch: ``complete(compact=True)`` against ``complete(compact=False)``.

One run is what an evaluation does with one batch: :func:`autodeco.sampling.rollouts.prefill` once (untimed,
shared by every arm), then :func:`autodeco.sampling.rollouts.complete` for each of S settings with n samples
per problem, up to N new tokens. The arms differ only in how ``complete()`` decodes:

- **generate**: ``compact=False``, transformers' ``generate()``; every row gets a forward pass until the last
  row of the batch has ended.
- **compact@f**: ``compact=True``, :func:`autodeco.sampling.decode_loop.decode_rows`; the ended rows leave the
  batch once a fraction ``f`` of it has ended (``--fractions``; the library's default is
  :data:`~autodeco.sampling.decode_loop.COMPACT_MIN_ENDED_FRACTION`).

Arms run interleaved (their order rotates from one round to the next) with the same seeds. A hook on the base
counts the rows of every forward pass (row-steps: what the base computed). Greedy completions must agree between
the arms; sampled ones agree until the first rows leave the batch, after which the arms draw from different
parts of the random stream. Run ``python benchmarks/compact_rows.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from autodeco.problems import load_problems
from autodeco.sampling import decode_loop
from autodeco.sampling.inference import load_for_generation
from autodeco.sampling.rollouts import complete, prefill
from autodeco.sampling.settings import DecodingSetting

# This script's folder is on sys.path when it runs: reuse the evaluation benchmark's prompts and forward hook.
from eval_throughput import ForwardRecorder, render_prompts

DEFAULT_SETTINGS = ("greedy", "T=1.00,P=1.00", "autodeco")
GENERATE = "generate"
FIRST_ROUND_SEED = 2000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time complete() with ended rows dropped from the batch against generate(), interleaved, "
        "on one evaluation-like batch, and print a Markdown table."
    )
    parser.add_argument("--base", default="embedded:SmolLM2-135M-Instruct", help="base model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="arithmetic problems per batch, B (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem and setting, n (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=32, help="at most this many new tokens, N (default: %(default)s)")
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                        help="decoding setting keys (default: %(default)s)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25],
                        help="one compacting arm per value of the ended fraction that triggers a drop "
                        "(default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, each running every arm once "
                        "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write every timing to this JSON file")
    args = parser.parse_args(argv)
    for name in ("batch_size", "samples", "new_tokens", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if any(fraction < 0 for fraction in args.fractions):
        parser.error(f"--fractions must be >= 0, got {args.fractions}")

    try:
        args.settings = [DecodingSetting.from_key(key) for key in args.settings]
    except ValueError as error:
        parser.error(str(error))
    return args


def arm_name(fraction: float | None) -> str:
    return GENERATE if fraction is None else f"compact@{fraction:g}"


def run_arm(model, tokenizer, batch, setting, fraction, args, seed: int) -> dict:
    """One setting under one arm: wall and CPU seconds, decoding row-steps, and the completions' token ids."""
    saved = decode_loop.COMPACT_MIN_ENDED_FRACTION
    if fraction is not None:
        decode_loop.COMPACT_MIN_ENDED_FRACTION = fraction
    try:
        with ForwardRecorder(model.llm) as recorder:
            wall, cpu = time.perf_counter(), time.process_time()
            completions = complete(model, tokenizer, batch, setting, num_samples=args.samples,
                                   max_new_tokens=args.new_tokens, seed=seed, compact=fraction is not None)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        decode_loop.COMPACT_MIN_ENDED_FRACTION = saved
    tokens = [completion.token_ids for samples in completions for completion in samples]
    return {"wall_s": wall, "cpu_s": cpu, "row_steps": sum(rows for rows, _, _ in recorder.calls), "tokens": tokens}


def summarize(runs: dict, arms: list[str], settings: list[str]) -> list[dict]:
    """Per setting and in total: each arm's median time, the ratio to generate() per round, row-steps, agreement."""
    rows = []
    for setting in [*settings, "all"]:
        chosen = settings if setting == "all" else [setting]

        def total(arm, field, round_index):
            return sum(runs[arm][name][round_index][field] for name in chosen)

        rounds = len(runs[GENERATE][settings[0]])
        reference_steps = total(GENERATE, "row_steps", 0)
        lengths = [len(ids) for name in chosen for ids in runs[GENERATE][name][0]["tokens"]]
        for arm in arms[1:]:
            ratios = [total(arm, "wall_s", r) / total(GENERATE, "wall_s", r) for r in range(rounds)]
            cpu_ratios = [total(arm, "cpu_s", r) / total(GENERATE, "cpu_s", r) for r in range(rounds)]
            same = sum(ours == theirs for name in chosen for r in range(rounds)
                       for ours, theirs in zip(runs[arm][name][r]["tokens"], runs[GENERATE][name][r]["tokens"]))
            count = sum(len(runs[GENERATE][name][r]["tokens"]) for name in chosen for r in range(rounds))
            rows.append({
                "setting": setting, "arm": arm,
                "generate_s": statistics.median(total(GENERATE, "wall_s", r) for r in range(rounds)),
                "arm_s": statistics.median(total(arm, "wall_s", r) for r in range(rounds)),
                "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "cpu_ratio_median": statistics.median(cpu_ratios),
                "generate_row_steps": reference_steps, "arm_row_steps": total(arm, "row_steps", 0),
                "mean_tokens": statistics.mean(lengths), "identical": same, "completions": count,
            })
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| setting | arm | mean tokens | generate s | arm s | wall-time ratio arm / generate: median (min-max) | "
        "CPU-time ratio | row-steps generate / arm (saved) | completions identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        saved = 1 - row["arm_row_steps"] / row["generate_row_steps"]
        lines.append(
            f"| {row['setting']} | {row['arm']} | {row['mean_tokens']:.1f} | {row['generate_s']:.1f} | {row['arm_s']:.1f} "
            f"| {row['ratio_median']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | {row['cpu_ratio_median']:.2f} "
            f"| {row['generate_row_steps']:,} / {row['arm_row_steps']:,} ({saved:.0%}) "
            f"| {row['identical']}/{row['completions']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    loaded = load_for_generation(None, args.base)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    problems = load_problems("arithmetic", split="test", limit=args.batch_size)
    rendered = render_prompts(tokenizer, [problem.prompt() for problem in problems], [], 0)
    batch = prefill(model.llm, tokenizer, rendered)
    settings = [setting.key for setting in args.settings]
    arms = [GENERATE, *(arm_name(fraction) for fraction in args.fractions)]
    fractions = dict(zip(arms, [None, *args.fractions]))
    print(f"model: {loaded.description}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"B = {len(batch)} x n = {args.samples} rows, settings {settings}, <= {args.new_tokens} new tokens; "
          f"arms {arms}, {args.rounds} rounds", file=sys.stderr)
    for arm in arms:  # untimed warm-up
        run_arm(model, tokenizer, batch, args.settings[0], fractions[arm], argparse.Namespace(**{**vars(args),
                "new_tokens": 2}), seed=0)
    runs = {arm: {key: [] for key in settings} for arm in arms}
    loads = []
    for round_index in range(args.rounds):
        order = arms[round_index % len(arms):] + arms[: round_index % len(arms)]  # rotate who goes first
        for setting in args.settings:
            for arm in order:
                seed = FIRST_ROUND_SEED + round_index
                runs[arm][setting.key].append(run_arm(model, tokenizer, batch, setting, fractions[arm], args, seed))
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
        print(f"  round {round_index + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s, "
              f"1-min load {loads[-1]:.1f})", file=sys.stderr)
    rows = summarize(runs, arms, settings)
    print(markdown_table(rows))
    print()
    print(f"B = {len(batch)} arithmetic problems x n = {args.samples} samples per setting, at most {args.new_tokens} new "
          f"tokens, {args.rounds} interleaved rounds, {torch.get_num_threads()} torch thread(s); 1-min load average "
          f"{min(loads):.1f}-{max(loads):.1f}. Ratio < 1: dropping ended rows is faster. Row-steps: rows summed over "
          "the decoding forward passes (prefill excluded, it is shared). Mean tokens: completion length under "
          "generate() in round 1.")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": {**vars(args), "settings": settings}, "loads": loads, "rows": rows,
                       "runs": {arm: {key: [{k: v for k, v in run.items() if k != "tokens"} for run in values]
                                      for key, values in per.items()} for arm, per in runs.items()}},
                      handle, indent=2)
    greedy_mismatch = any(row["identical"] != row["completions"] for row in rows if row["setting"] == "greedy")
    print(f"(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 1 if greedy_mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
