"""Answer extraction, the exact (official) scorer, and symbolic verification in its worker process."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from autodeco.problems import answers
from autodeco.problems.answers import (
    KILL_GRACE_S,
    SCORERS,
    exact_match,
    extract_answer,
    last_boxed,
    normalize_exact,
    score,
    verify,
)

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")
SLACK_S = 2.0
"""Allowance for a loaded machine on top of timeout_s + KILL_GRACE_S."""


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    """Start the worker once, so that timed tests measure comparisons, not the first start."""
    assert verify("x+1", "1+x")
    yield


def _worker_pid() -> int:
    worker = answers._VERIFIER._worker
    assert worker is not None and worker.alive()
    return worker.process.pid


# Extraction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} and more", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{1} then \boxed{2} finally \boxed{ 3 }", "3"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"answer: $\boxed 5$", "5"),
        (r"answer: \boxed -3.", "-3"),
        (r"\fbox{7}", "7"),
        (r"\boxed{4} then a truncated \boxed{12", "4"),
        (r"echoing the prompt \boxed{} then \boxed{9} and \boxed{}", "9"),
        (r"\boxedx{1}", None),
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"work 1 2 3 \boxed{\frac{1}{2}} 17", r"\frac{1}{2}"),
        ("Janet makes 9 * 2 = 18 dollars.\n#### 18", "18"),
        ("so\n#### 1,000\nextra 5", "1000"),
        ("#### $18.", "18"),
        ("The total is -3.", "-3"),
        ("It costs 1,000 dollars, that is 1000.", "1000"),
        ("The answer is 2.5.", "2.5"),
        ("We get 1,234,567 in the end", "1234567"),
        ("the range 3-5", "5"),
        ("pairs (1,2)", "2"),
        ("x_1 and v2 only", None),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# Exact scorer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (" 42 ", "42"),
        ("$42$", "42"),
        ("42.", "42"),
        ("$42$.", "42"),
        ("$42.$", "42"),
        ("1.5", "1.5"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        ("1,000", "1,000"),
        (r"\dfrac12", r"\dfrac12"),
    ],
)
def test_normalize_exact(answer, expected):
    assert normalize_exact(answer) == expected


def test_exact_match_compares_the_last_box_as_strings():
    assert exact_match(r"The answer is $\boxed{70}$.", 70)  # int ground truth converted, unlike the official code
    assert exact_match(r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)")
    assert exact_match(r"\boxed{1} then \boxed{2}", "2")
    assert not exact_match(r"\boxed{2} then \boxed{1}", "2")
    assert not exact_match("The answer is 70.", 70)  # no box: no fallback
    assert not exact_match(r"\boxed{1000}", "1,000")


@pytest.mark.parametrize(
    ("completion", "ground_truth"),
    [(r"\boxed{0.5}", r"\frac{1}{2}"), (r"\boxed{1000}", "1,000"), (r"\boxed{\dfrac{1}{9}}", r"\frac{1}{9}")],
)
def test_scorers_differ_on_equivalent_forms(completion, ground_truth):
    assert score(completion, ground_truth, "math-verify")[1]
    assert not score(completion, ground_truth, "exact")[1]


def test_score_returns_the_scorers_own_extraction():
    assert score("so 12 apples", 12) == ("12", True)
    assert score("so 12 apples", 12, scorer="exact") == (None, False)
    assert score(r"\boxed{12}", 13, scorer="exact") == ("12", False)


def test_score_rejects_an_unknown_scorer():
    with pytest.raises(ValueError, match="'regex'.*math-verify, exact"):
        score("1", 1, scorer="regex")
    assert SCORERS == ("math-verify", "exact")


# Symbolic verification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "ground_truth"),
    [
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        ("1,000", "1000"),
        ("1000", "1,000"),
        ("42", 42),
        ("042", "42"),
        ("$-3$", "-3"),
        ("2.5.", "5/2"),
        ("2^{99}", "2^{99}"),
        ("633825300114114700748351602688", "2^{99}"),
        (r"\dfrac{1}{9}", r"\frac{1}{9}"),
        (r"\sqrt{18}", r"3\sqrt{2}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)"),
        ("10\\%", "10"),
    ],
)
def test_verify_accepts_equivalent_answers(predicted, ground_truth):
    assert verify(predicted, ground_truth)


@pytest.mark.parametrize(
    ("predicted", "ground_truth"),
    [
        (None, 42),
        ("", 42),
        ("41", 42),
        ("-42", 42),
        ("1,001", "1000"),
        ("0.51", r"\frac{1}{2}"),
        ("2^{98}", "2^{99}"),
        (r"\frac{1}{8}", r"\frac{1}{9}"),
        (r"\sqrt{17}", r"3\sqrt{2}"),
        ("(3, \\pi)", r"\left( 3, \frac{\pi}{2} \right)"),
        ("x", "1"),
    ],
)
def test_verify_rejects_different_answers(predicted, ground_truth):
    assert not verify(predicted, ground_truth)


def test_score_reads_int_ground_truths():
    assert score(r"Thus the answer is $\boxed{70}$.", 70) == ("70", True)
    assert score("Thus the answer is 71.", 70) == ("71", False)


@pytest.mark.parametrize("bad", [0, -1.0, "5", None, True])
def test_verify_rejects_a_bad_timeout(bad):
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        verify("1", "1", timeout_s=bad)


@pytest.mark.parametrize(
    "pathological",
    [
        "9^{9^{9^{9}}}",
        "(" * 5000 + "1" + ")" * 5000,  # 10,001 characters
        r"\frac{" * 2000 + "1" + "}{2}" * 2000,
        r"\frac{{{}}\sqrt[\left(\begin{matrix}",
    ],
    ids=["tower", "nested-parentheses", "nested-fractions", "garbage-latex"],
)
def test_pathological_answers_are_wrong_within_the_timeout(pathological):
    timeout_s = 0.5
    start = time.monotonic()
    assert verify(pathological, "7", timeout_s=timeout_s) is False
    assert time.monotonic() - start < timeout_s + KILL_GRACE_S + SLACK_S


@POSIX_ONLY
def test_unresponsive_worker_is_killed_and_replaced():
    assert verify("0.25", r"\frac{1}{4}")
    stuck_pid = _worker_pid()
    os.kill(stuck_pid, signal.SIGSTOP)  # as if stuck in C code its own timer cannot interrupt
    try:
        assert verify("0.25", r"\frac{1}{4}")  # cached: the worker is not asked again
        start = time.monotonic()
        assert verify("0.75", r"\frac{3}{4}", timeout_s=0.5) is False  # counted wrong after the timeout
        assert time.monotonic() - start < 0.5 + KILL_GRACE_S + SLACK_S
    finally:
        if answers._VERIFIER._worker is not None and answers._VERIFIER._worker.process.pid == stuck_pid:
            os.kill(stuck_pid, signal.SIGKILL)
    assert verify("1.25", r"\frac{5}{4}")  # a fresh worker
    assert _worker_pid() != stuck_pid


@POSIX_ONLY
def test_dead_worker_is_restarted():
    dead_pid = _worker_pid()
    os.kill(dead_pid, signal.SIGKILL)
    answers._VERIFIER._worker.process.wait()
    assert verify("1.5", r"\frac{3}{2}")
    assert _worker_pid() != dead_pid


def test_verify_from_worker_threads():
    cases = [("0.5", r"\frac{1}{2}", True), ("0.3", r"\frac{1}{3}", False), (r"2\cdot 3", "6", True), ("7", "8", False)]
    cases = cases * 3
    results: dict[int, bool] = {}

    def check(index, predicted, ground_truth):
        results[index] = verify(predicted, ground_truth, timeout_s=2.0)

    threads = [threading.Thread(target=check, args=(index, *case[:2])) for index, case in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {index: case[2] for index, case in enumerate(cases)}


@POSIX_ONLY
def test_callers_sigalrm_handler_and_alarm_are_left_alone():
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(100)
    try:
        assert verify("0.125", r"\frac{1}{8}")
        assert verify("2^{2^{40}}", "5", timeout_s=0.5) is False  # the worker's timer fires, not ours
        assert signal.getsignal(signal.SIGALRM) is handler
        remaining = signal.alarm(0)
        assert 90 <= remaining <= 100
        assert calls == []
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_shutdown_verifier_stops_the_worker_and_the_next_call_restarts_it():
    assert verify("1.75", r"\frac{7}{4}")
    process = answers._VERIFIER._worker.process
    answers.shutdown_verifier()
    assert process.poll() is not None
    assert verify("2.75", r"\frac{11}{4}")


def test_fallback_without_a_worker_compares_strings_and_plain_numbers(monkeypatch):
    monkeypatch.setattr(answers, "_VERIFIER", answers._Verifier())
    monkeypatch.setattr(answers, "_fallback_warned", False)
    monkeypatch.setattr(sys, "executable", "")
    with pytest.warns(RuntimeWarning, match="math-verify is unavailable"):
        assert verify("0.0625", r"\frac{1}{16}")
    assert verify(r"\left(1, 2\right)", "(1,2)")
    assert not verify("x+2", "2+x")  # symbolic equivalence needs math-verify
    assert not verify("0.3", "1/3")


# Real ground truths ---------------------------------------------------------------------------


@pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"benchmark data folder {DATA_DIR} is absent")
def test_latex_ground_truths_of_the_competition_sets():
    from autodeco.problems import load_problems

    checked = 0
    for name in ("hmmt25", "brumo25"):
        for problem in load_problems(name, data_dir=DATA_DIR):
            if "\\frac" in problem.answer:
                assert verify(problem.answer.replace("\\frac", "\\dfrac"), problem.answer), problem.answer
                assert not verify(problem.answer + "+1", problem.answer), problem.answer
                checked += 1
    assert checked >= 15
