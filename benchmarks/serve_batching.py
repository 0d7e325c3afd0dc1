#!/usr/bin/env python
"""Serving under concurrency: the HF engine's continuous batching against one request at a time.

A session runs N clients, one thread each (as the server's connection threads call the engine); each client
sends its requests one after another, the next as soon as the last one's final token arrived (client ``c``
sends requests ``c``, ``c + N``, ``c + 2N``, ...). The same session runs on two engines over the same model:

- **one at a time**: ``HFEngine(...)``, the serialized engine (each request runs ``generate()`` in turn, the
  others wait), as ``--engine hf`` served before;
- **batched**: ``HFEngine(..., batching=True)``, continuous batching (``autodeco.engines.hf_batching``), what
  ``autodeco serve --engine hf`` runs now.

Every request generates exactly ``--new-tokens`` tokens (the end token is one outside the vocabulary), from its
own prompt (random token ids, 16 to 48 of them) with its own seed and multipliers; request ``i`` is the same in
every session and in both engines. Sessions alternate between the engines (A B, B A, ...). Per client count the
script reports the aggregate tokens per second (all tokens of a session over its wall time), each request's
latency (from its sending to its last token, waiting included) at the 50th and 99th percentiles, the time to
its first token, and the mean number of rows per batched step.

Then it holds each batched request's tokens and per-token T and P against the same request served one at a
time (``generate()`` alone): requests whose tokens differ anywhere, and over the tokens before any difference,
how many T or P values are not bitwise equal and the largest difference. Run
``python benchmarks/serve_batching.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autodeco import AutoDecoForCausalLM
from autodeco.engines.base import GenerationRequest
from autodeco.engines.hf import HFEngine
from autodeco.model.base_model import load_base_model, load_tokenizer

SMOLLM2_135M_SHAPE = {
    "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True, "max_position_embeddings": 8192,
    "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
}
"""A random Llama with SmolLM2-135M's shape (the default base: it runs anywhere)."""
TINY_SHAPE = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 128, "vocab_size": 512, "max_position_embeddings": 512,
}
"""The random Llama of ``--quick``."""
PROMPT_LENGTHS = (16, 48)
"""Each request's prompt holds between this many random token ids (inclusive)."""
MULTIPLIERS = ((1.0, 1.0), (0.8, 0.9), (1.2, 1.1), (0.0, 1.0))
"""Request ``i``'s (temperature, top_p) multipliers: ``MULTIPLIERS[i % 4]`` (temperature 0: greedy)."""
ONE_AT_A_TIME, BATCHED = "one at a time", "batched"
SINGLE_CLIENT_SESSIONS = 5
"""Sessions per engine with one client at least (outside --quick): the single-request ratio is the figure to
hold within 10 %, and its sessions are short."""


