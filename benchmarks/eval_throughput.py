#!/usr/bin/env python
"""Evaluation throughput: one shared prefill per batch versus prefilling every prompt n times per setting.

An evaluation draws n samples per problem under several decoding settings. Both arms below do
exactly that for one batch of B problems, S settings and n samples each, with the same prompts,
seeds and number of new tokens (exactly N: the end-of-sequence id is set to one outside the
vocabulary while they run), and turn the generated ids into completions the same way:

- **shared**: :func:`autodeco.sampling.rollouts.prefill` runs the batch's prompts through the base once (all
  but their last token), then :func:`autodeco.sampling.rollouts.complete` continues from a copy of that cache
  for each setting, repeated n times along the batch. This is what ``autodeco eval`` does.
- **repeated**: for each setting, ``generate()`` on the prompts with ``num_return_sequences=n``
  (transformers repeats every prompt n times before its first forward pass, so each prompt is
  prefilled n times per setting): the base's ``generate()`` for static settings,
  ``AutoDecoForCausalLM.generate(num_return_sequences=n)`` for AutoDeco. Greedy settings (used by
  the correctness check) repeat the input rows instead, because ``generate()`` refuses
  ``num_return_sequences > 1`` without sampling.

The arms are interleaved (A B, B A, ...) and each pair gives one wall-time speed-up (repeated time /
shared time), summarised by its median and interquartile range. A hook times every forward pass of
the base, so the table also shows how much of each arm's time is prefill (forward passes over more
than one position). Run ``python benchmarks/eval_throughput.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from autodeco import AutoDecoForCausalLM
from autodeco.common.seeds import derived_seed
from autodeco.model.base_model import end_token_ids as end_of_sequence_ids
from autodeco.model.base_model import load_tokenizer
from autodeco.model.generation import generate_with_base
from autodeco.problems import load_problems, read_jsonl
from autodeco.problems.datasets import DATA_DIR_VARIABLE
from autodeco.sampling.inference import encode_prompts, load_for_generation, render_prompt
from autodeco.sampling.rollouts import _completion, complete, prefill  # _completion: complete()'s id-to-text step
from autodeco.sampling.settings import AUTODECO, STATIC, DecodingSetting

# This script's folder is on sys.path when it runs: reuse the decoding benchmark's model shape and helpers.
from decode_speed import SMOLLM2_135M_SHAPE, impossible_token_id, quantile

DEFAULT_SETTINGS = ("T=0.60,P=0.95", "autodeco", "T=1.00,P=1.00")
"""S = 3 settings of an evaluation: a static pair, AutoDeco's heads, and the default T = 1, P = 1."""

SHORT, LONG = "short", "long"
PROMPT_SETS = (SHORT, LONG)

GSM8K_TEST_FILE = "gsm8k_test.jsonl"
GSM8K_TRAIN_FILE = "gsm8k_train.jsonl"
"""The few-shot prefix of long prompts takes worked examples from here (else from test problems after the batch)."""

EXAMPLES = 32
"""At most this many worked examples (several thousand tokens) make up the few-shot prefix of long prompts."""

CHECK_SAMPLES = 2
"""Samples per problem in the greedy correctness check (more than one, so the shared cache is repeated)."""

WARMUP_TOKENS = 2
"""Each prompt set starts with one untimed run of each arm: one sample per setting, this many new tokens."""

FIRST_PAIR_SEED = 1000
"""Pair ``i`` seeds both arms' settings from ``FIRST_PAIR_SEED + i``."""


