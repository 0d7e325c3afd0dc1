"""Honest scoring in the summary: answers cut off at the token limit, and the oracle's selection."""

from __future__ import annotations

import pytest

from autodeco.evaluation.records import AUTODECO, SampleRecord, static_setting
from autodeco.evaluation.summary import (
    ORACLE,
    ORACLE_CROSS_FITTED,
    build_summary,
    is_finished,
    problem_halves,
)
from autodeco.views.report_markdown import headline_table

LIMIT = 32


def _record(problem, setting, correct, *, tokens=10, finished=None, seed=0, sample=0):
    return SampleRecord(problem, setting, seed, sample, "", "1" if correct else None, correct, tokens, finished=finished)


def test_strict_scoring_counts_cut_off_answers_as_wrong():
    setting = static_setting(0.5, 1.0)
    records = [
        _record("a", setting, True, finished=True),
        _record("b", setting, True, tokens=LIMIT, finished=False),  # right by luck in an unfinished text
        _record("c", setting, True, tokens=LIMIT),  # older record: judged by its length
        _record("d", setting, False, tokens=LIMIT, finished=False),
    ]
    config = {"methods": {"mine": setting}, "max_new_tokens": LIMIT, "seeds": [0], "samples_per_seed": 1}
    lenient = build_summary(config, records, bootstrap_resamples=10)
    strict = build_summary({**config, "scoring": "strict"}, records, bootstrap_resamples=10)
    (entry,), (strict_entry,) = lenient["methods"], strict["methods"]
    assert entry["pass_at_1"]["mean"] == pytest.approx(3 / 4)
    assert entry["pass_at_1_other_scoring"]["mean"] == pytest.approx(1 / 4)
    assert strict_entry["pass_at_1"]["mean"] == pytest.approx(1 / 4)
    assert strict_entry["pass_at_1_other_scoring"]["mean"] == pytest.approx(3 / 4)
    assert entry["unfinished_share"] == pytest.approx(3 / 4)
    assert entry["correct_unfinished_share"] == pytest.approx(2 / 4)
    assert strict["scoring"] == "strict" and "Pass@1 (%, strict)" in headline_table(strict)
    with pytest.raises(ValueError, match="unknown scoring 'harsh'"):
        build_summary({**config, "scoring": "harsh"}, records)


def test_is_finished_prefers_the_recorded_flag():
    assert is_finished(_record("a", AUTODECO, True, tokens=LIMIT, finished=True), LIMIT)
    assert not is_finished(_record("a", AUTODECO, True, tokens=3, finished=False), LIMIT)
    assert is_finished(_record("a", AUTODECO, True, tokens=LIMIT - 1), LIMIT)
    assert is_finished(_record("a", AUTODECO, True, tokens=LIMIT), None)


def test_problem_halves_are_stable_and_disjoint():
    ids = [f"q{index}" for index in range(200)]
    first, second = problem_halves(ids)
    assert set(first) | set(second) == set(ids) and not set(first) & set(second)
    assert problem_halves(list(reversed(ids))) == (first, second)
    assert 70 < len(first) < 130


def test_cross_fitted_oracle_scores_each_half_with_the_other_halfs_choice():
    ids = [f"q{index}" for index in range(40)]
    first, second = problem_halves(ids)
    low, high = static_setting(0.2, 1.0), static_setting(1.0, 1.0)
    # low is right on the first half only, high on the second half only: the in-sample oracle looks perfect on
    # whichever it picks for its half, but a setting chosen on one half is scored on the other, where it fails.
    records = []
    for problem in ids:
        records.append(_record(problem, low, problem in first))
        records.append(_record(problem, high, problem in second))
        records.append(_record(problem, AUTODECO, True))
    config = {
        "methods": {"autodeco": AUTODECO}, "oracle_grid": {"temperatures": [0.2, 1.0], "top_ps": [1.0]},
        "seeds": [0], "samples_per_seed": 1, "max_new_tokens": LIMIT,
    }
    summary = build_summary(config, records, bootstrap_resamples=200)
    methods = {method["name"]: method for method in summary["methods"]}
    assert methods[ORACLE]["selection_ignored"] and not methods[ORACLE_CROSS_FITTED]["selection_ignored"]
    in_sample = max(len(first), len(second)) / len(ids)
    assert methods[ORACLE]["pass_at_1"]["mean"] == pytest.approx(in_sample)
    assert methods[ORACLE_CROSS_FITTED]["pass_at_1"]["mean"] == pytest.approx(0.0)
    assert summary["oracle"]["cross_fitted"]["settings"] == [low, high]
    assert methods[ORACLE_CROSS_FITTED]["autodeco_minus_method"]["mean_difference"] == pytest.approx(1.0)
    table = headline_table(summary)
    assert "per half: T=0.20,P=1.00 / T=1.00,P=1.00" in table


def test_the_table_shows_each_methods_static_values_and_what_is_dynamic():
    from autodeco.sampling.settings import DecodingSetting

    settings = {
        "min-p": DecodingSetting.min_p(0.7, 0.1).key,
        "temperature-head": DecodingSetting.temperature_head(1.0).key,
        "top-p-head": DecodingSetting.top_p_head(0.53).key,
        "confidence-gated": DecodingSetting.confidence_gated(0.7, 0.7).key,
        "edt": DecodingSetting.edt(0.5, 0.8, 1.0).key,
    }
    records = [_record(problem, setting, problem == "a") for problem in ("a", "b") for setting in settings.values()]
    summary = build_summary({"methods": settings, "max_new_tokens": LIMIT}, records, bootstrap_resamples=10)
    rows = {line.split(" |")[0].lstrip("| ").split(" (")[0]: line for line in headline_table(summary).splitlines()[2:]}
    assert "| 0.70 | min-p | 50.00" in rows["min-p"]
    assert "| dynamic | 1.00 | 50.00" in rows["temperature-head"]
    assert "| 0.53 | dynamic | 50.00" in rows["top-p-head"]
    assert "| 0 or 0.70 | 1.00 | 50.00" in rows["confidence-gated"]
    assert "| dynamic | 1.00 | 50.00" in rows["edt"]
