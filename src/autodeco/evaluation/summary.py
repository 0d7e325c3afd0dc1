"""The evaluation summary: every method's scores, the oracle and the comparisons, as one JSON-ready dict.

:func:`build_summary` turns the run's config and its sample records into one dict: per method
(greedy, default, AutoDeco, MeanShift, the test-set-tuned oracle, user statics) Pass@1 mean ± std
over seeds, Pass@k, mean length, and the paired-bootstrap difference AutoDeco minus that method.
Scores are fractions in [0, 1]. The views layer renders it (:mod:`autodeco.views.report`:
``summary.json``, ``report.md`` and figures).

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
import json
import statistics
from typing import Any

from autodeco.evaluation.metrics import (
    BOOTSTRAP_CONFIDENCE,
    BOOTSTRAP_RESAMPLES,
    default_ks,
    mean_and_std,
    oracle_from_outcomes,
    paired_bootstrap,
    pass_at_1_by_seed,
    pass_at_k_curve,
)
from autodeco.evaluation.records import AUTODECO, GREEDY, SampleRecord, parse_static_setting, static_setting

__all__ = [
    "BETTER",
    "NO_DIFFERENCE",
    "ORACLE",
    "ORACLE_LABEL",
    "WORSE",
    "build_summary",
    "outcomes_by_setting",
    "pick_trace_record",
    "static_outcomes",
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
    outcomes = outcomes_by_setting(records)
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
    try:
        choice, levels = oracle_from_outcomes(
            static_outcomes(outcomes), grid.get("temperatures") or [], grid.get("top_ps") or []
        )
    except ValueError as error:
        warnings_list.append(f"oracle not computed: {error}")
        return {"available": False, "reason": str(error), "test_set_tuned": True}

    def curve(points: list[tuple[float, float]]) -> list[dict[str, Any]]:
        return [
            {"temperature": t, "top_p": p, "setting": static_setting(t, p),
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


def outcomes_by_setting(records: list[SampleRecord]) -> dict[str, dict[str, dict[int, list[bool]]]]:
    """``setting -> problem -> seed -> outcomes`` in sample order.

    Example:
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> outcomes_by_setting([SampleRecord("p", GREEDY, 0, 0, "", None, True, 1)])
        {'greedy': {'p': {0: [True]}}}
    """
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


def static_outcomes(
    outcomes: dict[str, dict[str, dict[int, list[bool]]]],
) -> dict[tuple[float, float], dict[str, dict[int, list[bool]]]]:
    """The outcomes of the static settings (see :func:`outcomes_by_setting`), keyed by their ``(T, P)``.

    Example:
        >>> sorted(static_outcomes({"greedy": {}, "T=0.50,P=1.00": {"p": {0: [True]}}}))
        [(0.5, 1.0)]
    """
    points = {}
    for setting, by_problem in outcomes.items():
        static = parse_static_setting(setting)
        if static is not None:
            points[static] = by_problem
    return points


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

