"""The numbers of ``autodeco control-eval``'s report from its per-question values (pure: no model, no files).

:func:`summarise` turns the values :mod:`autodeco.evaluation.control` records for every question, source, mode and
prompt into per-source and per-mode tables (the paper's Table 4: mean T and P without and with a command, the share
of questions moved the commanded way, paired bootstrap intervals), the same shares per phrasing family, the neutral
sentence's change, the same-token measure, the comparison of accuracy, and :func:`goal_check`'s criteria.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from autodeco.data.phrasings import DIRECTIONS, HIGH, KINDS, LOW, NEUTRAL
from autodeco.evaluation.metrics import BOOTSTRAP_RESAMPLES, paired_bootstrap

PLAIN = "none"
"""The condition of the plain prompt (no command)."""

CONDITIONS = (PLAIN, LOW, HIGH, NEUTRAL)
"""Every prompt a question may get: plain, low-diversity, high-diversity and neutral (the last only where the
phrasing file has neutral eval families)."""

SAMPLED, GREEDY = "sampled", "greedy"
MODES = (SAMPLED, GREEDY)
"""How each prompt is answered: K answers sampled with the heads' T and P, or one greedy answer."""

DISTINCT_NGRAM = 2
"""n of the distinct-n diversity ratio (distinct token bigrams over all bigrams of the K answers)."""

GOAL_MOVED_SHARE = 0.95
"""The share of questions that must move the commanded way, for T and for P, in both directions."""

GOAL_ACCURACY_DIFFERENCE = 0.01
"""The largest mean accuracy difference (1 point) without a command against the compared heads."""


# ------------------------------------------------------------------------------------- pure measures


