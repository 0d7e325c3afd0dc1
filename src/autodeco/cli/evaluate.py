"""``autodeco eval``: Pass@k of every decoding method side by side, with seeds, error bars and plots."""

from __future__ import annotations

from autodeco.common.console import say


def evaluate_command(
    dataset: str = "arithmetic",
    output: str = "runs/eval",
    heads: str | None = None,
    base: str | None = None,
    split: str = "test",
    limit: int | None = None,
    methods: list[str] | None = None,
    static: list[str] | None = None,
    seeds: int = 4,
    samples_per_seed: int = 4,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    scorer: str = "math-verify",
    oracle_step: float = 0.1,
    meanshift: str | None = None,
    meanshift_data: str | None = None,
    data_dir: str | None = None,
    scoring: str = "lenient",
    tune_problems: int = 32,
    tune_dataset: str | None = None,
    tune_split: str = "train",
    engine: str = "hf",
    overwrite: bool = False,
):
    """Evaluate AutoDeco next to greedy, default sampling, MeanShift, the oracle grid, heuristic adaptive samplers,
    head factorization and shuffle controls, on the same problems with the same budget.

    Prints the plan (samples and new tokens of every stage) and a time estimate from a short warm-up first.
    Writes OUTPUT/samples.jsonl (every answer, as produced: a killed run resumes), tuning.jsonl (the heuristics'
    tuning on the training split), summary.json, report.md (a table like the paper's Table 1, with paired
    confidence intervals, the share of answers cut off at the token limit and strict scoring) and PNG plots.

    Args:
        dataset: arithmetic (built-in test split), gsm8k, math500, aime24, aime25, hmmt25, brumo25, beyondaime (files in --data-dir), a JSONL file, or hf:NAME.
        output: output folder.
        heads: heads checkpoint (default: the heads shipped for the embedded model).
        base: base model (default: the one the heads record).
        split: dataset split.
        limit: number of problems: the first LIMIT in file order (arithmetic: the first LIMIT the generator makes for --seed, so a smaller limit is a prefix of a larger one); default: all (arithmetic: 200).
        methods: methods to run (default: all of greedy default autodeco meanshift oracle edt entropy-shift confidence-gated min-p eta top-n-sigma temperature-head top-p-head shuffle bin-shuffle).
        static: extra static settings, each T,P (e.g. 0.7,0.95).
        seeds: number of seeds (0, 1, ...); each draws --samples-per-seed answers per problem.
        samples_per_seed: answers per problem and seed (paper: 8 seeds x 16).
        max_new_tokens: length limit of each answer (default: 32 for arithmetic, 1024 otherwise).
        batch_size: problems per generation batch.
        scorer: answer checker: math-verify (symbolic) or exact (the paper's string match).
        oracle_step: step of the oracle's temperature and top-p grids (paper: 0.1).
        meanshift: MeanShift's pair as T,P (default: measured on --meanshift-data or recorded with the heads).
        meanshift_data: held-out verified trajectories (JSONL, e.g. heldout.jsonl from autodeco sample) for MeanShift's means.
        data_dir: folder with dataset files (default: $AUTODECO_DATA_DIR).
        scoring: lenient (an answer cut off at --max-new-tokens is scored on what it holds, as the paper does) or strict (it counts as wrong); the report shows both.
        tune_problems: problems of the training split on which the heuristic methods' parameters are tuned (0: their untuned defaults).
        tune_dataset: dataset of the tuning problems (default: --dataset); must share no problem with the evaluated ones.
        tune_split: split of the tuning problems.
        engine: rollout engine: hf (Hugging Face generate) or vllm (needs vLLM; the paper's methods and static pairs only, the default --methods with it).
        overwrite: discard an existing evaluation in OUTPUT instead of resuming it.
    """
    from autodeco.cli._parser import check_at_least, check_choice
    from autodeco.evaluation.methods import METHODS, NEEDS_MEANSHIFT, PAPER_METHODS, check_methods
    from autodeco.evaluation.runner import EvalConfig, evaluate, oracle_grid
    from autodeco.problems.answers import SCORERS

    check_choice("--scorer", scorer, SCORERS)  # before the run folder is written
    check_choice("--scoring", scoring, ("lenient", "strict"))
    check_choice("--engine", engine, ("hf", "vllm"))
    check_at_least("--tune-problems", tune_problems, minimum=0)
    check_at_least("--seeds", seeds)
    check_at_least("--samples-per-seed", samples_per_seed)
    check_at_least("--batch-size", batch_size)
    check_at_least("--max-new-tokens", max_new_tokens)
    check_at_least("--limit", limit, none=" (leave --limit out for all problems)")
    chosen = check_methods(methods) if methods else (PAPER_METHODS if engine == "vllm" else METHODS)
    for flag, value in (("--meanshift", meanshift), ("--meanshift-data", meanshift_data)):
        if value is not None and not any(name in chosen for name in NEEDS_MEANSHIFT):
            raise ValueError(f"{flag} {value} is only used by the meanshift method (and {', '.join(NEEDS_MEANSHIFT[1:])}), "
                             "which --methods "
                             f"({' '.join(chosen)}) leaves out: add meanshift to --methods, or drop {flag}")
    temperatures, top_ps = oracle_grid(oracle_step)
    config = EvalConfig(
        dataset=dataset, split=split, limit=limit, heads=heads, base=base,
        methods=chosen,
        static=tuple(_pair(text, "--static") for text in static or []), seeds=tuple(range(seeds)),
        samples_per_seed=samples_per_seed, max_new_tokens=max_new_tokens, batch_size=batch_size, scorer=scorer,
        oracle_temperatures=temperatures, oracle_top_ps=top_ps,
        meanshift=_pair(meanshift, "--meanshift") if meanshift else None, meanshift_data=meanshift_data,
        data_dir=data_dir, scoring=scoring, tune_problems=tune_problems, tune_dataset=tune_dataset,
        tune_split=tune_split, engine=engine,
    )
    from autodeco.views.report import write_report

    result = evaluate(config, output, overwrite=overwrite, write_report=write_report)
    print_result(result)


def print_result(result) -> None:
    """Print the headline table and where the report is."""
    from autodeco.views.report_markdown import headline_table

    say(headline_table(result.summary))
    say(f"\nreport: {result.files.get('report.md', result.output / 'report.md')}")
    throughput = result.summary.get("throughput", {})
    if throughput.get("samples_per_second"):
        say(f"this run: {throughput['samples_generated_this_run']} samples, "
              f"{throughput['samples_per_second']:.2f} samples/s, {throughput['tokens_per_second']:.0f} tokens/s")


def _pair(text: str, flag: str) -> tuple[float, float]:
    import math

    try:
        temperature, top_p = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} takes T,P (two numbers separated by a comma, e.g. 0.7,0.95), got {text!r}") from None
    if not (math.isfinite(temperature) and math.isfinite(top_p)):
        raise ValueError(f"{flag} takes two finite numbers T,P (e.g. 0.7,0.95), got {text!r}")
    return temperature, top_p
