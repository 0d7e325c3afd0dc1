"""Tests for autodeco.evaluation.records (the samples.jsonl schema) and the report (autodeco.evaluation.summary, autodeco.views.report)."""

from __future__ import annotations

import json
import warnings

import pytest

from autodeco.evaluation.records import (
    AUTODECO,
    GREEDY,
    RecordWriter,
    SampleRecord,
    parse_static_setting,
    read_records,
    static_setting,
)
from autodeco.evaluation.summary import ORACLE, ORACLE_CROSS_FITTED, ORACLE_LABEL, build_summary, pick_trace_record
from autodeco.views.report import write_report
from autodeco.views.report_markdown import headline_table, render_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --------------------------------------------------------------------------
# records


def test_static_setting_keys_round_trip():
    assert static_setting(0.7, 1.0) == "T=0.70,P=1.00"
    assert static_setting(0.8312, 0.9071) == "T=0.83,P=0.91"
    assert parse_static_setting("T=0.83,P=0.91") == (0.83, 0.91)
    assert parse_static_setting(GREEDY) is None
    assert parse_static_setting(AUTODECO) is None


@pytest.mark.parametrize(("temperature", "top_p", "message"), [
    (0.0, 1.0, "temperature.*got 0.0.*greedy"),
    (0.004, 1.0, "temperature"),
    (float("nan"), 1.0, "temperature"),
    (1.0, 1.2, "top_p.*got 1.2"),
    (1.0, 0.0, "top_p"),
])
def test_static_setting_validates(temperature, top_p, message):
    with pytest.raises(ValueError, match=message):
        static_setting(temperature, top_p)


@pytest.mark.parametrize("key", ["T=0.7,P=1.0", "sampling", "T=0.70, P=1.00", ""])
def test_parse_static_setting_rejects_unknown_keys(key):
    with pytest.raises(ValueError, match="unknown setting"):
        parse_static_setting(key)


def _autodeco_record(**overrides) -> SampleRecord:
    fields = {
        "problem_id": "p/1", "setting": AUTODECO, "seed": 3, "sample": 2, "text": "x = 4\n\\boxed{4} ✓", "extracted": "4",
        "correct": True, "num_tokens": 3, "temperature_mean": 0.6, "temperature_std": 0.1, "top_p_mean": 0.8, "top_p_std": 0.05,
        "temperatures": [0.5, 0.6, 0.7], "top_ps": [0.75, 0.8, 0.85], "tokens": ["x", " =", " 4"],
    }
    fields.update(overrides)
    return SampleRecord(**fields)


def test_sample_record_round_trips_through_one_json_line():
    record = _autodeco_record()
    line = record.to_json()
    assert "\n" not in line
    assert SampleRecord.from_dict(json.loads(line)) == record
    assert record.key == ("p/1", AUTODECO, 3, 2)


def test_sample_record_from_dict_names_missing_fields_and_ignores_unknown_ones():
    data = json.loads(_autodeco_record().to_json())
    data["written_by"] = "a newer runner"
    assert SampleRecord.from_dict(data) == _autodeco_record()
    del data["correct"], data["num_tokens"]
    with pytest.raises(ValueError, match=r"lacks the field\(s\) \['correct', 'num_tokens'\]"):
        SampleRecord.from_dict(data)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"setting": "hot"}, "unknown setting 'hot'"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"correct": 1}, "correct must be True or False"),
    ({"tokens": ["x"]}, "one entry per token"),
])
def test_sample_record_validates(overrides, message):
    with pytest.raises(ValueError, match=message):
        _autodeco_record(**overrides)


def _greedy(problem: str, correct: bool = True) -> SampleRecord:
    return SampleRecord(problem, GREEDY, 0, 0, "answer", "1" if correct else None, correct, 4)


def test_writer_appends_batches_and_reader_reads_them_back(tmp_path):
    path = tmp_path / "run" / "samples.jsonl"
    first = [_greedy("a"), _greedy("b", False)]
    with RecordWriter(path) as writer:
        writer.write_many(first)
    with RecordWriter(path) as writer:  # a resumed run appends
        writer.write(_autodeco_record())
    assert read_records(path) == first + [_autodeco_record()]
    assert path.read_text().count("\n") == 3