def default_data_dir() -> Path:
    """``$AUTODECO_DATA_DIR``, else ``shared/data`` beside the repository (where these machines keep it)."""
    if os.environ.get(DATA_DIR_VARIABLE):
        return Path(os.environ[DATA_DIR_VARIABLE])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time evaluation-style sampling (B problems x S settings x n samples) with one shared prefill per batch "
            "against generate(num_return_sequences=n), which prefills every prompt n times per setting, and print "
            "a Markdown table."
        )
    )
    parser.add_argument("--base", default="embedded:SmolLM2-135M-Instruct", help="base model (default: %(default)s)")
    parser.add_argument(
        "--random-smollm2-shape",
        action="store_true",
        help="use a randomly initialised Llama of SmolLM2-135M's shape instead of loading --base "
        "(with --base's tokenizer when it loads, else a word-level stand-in)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="problems per batch, B (default: %(default)s)")
    parser.add_argument(
        "--samples", type=int, nargs="+", default=[4, 16], help="samples per problem and setting, n (default: %(default)s)"
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="new tokens per sample, N (default: %(default)s)")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="the S decoding settings of one run: 'autodeco', 'greedy' or static keys like 'T=0.70,P=1.00' "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--prompts",
        nargs="+",
        choices=PROMPT_SETS,
        default=list(PROMPT_SETS),
        help="short: built-in arithmetic test problems; long: GSM8K test questions padded to --prompt-tokens "
        f"(skipped when {GSM8K_TEST_FILE} is missing) (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder holding {GSM8K_TEST_FILE} (default: $AUTODECO_DATA_DIR, else shared/data beside the repository)",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=128,
        help="long prompts: prepend GSM8K worked examples until each rendered prompt has at least this many tokens; "
        "0 keeps the bare questions (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed A/B pairs per configuration (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-check", action="store_true", help="skip the greedy check that both arms give the same tokens")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about two minutes on a busy 2-core machine: n = 4 only and 8 new tokens (flags given explicitly win)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results (every timing) to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        given = argv if argv is not None else sys.argv[1:]
        quick = {"--samples": ("samples", [4]), "--new-tokens": ("new_tokens", 8)}
        for flag, (name, value) in quick.items():
            if not any(item == flag or item.startswith(flag + "=") for item in given):
                setattr(args, name, value)
    for name in ("batch_size", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.samples) < 1:
        parser.error(f"--samples must all be at least 1, got {args.samples}")
    if args.prompt_tokens < 0:
        parser.error(f"--prompt-tokens must be 0 or more, got {args.prompt_tokens}")

    try:
        args.settings = [DecodingSetting.from_key(key) for key in args.settings]
    except ValueError as error:
        parser.error(str(error))
    if args.data_dir is None:
        args.data_dir = default_data_dir()
    return args


# ------------------------------------------------------------------------------------------ prompts


def load_user_prompts(args) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """``({prompt set: B user prompts}, few-shot worked examples, notes)``; chat templates are applied later."""
    prompts, examples, notes = {}, [], []
    if SHORT in args.prompts:
        prompts[SHORT] = [problem.prompt() for problem in load_problems("arithmetic", split="test", limit=args.batch_size)]
    if LONG in args.prompts:
        test_file = args.data_dir / GSM8K_TEST_FILE
        if not test_file.is_file():
            notes.append(f"long prompts skipped: {test_file} not found (pass --data-dir)")
        else:
            test = read_jsonl(test_file)
            prompts[LONG] = [problem.prompt() for problem in test[: args.batch_size]]
            train_file = args.data_dir / GSM8K_TRAIN_FILE
            worked = read_raw_jsonl(train_file) if train_file.is_file() else read_raw_jsonl(test_file)[args.batch_size :]
            examples = [worked_example(record["question"], record["answer"]) for record in worked[:EXAMPLES]]
    return prompts, examples, notes


def read_raw_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def worked_example(question: str, solution: str) -> str:
    """A GSM8K question and its solution as one few-shot example (calculator notes removed, answer boxed)."""
    solution = re.sub(r"<<[^>]*>>", "", solution)
    body, _, final = solution.rpartition("####")
    return f"Question: {question}\nAnswer: {body.strip()} The answer is \\boxed{{{final.strip().replace(',', '')}}}.\n\n"


