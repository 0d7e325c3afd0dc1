"""Small helpers shared by test modules in several folders (``tests/`` is on ``sys.path`` through its conftest.py)."""

import json
import socket
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autodeco.sampling.shuffle import ValuePool


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


def empirical(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


def null_total_variation(expected: torch.Tensor, samples: int, simulations: int, seed: int = 1) -> torch.Tensor:
    """Total-variation distances of ``simulations`` empirical distributions of ``samples`` draws from ``expected`` itself."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(expected.float().expand(simulations, -1), samples, replacement=True, generator=generator)
    counts = torch.zeros(simulations, expected.numel(), dtype=torch.float64).scatter_add_(
        1, draws, torch.ones_like(draws, dtype=torch.float64)
    )
    return 0.5 * (counts / samples - expected.double()).abs().sum(dim=-1)  # (simulations,)


def tiny_llama(hidden_size=16, vocab_size=128, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_data(path: Path) -> Path:
    rows = [
        {"prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}."}
        for a, b in ((3, 4), (12, 30), (7, 7), (41, 2), (5, 19), (23, 23), (9, 1), (15, 8))
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


POOL = ValuePool([0.4, 0.9, 0.5, 0.7, 0.3, 0.6], [0.5, 0.95, 0.7, 1.0, 0.6, 0.9], [0.5, 1.0, 2.0, 3.0, 4.0, 4.5])
"""A small pool of recorded (T, P, entropy) values for the shuffle controls."""


def write_lines(path, lines):
    """Write ``lines`` to ``path``, one per line."""
    path.write_text("".join(line + "\n" for line in lines))
    return path


def record(prompt="What is 2 + 3?", completion="2 + 3 = 5", **extra):
    """One trajectory line as `autodeco sample` writes it."""
    return json.dumps({"problem_id": "p", "prompt": prompt, "completion": completion, "answer": "5", **extra})


def write_arithmetic(path, count=16, seed=0):
    """Synthetic verified trajectories: short sums and their worked answers."""
    generator = torch.Generator().manual_seed(seed)
    lines = []
    for index in range(count):
        a, b = (int(value) for value in torch.randint(1, 60, (2,), generator=generator))
        lines.append(json.dumps({
            "problem_id": f"sum-{seed}-{index}", "prompt": f"What is {a} + {b}?",
            "completion": f"{a} + {b} = {a + b}. The answer is {a + b}.", "answer": str(a + b),
        }))
    path.write_text("\n".join(lines) + "\n")
    return path
