"""The evaluation report: a JSON summary, a Markdown page shaped like the paper's Table 1, and plots.

:func:`build_summary` turns the run's config and its sample records into one JSON-ready dict:
per method (greedy, default, AutoDeco, MeanShift, the test-set-tuned oracle, user statics)
Pass@1 mean ± std over seeds, Pass@k, mean length, and the paired-bootstrap difference
AutoDeco minus that method. :func:`write_report` writes ``summary.json``, ``report.md`` and
four figures: ``methods.png`` (Pass@1 bars), ``oracle.png`` (the paper's Figure 3),
``pass_at_k.png`` and ``trace.png`` (one AutoDeco sample's per-token T and P).

Scores in the summary are fractions in [0, 1]; the Markdown and the plots show percentages.
matplotlib is imported only when a figure is drawn, and only its Agg canvas is used.

Example:
    >>> from autodeco.evaluation.records import SampleRecord, GREEDY
    >>> records = [SampleRecord("p1", GREEDY, 0, 0, "4", "4", True, 3)]
    >>> config = {"methods": {"greedy": GREEDY}}
    >>> summary = build_summary(config, records, bootstrap_resamples=100)
    >>> summary["methods"][0]["pass_at_1"]["mean"]
    1.0
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autodeco.evaluation.metrics import (
    BOOTSTRAP_CONFIDENCE,
    BOOTSTRAP_RESAMPLES,
    default_ks,
    mean_and_std,
    oracle_search,
    paired_bootstrap,
    pass_at_1_by_seed,
    pass_at_k_curve,
)
from autodeco.evaluation.records import AUTODECO, GREEDY, SampleRecord, parse_static_setting, static_setting
from autodeco.common.jsonl import write_bytes_atomic

__all__ = [
    "ORACLE",
    "ORACLE_LABEL",
    "build_summary",
    "headline_table",
    "pick_trace_record",
    "render_markdown",
    "write_report",
]

ORACLE = "oracle"
"""Method name of the expert-guided grid search (derived by :func:`build_summary`)."""

ORACLE_LABEL = "oracle (tuned on the test set)"
"""How the oracle is labelled in tables and figures: it was searched on the evaluated problems."""

METHOD_ORDER = ("greedy", "default", "autodeco", "meanshift", ORACLE)
"""Methods with these names come first, in this order; other methods follow in config order."""

TABLE_PASS_AT_K_COLUMNS = 3
"""Pass@k columns (besides Pass@1) in the headline table."""

BETTER, WORSE, NO_DIFFERENCE = "AutoDeco better", "AutoDeco worse", "no significant difference"
"""Verdicts of the paired bootstrap: the interval of AutoDeco minus the method is above, below, or contains 0."""

PLOT_FILES = ("methods.png", "oracle.png", "pass_at_k.png", "trace.png")
_PNG_DPI = 120
_TRACE_LABELLED_TOKENS = 4
"""Tokens labelled at each extreme (highest and lowest T) in the trace plot."""
_COLORS = {"greedy": "#7f7f7f", "default": "#1f77b4", "autodeco": "#d62728", "meanshift": "#2ca02c", ORACLE: "#9467bd"}
_OTHER_COLOR = "#8c564b"


# --------------------------------------------------------------------------
# Summary


def build_summary(
    config: dict[str, Any],
    records: list[SampleRecord],
    *,
    ks: list[int] | None = None,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-ready dict (string keys, plain numbers).

    Args:
        config: the run's description, written by the runner: ``methods`` (name -> setting key),
            ``oracle_grid`` (``{"temperatures": [...], "top_ps": [...]}`` or None), ``seeds``,
            ``samples_per_seed``, ``num_problems``, optionally ``problem_ids`` (records of other
            problems are ignored, with a warning) and free-form fields shown in the header
            (``model``, ``heads``, ``dataset``, ``max_new_tokens``, ``scorer``, ``meanshift_source``).
        records: the sample records of every setting (duplicates of a key: the last one counts).
        ks: Pass@k values to compute; default :func:`~autodeco.evaluation.metrics.default_ks`
            of each method's samples per problem. Values above a method's n are left out for it.
        bootstrap_resamples: resamples for the AutoDeco-minus-method intervals.

    Returns:
        ``{"config", "num_problems", "samples_per_problem", "settings", "methods", "oracle",
        "autodeco", "table_ks", "bootstrap", "warnings"}``. Each entry of ``methods`` has
        ``name``, ``label``, ``setting``, ``kind``, ``temperature``, ``top_p``, ``pass_at_1``
        (``mean``, ``std``, ``per_seed``), ``samples_per_problem``, ``pass_at_k``, ``mean_tokens``,
        ``autodeco_minus_method`` (or None) and ``test_set_tuned``.

    Raises:
        ValueError: if the config is not JSON-serialisable or names an unknown setting.

    Example:
        >>> from autodeco.evaluation.records import SampleRecord
        >>> records = [SampleRecord(f"p{i}", "T=1.00,P=1.00", 0, s, "", None, s < i, 5)
        ...            for i in range(3) for s in range(2)]
        >>> summary = build_summary({"methods": {"default": "T=1.00,P=1.00"}}, records, bootstrap_resamples=10)
        >>> round(summary["methods"][0]["pass_at_1"]["mean"], 4)  # (0 + 1/2 + 1) / 3
        0.5
    """
    config = _json_copy(config)
    records, duplicates = _deduplicate(records)
    warnings_list = [f"{duplicates} duplicate record(s) (same problem, setting, seed, sample): the last one counts"] if duplicates else []
    if config.get("problem_ids") is not None:
        wanted = set(config["problem_ids"])
        kept = [record for record in records if record.problem_id in wanted]
        if len(kept) < len(records):
            warnings_list.append(f"{len(records) - len(kept)} record(s) of problems not in config['problem_ids'] ignored")
        records = kept
    outcomes = _outcomes_by_setting(records)
    problems = sorted({record.problem_id for record in records})
    num_problems = config.get("num_problems") or len(problems)
    settings = _settings_summary(config, records, outcomes, num_problems, warnings_list)

    autodeco_rates = _success_rates(outcomes[AUTODECO]) if AUTODECO in outcomes else None
    by_setting: dict[str, list[SampleRecord]] = {}
    for record in records:
        by_setting.setdefault(record.setting, []).append(record)
    context = _MethodContext(outcomes, by_setting, ks, autodeco_rates, bootstrap_resamples, warnings_list)
    oracle = _oracle_summary(config, outcomes, warnings_list)

    methods = []
    for name, setting in _ordered_methods(config, oracle):
        if setting not in outcomes:
            warnings_list.append(f"method {name!r} (setting {setting}) has no samples: left out of the table")
            continue
        methods.append(_method_entry(name, setting, context))

    sampled = [entry["samples_per_problem"] for entry in methods if entry["kind"] != "greedy"]
    table_ks = _table_ks(ks, max(sampled) if sampled else 1)
    return {
        "config": config,
        "num_problems": num_problems,
        "samples_per_problem": _budget(config),
        "settings": settings,
        "methods": methods,
        "oracle": oracle,
        "autodeco": _autodeco_levels(records),
        "table_ks": table_ks,
        "bootstrap": {"resamples": bootstrap_resamples, "confidence": BOOTSTRAP_CONFIDENCE, "unit": "problem"},
        "warnings": warnings_list,
    }


