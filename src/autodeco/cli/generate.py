"""``autodeco generate``: answer prompts with dynamic decoding, optionally showing each token's T and P."""

from __future__ import annotations

import sys
from pathlib import Path

from autodeco.common.console import say
from autodeco.core.multipliers import MultiplierError, Multipliers

FLAG_MEANINGS = {"temperature": "0 = greedy", "top_p": "a multiplier on the heads' top-p, capped at 1"}
"""What ``--temperature`` and ``--top-p`` mean, for the messages that refuse a value."""


def generate(
    prompts: list[str],
    file: str | None = None,
    heads: str | None = None,
    base: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    no_chat_template: bool = False,
    trace: bool = False,
    trace_dir: str = "autodeco-traces",
    fresh_heads: bool = False,
):
    """Generate answers with each token's temperature and top-p chosen by the heads.

    Prompts come from the arguments, from --file (one per line), or from standard input
    (one per line) when neither is given or the prompt is "-".

    Args:
        prompts: prompt texts.
        file: a text file with one prompt per line.
        heads: heads checkpoint folder (default: the heads shipped for the embedded model; fresh heads for other bases).
        base: base model: hub id, local folder or embedded:SmolLM2-135M-Instruct (default: the one the heads record, else the embedded model).
        max_new_tokens: maximum number of generated tokens per prompt.
        temperature: a multiplier, not an absolute value: each token's T is the head's T times this (0 = greedy).
        top_p: a multiplier, not an absolute value: each token's top-p is the head's times this, capped at 1.
        greedy: decode greedily (the heads' values are still traced).
        seed: random seed for sampling and for fresh heads.
        batch_size: prompts generated together.
        no_chat_template: send prompts as raw text, without the chat template.
        trace: print a per-token table of T and top-p and write HTML and PNG views to --trace-dir.
        trace_dir: folder for the HTML/PNG/JSON traces.
        fresh_heads: use fresh, untrained heads (seeded by --seed) instead of the shipped ones.
    """
    from autodeco.common.folders import staged_folder, users_entries
    from autodeco.model.shipped import heads_or_default
    from autodeco.sampling.inference import generate_traces, load_for_generation
    from autodeco.views import format_table, write_trace

    _check_options(heads, fresh_heads, greedy, temperature, top_p, max_new_tokens, batch_size)
    texts = _collect_prompts(prompts, file)
    if trace:  # a folder of the user's, or an unwritable one, fails before generating
        users_entries(Path(trace_dir).expanduser(), option="--trace-dir")
        Path(trace_dir).mkdir(parents=True, exist_ok=True)
    if not fresh_heads:
        heads = heads_or_default(heads, base)
    loaded = load_for_generation(heads, base, seed=seed)
    if not loaded.heads_trained:
        print(f"note: {loaded.description}: the heads are untrained, so T and top-p are not meaningful yet "
              "(train them with `autodeco train`)", file=sys.stderr)
    traces = generate_traces(
        loaded, texts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        greedy=greedy, seed=seed, chat_template=not no_chat_template, batch_size=batch_size,
    )
    if trace:  # all traces at once, replacing the last run's (files you added to the folder stay)
        with staged_folder(trace_dir, option="--trace-dir") as staging:
            for index, result in enumerate(traces, start=1):
                for suffix in (".html", ".png", ".json"):
                    write_trace(result, staging / f"trace-{index}{suffix}")
    for index, result in enumerate(traces, start=1):
        if len(traces) > 1:
            say(f"=== prompt {index}: {result.prompt}")
        say(result.text.strip())
        if trace:
            say()
            say(format_table(result))
            written = [Path(trace_dir) / f"trace-{index}{suffix}" for suffix in (".html", ".png", ".json")]
            say(f"trace written to {', '.join(str(path) for path in written)}")
        say()


def _check_options(heads, fresh_heads, greedy, temperature, top_p, max_new_tokens, batch_size) -> None:
    """Refuse flags that contradict each other or make no sense, before anything is loaded."""
    from autodeco.cli._parser import check_at_least

    if fresh_heads and heads is not None:
        raise ValueError(f"--fresh-heads and --heads {heads} contradict each other: fresh heads are untrained "
                         "heads made from --seed; drop --heads to use them, or drop --fresh-heads to use the checkpoint")
    if greedy and (temperature != 1.0 or top_p != 1.0):
        raise ValueError(f"--greedy ignores --temperature and --top-p (got {temperature} and {top_p}): greedy decoding "
                         "always takes the most likely token; drop --greedy to sample, or drop the multipliers")
    try:
        Multipliers(temperature, top_p)
    except MultiplierError as error:  # the rule is the multipliers'; the message names the flag
        flag = {"temperature": "--temperature", "top_p": "--top-p"}[error.name]
        meaning = "a multiplier: larger ones overflow to infinity" if error.too_large else FLAG_MEANINGS[error.name]
        raise ValueError(f"{flag} must be {error.bound} ({meaning}), got {error.value}") from None
    check_at_least("--max-new-tokens", max_new_tokens)
    check_at_least("--batch-size", batch_size)


def _read_text(read, where: str) -> str:
    """The text ``read()`` returns, refused with a clear error when it is not UTF-8."""
    try:
        text = read()
        text.encode("utf-8")  # bytes read with surrogateescape (a C locale) come back as lone surrogates
    except UnicodeError as error:
        position = f" at byte {error.start}" if isinstance(error, UnicodeDecodeError) else ""
        raise ValueError(f"{where} is not UTF-8 text (undecodable byte{position}); "
                         "convert it to UTF-8 first, e.g. with iconv -t UTF-8") from None
    return text


def _collect_prompts(prompts: list[str], file: str | None) -> list[str]:
    texts = [prompt for prompt in prompts if prompt != "-"]
    if file is not None:
        path = Path(file)
        if path.is_dir():
            raise ValueError(f"prompt file {file!r} is a folder; give a text file with one prompt per line")
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {file!r} does not exist")
        text = _read_text(lambda: path.read_text(encoding="utf-8"), f"prompt file {file!r}")
        texts += [line for line in text.splitlines() if line.strip()]
    if "-" in prompts or (not texts and file is None and not sys.stdin.isatty()):
        text = _read_text(sys.stdin.read, "standard input")
        texts += [line for line in text.splitlines() if line.strip()]
    if not texts:
        raise ValueError("no prompt given: pass a prompt, --file FILE, or pipe prompts on standard input")
    for index, text in enumerate(texts, start=1):
        if not text.strip():
            raise ValueError(f"prompt {index} is empty; give some text to answer")
    return texts
