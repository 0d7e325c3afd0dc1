"""Does a decoding command in the prompt change the heads' T and P, and what the model writes? (PAPER.md section 7)

For N held-out questions, every question is answered K times under three prompts: as it is
(``none``), with a low-diversity command appended (``low``) and with a high-diversity command
appended (``high``). The commands come from the phrasing file's ``eval`` lists, which training
never uses; question ``i`` gets phrasing ``i mod len(list)`` of each kind. The three runs of a
batch of questions share one sampling seed, so they are paired.

Per question and prompt this records the mean T and P over all generated answer tokens of the K
answers (the values ``generate()`` records for each token it draws), the share of correct answers,
and two diversity measures across the K answers: the number of distinct final answers and the
distinct-n ratio (distinct token n-grams over all token n-grams). Over questions it reports,
per command kind, the mean T and P without and with the command, the share of questions whose
mean moved the commanded way, and paired bootstrap intervals for every difference; like the
paper's Table 4 (N = 100).

A command changes what the model writes as well as the heads' values, and a mean over different
text can move for either reason. So the heads' own reaction is measured apart: each question's
plain answers are teacher-forced under the three prompts, and the same shares and intervals are
reported over those identical tokens (``same_answer``; the plain prompt's values equal the
generated ones, up to rounding). The goal is judged on the generated answers, as the paper's table is.

With ``compare_heads`` (heads trained without the option, say), those heads answer the plain
prompts too, with the same seeds, and the accuracy difference gets a paired interval: decoding
control must not cost accuracy when no command is given.

:func:`control_evaluation` returns a JSON-ready dict; :mod:`autodeco.views.control` renders it.
Given a run folder it records every finished batch there (``control_run.json`` holds the settings,
``progress.jsonl`` the answers), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from autodeco.common.seeds import derived_seed
from autodeco.evaluation.metrics import BOOTSTRAP_RESAMPLES, paired_bootstrap
from autodeco.data.phrasings import DIRECTIONS, HIGH, LOW, append_command, load_phrasings

CONDITIONS = ("none", LOW, HIGH)
"""The three prompts of each question: plain, with a low-diversity command, with a high-diversity command."""

DISTINCT_NGRAM = 2
"""n of the distinct-n diversity ratio (distinct token bigrams over all bigrams of the K answers)."""

RUN_FILE = "control_run.json"
"""The settings of a run folder's measurement (a resumed run must match them)."""

PROGRESS_FILE = "progress.jsonl"
"""One line per finished batch of questions, heads and prompt kind (what a resumed run skips)."""

SAME_ANSWER = "same-answer"
"""The progress name of the teacher-forced pass: the heads' values on the plain answers under each prompt."""

GOAL_MOVED_SHARE = 0.95
"""The share of questions that must move the commanded way, for T and for P, in both directions."""