@dataclasses.dataclass
class _MethodContext:
    """What every method entry needs: the outcomes, the records, and AutoDeco's per-problem rates."""

    outcomes: dict[str, dict[str, dict[int, list[bool]]]]
    records_by_setting: dict[str, list[SampleRecord]]
    ks: list[int] | None
    autodeco_rates: dict[str, float] | None
    resamples: int
    warnings: list[str]


def _method_entry(name: str, setting: str, context: _MethodContext) -> dict[str, Any]:
    """One row of the table: Pass@1 over seeds, Pass@k, length, and AutoDeco minus this method."""
    outcomes = context.outcomes[setting]
    per_seed = pass_at_1_by_seed(outcomes)
    mean, std = mean_and_std(list(per_seed.values()))
    counts = _counts(outcomes)
    n = min(total for total, _ in counts.values())
    ks = [k for k in context.ks if k <= n] if context.ks else default_ks(n)
    static = parse_static_setting(setting)
    records = context.records_by_setting[setting]
    return {
        "name": name,
        "label": ORACLE_LABEL if name == ORACLE else name,
        "setting": setting,
        "kind": setting if setting in (GREEDY, AUTODECO) else "static",
        "temperature": static[0] if static else None,
        "top_p": static[1] if static else None,
        "pass_at_1": {"mean": mean, "std": std, "per_seed": {str(seed): value for seed, value in per_seed.items()}},
        "num_seeds": len(per_seed),
        "num_problems": len(counts),
        "samples_per_problem": n,
        "pass_at_k": {str(k): value for k, value in pass_at_k_curve(counts, ks).items()} if ks else {},
        "mean_tokens": statistics.fmean(record.num_tokens for record in records),
        "autodeco_minus_method": _comparison(name, setting, outcomes, context),
        "test_set_tuned": name == ORACLE,
    }