def distinct_ngram_ratio(sequences: Sequence[Sequence[int]], n: int = DISTINCT_NGRAM) -> float:
    """Distinct n-grams over all n-grams of the sequences together (0 when they hold none).

    Example:
        >>> distinct_ngram_ratio([[1, 2, 3], [1, 2, 4]])  # bigrams (1,2) (2,3) (1,2) (2,4): 3 distinct of 4
        0.75
    """
    grams = [tuple(sequence[start : start + n]) for sequence in sequences for start in range(len(sequence) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_answers(answers: Sequence[str | None]) -> int:
    """Number of different final answers (no answer counts as one more kind of answer).

    Example:
        >>> distinct_answers(["4", "4", None, "5"])
        3
    """
    return len({"<none>" if answer is None else answer for answer in answers})


def moved_share(without: dict[str, float], with_command: dict[str, float], direction: int) -> dict[str, float]:
    """How many questions' values moved the commanded way (strictly), stayed, or moved against it.

    Example:
        >>> moved_share({"a": 0.5, "b": 0.5}, {"a": 0.4, "b": 0.5}, direction=-1)
        {'moved': 0.5, 'unchanged': 0.5, 'against': 0.0, 'questions': 2}
    """
    signs = [direction * (with_command[key] - without[key]) for key in without]
    count = max(len(signs), 1)
    return {
        "moved": sum(sign > 0 for sign in signs) / count,
        "unchanged": sum(sign == 0 for sign in signs) / count,
        "against": sum(sign < 0 for sign in signs) / count,
        "questions": len(signs),
    }


# ------------------------------------------------------------------------------------------ summary

MEASURES = ("temperature", "top_p", "distinct_answers", "distinct_ngrams", "accuracy")
"""Per-question values summarised for every prompt kind (the diversity measures in sampled mode only)."""

HEADS_MEASURES = ("temperature", "top_p")
"""The heads' values: what a command must move, and a neutral sentence must not."""

Interval = Callable[[dict, dict], dict]
"""``interval(a, b)``: the paired bootstrap of ``mean(a - b)`` as ``{"mean", "low", "high"}``."""


def summarise(questions: list[dict], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """The report's numbers from the per-question values (see :func:`control_evaluation`).

    Returns:
        ``{"num_questions", "sources", "by_source", "goal", "questions"}``. ``by_source[source]`` holds
        ``num_questions``, ``modes`` (per mode, see :func:`mode_summary`), ``same_answer`` (per command kind
        on the plain sampled answers teacher-forced, or None) and ``comparison`` (accuracy without a command
        against the compared heads, or None). ``goal`` is :func:`goal_check`'s. A run of one source with the
        sampled mode also has the paper-table keys of earlier versions at the top level: ``baseline``,
        ``directions``, ``conditions``, ``same_answer``, ``comparison`` (that source, sampled mode).

    Example:
        >>> values = lambda t, p: {"temperature": t, "top_p": p, "distinct_answers": 1, "distinct_ngrams": t, "accuracy": 1.0}
        >>> command = lambda kind: {"text": "...", "family": kind + "-a", "placement": "after"}
        >>> questions = [{"source": "arithmetic", "id": str(i), "commands": {"low": command("low"), "high": command("high")},
        ...               "heads": {"sampled": {"none": values(0.5, 0.9), "low": values(0.4, 0.8),
        ...                                     "high": values(0.6, 0.95)}}} for i in range(3)]
        >>> summary = summarise(questions, resamples=10)
        >>> summary["by_source"]["arithmetic"]["modes"]["sampled"]["directions"]["low"]["temperature"]["moved"]
        1.0
        >>> summary["goal"]["met"]
        True
    """
    def interval(a: dict, b: dict) -> dict:
        difference = paired_bootstrap(a, b, resamples=resamples, seed=seed)
        return {"mean": difference.mean_difference, "low": difference.low, "high": difference.high}

    sources = list(dict.fromkeys(question["source"] for question in questions))
    by_source = {}
    for source in sources:
        mine = [question for question in questions if question["source"] == source]
        by_source[source] = {
            "num_questions": len(mine),
            "modes": {mode: mode_summary(mine, mode, interval) for mode in mine[0]["heads"]},
            "same_answer": _same_answer_summary(mine, interval),
            "comparison": _comparison(mine, interval),
        }
    result = {"num_questions": len(questions), "sources": sources, "by_source": by_source,
              "goal": goal_check(by_source), "questions": questions}
    if len(sources) == 1 and SAMPLED in by_source[sources[0]]["modes"]:  # the paper's table, as before sources
        only = by_source[sources[0]]
        sampled = only["modes"][SAMPLED]
        result.update(baseline=sampled["baseline"], directions=sampled["directions"], conditions=sampled["conditions"],
                      same_answer=only["same_answer"], comparison=only["comparison"])
    return result


def mode_summary(questions: list[dict], mode: str, interval: Interval) -> dict:
    """One source's questions answered in ``mode``.

    Returns:
        ``baseline`` (mean T and P without a command); ``conditions`` (per prompt: every measure's mean and
        interval); ``directions`` (per command kind low/high: every measure without and with it, the paired
        difference, the shares moved); ``neutral`` (every measure without and with the neutral sentence, the
        paired difference and whether its interval contains 0; None without neutral families); ``families``
        (per eval family: kind, placement, questions, and T and P moved, see :func:`family_shares`).
    """
    def values_of(question: dict, condition: str) -> dict:
        return question["heads"][mode][condition]

    first = values_of(questions[0], PLAIN)
    measures = [measure for measure in MEASURES if measure in first]
    conditions = [condition for condition in CONDITIONS if condition in questions[0]["heads"][mode]]
    by_condition = {
        condition: {measure: {question["id"]: values_of(question, condition)[measure] for question in questions}
                    for measure in measures}
        for condition in conditions
    }
    zeros = {question["id"]: 0.0 for question in questions}
    plain = by_condition[PLAIN]
    return {
        "baseline": {measure: statistics.fmean(plain[measure].values()) for measure in HEADS_MEASURES},
        "conditions": {
            condition: {measure: {"mean": statistics.fmean(values.values()), "interval": interval(values, zeros)}
                        for measure, values in found.items()}
            for condition, found in by_condition.items()
        },
        "directions": {kind: {measure: _change(plain[measure], by_condition[kind][measure], sign, interval)
                              for measure in measures}
                       for kind, sign in DIRECTIONS.items() if kind in by_condition},
        "neutral": ({measure: neutral_change(plain[measure], by_condition[NEUTRAL][measure], interval)
                     for measure in measures} if NEUTRAL in by_condition else None),
        "families": family_shares(questions, values_of),
    }


def _change(without: dict[str, float], with_command: dict[str, float], sign: int, interval: Interval) -> dict:
    """One measure under one command kind: the means without and with it, their paired interval, the shares moved."""
    return {
        "without": statistics.fmean(without.values()), "with": statistics.fmean(with_command.values()),
        "difference": interval(with_command, without), **moved_share(without, with_command, sign),
    }


def neutral_change(without: dict[str, float], with_sentence: dict[str, float], interval: Interval) -> dict:
    """One measure with a neutral sentence appended: its paired difference, whether the interval holds 0, the shares.

    Example:
        >>> interval = lambda a, b: {"mean": 0.01, "low": -0.02, "high": 0.04}
        >>> entry = neutral_change({"a": 0.5, "b": 0.5}, {"a": 0.52, "b": 0.5}, interval)
        >>> entry["contains_zero"], entry["raised"], entry["lowered"]
        (True, 0.5, 0.0)
    """
    difference = interval(with_sentence, without)
    shares = moved_share(without, with_sentence, 1)
    return {
        "without": statistics.fmean(without.values()), "with": statistics.fmean(with_sentence.values()),
        "difference": difference, "contains_zero": difference["low"] <= 0.0 <= difference["high"],
        "raised": shares["moved"], "lowered": shares["against"], "questions": shares["questions"],
    }


def family_shares(questions: list[dict], values_of: Callable[[dict, str], dict]) -> list[dict]:
    """Per eval family (low, then high, then neutral; each in file order): the shares of its questions whose T and P moved.

    For low and high families each measure holds :func:`moved_share` (the commanded way) and ``change`` (the mean
    of with - without); for neutral families ``change``, ``raised`` and ``lowered``.

    Example:
        >>> command = lambda family: {"text": "...", "family": family, "placement": "after"}
        >>> values = {"0": {"none": {"temperature": 0.5, "top_p": 0.9}, "low": {"temperature": 0.4, "top_p": 0.9}},
        ...           "1": {"none": {"temperature": 0.5, "top_p": 0.9}, "low": {"temperature": 0.6, "top_p": 0.8}}}
        >>> questions = [{"id": "0", "commands": {"low": command("a")}}, {"id": "1", "commands": {"low": command("b")}}]
        >>> [(entry["family"], entry["temperature"]["moved"], entry["top_p"]["moved"])
        ...  for entry in family_shares(questions, lambda question, condition: values[question["id"]][condition])]
        [('a', 1.0, 0.0), ('b', 0.0, 1.0)]
    """
    members: dict[tuple[str, str], list[dict]] = {}
    for question in questions:
        for kind, command in question["commands"].items():
            members.setdefault((kind, command["family"]), []).append(question)
    families = []
    for (kind, family), found in sorted(members.items(), key=lambda item: KINDS.index(item[0][0])):  # stable: file order
        entry = {"family": family, "kind": kind, "placement": found[0]["commands"][kind]["placement"],
                 "questions": len(found)}
        for measure in HEADS_MEASURES:
            without = {question["id"]: values_of(question, PLAIN)[measure] for question in found}
            with_command = {question["id"]: values_of(question, kind)[measure] for question in found}
            change = statistics.fmean(with_command[key] - without[key] for key in without)
            if kind in DIRECTIONS:
                entry[measure] = {**moved_share(without, with_command, DIRECTIONS[kind]), "change": change}
            else:
                shares = moved_share(without, with_command, 1)
                entry[measure] = {"change": change, "raised": shares["moved"], "lowered": shares["against"]}
        families.append(entry)
    return families


def _same_answer_summary(questions: list[dict], interval: Interval) -> dict | None:
    """Per command kind, T and P on the plain answers teacher-forced with and without it (None: not measured).

    ``generated_gap`` is the largest difference, over questions, between the teacher-forced plain
    means and the generated ones: the two compute the same values, so it shows only rounding.
    """
    if not questions or not all("same_answer" in question for question in questions):
        return None

    def values(condition: str, measure: str) -> dict[str, float]:
        return {question["id"]: question["same_answer"][condition][measure] for question in questions}

    present = questions[0]["same_answer"]
    summary = {
        kind: {measure: _change(values(PLAIN, measure), values(kind, measure), sign, interval)
               for measure in HEADS_MEASURES}
        for kind, sign in DIRECTIONS.items()
    }
    summary[NEUTRAL] = ({measure: neutral_change(values(PLAIN, measure), values(NEUTRAL, measure), interval)
                         for measure in HEADS_MEASURES} if NEUTRAL in present else None)
    summary["families"] = family_shares(questions, lambda question, condition: question["same_answer"][condition])
    summary["generated_gap"] = max(
        abs(question["same_answer"][PLAIN][measure] - question["heads"][SAMPLED][PLAIN][measure])
        for question in questions for measure in HEADS_MEASURES
    )
    return summary


def _comparison(questions: list[dict], interval: Interval) -> dict | None:
    """Sampled accuracy without a command, these heads against the compared ones (None: no comparison)."""
    if not questions or not all("compare" in question for question in questions):
        return None
    ours = {question["id"]: question["heads"][SAMPLED][PLAIN]["accuracy"] for question in questions}
    theirs = {question["id"]: question["compare"][SAMPLED][PLAIN]["accuracy"] for question in questions}
    return {
        "accuracy_without_command": statistics.fmean(ours.values()),
        "compare_accuracy_without_command": statistics.fmean(theirs.values()),
        "difference": interval(ours, theirs),
        "compare_temperature": statistics.fmean(question["compare"][SAMPLED][PLAIN]["temperature"] for question in questions),
        "compare_top_p": statistics.fmean(question["compare"][SAMPLED][PLAIN]["top_p"] for question in questions),
    }


def _criterion(text: str, value: float, met: bool, **where) -> dict:
    return {"criterion": text, "value": value, "met": bool(met), **where}


def goal_check(by_source: dict) -> dict:
    """The issue's criteria, each with the measured value and whether it holds.

    Per source and mode:

    * T and P move the commanded way for >= 95 % of questions, for both command kinds;
    * (sampled only) a real diversity change: the distinct-n ratio's paired interval lies above 0 for
      high and below 0 for low;
    * the neutral sentence moves T and P by no more than noise: each paired interval contains 0
      (not judged without neutral families).

    Per source, with a comparison: accuracy without a command within 1 point of the compared heads'
    (the paired interval contains 0 and the mean difference is at most 0.01 either way).

    Returns:
        ``{"met", "criteria", "not_judged"}``; each criterion has ``criterion``, ``value``, ``met`` and where
        it applies (``source``, ``mode``, ``kind``, ``measure``).
    """
    criteria, not_judged = [], []
    for source, summary in by_source.items():
        for mode, measured in summary["modes"].items():
            where = f"{source}, {mode}"
            for kind, sign in DIRECTIONS.items():
                for measure in HEADS_MEASURES:
                    share = measured["directions"][kind][measure]["moved"]
                    criteria.append(_criterion(
                        f"{where}: {kind} command moved {measure} the commanded way for >= {GOAL_MOVED_SHARE * 100:.0f} %",
                        share, share >= GOAL_MOVED_SHARE, source=source, mode=mode, kind=kind, measure=measure))
                if "distinct_ngrams" in measured["directions"][kind]:
                    difference = measured["directions"][kind]["distinct_ngrams"]["difference"]
                    bound = difference["low"] if sign > 0 else -difference["high"]
                    criteria.append(_criterion(
                        f"{where}: {kind} command: distinct-{DISTINCT_NGRAM} ratio {'rises' if sign > 0 else 'falls'} "
                        "(paired 95 % interval excludes 0)",
                        difference["mean"], bound > 0, source=source, mode=mode, kind=kind, measure="distinct_ngrams"))
            neutral = measured["neutral"]
            if neutral is None:
                not_judged.append(f"{where}: neutral sentence (the phrasing file has no neutral eval family)")
                continue
            for measure in HEADS_MEASURES:
                difference = neutral[measure]["difference"]
                criteria.append(_criterion(
                    f"{where}: neutral sentence changes {measure} by noise only (paired 95 % interval contains 0)",
                    difference["mean"], neutral[measure]["contains_zero"], source=source, mode=mode, kind=NEUTRAL,
                    measure=measure))
        comparison = summary["comparison"]
        if comparison is None:
            not_judged.append(f"{source}: accuracy without a command (no compared heads)")
            continue
        difference = comparison["difference"]
        within = difference["low"] <= 0.0 <= difference["high"] and abs(difference["mean"]) <= GOAL_ACCURACY_DIFFERENCE
        criteria.append(_criterion(
            f"{source}: accuracy without a command within {GOAL_ACCURACY_DIFFERENCE * 100:.0f} point of the compared "
            "heads' (paired 95 % interval contains 0)",
            difference["mean"], within, source=source, mode=SAMPLED, kind=PLAIN, measure="accuracy"))
    return {"met": all(item["met"] for item in criteria), "criteria": criteria, "not_judged": not_judged}