class NumberTokenizer:
    """Decodes token ids to text (``"<id>"`` each): all the engine needs to stream a random model's tokens."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(f"<{token}>" for token in ids)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the HF engine's continuous batching against one-at-a-time serving under N concurrent "
                    "clients (aggregate tokens/s, p50/p99 latency) and check batched answers against solo ones."
    )
    parser.add_argument("--base", default=None,
                        help="base model, e.g. embedded:SmolLM2-135M-Instruct (default: a random Llama of "
                             "SmolLM2-135M's shape, which runs anywhere)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32], help="default: %(default)s")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per request (default: %(default)s)")
    parser.add_argument("--requests-per-client", type=int, default=2,
                        help="requests each client sends, one after another (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="sessions per engine and client count, alternating engines; a single client gets at "
                             f"least {SINGLE_CLIENT_SESSIONS} (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the batched engine's (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in seconds: a tiny random model, 1 and 4 clients, 8 tokens, one session each")
    parser.add_argument("--json", metavar="OUT", help="also write every session's figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.new_tokens, args.repeats, args.requests_per_client = [1, 4], 8, 1, 1
    for name in ("new_tokens", "requests_per_client", "repeats", "max_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, but is {getattr(args, name)}")
    if min(args.clients) < 1:
        parser.error(f"--clients must all be >= 1, but got {args.clients}")
    return args


# ------------------------------------------------------------------------------------------ model and requests


def build_model(args):
    """``(model, tokenizer, description)``: the base with fresh heads (seed 0)."""
    if args.quick or args.base is None:
        shape, name = (TINY_SHAPE, "tiny random Llama") if args.quick else (
            SMOLLM2_135M_SHAPE, "random Llama of SmolLM2-135M's shape")
        torch.manual_seed(0)
        llm, tokenizer = LlamaForCausalLM(LlamaConfig(**shape)).eval(), NumberTokenizer()
    else:
        llm, tokenizer, name = load_base_model(args.base), load_tokenizer(args.base), args.base
    model = AutoDecoForCausalLM.from_base(llm, seed=0).eval()
    return model, tokenizer, f"{name} + fresh heads, {llm.dtype}"


def make_requests(count: int, new_tokens: int, vocab_size: int) -> list[GenerationRequest]:
    """Request ``i``: its own random prompt, seed ``i`` and multipliers ``MULTIPLIERS[i % 4]``."""
    generator = torch.Generator().manual_seed(1234)
    requests = []
    for index in range(count):
        length = int(torch.randint(PROMPT_LENGTHS[0], PROMPT_LENGTHS[1] + 1, (1,), generator=generator))
        prompt = torch.randint(0, vocab_size, (length,), generator=generator).tolist()
        temperature, top_p = MULTIPLIERS[index % len(MULTIPLIERS)]
        requests.append(GenerationRequest(prompt_ids=prompt, max_tokens=new_tokens, temperature=temperature,
                                          top_p=top_p, seed=index, request_id=f"client-{index}"))
    return requests


# ------------------------------------------------------------------------------------------ one session


def run_session(engine: HFEngine, requests: list[GenerationRequest], clients: int) -> dict:
    """``clients`` threads, client ``c`` sending ``requests[c::clients]`` one after another; wall time, each
    request's latency and time to first token (from its sending), and the answers."""
    count = len(requests)
    answers, latencies, first_tokens = [None] * count, [0.0] * count, [0.0] * count
    errors = []
    barrier = threading.Barrier(clients + 1)

    def client(first: int) -> None:
        barrier.wait()
        try:
            for index in range(first, count, clients):
                sent, values = time.perf_counter(), []
                for event in engine.stream(requests[index]):
                    if not values:
                        first_tokens[index] = time.perf_counter() - sent
                    values.append((event.token_id, event.temperature, event.top_p))
                latencies[index], answers[index] = time.perf_counter() - sent, values
        except Exception as error:  # reported after the session
            errors.append(error)

    threads = [threading.Thread(target=client, args=(first,)) for first in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed, the first with: {errors[0]!r}")
    tokens = sum(len(answer) for answer in answers)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "latencies_s": latencies,
            "first_token_s": first_tokens, "answers": answers}


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0..1) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_setting(engines: dict, clients: int, args, vocab_size: int) -> dict:
    """Alternate sessions of both engines with ``clients`` clients; summarise each engine."""
    requests = make_requests(clients * args.requests_per_client, args.new_tokens, vocab_size)
    sessions = {name: [] for name in engines}
    repeats = args.repeats if args.quick or clients > 1 else max(args.repeats, SINGLE_CLIENT_SESSIONS)
    for repeat in range(repeats):
        order = list(engines) if repeat % 2 == 0 else list(reversed(engines))
        for name in order:
            scheduler = engines[name].scheduler
            before = (scheduler.steps, scheduler.row_steps) if scheduler else None
            result = run_session(engines[name], requests, clients)
            if scheduler:
                steps, row_steps = scheduler.steps - before[0], scheduler.row_steps - before[1]
                result["mean_batch"] = row_steps / max(steps, 1)
            sessions[name].append(result)
    summary = {"clients": clients, "requests": len(requests), "sessions": repeats}
    for name, results in sessions.items():
        latencies = [value for result in results for value in result["latencies_s"]]
        summary[name] = {
            "tokens_per_s": statistics.median(result["tokens_per_s"] for result in results),
            "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
            "first_token_p50_s": percentile([value for result in results for value in result["first_token_s"]], 0.5),
            "mean_batch": statistics.mean(result.get("mean_batch", 1.0) for result in results),
            "sessions_tokens_per_s": [result["tokens_per_s"] for result in results],
        }
    pairs = zip(sessions[BATCHED], sessions[ONE_AT_A_TIME])
    summary["ratios"] = [new["tokens_per_s"] / old["tokens_per_s"] for new, old in pairs]
    summary["agreement"] = agreement(sessions[BATCHED], sessions[ONE_AT_A_TIME][0]["answers"])
    return summary