@dataclasses.dataclass
class ControlEvalConfig:
    """What ``autodeco control-eval`` measures, on which questions and with how many samples."""

    heads: str | None = None
    """Heads checkpoint (a folder or ``shipped:<name>``); None: the heads shipped for the embedded model."""
    base: str | None = None
    """Base model; None: the one the heads record."""
    dataset: str = "arithmetic"
    """Questions: ``arithmetic`` (built-in; its test split is never trained on), a known name, a JSONL file or ``hf:...``."""
    split: str = "test"
    """Dataset split (held out from training)."""
    questions: int = 100
    """Number of questions N (the paper's table: 100)."""
    samples: int = 4
    """Answers K per question and prompt (for the means, diversity and accuracy)."""
    max_new_tokens: int | None = None
    """Length limit of each answer (None: 32 for arithmetic, 1024 otherwise)."""
    batch_size: int = 16
    """Questions generated together (each with K rows)."""
    phrasings: str | None = None
    """Phrasing file (JSON with low/high train/eval lists); None: the built-in one. Only the eval lists are used."""
    compare_heads: str | None = None
    """Heads to compare accuracy without a command against (e.g. trained without decoding control); None: no comparison."""
    scorer: str = "math-verify"
    """Answer checker: ``math-verify`` or ``exact``."""
    seed: int = 0
    """Seed of the sampling (the same for the paired runs) and of the arithmetic generator."""
    data_dir: str | None = None
    """Folder of dataset files for known names (default: $AUTODECO_DATA_DIR)."""
    resamples: int = BOOTSTRAP_RESAMPLES
    """Bootstrap resamples of the paired intervals."""

    def __post_init__(self):
        if self.max_new_tokens is None:
            from autodeco.problems import default_max_new_tokens

            self.max_new_tokens = default_max_new_tokens(self.dataset)
        for name in ("questions", "samples", "max_new_tokens", "batch_size", "resamples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        from autodeco.problems.answers import SCORERS

        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")


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


# ----------------------------------------------------------------------------------------- the run


def control_evaluation(
    config: ControlEvalConfig, *, output: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
) -> dict:
    """Answer every question with and without decoding commands and summarise how T, P and the answers change.

    Args:
        config: what to measure.
        output: run folder to record finished batches in (and resume from); None: nothing is recorded. The caller
            holds its lock.
        overwrite: discard the batches recorded in ``output`` instead of resuming them.
        progress: show progress bars.

    Returns:
        A JSON-ready dict: ``settings``; ``baseline`` (mean T and P without a command); ``directions``
        (per command kind: T and P without and with it, their paired difference with an interval,
        the share of questions moved the commanded way; diversity and accuracy differences);
        ``conditions`` (per prompt kind: mean T, P, distinct answers, distinct-n and accuracy with
        intervals); ``comparison`` (accuracy against ``compare_heads``, or None); ``goal`` (the
        issue's criteria, each with whether it holds); ``questions`` (every question's values).

    Example:
        >>> result = control_evaluation(ControlEvalConfig(questions=100, samples=4))  # doctest: +SKIP
        >>> result["directions"]["low"]["temperature"]["moved"]  # doctest: +SKIP
        0.99
    """
    from autodeco.problems import load_problems

    phrasings = load_phrasings(config.phrasings)  # bad files fail before any model loads
    problems = load_problems(config.dataset, split=config.split, limit=config.questions, seed=config.seed,
                             data_dir=config.data_dir)
    loaded, reference = _load(config.heads, config.base)
    compared = None
    if config.compare_heads is not None:
        compared, compare_reference = _load(config.compare_heads, config.base, llm=loaded.model.llm)
    commands = {kind: [phrasings.eval[kind][index % len(phrasings.eval[kind])] for index in range(len(problems))]
                for kind in DIRECTIONS}
    runs = [("heads", loaded, CONDITIONS)] + ([("compare", compared, ("none",))] if compared is not None else [])
    from autodeco.common.fingerprint import tensors_fingerprint

    settings = {
        **dataclasses.asdict(config),
        "heads": reference, "model": loaded.description,
        "heads_fingerprint": tensors_fingerprint(loaded.model.head_state_dict()),
        "compare_heads": compare_reference if compared is not None else None,
        "compare_heads_fingerprint": tensors_fingerprint(compared.model.head_state_dict()) if compared is not None else None,
        "phrasings": phrasings.source, "phrasings_fingerprint": phrasings.fingerprint,
        "eval_phrasings": {kind: list(phrasings.eval[kind]) for kind in DIRECTIONS},
        "distinct_ngram": DISTINCT_NGRAM,
        "same_answer": True,  # runs recorded before the teacher-forced pass lack the answers' token ids
    }
    record = _Progress(output, settings, [problem.id for problem in problems], overwrite) if output is not None else None
    questions = _answer_all(config, problems, commands, runs, progress, record)
    result = summarise(questions, resamples=config.resamples, seed=config.seed)
    result["settings"] = settings
    return result


_NOT_AFFECTING_ANSWERS = ("resamples", "heads", "compare_heads", "phrasings", "data_dir", "model")
"""Settings a resumed run may change: the bootstrap (only the summary reads it) and paths (their content is
compared through the fingerprints and the problems' ids)."""


class _Progress:
    """A run folder's record of finished batches: what to skip on resume, and where new ones go."""

    def __init__(self, output: str | os.PathLike, settings: dict, problem_ids: list[str], overwrite: bool):
        from autodeco.common.jsonl import check_resume_config, read_jsonl_tolerant, write_json_atomic

        self.folder = Path(output)
        self.folder.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in (RUN_FILE, PROGRESS_FILE):
                (self.folder / name).unlink(missing_ok=True)
        comparable = {key: value for key, value in settings.items() if key not in _NOT_AFFECTING_ANSWERS}
        comparable["problem_ids"] = problem_ids
        fix = "choose another --output or pass --overwrite to start again"
        if not check_resume_config(self.folder / RUN_FILE, comparable, what="control-eval run", fix=fix):
            (self.folder / PROGRESS_FILE).unlink(missing_ok=True)  # answers of an unrecorded run cannot be trusted
            write_json_atomic(self.folder / RUN_FILE, comparable)
        self.done = {(row["start"], row["run"], row["condition"]): row["values"]
                     for row in read_jsonl_tolerant(self.folder / PROGRESS_FILE)}

    def add(self, start: int, run: str, condition: str, values: list[dict]) -> None:
        from autodeco.common.jsonl import append_jsonl

        append_jsonl(self.folder / PROGRESS_FILE, [{"start": start, "run": run, "condition": condition, "values": values}])


def _load(heads: str | None, base: str | None, llm=None):
    from autodeco.model.shipped import heads_or_default
    from autodeco.sampling.inference import load_for_generation

    reference = heads_or_default(heads, base)
    if reference is None:
        raise ValueError("no heads to evaluate: pass --heads (a trained heads folder or shipped:<name>)")
    if llm is None:
        return load_for_generation(reference, base), reference
    from autodeco.model.modeling import AutoDecoForCausalLM
    from autodeco.sampling.inference import LoadedModel

    model = AutoDecoForCausalLM.from_pretrained(reference, base_model=llm)  # the same base, loaded once
    return LoadedModel(model, None, f"{model.config.base_model_name_or_path} + heads from {reference}"), reference


def _answer_all(config: ControlEvalConfig, problems, commands, runs, progress: bool, record: _Progress | None) -> list[dict]:
    from tqdm.auto import tqdm

    from autodeco.problems.answers import score
    from autodeco.sampling.inference import render_prompt
    from autodeco.sampling.rollouts import prefill
    from autodeco.sampling.settings import DecodingSetting

    tokenizer = runs[0][1].tokenizer
    questions = [
        {"id": problem.id, "question": problem.question, "answer": problem.answer,
         "commands": {kind: commands[kind][index] for kind in DIRECTIONS}, "heads": {}, "compare": {}}
        for index, problem in enumerate(problems)
    ]
    total = len(problems) * (sum(len(conditions) for _, _, conditions in runs) + 1)  # + the teacher-forced pass
    bar = tqdm(total=total, desc="control-eval", unit="question", disable=not progress)
    for start in range(0, len(problems), config.batch_size):
        rows = range(start, min(start + config.batch_size, len(problems)))
        seed = derived_seed("control-eval", config.seed, problems[start].id)  # one seed for every paired run
        for name, loaded, conditions in runs:
            for condition in conditions:
                stored = record.done.get((start, name, condition)) if record is not None else None
                if stored is not None and len(stored) == len(rows):
                    for row, values in zip(rows, stored):
                        questions[row][name][condition] = values
                    bar.update(len(rows))
                    continue
                prompts = [_prompt(problems[row], condition, commands, row) for row in rows]
                batch = prefill(loaded.model.llm, tokenizer, [render_prompt(tokenizer, prompt) for prompt in prompts])
                completions = _complete(loaded.model, tokenizer, batch, config, seed, DecodingSetting.autodeco())
                for row, samples in zip(rows, completions):
                    scored = [score(sample.text, problems[row].answer, config.scorer) for sample in samples]
                    questions[row][name][condition] = _question_values(samples, scored)
                if record is not None:
                    record.add(start, name, condition, [questions[row][name][condition] for row in rows])
                bar.update(len(rows))
            if name == "heads":
                _same_answers(loaded.model, tokenizer, problems, commands, questions, rows, start, record)
                bar.update(len(rows))
    bar.close()
    for question in questions:
        if not question["compare"]:
            del question["compare"]
        for values in (*question["heads"].values(), *question.get("compare", {}).values()):
            values.pop("token_ids", None)  # needed only to teacher-force; the report keeps the texts
    return questions


def _prompt(problem, condition: str, commands: dict[str, list[str]], row: int) -> str:
    """Question ``row`` as it is (``none``) or with its command of kind ``condition`` appended."""
    return problem.prompt() if condition == "none" else append_command(problem.prompt(), commands[condition][row])


def _same_answers(model, tokenizer, problems, commands, questions, rows, start: int, record: _Progress | None) -> None:
    """Teacher-force each question's plain answers under every prompt: the heads' values on identical tokens."""
    stored = record.done.get((start, SAME_ANSWER, "all")) if record is not None else None
    if stored is not None and len(stored) == len(rows):
        for row, values in zip(rows, stored):
            questions[row]["same_answer"] = values
        return
    for row in rows:
        answers = questions[row]["heads"]["none"]["token_ids"]
        questions[row]["same_answer"] = {
            condition: same_answer_means(model, tokenizer, _prompt(problems[row], condition, commands, row), answers)
            for condition in CONDITIONS
        }
    if record is not None:
        record.add(start, SAME_ANSWER, "all", [questions[row]["same_answer"] for row in rows])


def same_answer_means(model, tokenizer, prompt: str, answers: Sequence[Sequence[int]]) -> dict[str, float]:
    """The heads' mean T and P over the tokens of ``answers``, each fed after ``prompt`` (chat-rendered).

    The values at the positions that predict the answer tokens are the ones ``generate()`` would
    have sampled those tokens with; they are pooled over all answers' tokens, as for generated answers.
    One teacher-forced pass (:func:`autodeco.evaluation.teacher_forcing.teacher_forced_means`) over all
    answers at once, computing logits and heads from the last prompt position on only.

    Returns:
        ``{"temperature", "top_p", "tokens"}`` (NaN means when the answers hold no token).
    """
    import torch

    from autodeco.core.defaults import IGNORE_INDEX
    from autodeco.data.tokens import TrainingExample, tokenize_prompt
    from autodeco.evaluation.teacher_forcing import teacher_forced_means

    answers = [list(answer) for answer in answers if len(answer)]
    if not answers:
        return {"temperature": float("nan"), "top_p": float("nan"), "tokens": 0}
    prompt_ids = tokenize_prompt(tokenizer, prompt)
    unlabelled = [IGNORE_INDEX] * len(prompt_ids)
    examples = [TrainingExample(torch.tensor(prompt_ids + answer), torch.tensor(unlabelled + answer)) for answer in answers]
    temperature, top_p, tokens = teacher_forced_means(model, tokenizer, examples, len(examples), from_first_label=True)
    return {"temperature": temperature, "top_p": top_p, "tokens": tokens}


def _complete(model, tokenizer, batch, config: ControlEvalConfig, seed: int, setting):
    from autodeco.sampling.rollouts import complete

    return complete(model, tokenizer, batch, setting, num_samples=config.samples, max_new_tokens=config.max_new_tokens,
                    seed=seed)


def _question_values(samples, scored) -> dict:
    """One question under one prompt: token-pooled mean T and P, accuracy, diversity, the answers."""
    temperatures = [value for sample in samples for value in sample.temperatures]
    top_ps = [value for sample in samples for value in sample.top_ps]
    answers = [extracted for extracted, _ in scored]
    return {
        "temperature": statistics.fmean(temperatures) if temperatures else float("nan"),
        "top_p": statistics.fmean(top_ps) if top_ps else float("nan"),
        "tokens": len(temperatures),
        "accuracy": sum(bool(correct) for _, correct in scored) / len(scored),
        "distinct_answers": distinct_answers(answers),
        "distinct_ngrams": distinct_ngram_ratio([sample.token_ids for sample in samples]),
        "answers": answers,
        "texts": [sample.text for sample in samples],
        "token_ids": [list(sample.token_ids) for sample in samples],
    }


# ------------------------------------------------------------------------------------------ summary

MEASURES = ("temperature", "top_p", "distinct_answers", "distinct_ngrams", "accuracy")
"""Per-question values summarised for every prompt kind."""


def summarise(questions: list[dict], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """The report's numbers from the per-question values (see :func:`control_evaluation`).

    Example:
        >>> values = lambda t, p, a: {"temperature": t, "top_p": p, "distinct_answers": 1, "distinct_ngrams": a, "accuracy": 1.0}
        >>> questions = [{"id": str(i), "heads": {"none": values(0.5, 0.9, 0.5), "low": values(0.4, 0.8, 0.4),
        ...               "high": values(0.6, 0.95, 0.6)}} for i in range(3)]
        >>> summary = summarise(questions, resamples=10)
        >>> summary["directions"]["low"]["temperature"]["moved"], summary["goal"]["met"]
        (1.0, True)
    """
    by_condition = {
        condition: {measure: {question["id"]: question["heads"][condition][measure] for question in questions}
                    for measure in MEASURES}
        for condition in CONDITIONS
    }

    def interval(a: dict, b: dict) -> dict:
        difference = paired_bootstrap(a, b, resamples=resamples, seed=seed)
        return {"mean": difference.mean_difference, "low": difference.low, "high": difference.high}

    zeros = {question["id"]: 0.0 for question in questions}
    conditions = {
        condition: {measure: {"mean": statistics.fmean(values.values()), "interval": interval(values, zeros)}
                    for measure, values in measures.items()}
        for condition, measures in by_condition.items()
    }
    directions = {
        kind: {measure: _change(by_condition["none"][measure], by_condition[kind][measure], sign, interval)
               for measure in MEASURES}
        for kind, sign in DIRECTIONS.items()
    }
    comparison = None
    if all("compare" in question for question in questions) and questions:
        theirs = {question["id"]: question["compare"]["none"]["accuracy"] for question in questions}
        comparison = {
            "accuracy_without_command": statistics.fmean(by_condition["none"]["accuracy"].values()),
            "compare_accuracy_without_command": statistics.fmean(theirs.values()),
            "difference": interval(by_condition["none"]["accuracy"], theirs),
            "compare_temperature": statistics.fmean(question["compare"]["none"]["temperature"] for question in questions),
            "compare_top_p": statistics.fmean(question["compare"]["none"]["top_p"] for question in questions),
        }
    return {
        "num_questions": len(questions),
        "baseline": {"temperature": conditions["none"]["temperature"]["mean"], "top_p": conditions["none"]["top_p"]["mean"]},
        "directions": directions,
        "conditions": conditions,
        "same_answer": _same_answer_summary(questions, interval),
        "comparison": comparison,
        "goal": goal_check(directions, comparison),
        "questions": questions,
    }


def _change(without: dict[str, float], with_command: dict[str, float], sign: int, interval) -> dict:
    """One measure under one command kind: the means without and with it, their paired interval, the shares moved."""
    return {
        "without": statistics.fmean(without.values()), "with": statistics.fmean(with_command.values()),
        "difference": interval(with_command, without), **moved_share(without, with_command, sign),
    }


def _same_answer_summary(questions: list[dict], interval) -> dict | None:
    """Per command kind, T and P on the plain answers teacher-forced with and without it (None: not measured).

    ``generated_gap`` is the largest difference, over questions, between the teacher-forced plain
    means and the generated ones: the two compute the same values, so it shows only rounding.
    """
    if not questions or not all("same_answer" in question for question in questions):
        return None
    def values(condition: str, measure: str) -> dict[str, float]:
        return {question["id"]: question["same_answer"][condition][measure] for question in questions}

    summary = {
        kind: {measure: _change(values("none", measure), values(kind, measure), sign, interval)
               for measure in ("temperature", "top_p")}
        for kind, sign in DIRECTIONS.items()
    }
    summary["generated_gap"] = max(
        abs(question["same_answer"]["none"][measure] - question["heads"]["none"][measure])
        for question in questions for measure in ("temperature", "top_p")
    )
    return summary


def goal_check(directions: dict, comparison: dict | None) -> dict:
    """The issue's criteria, each with the measured value and whether it holds.

    * T and P move the commanded way for >= 95 % of questions, for both command kinds;
    * a real diversity change: the distinct-n ratio's paired interval lies above 0 for high and
      below 0 for low;
    * accuracy without a command does not drop: the interval of (these heads - compared heads)
      reaches 0 or above (only with a comparison; otherwise not judged).
    """
    criteria = []
    for kind, sign in DIRECTIONS.items():
        for measure in ("temperature", "top_p"):
            share = directions[kind][measure]["moved"]
            criteria.append({"criterion": f"{kind}: {measure} moved the commanded way for >= {GOAL_MOVED_SHARE:.0%}",
                             "value": share, "met": share >= GOAL_MOVED_SHARE})
        difference = directions[kind]["distinct_ngrams"]["difference"]
        bound = difference["low"] if sign > 0 else -difference["high"]
        criteria.append({"criterion": f"{kind}: distinct-{DISTINCT_NGRAM} ratio {'rises' if sign > 0 else 'falls'} "
                                      "(paired 95 % interval excludes 0)",
                         "value": difference["mean"], "met": bound > 0})
    if comparison is not None:
        difference = comparison["difference"]
        criteria.append({"criterion": "accuracy without a command not below the compared heads' (interval reaches 0)",
                         "value": difference["mean"], "met": difference["high"] >= 0})
    return {"met": all(item["met"] for item in criteria), "criteria": criteria}
