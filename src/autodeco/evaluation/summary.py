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
import hashlib
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
from autodeco.sampling.settings import STATIC, DecodingSetting

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

ORACLE_CROSS_FITTED = "oracle-cross-fitted"
"""Method name of the oracle scored honestly: each half of the problems gets the setting chosen on the other half."""

ORACLE_CROSS_FITTED_LABEL = "oracle, cross-fitted (chosen on the other half)"
"""How the cross-fitted oracle is labelled."""

LENIENT, STRICT = "lenient", "strict"
"""Scoring of an answer cut off at the token limit: ``lenient`` scores whatever answer it holds (the paper's
practice), ``strict`` counts it as wrong."""

SCORINGS = (LENIENT, STRICT)

METHOD_ORDER = ("greedy", "default", "autodeco", "meanshift", ORACLE, ORACLE_CROSS_FITTED)
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
    scoring = config.get("scoring") or LENIENT
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}")
    limit = config.get("max_new_tokens")
    strict_records = [strictly_scored(record, limit) for record in records]
    lenient_outcomes, strict_outcomes = outcomes_by_setting(records), outcomes_by_setting(strict_records)
    outcomes = strict_outcomes if scoring == STRICT else lenient_outcomes
    problems = sorted({record.problem_id for record in records})
    num_problems = config.get("num_problems") or len(problems)
    settings = _settings_summary(config, records, outcomes, num_problems, warnings_list)

    autodeco_rates = _success_rates(outcomes[AUTODECO]) if AUTODECO in outcomes else None
    by_setting: dict[str, list[SampleRecord]] = {}
    for record in records:
        by_setting.setdefault(record.setting, []).append(record)
    alternative = lenient_outcomes if scoring == STRICT else strict_outcomes
    context = _MethodContext(outcomes, by_setting, ks, autodeco_rates, bootstrap_resamples, warnings_list,
                             alternative, limit)
    oracle = _oracle_summary(config, outcomes, warnings_list)
    cross_fitted = (
        _cross_fitted_oracle(config, outcomes, alternative, by_setting, warnings_list) if oracle.get("available") else None
    )
    if cross_fitted is not None:
        oracle["cross_fitted"] = cross_fitted.pop("description")
        for setting_outcomes, name in ((outcomes, ORACLE_CROSS_FITTED), (alternative, ORACLE_CROSS_FITTED)):
            setting_outcomes[name] = cross_fitted["outcomes" if setting_outcomes is outcomes else "alternative"]
        by_setting[ORACLE_CROSS_FITTED] = cross_fitted["records"]

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
        "scoring": scoring,
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
    alternative_outcomes: dict[str, dict[str, dict[int, list[bool]]]]
    """The outcomes under the other scoring (strict when the table is lenient, and the reverse)."""
    max_new_tokens: int | None


def _method_entry(name: str, setting: str, context: _MethodContext) -> dict[str, Any]:
    """One row of the table: Pass@1 over seeds, Pass@k, length, and AutoDeco minus this method."""
    outcomes = context.outcomes[setting]
    per_seed = pass_at_1_by_seed(outcomes)
    mean, std = mean_and_std(list(per_seed.values()))
    counts = _counts(outcomes)
    n = min(total for total, _ in counts.values())
    ks = [k for k in context.ks if k <= n] if context.ks else default_ks(n)
    records = context.records_by_setting[setting]
    other_mean, other_std = mean_and_std(list(pass_at_1_by_seed(context.alternative_outcomes[setting]).values()))
    unfinished = [not is_finished(record, context.max_new_tokens) for record in records]
    return {
        "name": name,
        "label": {ORACLE: ORACLE_LABEL, ORACLE_CROSS_FITTED: ORACLE_CROSS_FITTED_LABEL}.get(name, name),
        "setting": setting,
        **_operating_point(name, setting, records),
        "pass_at_1": {"mean": mean, "std": std, "per_seed": {str(seed): value for seed, value in per_seed.items()}},
        "pass_at_1_other_scoring": {"mean": other_mean, "std": other_std},
        "unfinished_share": sum(unfinished) / len(unfinished),
        "correct_unfinished_share": sum(
            flag and record.correct for flag, record in zip(unfinished, records)) / len(records),
        "num_seeds": len(per_seed),
        "num_problems": len(counts),
        "samples_per_problem": n,
        "pass_at_k": {str(k): value for k, value in pass_at_k_curve(counts, ks).items()} if ks else {},
        "mean_tokens": statistics.fmean(record.num_tokens for record in records),
        "autodeco_minus_method": _comparison(name, setting, outcomes, context),
        "test_set_tuned": name == ORACLE,
        "selection_ignored": name == ORACLE,
    }