def render_prompts(tokenizer, prompts: list[str], examples: list[str], min_tokens: int) -> list[str]:
    """Each prompt in the chat template, behind as much of the worked examples as brings it to ``min_tokens`` tokens.

    The examples are cut at a token boundary (the first ``k`` tokens of their concatenation, the smallest ``k``
    that reaches the length), so a padded prompt has ``min_tokens`` tokens or one or two more (re-tokenization at the cut).
    """
    prefix_ids = tokenizer("".join(examples), add_special_tokens=False).input_ids if examples else []
    rendered = []
    for prompt in prompts:
        text = render_prompt(tokenizer, prompt)
        keep = min_tokens - count_tokens(tokenizer, render_prompt(tokenizer, f"\n\nQuestion: {prompt}"))
        while keep > 0 and count_tokens(tokenizer, text) < min_tokens and keep <= len(prefix_ids):
            prefix = tokenizer.decode(prefix_ids[:keep], skip_special_tokens=True)
            text = render_prompt(tokenizer, f"{prefix.rstrip()}\n\nQuestion: {prompt}")
            keep += 1
        rendered.append(text)
    return rendered


def count_tokens(tokenizer, text: str) -> int:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return len(tokenizer(text, add_special_tokens=not has_template).input_ids)


# ------------------------------------------------------------------------------------------ model


CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The stand-in tokenizer's template: ChatML with a default system message, as SmolLM2's template writes it."""


def build_model(args, texts: list[str]):
    """``(AutoDecoForCausalLM with fresh heads, tokenizer, description)``; ``texts`` give the stand-in its words."""
    if not args.random_smollm2_shape:
        loaded = load_for_generation(None, args.base)
        loaded.model.eval()
        return loaded.model, loaded.tokenizer, loaded.description

    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE)).eval()
    model = AutoDecoForCausalLM.from_base(llm, seed=0).eval()
    try:
        tokenizer, source = load_tokenizer(args.base), f"{args.base}'s tokenizer"
    except Exception as error:  # noqa: BLE001 - whatever stops it (package missing, ...), fall back to the stand-in
        print(f"note: {args.base}'s tokenizer did not load ({error}); using a word-level stand-in", file=sys.stderr)
        words = tuple(word for text in texts for word in re.findall(r"\w+|[^\w\s]+", text))
        tokenizer = word_level_tokenizer(SMOLLM2_135M_SHAPE["vocab_size"], words)
        source = "word-level stand-in tokenizer"
    return model, tokenizer, f"random LlamaConfig, SmolLM2-135M shape, {source}"


def word_level_tokenizer(vocab_size: int, words: tuple[str, ...] = ()):
    """A tokenizer for the random model when no real one loads: one token per word or run of punctuation.

    Only lengths matter to a random model, and a word-level split counts English prose roughly as a subword
    tokenizer does. Words outside ``words`` share the unknown id; every id below ``vocab_size`` decodes.
    """
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]  # SmolLM2's ids 0-2 for the first three
    vocab = {token: index for index, token in enumerate(specials)}
    for word in words:
        if len(vocab) < vocab_size:
            vocab.setdefault(word, len(vocab))
    for index in range(len(vocab), vocab_size):
        vocab[f"<w{index}>"] = index
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@contextlib.contextmanager
def exactly_n_new_tokens(llm):
    """Make every ``generate()`` on ``llm`` run to ``max_new_tokens``: its end-of-sequence id becomes an impossible one.

    Both arms read the id from ``llm.generation_config`` (``generate_with_base`` keeps it), so both stop only at
    the length limit; completions are still cut at the tokenizer's own end token when they are decoded.
    """
    config = llm.generation_config
    original = config.eos_token_id
    config.eos_token_id = impossible_token_id(llm)
    try:
        yield
    finally:
        config.eos_token_id = original


class ForwardRecorder:
    """Records every forward pass of ``llm``: ``(rows, positions, seconds)``, via a pre- and a post-hook.

    A pass over more than one position is a prefill; one position per row is a decoding step.
    """

    def __init__(self, llm):
        self.llm = llm
        self.calls: list[tuple[int, int, float]] = []
        self._handles = []
        self._start = 0.0
        self._shape = (0, 0)

    def __enter__(self):
        def before(module, args, kwargs):
            tokens = kwargs.get("input_ids")
            if tokens is None:
                tokens = args[0] if args else kwargs.get("inputs_embeds")
            self._shape = (int(tokens.shape[0]), int(tokens.shape[1]))
            self._start = time.perf_counter()

        def after(module, args, kwargs, output):
            self.calls.append((*self._shape, time.perf_counter() - self._start))

        self._handles = [
            self.llm.register_forward_pre_hook(before, with_kwargs=True),
            self.llm.register_forward_hook(after, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False

    @property
    def prefill_seconds(self) -> float:
        return sum(seconds for _, positions, seconds in self.calls if positions > 1)

    @property
    def positions(self) -> int:
        """Token positions computed (rows x positions, padding included)."""
        return sum(rows * positions for rows, positions, _ in self.calls)


# ------------------------------------------------------------------------------------------ the two arms


def setting_seeds(settings, pair_seed: int) -> list[int]:
    return [derived_seed("eval_throughput", pair_seed, setting.key) for setting in settings]


@torch.no_grad()
def shared_run(model, tokenizer, rendered, settings, num_samples: int, new_tokens: int, seeds):
    """Prefill once, then :func:`~autodeco.sampling.rollouts.complete` every setting from the shared cache.

    ``compact=False``: ``generate()`` continues from the cache, as in the repeated arm, so the two arms differ in the
    prefill only (``benchmarks/compact_rows.py`` measures dropping ended rows from the batch).
    """
    batch = prefill(model.llm, tokenizer, rendered)
    return [
        complete(model, tokenizer, batch, setting, num_samples=num_samples, max_new_tokens=new_tokens, seed=seed,
                 compact=False)
        for setting, seed in zip(settings, seeds)
    ]


@torch.no_grad()
def repeated_run(model, tokenizer, rendered, settings, num_samples: int, new_tokens: int, seeds):
    """For each setting, ``generate(num_return_sequences=n)`` from the bare prompts: each prompt prefilled n times.

    Seeding, row order (prompt-major, as ``repeat_interleave``) and decoding of the ids match
    :func:`~autodeco.sampling.rollouts.complete`, so with the same seeds both arms sample from the same distributions.
    """
    encoded = encode_prompts(tokenizer, rendered, model.device)
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]  # (B, L)
    eos_ids = end_of_sequence_ids(model.llm, tokenizer)
    kwargs = {"max_new_tokens": new_tokens, "pad_token_id": tokenizer.pad_token_id}
    results = []
    for setting, seed in zip(settings, seeds):
        temperatures = top_ps = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if setting.kind == AUTODECO:
                output = model.generate(
                    input_ids, attention_mask, do_sample=True, return_dict_in_generate=True,
                    num_return_sequences=num_samples, **kwargs,
                )
                sequences, temperatures, top_ps = output.sequences, output.temperatures, output.top_ps
            elif setting.kind == STATIC:
                sequences = generate_with_base(
                    model.llm, input_ids, attention_mask, sample=True, temperature=setting.temperature,
                    top_p=setting.top_p, num_return_sequences=num_samples, **kwargs,
                )
            else:  # greedy: generate() refuses num_return_sequences > 1 without sampling, so repeat the rows
                sequences = generate_with_base(
                    model.llm, input_ids.repeat_interleave(num_samples, dim=0),
                    attention_mask.repeat_interleave(num_samples, dim=0), sample=False, **kwargs,
                )
        generated = sequences[:, input_ids.shape[1] :]  # (B*n, N)
        values = (temperatures, top_ps, None)  # what complete() records: T, P, entropies (not recorded here)
        flat = [_completion(tokenizer, generated[row], eos_ids, values, row) for row in range(len(generated))]
        results.append([flat[start : start + num_samples] for start in range(0, len(flat), num_samples)])
    return results


ARMS = {"shared": shared_run, "repeated": repeated_run}


def timed_run(arm: str, model, tokenizer, rendered, settings, num_samples: int, new_tokens: int, pair_seed: int):
    """One run of an arm: ``(measurements, completions[setting][problem][sample])``; checks the forward passes."""
    seeds = setting_seeds(settings, pair_seed)
    with exactly_n_new_tokens(model.llm), ForwardRecorder(model.llm) as recorder:
        wall, cpu = time.perf_counter(), time.process_time()
        completions = ARMS[arm](model, tokenizer, rendered, settings, num_samples, new_tokens, seeds)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    check_forward_passes(arm, recorder.calls, len(settings), new_tokens, len(rendered) * num_samples)
    measured = {
        "wall_s": wall,
        "cpu_s": cpu,
        "prefill_s": recorder.prefill_seconds,
        "forward_s": sum(seconds for *_, seconds in recorder.calls),
        "positions": recorder.positions,
        "forward_passes": len(recorder.calls),
    }
    return measured, completions


def check_forward_passes(arm: str, calls, settings: int, new_tokens: int, rows: int) -> None:
    """Each setting must take exactly ``new_tokens`` forward passes over ``rows`` rows, the shared arm's first of them
    over one position (so the cache was used), after one prefill over the batch."""
    if arm == "shared" and len(calls) == settings * new_tokens + 1:  # the prefill (absent for one-token prompts)
        calls = calls[1:]
    if len(calls) != settings * new_tokens:
        raise RuntimeError(f"{arm}: expected {settings} x {new_tokens} forward passes of generate(), got {len(calls)}")
    for index in range(0, len(calls), new_tokens):
        first_rows, first_positions, _ = calls[index]
        if first_rows != rows:
            raise RuntimeError(f"{arm}: generate() ran over {first_rows} rows, expected B x n = {rows}")
        if arm == "shared" and first_positions != 1:
            raise RuntimeError(
                f"shared: generate() recomputed {first_positions} prompt positions instead of continuing the cache"
            )
        if any(positions != 1 for _, positions, _ in calls[index + 1 : index + new_tokens]):
            raise RuntimeError(f"{arm}: a decoding step computed more than one position")


def same_tokens(first, second) -> tuple[int, int]:
    """``(identical completions, all completions)`` of two runs' ``completions[setting][problem][sample]``."""
    pairs = [
        (a.token_ids, b.token_ids)
        for setting_a, setting_b in zip(first, second)
        for problem_a, problem_b in zip(setting_a, setting_b)
        for a, b in zip(problem_a, problem_b)
    ]
    return sum(a == b for a, b in pairs), len(pairs)