def test_reader_ignores_a_truncated_last_line_and_writer_repairs_it(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = [_greedy("a"), _greedy("b")]
    partial = _autodeco_record().to_json()[:37]
    path.write_text("".join(record.to_json() + "\n" for record in good) + partial, encoding="utf-8")
    with pytest.warns(UserWarning, match="ignoring unreadable last line 3"):
        assert read_records(path) == good
    with pytest.warns(UserWarning, match="removing unreadable last line"):
        writer = RecordWriter(path)
    with writer:
        writer.write_many([_greedy("c")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repaired file reads without any warning
        assert read_records(path) == good + [_greedy("c")]


def test_writer_ends_a_complete_last_line_without_newline(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(_greedy("a").to_json(), encoding="utf-8")
    with RecordWriter(path) as writer:
        writer.write(_greedy("b"))
    assert read_records(path) == [_greedy("a"), _greedy("b")]


def test_reader_rejects_a_corrupt_line_before_the_last(tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = [_greedy("a").to_json(), '{"problem_id": "b", "setting"', _greedy("c").to_json()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"samples\.jsonl line 2 is not a valid sample record"):
        read_records(path)


# --------------------------------------------------------------------------
# build_summary on synthetic records with hand-checked numbers

DEFAULT = "T=1.00,P=1.00"
MEANSHIFT = "T=0.80,P=0.90"
T05_P10 = "T=0.50,P=1.00"
T05_P05 = "T=0.50,P=0.50"
OFF_PATH = "T=1.00,P=0.50"

# setting -> problem -> (seed 0 outcomes, seed 1 outcomes); 3 problems, 2 seeds x 2 samples
OUTCOMES = {
    DEFAULT: {"p0": ("TF", "FF"), "p1": ("TT", "TF"), "p2": ("FF", "FF")},  # rates 1/4, 3/4, 0
    AUTODECO: {"p0": ("TT", "TT"), "p1": ("TT", "TF"), "p2": ("TF", "FF")},  # rates 1, 3/4, 1/4
    MEANSHIFT: {"p0": ("FF", "FF"), "p1": ("FF", "FF"), "p2": ("FF", "FF")},  # rates 0, 0, 0
    T05_P10: {"p0": ("TF", "FT"), "p1": ("TT", "TT"), "p2": ("TF", "TF")},  # 2/3: best at P = 1
    T05_P05: {"p0": ("TT", "TT"), "p1": ("TT", "TT"), "p2": ("TF", "TF")},  # 5/6: the oracle
    OFF_PATH: {"p0": ("TT", "TT"), "p1": ("TT", "TT"), "p2": ("TT", "TT")},  # best, but never searched
}
GREEDY_OUTCOMES = {"p0": True, "p1": True, "p2": False}

CONFIG = {
    "model": "embedded:SmolLM2-135M-Instruct",
    "heads": "runs/heads (400 steps)",
    "dataset": "arithmetic (test split)",
    "num_problems": 3,
    "seeds": [0, 1],
    "samples_per_seed": 2,
    "max_new_tokens": 96,
    "scorer": "math-verify",
    # scrambled on purpose: the summary orders greedy, default, autodeco, meanshift, oracle, then the rest
    "methods": {"static T=0.5": T05_P10, "autodeco": AUTODECO, "meanshift": MEANSHIFT, "greedy": GREEDY, "default": DEFAULT},
    "oracle_grid": {"temperatures": [0.5, 1.0], "top_ps": [0.5, 1.0]},
    "meanshift_source": "teacher-forced means over 12 held-out trajectories",
}


def _synthetic_records() -> list[SampleRecord]:
    records = [_greedy(problem, correct) for problem, correct in GREEDY_OUTCOMES.items()]
    for setting, by_problem in OUTCOMES.items():
        static = parse_static_setting(setting)
        for problem, seeds in by_problem.items():
            for seed, outcomes in enumerate(seeds):
                for sample, letter in enumerate(outcomes):
                    extra = {}
                    if setting == AUTODECO:  # sample 0: 10 tokens at T 0.6 / P 0.9, sample 1: 30 tokens at 1.0 / 0.7
                        tokens = 10 if sample == 0 else 30
                        temperature, top_p = (0.6, 0.9) if sample == 0 else (1.0, 0.7)
                        extra = {
                            "temperature_mean": temperature, "top_p_mean": top_p, "temperatures": [temperature] * tokens,
                            "top_ps": [top_p] * tokens, "tokens": ["t"] * tokens,
                        }
                    elif static:
                        tokens = 8
                        extra = {"temperature_mean": static[0], "temperature_std": 0.0,
                                 "top_p_mean": static[1], "top_p_std": 0.0}
                    records.append(SampleRecord(problem, setting, seed, sample, "text", None, letter == "T",
                                                tokens, **extra))
    return records


@pytest.fixture(scope="module")
def summary():
    return build_summary(CONFIG, _synthetic_records())


def _method(summary, name):
    return next(method for method in summary["methods"] if method["name"] == name)


def test_summary_orders_methods_and_adds_the_oracle(summary):
    assert [method["name"] for method in summary["methods"]] == [
        "greedy", "default", "autodeco", "meanshift", ORACLE, ORACLE_CROSS_FITTED, "static T=0.5"
    ]
    oracle = _method(summary, ORACLE)
    assert oracle["label"] == ORACLE_LABEL and oracle["test_set_tuned"] is True
    assert not any(method["test_set_tuned"] for method in summary["methods"] if method["name"] != ORACLE)
    assert json.loads(json.dumps(summary)) == summary  # plain JSON, string keys


def test_summary_pass_at_1_and_pass_at_k_by_hand(summary):
    default = _method(summary, "default")
    assert default["setting"] == DEFAULT and (default["temperature"], default["top_p"]) == (1.0, 1.0)
    # seed 0: (1/2 + 1 + 0) / 3 = 1/2; seed 1: (0 + 1/2 + 0) / 3 = 1/6
    assert default["pass_at_1"]["per_seed"] == pytest.approx({"0": 1 / 2, "1": 1 / 6})
    assert default["pass_at_1"]["mean"] == pytest.approx(1 / 3)
    assert default["pass_at_1"]["std"] == pytest.approx((1 / 3) / 2**0.5)
    assert default["samples_per_problem"] == 4
    # pass@2: p0 1 - C(3,2)/C(4,2) = 1/2, p1 1, p2 0; pass@4: 1, 1, 0
    assert default["pass_at_k"] == pytest.approx({"1": 1 / 3, "2": 1 / 2, "4": 2 / 3})
    assert default["mean_tokens"] == 8
    greedy = _method(summary, "greedy")
    assert greedy["pass_at_1"] == {"mean": pytest.approx(2 / 3), "std": 0.0, "per_seed": {"0": pytest.approx(2 / 3)}}
    assert greedy["samples_per_problem"] == 1 and greedy["temperature"] is None
    assert summary["table_ks"] == [2, 4]


def test_summary_autodeco_levels_are_token_weighted(summary):
    autodeco = _method(summary, "autodeco")
    assert autodeco["pass_at_1"]["mean"] == pytest.approx(2 / 3)  # seeds 5/6 and 1/2
    assert autodeco["temperature"] is None and autodeco["autodeco_minus_method"] is None
    assert autodeco["mean_tokens"] == 20
    # (6 samples x 10 tokens x 0.6 + 6 x 30 x 1.0) / 240 = 0.9; top-p (6 x 10 x 0.9 + 6 x 30 x 0.7) / 240 = 0.75
    assert summary["autodeco"]["temperature_mean"] == pytest.approx(0.9)
    assert summary["autodeco"]["top_p_mean"] == pytest.approx(0.75)


def test_summary_bootstrap_verdicts(summary):
    versus = {method["name"]: method["autodeco_minus_method"] for method in summary["methods"]}
    # per-problem AutoDeco - MeanShift = 1, 3/4, 1/4: every resample is positive
    assert versus["meanshift"]["mean_difference"] == pytest.approx(2 / 3)
    assert versus["meanshift"]["low"] >= 0.25 and versus["meanshift"]["verdict"] == "AutoDeco better"
    # AutoDeco - default = 3/4, 0, 1/4: all-p1 resamples (1/27 > 2.5 %) have mean 0, so the CI touches 0
    assert versus["default"]["mean_difference"] == pytest.approx(1 / 3)
    assert versus["default"]["low"] == 0.0 and versus["default"]["verdict"] == "no significant difference"
    # AutoDeco - greedy = 0, -1/4, +1/4
    assert versus["greedy"]["mean_difference"] == pytest.approx(0.0)
    assert versus["greedy"]["verdict"] == "no significant difference"
    # AutoDeco - oracle = 0, -1/4, -1/4
    assert versus[ORACLE]["mean_difference"] == pytest.approx(-1 / 6)
    assert versus[ORACLE]["high"] == 0.0 and versus[ORACLE]["verdict"] == "no significant difference"
    assert versus["meanshift"]["num_problems"] == 3 and versus["meanshift"]["resamples"] == 10_000


def test_summary_oracle_follows_the_two_step_search(summary):
    oracle = summary["oracle"]
    assert oracle["available"] and oracle["test_set_tuned"]
    assert (oracle["temperature"], oracle["top_p"], oracle["setting"]) == (0.5, 0.5, T05_P05)  # not OFF_PATH
    assert [(p["temperature"], p["pass_at_1_mean"]) for p in oracle["temperature_curve"]] == [
        (0.5, pytest.approx(2 / 3)), (1.0, pytest.approx(1 / 3))
    ]
    assert [(p["top_p"], p["pass_at_1_mean"]) for p in oracle["top_p_curve"]] == [
        (0.5, pytest.approx(5 / 6)), (1.0, pytest.approx(2 / 3))
    ]
    assert oracle["temperature_curve"][0]["pass_at_1_std"] == pytest.approx(0.0)
    assert _method(summary, ORACLE)["pass_at_1"]["mean"] == pytest.approx(5 / 6)


def test_summary_counts_settings_and_has_no_warnings_when_complete(summary):
    assert summary["warnings"] == []
    assert summary["samples_per_problem"] == 4
    assert summary["settings"][GREEDY] == {"problems": 3, "samples": 3, "expected_samples": 3, "complete": True}
    assert summary["settings"][DEFAULT] == {"problems": 3, "samples": 12, "expected_samples": 12, "complete": True}
    assert set(summary["settings"]) == {GREEDY, *OUTCOMES}


def test_summary_warns_about_incomplete_settings_duplicates_and_a_missing_oracle_point():
    records = _synthetic_records()
    records = [r for r in records if not (r.setting == DEFAULT and r.problem_id == "p2" and r.seed == 1)]
    records.append(records[0])  # a duplicate greedy record
    records = [r for r in records if r.setting != T05_P05]  # step 2 of the oracle cannot run
    summary = build_summary(CONFIG, records, bootstrap_resamples=200)
    text = " ".join(summary["warnings"])
    assert "setting T=1.00,P=1.00 is incomplete: 10 of 12 samples" in text
    assert "1 duplicate record" in text
    assert "oracle not computed" in text and "(T=0.50, P=0.50)" in text
    assert summary["settings"][DEFAULT]["complete"] is False
    assert summary["oracle"]["available"] is False
    assert ORACLE not in [method["name"] for method in summary["methods"]]
    assert _method(summary, "default")["samples_per_problem"] == 2  # p2 has only seed 0 left


def test_summary_rejects_bad_configs():
    records = [_greedy("a")]
    with pytest.raises(ValueError, match="must not contain 'oracle'"):
        build_summary({"methods": {ORACLE: DEFAULT}}, records)
    with pytest.raises(ValueError, match="unknown setting 'hot'"):
        build_summary({"methods": {"mine": "hot"}}, records)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        build_summary({"methods": {}, "model": object()}, records)


# --------------------------------------------------------------------------
# Markdown and files


def test_headline_table_has_every_method_and_marks_significance(summary):
    table = headline_table(summary)
    lines = table.splitlines()
    assert len(lines) == 2 + len(summary["methods"])
    assert lines[0].startswith(
        "| method | T | P | Pass@1 (%, lenient) | Pass@1 strict (%) | cut off (%) | Pass@2 (%) | Pass@4 (%) |"
    )
    meanshift_row = next(line for line in lines if line.startswith("| meanshift |"))
    assert "0.80 | 0.90 | 0.00 ± 0.00" in meanshift_row and meanshift_row.rstrip(" |").endswith("*")
    default_row = next(line for line in lines if line.startswith("| default |"))
    assert "33.33 ± 23.57 | 33.33 | 0.0 | 50.00 | 66.67 | +33.33 [+0.00," in default_row and "*" not in default_row
    oracle_row = next(line for line in lines if line.startswith(f"| {ORACLE_LABEL} † | 0.50 | 0.50 | 83.33 ± 0.00 |"))
    assert "*" not in oracle_row  # its interval ignores the selection: never starred
    assert "| autodeco | dynamic (mean 0.90) | dynamic (mean 0.75) |" in table
    assert "| greedy | 0 | – | 66.67 ± 0.00 | 66.67 | 0.0 | – | – |" in table


def test_reading_claims_only_what_the_intervals_support(summary):
    markdown = render_markdown(summary)
    reading = markdown.split("## Reading this")[1].split("##")[0]
    assert "significantly better than meanshift" in reading
    assert "AutoDeco beats MeanShift" in reading
    assert "significantly worse" not in reading
    assert "The differences from greedy" in reading and "default" in reading and "are not significant" in reading
    assert "biased upwards" in reading


def test_write_report_writes_every_file(tmp_path, summary):
    records = _synthetic_records()
    paths = write_report(tmp_path / "report", summary, records)
    assert set(paths) == {"summary.json", "report.md", "methods.png", "differences.png", "oracle.png", "pass_at_k.png",
                          "trace.png"}
    for name in ("methods.png", "differences.png", "oracle.png", "pass_at_k.png", "trace.png"):
        assert paths[name].read_bytes()[:8] == PNG_SIGNATURE, name
    report = paths["report.md"].read_text(encoding="utf-8")
    assert ORACLE_LABEL in report
    for method in summary["methods"]:
        assert f"| {method['label']}" in report
    for header in ("embedded:SmolLM2-135M-Instruct", "| problems | 3 |", "4 (2 seeds × 2 samples per seed)",
                   "| max new tokens | 96 |", "| scorer | math-verify |"):
        assert header in report
    assert "![" in report and "(trace.png)" in report
    written = json.loads(paths["summary.json"].read_text())
    assert written["plots"] == dict.fromkeys(["methods.png", "differences.png", "oracle.png", "pass_at_k.png", "trace.png"], "written")
    assert not [path for path in (tmp_path / "report").iterdir() if path.name.endswith(".tmp")]


def test_write_report_skips_plots_without_data(tmp_path):
    records = [r for r in _synthetic_records() if r.setting in (GREEDY, DEFAULT)]
    config = dict(CONFIG, methods={"greedy": GREEDY, "default": DEFAULT}, oracle_grid=None)
    summary = build_summary(config, records, bootstrap_resamples=100)
    paths = write_report(tmp_path, summary, records)
    assert set(paths) == {"summary.json", "report.md", "methods.png", "pass_at_k.png"}
    plots = json.loads(paths["summary.json"].read_text())["plots"]
    assert plots["oracle.png"] == "skipped: no oracle grid in the config"
    assert plots["trace.png"].startswith("skipped: no AutoDeco sample")
    report = paths["report.md"].read_text(encoding="utf-8")
    assert "- trace.png: skipped" in report and "(oracle.png)" not in report
    assert "There are no AutoDeco samples" in report


def test_pick_trace_record_prefers_a_correct_sample_with_per_token_values():
    wrong = _autodeco_record(problem_id="a", correct=False)
    right = _autodeco_record(problem_id="b")
    bare = _autodeco_record(problem_id="0", temperatures=None, top_ps=None, tokens=None)
    assert pick_trace_record([bare, wrong, right]) is right
    assert pick_trace_record([bare, wrong]) is wrong
    assert pick_trace_record([bare, _greedy("c")]) is None


def test_empty_run_still_reports(tmp_path):
    summary = build_summary(CONFIG, [], bootstrap_resamples=10)
    assert summary["methods"] == []
    text = "\n".join(summary["warnings"])
    assert text.count("has no samples: left out of the table") == 5  # one per configured method
    assert "oracle not computed" in text
    paths = write_report(tmp_path, summary, [])
    assert set(paths) == {"summary.json", "report.md"}
    assert "There are no AutoDeco samples" in paths["report.md"].read_text(encoding="utf-8")


def test_summary_keeps_only_the_configured_problems():
    records = _synthetic_records() + [_greedy("stray", False)]
    summary = build_summary(dict(CONFIG, problem_ids=["p0", "p1", "p2"]), records, bootstrap_resamples=100)
    assert "1 record(s) of problems not in config['problem_ids'] ignored" in summary["warnings"]
    assert _method(summary, "greedy")["pass_at_1"]["mean"] == pytest.approx(2 / 3)