def _comparison(name: str, setting: str, outcomes, context: _MethodContext) -> dict[str, Any] | None:
    """Paired bootstrap of AutoDeco's minus this method's per-problem success rates (None for AutoDeco)."""
    if context.autodeco_rates is None or setting == AUTODECO:
        return None
    rates = _success_rates(outcomes)
    common = sorted(rates.keys() & context.autodeco_rates.keys())
    if not common:
        context.warnings.append(f"method {name!r} shares no problem with AutoDeco: no comparison")
        return None
    if len(common) < max(len(rates), len(context.autodeco_rates)):
        context.warnings.append(
            f"method {name!r} and AutoDeco were compared on the {len(common)} problems both have samples for"
        )
    difference = paired_bootstrap(
        {problem: context.autodeco_rates[problem] for problem in common},
        {problem: rates[problem] for problem in common},
        resamples=context.resamples,
    )
    verdict = BETTER if difference.low > 0 else WORSE if difference.high < 0 else NO_DIFFERENCE
    return {
        "mean_difference": difference.mean_difference,
        "low": difference.low,
        "high": difference.high,
        "confidence": difference.confidence,
        "resamples": difference.resamples,
        "num_problems": difference.num_problems,
        "verdict": verdict,
    }


def _oracle_summary(config: dict[str, Any], outcomes, warnings_list: list[str]) -> dict[str, Any]:
    """The two-step grid search over the static settings that were run (test-set tuned)."""
    grid = config.get("oracle_grid")
    if not grid:
        return {"available": False, "reason": "no oracle grid in the config", "test_set_tuned": True}
    levels = {}
    for setting, by_problem in outcomes.items():
        static = parse_static_setting(setting)
        if static is not None:
            mean, std = mean_and_std(list(pass_at_1_by_seed(by_problem).values()))
            levels[static] = (mean, std, setting)
    try:
        choice = oracle_search(
            {point: level[0] for point, level in levels.items()}, grid.get("temperatures") or [], grid.get("top_ps") or []
        )
    except ValueError as error:
        warnings_list.append(f"oracle not computed: {error}")
        return {"available": False, "reason": str(error), "test_set_tuned": True}

    def curve(points: list[tuple[float, float]]) -> list[dict[str, Any]]:
        return [
            {"temperature": t, "top_p": p, "setting": levels[(t, p)][2],
             "pass_at_1_mean": levels[(t, p)][0], "pass_at_1_std": levels[(t, p)][1]}
            for t, p in points
        ]

    return {
        "available": True,
        "temperature": choice.temperature,
        "top_p": choice.top_p,
        "setting": static_setting(choice.temperature, choice.top_p),
        "pass_at_1_mean": choice.score,
        "temperature_curve": curve([(t, 1.0) for t in choice.temperature_curve]),
        "top_p_curve": curve([(choice.temperature, p) for p in choice.top_p_curve]),
        "grid": {"temperatures": list(grid.get("temperatures") or []), "top_ps": list(grid.get("top_ps") or [])},
        "test_set_tuned": True,
    }


def _ordered_methods(config: dict[str, Any], oracle: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, setting)`` of every method: the known names in :data:`METHOD_ORDER`, then the rest."""
    methods = dict(config.get("methods") or {})
    if ORACLE in methods:
        raise ValueError(
            f"config['methods'] must not contain {ORACLE!r} (got {methods[ORACLE]!r}): the oracle is derived "
            "from config['oracle_grid'] by build_summary"
        )
    for setting in methods.values():
        parse_static_setting(setting)  # raises on an unknown setting key
    if oracle.get("available"):
        methods[ORACLE] = oracle["setting"]
    known = [(name, methods[name]) for name in METHOD_ORDER if name in methods]
    return known + [(name, setting) for name, setting in methods.items() if name not in METHOD_ORDER]


def _settings_summary(config, records, outcomes, num_problems, warnings_list) -> dict[str, Any]:
    """Problems and samples per setting, with the expected budget; warns about incomplete settings."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.setting] = counts.get(record.setting, 0) + 1
    budget = _budget(config)
    settings = {}
    for setting in sorted(outcomes):
        per_problem = 1 if setting == GREEDY else budget
        expected = num_problems * per_problem if per_problem else None
        complete = expected is None or counts[setting] >= expected
        if not complete:
            warnings_list.append(
                f"setting {setting} is incomplete: {counts[setting]} of {expected} samples "
                f"({len(outcomes[setting])} of {num_problems} problems have samples)"
            )
        settings[setting] = {
            "problems": len(outcomes[setting]),
            "samples": counts[setting],
            "expected_samples": expected,
            "complete": complete,
        }
    return settings


