#!/usr/bin/env python
"""Training-loss memory: chunked losses versus the same formulas computed all at once.

For each loss (temperature, top-p, and both summed as in joint training) it runs one forward and
backward step with respect to T and P, at Qwen's vocabulary (151,936) and 2,048 labelled tokens by
default, twice: with ``chunk_size=None`` (every token's ``(V,)`` row at once, ordinary autograd:
the straightforward implementation) and with ``chunk_size=--chunk-size`` (the library default).

Every step runs in a fresh Python process, so each measures its own peak from a clean start:

- **peak RSS above inputs** (CPU): the process's resident memory high-water mark (``VmHWM``),
  reset through ``/proc/self/clear_refs`` once the inputs exist, minus the resident memory
  (``VmRSS``) at that moment. This is what the operating system had to provide for the step.
- **peak torch allocations above inputs** (CPU, unless ``--no-profile``): the most bytes of live
  torch tensors during the step, from the profiler's allocation events, which see every
  allocation and free in order (independent of how the C allocator reuses memory). This comes
  from one extra, profiled run of each variant, which is neither timed nor counted in the RSS.
- On ``--device cuda``: ``torch.cuda.max_memory_allocated()`` minus the allocated bytes before the step.

The two variants run alternately (straightforward, chunked, chunked, straightforward, ...), and
the time per step is the median over ``--repeats`` runs of each. The losses and the gradients with
respect to T and P of the first run of each variant are compared. Run with ``--help`` for options.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from autodeco.core.losses import LOSS_CHUNK_TOKENS, temperature_loss, top_p_loss

QWEN_VOCABULARY = 151_936
LOSSES = ("temperature", "top_p", "joint")
MEMORY_TARGET = 0.25
"""The chunked step's peak should be at most this fraction of the straightforward one's."""
EASY_FRACTION = 0.3
"""Fraction of labels set to the base model's argmax, so that the easy-token drop has work to do."""
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak memory, time and agreement of the chunked training losses against the straightforward "
        "all-at-once computation (chunk_size=None); prints a Markdown table."
    )
    parser.add_argument("--vocabulary", type=int, default=QWEN_VOCABULARY, help="default: %(default)s (Qwen)")
    parser.add_argument("--tokens", type=int, default=2048, help="labelled tokens per step (default: %(default)s)")
    parser.add_argument(
        "--batch", type=int, default=1, help="sequences the tokens are split over (default: %(default)s)"
    )
    parser.add_argument("--chunk-size", type=int, default=LOSS_CHUNK_TOKENS, help="default: %(default)s")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="dtype of the logits, T and P (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES), help="default: all")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant per loss (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each run")
    parser.add_argument(
        "--no-profile", action="store_true", help="CPU: skip the profiler's torch-allocation peak (RSS only)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also save every measurement to this file")
    parser.add_argument("--worker", nargs=2, metavar=("LOSS", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--gradients-to", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens % args.batch:
        parser.error(f"--tokens must be a multiple of --batch, got {args.tokens} and {args.batch}")
    if args.chunk_size < 1 or args.repeats < 1:
        parser.error(f"--chunk-size and --repeats must be >= 1, got {args.chunk_size} and {args.repeats}")
    return args


# ---------------------------------------------------------------------------------------------
# One step in a fresh process (the worker).


def make_inputs(args) -> dict[str, torch.Tensor]:
    """Random logits (B, L, V), labels, T, P and easy-token draws; built in place to leave no freed memory behind."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    length = args.tokens // args.batch + 1  # L - 1 predictions per sequence
    shape = (args.batch, length)
    logits = torch.empty(*shape, args.vocabulary, dtype=dtype, device=device).normal_(generator=generator).mul_(3.0)
    labels = torch.randint(0, args.vocabulary, shape, generator=generator, device=device)
    with torch.no_grad():
        easy = torch.rand(args.batch, length - 1, generator=generator, device=device) < EASY_FRACTION
        argmax = torch.stack([logits[row, :-1].argmax(dim=-1) for row in range(args.batch)])  # (B, L-1)
        labels[:, 1:] = torch.where(easy, argmax, labels[:, 1:])
    return {
        "logits": logits,
        "labels": labels,
        "temperature": (torch.rand(shape, generator=generator, device=device) * 1.2 + 0.3).to(dtype),
        "top_p": (torch.rand(shape, generator=generator, device=device) * 0.9 + 0.05).to(dtype),
        "random_values": torch.rand(args.batch, length - 1, generator=generator, device=device),
    }


def loss_step(loss: str, inputs: dict[str, torch.Tensor], chunk_size: int | None):
    """Forward and backward of one loss; returns (loss value, dT, dP)."""
    temperature = inputs["temperature"].detach().requires_grad_()
    top_p = inputs["top_p"].detach().requires_grad_()
    value = 0.0
    if loss in ("temperature", "joint"):
        value = value + temperature_loss(
            inputs["logits"],
            temperature,
            inputs["labels"],
            random_values=inputs["random_values"],
            chunk_size=chunk_size,
        )
    if loss in ("top_p", "joint"):
        value = value + top_p_loss(inputs["logits"], temperature, top_p, inputs["labels"], chunk_size=chunk_size)
    value.backward()
    top_p_grad = top_p.grad if top_p.grad is not None else torch.zeros_like(top_p)
    return value.detach(), temperature.grad, top_p_grad


def read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Set the resident high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_torch_cpu_bytes(events) -> int:
    """Most bytes of live torch allocations, from the profiler's [memory] events in time order."""
    changes = sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == "[memory]")
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def run_worker(args) -> dict:
    """One step of one variant, measured from the moment the inputs exist."""
    if args.threads:
        torch.set_num_threads(args.threads)
    loss, chunk = args.worker
    chunk_size = None if chunk == "none" else int(chunk)
    inputs = make_inputs(args)
    cuda = inputs["logits"].is_cuda
    gc.collect()
    result = {"loss": loss, "chunk_size": chunk_size}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline_rss_kib = read_status_kib("VmRSS")
        result["rss_reset"] = reset_peak_rss()
    profile = not cuda and args.profile
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler
    start = time.perf_counter()
    if profile:
        with profiler(activities=[ProfilerActivity.CPU], profile_memory=True) as recording:
            value, temperature_grad, top_p_grad = loss_step(loss, inputs, chunk_size)
    else:
        value, temperature_grad, top_p_grad = loss_step(loss, inputs, chunk_size)
    if cuda:
        torch.cuda.synchronize()
    result["seconds"] = time.perf_counter() - start
    if cuda:
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - baseline
    else:
        peak_kib = read_status_kib("VmHWM") if result["rss_reset"] else _ru_maxrss_kib()
        result["peak_bytes"] = (peak_kib - baseline_rss_kib) * 1024
        if profile:
            result["torch_peak_bytes"] = peak_torch_cpu_bytes(recording.profiler.kineto_results.events())
    result["value"] = value.item()
    if args.gradients_to is not None:
        torch.save(
            {"temperature": temperature_grad.float().cpu(), "top_p": top_p_grad.float().cpu()}, args.gradients_to
        )
    return result


def _ru_maxrss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# The driver: alternate the variants in fresh processes, compare, print.


def spawn(args, loss: str, chunk_size: int | None, gradients_to: Path | None = None, profile: bool = False) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        loss,
        "none" if chunk_size is None else str(chunk_size),
        "--vocabulary",
        str(args.vocabulary),
        "--tokens",
        str(args.tokens),
        "--batch",
        str(args.batch),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--gradients-to", str(gradients_to)] if gradients_to is not None else []
    command += ["--profile"] if profile else []
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"the {loss} step with chunk_size={chunk_size} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def relative_difference(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """max |actual - reference| / max |reference| (0 when both are all zeros)."""
    scale = reference.abs().max().item()
    difference = (actual - reference).abs().max().item()
    return difference / scale if scale else difference


def measure_loss(args, loss: str, folder: Path) -> dict:
    """Alternating runs of both variants; gradients compared from each variant's first run."""
    variants = {"straightforward": None, "chunked": args.chunk_size}
    runs = {name: [] for name in variants}
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            gradients_to = folder / f"{loss}-{name}.pt" if repeat == 0 else None
            runs[name].append(spawn(args, loss, variants[name], gradients_to))
            print(
                f"  {loss:11s} {name:15s} run {repeat + 1}: {runs[name][-1]['seconds']:.2f} s, "
                f"peak {runs[name][-1]['peak_bytes'] / MIB:,.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    profiled = {}
    if not args.device.startswith("cuda") and not args.no_profile:
        profiled = {name: spawn(args, loss, variants[name], profile=True) for name in variants}
    gradients = {name: torch.load(folder / f"{loss}-{name}.pt") for name in variants}
    first = {name: runs[name][0] for name in variants}
    summary = {"loss": loss, "runs": runs, "profiled_runs": profiled}
    for name in variants:
        summary[f"{name}_peak_mib"] = statistics.median(run["peak_bytes"] for run in runs[name]) / MIB
        summary[f"{name}_seconds"] = statistics.median(run["seconds"] for run in runs[name])
        summary[f"{name}_torch_peak_mib"] = profiled[name]["torch_peak_bytes"] / MIB if profiled else None
    summary["peak_ratio"] = summary["chunked_peak_mib"] / summary["straightforward_peak_mib"]
    if summary["straightforward_torch_peak_mib"]:
        summary["torch_peak_ratio"] = summary["chunked_torch_peak_mib"] / summary["straightforward_torch_peak_mib"]
    reference_value = first["straightforward"]["value"]
    summary["loss_relative_difference"] = abs(first["chunked"]["value"] - reference_value) / abs(reference_value)
    for head in ("temperature", "top_p"):
        summary[f"{head}_gradient_relative_difference"] = relative_difference(
            gradients["chunked"][head], gradients["straightforward"][head]
        )
    return summary


def print_table(args, summaries: list[dict]) -> None:
    cuda = args.device.startswith("cuda")
    memory = "peak CUDA allocations" if cuda else "peak RSS"
    profiled = not cuda and not args.no_profile
    header = (
        f"| loss | {memory} above inputs, all at once (MiB) | chunked (MiB) | chunked / all at once |"
        + (" peak torch allocations, all at once / chunked (MiB) | ratio |" if profiled else "")
        + " loss rel. diff | dL/dT rel. diff | dL/dP rel. diff | time per step, all at once / chunked (s) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for summary in summaries:
        row = (
            f"| {summary['loss']} | {summary['straightforward_peak_mib']:,.0f} | {summary['chunked_peak_mib']:,.0f} "
            f"| {100 * summary['peak_ratio']:.1f} % |"
        )
        if profiled:
            row += (
                f" {summary['straightforward_torch_peak_mib']:,.0f} / {summary['chunked_torch_peak_mib']:,.0f} "
                f"| {100 * summary['torch_peak_ratio']:.1f} % |"
            )
        row += (
            f" {summary['loss_relative_difference']:.1e} | {summary['temperature_gradient_relative_difference']:.1e} "
            f"| {summary['top_p_gradient_relative_difference']:.1e} "
            f"| {summary['straightforward_seconds']:.2f} / {summary['chunked_seconds']:.2f} |"
        )
        print(row)
    worst = max(summary["peak_ratio"] for summary in summaries)
    print(
        f"\nV = {args.vocabulary:,}, {args.tokens:,} labelled tokens in {args.batch} sequence(s), {args.dtype} on "
        f"{args.device}, chunk_size = {args.chunk_size}, torch {torch.__version__}, {args.repeats} run(s) of each "
        f"variant, each in a fresh process, alternating; medians. Largest chunked / all-at-once peak: "
        f"{100 * worst:.1f} % (target <= {100 * MEMORY_TARGET:.0f} %). Rel. diff: max |chunked - all at once| / "
        "max |all at once| over the tokens (gradients), |difference| / |value| (loss)."
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    with tempfile.TemporaryDirectory() as folder:
        summaries = [measure_loss(args, loss, Path(folder)) for loss in args.losses]
    print_table(args, summaries)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "results": summaries}, indent=2)
        )


if __name__ == "__main__":
    main()