def agreement(batched_sessions: list[dict], alone: list[list]) -> dict:
    """Batched answers against the same requests served one at a time: tokens and per-token T and P."""
    requests = differing = compared = not_bitwise = 0
    largest = 0.0
    for result in batched_sessions:
        for answer, reference in zip(result["answers"], alone):
            requests += 1
            tokens, reference_tokens = [value[0] for value in answer], [value[0] for value in reference]
            same = next((index for index, pair in enumerate(zip(tokens, reference_tokens)) if pair[0] != pair[1]),
                        min(len(tokens), len(reference_tokens)))
            differing += same < max(len(tokens), len(reference_tokens))
            for (_, temperature, top_p), (_, reference_temperature, reference_top_p) in zip(answer[:same], reference):
                compared += 1
                not_bitwise += temperature != reference_temperature or top_p != reference_top_p
                largest = max(largest, abs(temperature - reference_temperature), abs(top_p - reference_top_p))
    return {"requests": requests, "requests_with_other_tokens": differing, "tokens_compared": compared,
            "values_not_bitwise": not_bitwise, "largest_value_difference": largest}


# ------------------------------------------------------------------------------------------ report


def markdown_tables(summaries: list[dict]) -> str:
    lines = [
        "| clients | requests x sessions | engine | aggregate tok/s | batched / one at a time (per session pair) "
        "| p50 latency s | p99 latency s | p50 first token s | mean rows per step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        for name in (ONE_AT_A_TIME, BATCHED):
            figures = summary[name]
            ratio = ""
            if name == BATCHED:
                ratios = summary["ratios"]
                ratio = f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})"
            lines.append(
                f"| {summary['clients']} | {summary['requests']} x {summary['sessions']} | {name} | "
                f"{figures['tokens_per_s']:.1f} | {ratio} | {figures['p50_s']:.2f} | "
                f"{figures['p99_s']:.2f} | {figures['first_token_p50_s']:.2f} | {figures['mean_batch']:.1f} |"
            )
    lines += ["", "| clients | batched requests | with other tokens than alone | tokens compared | T or P not bitwise "
              "| largest T or P difference |", "|---|---|---|---|---|---|"]
    for summary in summaries:
        agreed = summary["agreement"]
        lines.append(
            f"| {summary['clients']} | {agreed['requests']} | {agreed['requests_with_other_tokens']} | "
            f"{agreed['tokens_compared']} | {agreed['values_not_bitwise']} | {agreed['largest_value_difference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer, description = build_model(args)
    vocab_size = int(model.llm.get_output_embeddings().weight.shape[0])
    never = [vocab_size + 7]  # an end token no step can draw: every request makes exactly --new-tokens tokens
    engines = {
        ONE_AT_A_TIME: HFEngine(model, tokenizer, "bench", eos_token_ids=never),
        BATCHED: HFEngine(model, tokenizer, "bench", eos_token_ids=never, batching=True,
                          max_batch_size=args.max_batch_size),
    }
    print(f"base: {description}; torch {torch.__version__}, {torch.get_num_threads()} threads; {args.new_tokens} "
          f"tokens per request, {args.requests_per_client} request(s) per client", file=sys.stderr)
    try:
        for engine in engines.values():  # untimed warm-up
            list(engine.stream(make_requests(1, min(args.new_tokens, 4), vocab_size)[0]))
        summaries = []
        for clients in args.clients:
            summaries.append(run_setting(engines, clients, args, vocab_size))
            print(f"  {clients} client(s): batched / one at a time {statistics.median(summaries[-1]['ratios']):.2f}x "
                  f"({time.perf_counter() - started:.0f} s elapsed)", file=sys.stderr)
    finally:
        for engine in engines.values():
            engine.close()
    print(markdown_tables(summaries))
    print()
    print(f"Base: {description}. Each client sends its requests one after another. Latency: from a request's sending "
          "to its last token, waiting included. Aggregate tok/s: the median session's tokens over its wall time. "
          "Agreement: each "
          "batched request against the same request (prompt, seed, multipliers) served one at a time, i.e. "
          "generate() alone; T and P compared over the tokens before the first different token.")
    if args.json:
        payload = {"base": description, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "platform": platform.platform(), "new_tokens": args.new_tokens,
                   "requests_per_client": args.requests_per_client, "results": summaries,
                   "elapsed_s": time.perf_counter() - started}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    print(f"(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