def _autodeco_levels(records: list[SampleRecord]) -> dict[str, Any] | None:
    """Token-weighted mean of AutoDeco's per-token T and P over its samples (None without samples)."""
    weighted = [
        (record.temperature_mean, record.top_p_mean, record.num_tokens)
        for record in records
        if record.setting == AUTODECO and record.temperature_mean is not None and record.top_p_mean is not None
        and record.num_tokens > 0
    ]
    if not weighted:
        return None
    tokens = sum(count for _, _, count in weighted)
    return {
        "temperature_mean": sum(t * count for t, _, count in weighted) / tokens,
        "top_p_mean": sum(p * count for _, p, count in weighted) / tokens,
        "tokens": tokens,
        "samples": len(weighted),
    }


def _deduplicate(records: list[SampleRecord]) -> tuple[list[SampleRecord], int]:
    """Records with unique keys (the last of each key wins) and the number of dropped duplicates."""
    unique = {record.key: record for record in records}
    return list(unique.values()), len(records) - len(unique)


def _outcomes_by_setting(records: list[SampleRecord]) -> dict[str, dict[str, dict[int, list[bool]]]]:
    """``setting -> problem -> seed -> outcomes`` in sample order."""
    ordered = sorted(records, key=lambda record: record.key)
    outcomes: dict[str, dict[str, dict[int, list[bool]]]] = {}
    for record in ordered:
        by_seed = outcomes.setdefault(record.setting, {}).setdefault(record.problem_id, {})
        by_seed.setdefault(record.seed, []).append(record.correct)
    return outcomes


def _counts(outcomes: dict[str, dict[int, list[bool]]]) -> dict[str, tuple[int, int]]:
    """``problem -> (samples, correct)`` pooled over seeds."""
    counts = {}
    for problem, by_seed in outcomes.items():
        pooled = [outcome for seed_outcomes in by_seed.values() for outcome in seed_outcomes]
        counts[problem] = (len(pooled), sum(pooled))
    return counts


def _success_rates(outcomes: dict[str, dict[int, list[bool]]]) -> dict[str, float]:
    """``problem -> fraction of its samples that are correct`` (pooled over seeds)."""
    return {problem: correct / total for problem, (total, correct) in _counts(outcomes).items()}


def _budget(config: dict[str, Any]) -> int | None:
    """Samples per problem of a sampled setting (seeds x samples per seed), None if the config lacks them."""
    seeds, per_seed = config.get("seeds"), config.get("samples_per_seed")
    return len(seeds) * per_seed if seeds and per_seed else None


def _table_ks(ks: list[int] | None, n: int) -> list[int]:
    """The Pass@k columns of the table: the largest few k > 1 that the sampled methods reach."""
    candidates = sorted(set(ks)) if ks else default_ks(n)
    return [k for k in candidates if 1 < k <= n][-TABLE_PASS_AT_K_COLUMNS:]