def _operating_point(name: str, setting: str, records: list[SampleRecord]) -> dict[str, Any]:
    """``kind``, ``temperature``, ``top_p`` (static values, else None) and ``parameters`` of a method's setting."""
    if name == ORACLE_CROSS_FITTED:
        return {"kind": "static", "temperature": None, "top_p": None, "parameters": {}}
    decoding = DecodingSetting.from_key(setting)
    static = decoding.kind == STATIC
    return {
        "kind": decoding.kind,
        "temperature": decoding.temperature if static else None,
        "top_p": decoding.top_p if static else None,
        "parameters": dict(getattr(decoding, "params", ()) or ()),
    }


def is_finished(record: SampleRecord, max_new_tokens: int | None) -> bool:
    """Whether the answer ended by itself rather than at the token limit (older records: judged by their length).

    Example:
        >>> from autodeco.evaluation.records import SampleRecord, GREEDY
        >>> is_finished(SampleRecord("p", GREEDY, 0, 0, "1 + 1 = 2", "2", True, 32), 32)
        False
        >>> is_finished(SampleRecord("p", GREEDY, 0, 0, "2", "2", True, 32, finished=True), 32)
        True
    """
    if record.finished is not None:
        return record.finished
    return max_new_tokens is None or record.num_tokens < max_new_tokens


def strictly_scored(record: SampleRecord, max_new_tokens: int | None) -> SampleRecord:
    """The record under strict scoring: an answer cut off at the token limit counts as wrong."""
    if record.correct and not is_finished(record, max_new_tokens):
        return dataclasses.replace(record, correct=False)
    return record


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


def problem_halves(problem_ids) -> tuple[list[str], list[str]]:
    """Split problems into two halves by a hash of their id (stable across runs and machines).

    Example:
        >>> first, second = problem_halves([f"p{index}" for index in range(100)])
        >>> len(first) + len(second), 35 < len(first) < 65
        (100, True)
    """
    halves: tuple[list[str], list[str]] = ([], [])
    for problem_id in sorted(problem_ids):
        halves[hashlib.sha256(problem_id.encode()).digest()[0] % 2].append(problem_id)
    return halves


def _cross_fitted_oracle(config, outcomes, alternative, by_setting, warnings_list) -> dict[str, Any] | None:
    """The oracle without its selection bias: two-fold cross-fitting over the problems.

    The best of the oracle's evaluated static settings (both search steps) is chosen on one half of the
    problems by mean Pass@1 and scored on the other half, and the reverse; each problem is scored only by a
    setting chosen without it. The menu of settings is the one the full search produced (step 2 ran at the
    temperature chosen on all problems), a small leak that the description states.
    """
    grid = config["oracle_grid"]
    menu = [
        setting for setting in outcomes
        if (point := parse_static_setting(setting)) is not None
        and (point[1] == 1.0 and point[0] in grid["temperatures"] or point[1] in grid["top_ps"])
    ]
    problems = set().union(*(outcomes[setting].keys() for setting in menu)) if menu else set()
    halves = problem_halves(problems)
    if not menu or min(len(half) for half in halves) == 0:
        warnings_list.append("cross-fitted oracle not computed: fewer than two problems with oracle samples")
        return None
    chosen, scored, extra, records = [], {}, {}, []
    rates = {setting: _success_rates(outcomes[setting]) for setting in menu}  # setting -> problem -> rate
    for choose_on, score_on in ((halves[0], set(halves[1])), (halves[1], set(halves[0]))):

        def mean_on(setting, problems=choose_on):
            values = [rates[setting][problem] for problem in problems if problem in rates[setting]]
            return sum(values) / len(values) if values else float("-inf")

        best = max(menu, key=lambda setting: (mean_on(setting), setting))
        chosen.append(best)
        for problem in score_on & outcomes[best].keys():
            scored[problem] = outcomes[best][problem]
            extra[problem] = alternative[best][problem]
        records += [record for record in by_setting[best] if record.problem_id in score_on]
    description = {
        "settings": chosen,
        "halves": [len(half) for half in halves],
        "menu": len(menu),
        "note": (
            "each half of the problems is scored with the static setting that had the best mean Pass@1 on the other "
            "half, among the oracle's evaluated settings; step 2's top-p grid ran at the temperature chosen on all "
            "problems, so the menu itself saw every problem"
        ),
    }
    return {"outcomes": scored, "alternative": extra, "records": records, "description": description}


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
        if oracle.get("cross_fitted"):
            methods[ORACLE_CROSS_FITTED] = ORACLE_CROSS_FITTED
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