def greedy_check(model, tokenizer, rendered, new_tokens: int) -> dict:
    """Greedy decoding through both arms: the completions should be the same, token for token."""
    settings = [DecodingSetting.greedy()]
    runs = {
        arm: timed_run(arm, model, tokenizer, rendered, settings, CHECK_SAMPLES, new_tokens, FIRST_PAIR_SEED)[1][0]
        for arm in ARMS
    }
    mismatches = []
    for problem, (shared, repeated) in enumerate(zip(runs["shared"], runs["repeated"])):
        for sample, (a, b) in enumerate(zip(shared, repeated)):
            if a.token_ids != b.token_ids:
                position = next(
                    (i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                    min(len(a.token_ids), len(b.token_ids)),
                )
                mismatches.append({"problem": problem, "sample": sample, "first_difference": position})
    identical, total = same_tokens([runs["shared"]], [runs["repeated"]])
    return {"identical": identical, "total": total, "samples": CHECK_SAMPLES, "mismatches": mismatches}


# ------------------------------------------------------------------------------------------ measurement


def run_configuration(model, tokenizer, name: str, rendered, num_samples: int, args) -> dict:
    settings = args.settings
    samples = len(settings) * len(rendered) * num_samples
    lengths = [count_tokens(tokenizer, text) for text in rendered]
    runs = {arm: [] for arm in ARMS}
    ratios, cpu_ratios, identical, total = [], [], 0, 0
    for rep in range(args.repeats):
        order = ("shared", "repeated") if rep % 2 == 0 else ("repeated", "shared")  # A B, B A, ...
        pair = {
            arm: timed_run(arm, model, tokenizer, rendered, settings, num_samples, args.new_tokens, FIRST_PAIR_SEED + rep)
            for arm in order
        }
        for arm in ARMS:
            runs[arm].append(pair[arm][0])
        ratios.append(pair["repeated"][0]["wall_s"] / pair["shared"][0]["wall_s"])
        cpu_ratios.append(pair["repeated"][0]["cpu_s"] / pair["shared"][0]["cpu_s"])
        same, count = same_tokens(pair["shared"][1], pair["repeated"][1])
        identical, total = identical + same, total + count
    result = {
        "prompts": name,
        "batch": len(rendered),
        "samples_per_problem": num_samples,
        "settings": [setting.key for setting in settings],
        "new_tokens": args.new_tokens,
        "samples_per_run": samples,
        "prompt_tokens": lengths,
        "pairs": args.repeats,
        "runs": runs,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "speedup_median": statistics.median(ratios),
        "speedup_q25": quantile(ratios, 0.25),
        "speedup_q75": quantile(ratios, 0.75),
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
        "cpu_speedup_median": statistics.median(cpu_ratios),
        "sampled_identical": identical,
        "sampled_total": total,
    }
    for arm in ARMS:
        wall = statistics.median(run["wall_s"] for run in runs[arm])
        result[f"{arm}_samples_per_s"] = samples / wall
        result[f"{arm}_tokens_per_s"] = samples * args.new_tokens / wall
        result[f"{arm}_prefill_share"] = statistics.median(run["prefill_s"] / run["wall_s"] for run in runs[arm])
        result[f"{arm}_positions"] = runs[arm][0]["positions"]
    result["positions_ratio"] = result["repeated_positions"] / result["shared_positions"]
    return result


def warm_up(model, tokenizer, rendered, args) -> None:
    for arm in ARMS:
        timed_run(arm, model, tokenizer, rendered, args.settings, 1, WARMUP_TOKENS, FIRST_PAIR_SEED)


# ------------------------------------------------------------------------------------------ output


def markdown_table(results) -> str:
    header = (
        "| prompts | prompt tokens mean (min-max) | n | samples per run (S x B x n) | pairs "
        "| shared samples/s | repeated samples/s | wall-time speed-up repeated/shared: median [IQR] (min-max) "
        "| CPU-time speed-up (median) | prefill share of wall time: shared / repeated "
        "| positions computed: shared / repeated (ratio) | sampled completions identical |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lengths = r["prompt_tokens"]
        lines.append(
            f"| {r['prompts']} | {statistics.mean(lengths):.0f} ({min(lengths)}-{max(lengths)}) "
            f"| {r['samples_per_problem']} | {r['samples_per_run']} | {r['pairs']} "
            f"| {r['shared_samples_per_s']:.2f} | {r['repeated_samples_per_s']:.2f} "
            f"| {r['speedup_median']:.2f} [{r['speedup_q25']:.2f}, {r['speedup_q75']:.2f}] "
            f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {r['cpu_speedup_median']:.2f} "
            f"| {100 * r['shared_prefill_share']:.0f} % / {100 * r['repeated_prefill_share']:.0f} % "
            f"| {r['shared_positions']:,} / {r['repeated_positions']:,} ({r['positions_ratio']:.2f}) "
            f"| {r['sampled_identical']}/{r['sampled_total']} |"
        )
    return "\n".join(lines)


def report_check(name: str, check: dict) -> None:
    if not check["mismatches"]:
        print(
            f"Greedy check ({name} prompts, {check['samples']} samples per problem): shared and repeated arms gave "
            f"identical tokens in {check['identical']}/{check['total']} completions.",
            file=sys.stderr,
        )
        return
    banner = "!" * 100
    print(banner, file=sys.stderr)
    print(
        f"WARNING: greedy decoding differs between the shared and repeated arms ({name} prompts): only "
        f"{check['identical']}/{check['total']} completions are identical. Differences (problem, sample, first "
        f"differing token): {[(m['problem'], m['sample'], m['first_difference']) for m in check['mismatches']]}. "
        "The shared prefill may not reproduce the cache generate() builds itself (positions, padding, cache copy); "
        "float rounding between batch shapes can also flip a near-tie.",
        file=sys.stderr,
    )
    print(banner, file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    prompts, examples, notes = load_user_prompts(args)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not prompts:
        print("nothing to measure: no prompt set is available", file=sys.stderr)
        return 1
    model, tokenizer, description = build_model(args, [text for texts in prompts.values() for text in texts] + examples)
    rendered = {
        name: render_prompts(tokenizer, texts, examples, args.prompt_tokens if name == LONG else 0)
        for name, texts in prompts.items()
    }
    settings = ", ".join(setting.key for setting in args.settings)
    print(
        f"model: {description} ({model.llm.dtype}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"B = {args.batch_size} problems, S = {len(args.settings)} settings ({settings}), n in {args.samples}, "
        f"{args.new_tokens} new tokens, {args.repeats} interleaved pairs per configuration",
        file=sys.stderr,
    )
    checks = {}
    if not args.no_check:
        name = next(iter(rendered))
        checks[name] = greedy_check(model, tokenizer, rendered[name], args.new_tokens)
        report_check(name, checks[name])
    results = []
    for name, texts in rendered.items():
        warm_up(model, tokenizer, texts, args)
        for num_samples in args.samples:
            result = run_configuration(model, tokenizer, name, texts, num_samples, args)
            results.append(result)
            print(
                f"  {name} prompts, n = {num_samples}: speed-up {result['speedup_median']:.2f} "
                f"({time.perf_counter() - started:.0f} s elapsed)",
                file=sys.stderr,
            )
    print(markdown_table(results))
    print()
    print(
        f"Each run: B = {args.batch_size} problems x S = {len(args.settings)} settings ({settings}) x n samples, exactly "
        f"{args.new_tokens} new tokens each. shared: prefill once per batch, complete() per setting from a copy of the "
        "cache; repeated: generate(num_return_sequences=n) per setting, every prompt prefilled n times. Samples/s from "
        "each arm's median wall time; speed-up = repeated / shared wall time within each interleaved pair "
        f"(after one untimed {WARMUP_TOKENS}-token warm-up of each arm per prompt set). CPU time is this process's, "
        "less sensitive to other load. Prefill share: time in forward passes over more than one position, over the "
        "run's wall time. Positions computed: rows x positions over all forward passes (padding included), a "
        "machine-independent measure of the work. Sampled completions identical: same seeds in both arms, so they "
        "differ only where float rounding between batch shapes flips a sample."
    )
    for name, check in checks.items():
        verdict = "identical" if not check["mismatches"] else "DIFFERENT (see the warning above)"
        print(
            f"Greedy check ({name} prompts, B = {len(rendered[name])}, n = {check['samples']}, {args.new_tokens} tokens): "
            f"{check['identical']}/{check['total']} completions identical: {verdict}."
        )
    if args.json:
        payload = {
            "model": description,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "greedy_checks": checks,
            "results": results,
            "elapsed_s": time.perf_counter() - started,
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    print(f"(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 1 if any(check["mismatches"] for check in checks.values()) else 0  # a failed check fails the run


if __name__ == "__main__":
    sys.exit(main())