def _json_copy(config: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` through JSON, so the summary stays serialisable."""
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"the evaluation config must be JSON-serialisable (plain dicts, lists, strings, numbers): {error}"
        ) from error


# --------------------------------------------------------------------------
# Markdown


def headline_table(summary: dict[str, Any]) -> str:
    """The paper-style results table in Markdown (also printed by the CLI).

    Columns: method, T, P, Pass@1 mean ± std over seeds (%), Pass@k for a few k (%), and
    AutoDeco minus the method in percentage points with its bootstrap interval; ``*`` marks
    intervals that exclude 0.

    Example:
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> summary = build_summary({"methods": {"greedy": GREEDY}}, [SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)])
        >>> print(headline_table(summary).splitlines()[2])
        | greedy | 0 | – | 100.00 ± 0.00 | – |
    """
    ks = summary["table_ks"]
    confidence = round(100 * summary["bootstrap"]["confidence"])
    header = ["method", "T", "P", "Pass@1 (%)"] + [f"Pass@{k} (%)" for k in ks] + [f"AutoDeco − method, points [{confidence} % CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    levels = summary.get("autodeco") or {}
    for method in summary["methods"]:
        temperature, top_p = _format_operating_point(method, levels)
        pass_at_1 = f"{100 * method['pass_at_1']['mean']:.2f} ± {100 * method['pass_at_1']['std']:.2f}"
        pass_at_k = [_percent(method["pass_at_k"].get(str(k))) for k in ks]
        cells = [_escape(method["label"]), temperature, top_p, pass_at_1, *pass_at_k, _format_difference(method)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The full ``report.md``: header, table, a plain reading of the numbers, oracle curves, figures.

    Args:
        summary: from :func:`build_summary`.
        plots: ``file name -> "written" or "skipped: reason"``; figures are linked only when written.

    Example:
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> summary = build_summary({"methods": {"greedy": GREEDY}}, [SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)])
        >>> "## Reading this" in render_markdown(summary)
        True
    """
    sections = [_header(summary), "## Results", headline_table(summary), _table_notes(summary), "## Reading this", _reading(summary)]
    oracle_section = _oracle_section(summary)
    if oracle_section:
        sections += ["## Oracle search (tuned on the test set)", oracle_section]
    if summary["warnings"]:
        sections += ["## Warnings", "\n".join(f"- {_escape(warning)}" for warning in summary["warnings"])]
    if plots:
        sections += ["## Figures", _figures(plots)]
    return "\n\n".join(sections) + "\n"


def _header(summary: dict[str, Any]) -> str:
    config = summary["config"]
    seeds = config.get("seeds")
    budget = summary["samples_per_problem"]
    samples = (
        f"{budget} ({len(seeds)} seeds × {config['samples_per_seed']} samples per seed); greedy: 1"
        if budget else "unknown (no seeds / samples_per_seed in the config)"
    )
    rows = [
        ("model", config.get("model")),
        ("heads", config.get("heads")),
        ("dataset", config.get("dataset")),
        ("problems", summary["num_problems"]),
        ("samples per problem", samples),
        ("seeds", ", ".join(str(seed) for seed in seeds) if seeds else None),
        ("max new tokens", config.get("max_new_tokens")),
        ("scorer", config.get("scorer")),
        ("MeanShift operating point", config.get("meanshift_source")),
    ]
    table = ["| | |", "|---|---|"] + [f"| {name} | {_escape(str(value))} |" for name, value in rows if value is not None]
    title = f"# AutoDeco evaluation: {_escape(str(config.get('dataset') or 'unnamed dataset'))}"
    return title + "\n\n" + "\n".join(table)


def _table_notes(summary: dict[str, Any]) -> str:
    bootstrap = summary["bootstrap"]
    notes = (
        "Pass@1: mean ± sample std over seeds. Pass@k: unbiased estimator over each problem's pooled samples. "
        "Last column: AutoDeco's minus the method's per-problem success rate, averaged over problems, in "
        f"percentage points; {round(100 * bootstrap['confidence'])} % paired bootstrap interval over problems "
        f"({bootstrap['resamples']} resamples); `*` marks intervals that exclude 0."
    )
    if any(method["name"] == ORACLE for method in summary["methods"]):
        notes += (
            f" The {ORACLE_LABEL} row was chosen by searching the evaluated problems themselves, so it is an "
            "optimistic reference, not a fair competitor."
        )
    return notes


def _reading(summary: dict[str, Any]) -> str:
    """Plain sentences derived from the numbers; claims only what the intervals support."""
    methods = {method["name"]: method for method in summary["methods"]}
    if AUTODECO not in methods:
        return "There are no AutoDeco samples in this run, so nothing is compared with AutoDeco."
    autodeco = methods.pop(AUTODECO)
    seeds = autodeco["num_seeds"]
    spread = f"std {100 * autodeco['pass_at_1']['std']:.2f} over {seeds} seeds" if seeds > 1 else "one seed, so no spread"
    sentences = [f"AutoDeco reaches a Pass@1 of {100 * autodeco['pass_at_1']['mean']:.2f} % ({spread})."]
    by_verdict: dict[str, list[str]] = {BETTER: [], WORSE: [], NO_DIFFERENCE: []}
    for method in methods.values():
        comparison = method["autodeco_minus_method"]
        if comparison is not None:
            by_verdict[comparison["verdict"]].append(f"{method['label']} ({_format_difference(method, star=False)})")
    if by_verdict[BETTER]:
        sentences.append("AutoDeco is significantly better than " + _join(by_verdict[BETTER]) + ".")
    if by_verdict[WORSE]:
        sentences.append("AutoDeco is significantly worse than " + _join(by_verdict[WORSE]) + ".")
    if by_verdict[NO_DIFFERENCE]:
        sentences.append(
            "The differences from " + _join(by_verdict[NO_DIFFERENCE]) + " are not significant: "
            "their intervals contain 0, so these methods cannot be told apart on this evaluation."
        )
    sentences.append(_meanshift_sentence(methods.get("meanshift")))
    if ORACLE in methods:
        oracle = methods[ORACLE]
        gap = 100 * (autodeco["pass_at_1"]["mean"] - oracle["pass_at_1"]["mean"])
        sentences.append(
            f"The oracle's operating point (T = {oracle['temperature']:.2f}, P = {oracle['top_p']:.2f}) was picked "
            f"on these same problems, so its score is biased upwards; AutoDeco is {abs(gap):.2f} points "
            f"{'above' if gap >= 0 else 'below'} it."
        )
    if any(by_verdict.values()):
        problems = autodeco["num_problems"]
        sentences.append(
            f"Intervals resample the {problems} problem{'s' if problems != 1 else ''}; with few problems they are "
            "wide, and a difference that is not significant here is not evidence that the methods are equal."
        )
    return " ".join(sentences)


def _meanshift_sentence(meanshift: dict[str, Any] | None) -> str:
    """What the comparison with MeanShift (the static mean of the heads' predictions) says."""
    if meanshift is None or meanshift["autodeco_minus_method"] is None:
        return (
            "MeanShift was not evaluated, so this run cannot tell whether AutoDeco's result comes from "
            "per-token variation or from a better average operating point."
        )
    verdict = meanshift["autodeco_minus_method"]["verdict"]
    difference = _format_difference(meanshift, star=False)
    if verdict == BETTER:
        return (
            f"AutoDeco beats MeanShift ({difference}): here the per-token variation adds something beyond "
            "the heads' mean operating point."
        )
    if verdict == WORSE:
        return (
            f"MeanShift beats AutoDeco ({difference}): a fixed operating point at the heads' mean does better "
            "than varying T and P per token."
        )
    return (
        f"AutoDeco and MeanShift are not significantly different ({difference}): this evaluation gives no "
        "evidence that per-token variation beats a fixed operating point at the heads' mean."
    )


def _oracle_section(summary: dict[str, Any]) -> str | None:
    oracle = summary["oracle"]
    if not oracle.get("available"):
        return f"Not computed: {_escape(oracle.get('reason', 'unknown reason'))}." if summary["config"].get("oracle_grid") else None
    temperatures = ", ".join(
        f"{point['temperature']:.2f}: {100 * point['pass_at_1_mean']:.2f}" for point in oracle["temperature_curve"]
    )
    top_ps = ", ".join(f"{point['top_p']:.2f}: {100 * point['pass_at_1_mean']:.2f}" for point in oracle["top_p_curve"])
    return (
        f"Step 1, temperature at P = 1.00 (Pass@1 %): {temperatures}. Chosen T = {oracle['temperature']:.2f}.\n\n"
        f"Step 2, top-p at T = {oracle['temperature']:.2f} (Pass@1 %): {top_ps}. Chosen P = {oracle['top_p']:.2f}."
    )


def _figures(plots: dict[str, str]) -> str:
    captions = {
        "methods.png": "Pass@1 by method (error bars: std over seeds)",
        "oracle.png": "Oracle search: Pass@1 vs temperature at P = 1, and vs top-p at the chosen T",
        "pass_at_k.png": "Pass@k vs k",
        "trace.png": "One AutoDeco sample: per-token temperature and top-p",
    }
    lines = []
    for name, status in plots.items():
        caption = captions.get(name, name)
        lines.append(f"![{caption}]({name})" if status == "written" else f"- {name}: {status}")
    return "\n\n".join(lines)


def _format_operating_point(method: dict[str, Any], levels: dict[str, Any]) -> tuple[str, str]:
    if method["kind"] == "greedy":
        return "0", "–"
    if method["kind"] == "autodeco":
        if levels:
            return f"dynamic (mean {levels['temperature_mean']:.2f})", f"dynamic (mean {levels['top_p_mean']:.2f})"
        return "dynamic", "dynamic"
    return f"{method['temperature']:.2f}", f"{method['top_p']:.2f}"


def _format_difference(method: dict[str, Any], *, star: bool = True) -> str:
    comparison = method["autodeco_minus_method"]
    if comparison is None:
        return "–"
    mark = "*" if star and comparison["verdict"] != NO_DIFFERENCE else ""
    points = [100 * comparison[field] + 0.0 for field in ("mean_difference", "low", "high")]  # + 0.0: no "-0.00"
    return f"{points[0]:+.2f} [{points[1]:+.2f}, {points[2]:+.2f}]{mark}"



def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _escape(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------
# Files and figures


class _SkipPlot(Exception):
    """Raised by a figure builder when its data is missing; the message says why."""


def write_report(out_dir: str | os.PathLike[str], summary: dict[str, Any], records: list[SampleRecord]) -> dict[str, Path]:
    """Writes ``summary.json``, ``report.md`` and the four figures, each atomically.

    A figure whose data is missing (no oracle grid, no AutoDeco samples, ...) is skipped;
    ``summary.json`` gets a ``plots`` entry (``name -> "written"`` or ``"skipped: reason"``) and
    ``report.md`` lists the reason instead of the image.

    Args:
        out_dir: folder to write into (created if needed).
        summary: from :func:`build_summary`.
        records: the sample records (the trace figure reads one AutoDeco sample's per-token values).

    Returns:
        ``file name -> path`` of every file written (skipped figures are absent).

    Example:
        >>> import tempfile
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> records = [SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)]
        >>> paths = write_report(tempfile.mkdtemp(), build_summary({"methods": {"greedy": GREEDY}}, records), records)
        >>> sorted(paths)  # greedy alone: one sample per problem, so no Pass@k curve and no oracle
        ['methods.png', 'report.md', 'summary.json']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[], Any]] = {
        "methods.png": lambda: _methods_figure(summary),
        "oracle.png": lambda: _oracle_figure(summary),
        "pass_at_k.png": lambda: _pass_at_k_figure(summary),
        "trace.png": lambda: _trace_figure(records),
    }
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}
    for name, build in builders.items():
        try:
            figure = build()
        except _SkipPlot as reason:
            plots[name] = f"skipped: {reason}"
            continue
        written[name] = write_bytes_atomic(out / name, _png_bytes(figure))
        plots[name] = "written"
    full_summary = dict(summary, plots=plots)
    written["summary.json"] = write_bytes_atomic(out / "summary.json", (json.dumps(full_summary, indent=2) + "\n").encode())
    written["report.md"] = write_bytes_atomic(out / "report.md", render_markdown(full_summary, plots).encode())
    return written


def _methods_figure(summary: dict[str, Any]):
    """Pass@1 bars with std error bars; the oracle bar hatched and labelled as test-set tuned."""
    methods = summary["methods"]
    if not methods:
        raise _SkipPlot("no method has samples")
    figure, axes = _new_figure(1, 1, (max(5.0, 1.1 * len(methods) + 1.5), 4.0))
    axis = axes[0]
    positions = range(len(methods))
    means = [100 * method["pass_at_1"]["mean"] for method in methods]
    stds = [100 * method["pass_at_1"]["std"] for method in methods]
    bars = axis.bar(
        positions, means, yerr=stds, capsize=4, color=[_color(method["name"]) for method in methods], edgecolor="black"
    )
    for bar, method, mean in zip(bars, methods, means):
        if method["name"] == ORACLE:
            bar.set_hatch("//")
            bar.set_alpha(0.6)
        axis.annotate(f"{mean:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    labels = ["oracle\n(test-set tuned)" if method["name"] == ORACLE else _wrap(method["label"]) for method in methods]
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_ylabel("Pass@1 (%)")
    axis.set_title(f"Pass@1 by method ({summary['config'].get('dataset') or 'dataset'}; error bars: std over seeds)", fontsize=9)
    top = max(mean + std for mean, std in zip(means, stds))
    axis.set_ylim(0, max(5.0, 1.15 * top))
    return figure


def _oracle_figure(summary: dict[str, Any]):
    """The paper's Figure 3: Pass@1 along the oracle's two search lines, with reference levels."""
    oracle = summary["oracle"]
    if not oracle.get("available"):
        raise _SkipPlot(oracle.get("reason", "no oracle"))
    figure, axes = _new_figure(1, 2, (10.0, 4.0), sharey=True)
    panels = (
        (axes[0], oracle["temperature_curve"], "temperature", oracle["temperature"], "temperature T (P = 1.00)"),
        (axes[1], oracle["top_p_curve"], "top_p", oracle["top_p"], f"top-p P (T = {oracle['temperature']:.2f})"),
    )
    levels = {method["name"]: method for method in summary["methods"]}
    for axis, curve, field, chosen, xlabel in panels:
        xs = [point[field] for point in curve]
        ys = [100 * point["pass_at_1_mean"] for point in curve]
        errors = [100 * point["pass_at_1_std"] for point in curve]
        axis.errorbar(xs, ys, yerr=errors, marker="o", color=_COLORS[ORACLE], capsize=3, label="static grid")
        best = [100 * point["pass_at_1_mean"] for point in curve if point[field] == chosen]
        axis.scatter([chosen], best, s=120, facecolors="none", edgecolors="black", zorder=5, label="oracle choice")
        for name, style in (("autodeco", "-"), ("meanshift", "--"), ("greedy", ":")):
            if name in levels:
                axis.axhline(100 * levels[name]["pass_at_1"]["mean"], linestyle=style, color=_color(name), label=name)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("Pass@1 (%)")
    axes[1].legend(fontsize=8, loc="best")
    figure.suptitle("Expert-guided oracle search, tuned on the test set", fontsize=10)
    return figure


def _pass_at_k_figure(summary: dict[str, Any]):
    """Pass@k against k (log2 axis), one line per method."""
    curves = [(method, method["pass_at_k"]) for method in summary["methods"] if method["pass_at_k"]]
    if not any(len(curve) > 1 for _, curve in curves):
        raise _SkipPlot("no method has more than one sample per problem")
    figure, axes = _new_figure(1, 1, (6.0, 4.0))
    axis = axes[0]
    all_ks = set()
    for method, curve in curves:
        ks = [int(k) for k in curve]
        all_ks.update(ks)
        style = "--" if method["name"] == ORACLE else "-"
        axis.plot(ks, [100 * value for value in curve.values()], marker="o", linestyle=style,
                  color=_color(method["name"]), label=method["label"])
    axis.set_xscale("log", base=2)
    axis.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    axis.set_xlabel("k (samples)")
    axis.set_ylabel("Pass@k (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def pick_trace_record(records: list[SampleRecord]) -> SampleRecord | None:
    """The AutoDeco sample shown in ``trace.png``: the first correct one (by key) with per-token values.

    Falls back to an incorrect sample when no correct one has per-token values; None when no
    AutoDeco record has them.

    Example:
        >>> from autodeco.evaluation.records import SampleRecord, AUTODECO
        >>> wrong = SampleRecord("a", AUTODECO, 0, 0, "", None, False, 1, temperatures=[0.5], top_ps=[0.9])
        >>> right = SampleRecord("b", AUTODECO, 0, 0, "", "1", True, 1, temperatures=[0.7], top_ps=[0.8])
        >>> pick_trace_record([wrong, right]).problem_id
        'b'
    """
    candidates = [
        record for record in records
        if record.setting == AUTODECO and record.temperatures and record.top_ps
    ]
    return min(candidates, key=lambda record: (not record.correct, record.key)) if candidates else None


def _trace_figure(records: list[SampleRecord]):
    """Per-token T and P of one AutoDeco sample (see :func:`pick_trace_record`)."""
    record = pick_trace_record(records)
    if record is None:
        raise _SkipPlot("no AutoDeco sample with per-token temperatures and top-p values")
    figure, axes = _new_figure(2, 1, (10.0, 5.0), sharex=True)
    positions = list(range(len(record.temperatures)))
    for axis, values, color, name in (
        (axes[0], record.temperatures, _COLORS["autodeco"], "temperature T"),
        (axes[1], record.top_ps, _COLORS["default"], "top-p P"),
    ):
        mean = statistics.fmean(values)
        axis.plot(positions, values, color=color, linewidth=1, marker="." if len(values) <= 200 else None)
        axis.axhline(mean, color="black", linestyle="--", linewidth=0.8, label=f"sample mean {mean:.2f}")
        axis.set_ylabel(name)
        axis.margins(y=0.15)  # room for the token labels
        axis.legend(fontsize=8, loc="best")
    axes[1].set_xlabel("generated token position")
    if record.tokens:
        ranked = sorted(positions, key=lambda index: record.temperatures[index])
        for index in set(ranked[:_TRACE_LABELLED_TOKENS] + ranked[-_TRACE_LABELLED_TOKENS:]):
            axes[0].annotate(repr(record.tokens[index])[1:-1][:12], (index, record.temperatures[index]),
                             xytext=(0, 4), textcoords="offset points", ha="center", fontsize=7)
    for axis in axes:
        axis.grid(alpha=0.3)
    verdict = "correct" if record.correct else "incorrect"
    figure.suptitle(
        f"AutoDeco sample: problem {record.problem_id}, seed {record.seed}, sample {record.sample} ({verdict})",
        fontsize=10,
    )
    return figure


def _new_figure(rows: int, columns: int, size: tuple[float, float], **subplot_options):
    """A Figure on an Agg canvas (pyplot and the user's backend are left alone) and its axes, flat."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False, **subplot_options)
    return figure, [axis for row in axes for axis in row]


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=_PNG_DPI, facecolor="white")
    return buffer.getvalue()


def _color(name: str) -> str:
    return _COLORS.get(name, _OTHER_COLOR)


def _wrap(label: str, width: int = 12) -> str:
    """Breaks a long tick label at spaces."""
    words, lines = label.split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word) + 1 > width:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}".strip()
    return "\n".join(lines)
