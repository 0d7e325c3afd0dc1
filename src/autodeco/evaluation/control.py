"""Does a decoding command in the prompt change the heads' T and P, and what the model writes? (PAPER.md section 7)

For N held-out questions of every question source (``datasets``), each question is answered under
the plain prompt (``none``) and under one command of each kind: a low-diversity command (``low``), a
high-diversity one (``high``) and, where the phrasing file has neutral families, a neutral sentence
of similar length (``neutral``: a control that must move nothing). The commands come from the
phrasing file's ``eval`` families, which training never uses. With ``F`` eval families of a kind (in
file order), question ``i`` of a source gets family ``i mod F`` and, within it, phrasing
``(i // F) mod len(family)``: every family gets about N/F questions, and each question's command
(text, family, placement) is recorded.

Every question and prompt is answered in each of ``modes``:

* ``sampled``: K answers drawn with the heads' own per-token T and P (AutoDeco decoding);
* ``greedy``: one answer, the base's argmax at every step. Greedy decoding records no T or P (the
  heads do not choose the token), so each greedy answer is teacher-forced after its own prompt
  once: the heads' T and P at every greedy token, the values a decoding step computes there.

The paired runs of a batch of questions (every prompt, mode and heads) share one sampling seed.

Per question, prompt and mode this records the mean T and P over all generated answer tokens
(pooled over the K answers), the share of correct answers and, when sampled, two diversity
measures across the K answers: distinct final answers and the distinct-n ratio (distinct token
n-grams over all token n-grams; trivial for one greedy answer, so not measured there). Over the
questions of each source and mode it reports, per command kind, the mean T and P without and with
the command, the share of questions whose mean moved the commanded way, and paired bootstrap
intervals for every difference (like the paper's Table 4, N = 100); the same shares per phrasing
family; and for the neutral sentence the mean change with its interval, which should contain 0.

A command changes what the model writes as well as the heads' values, and a mean over different
text can move for either reason. So the heads' own reaction is measured apart: each question's
plain sampled answers are teacher-forced under every prompt, and the same shares and intervals are
reported over those identical tokens (``same_answer``; the plain prompt's values equal the
generated ones, up to rounding). The goal is judged on the generated answers, as the paper's table is.

With ``compare_heads`` (heads trained without the option, say), those heads answer the plain
prompts too (sampled, same seeds), and the accuracy difference gets a paired interval per source:
decoding control must not cost accuracy when no command is given.

:func:`control_evaluation` returns a JSON-ready dict; :mod:`autodeco.views.control` renders it.
Given a run folder it records every finished batch there (``control_run.json`` holds the settings,
``progress.jsonl`` the answers, one line per source, batch, heads, mode and prompt), so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from autodeco.common.seeds import derived_seed
from autodeco.data.phrasings import KINDS, Command, command_messages, load_phrasings
from autodeco.evaluation.control_summary import (
    CONDITIONS, DISTINCT_NGRAM, MODES, PLAIN, SAMPLED, distinct_answers, distinct_ngram_ratio, summarise,
)
from autodeco.evaluation.metrics import BOOTSTRAP_RESAMPLES

DEFAULT_SOURCE = "arithmetic"
"""The question source when neither ``dataset`` nor ``datasets`` is given."""

EVAL_SPLIT = "eval"
"""The phrasing families evaluation draws from (training never sees them)."""

TEACHER_FORCED_ROWS = 16
"""Sequences per teacher-forced forward pass (the greedy answers' T and P, the same-answer pass)."""

RUN_FILE = "control_run.json"
"""The settings of a run folder's measurement (a resumed run must match them)."""

PROGRESS_FILE = "progress.jsonl"
"""One line per finished (source, batch of questions, heads, mode, prompt): what a resumed run skips."""

SAME_ANSWER = "same-answer"
"""The progress name of the teacher-forced pass: the heads' values on the plain answers under each prompt."""


@dataclasses.dataclass
class ControlEvalConfig:
    """What ``autodeco control-eval`` measures, on which questions and with how many samples."""

    heads: str | None = None
    """Heads checkpoint (a folder or ``shipped:<name>``); None: the heads shipped for the embedded model."""
    base: str | None = None
    """Base model; None: the one the heads record."""
    dataset: str | None = None
    """One question source (``arithmetic``, a known name such as ``gsm8k``, a JSONL file or ``hf:...``); give this or datasets, not both. Stored as datasets."""
    datasets: list[str] | None = None
    """Question sources, each measured and reported apart (e.g. ``arithmetic gsm8k``); None: dataset, else arithmetic (its test split is never trained on)."""
    split: str = "test"
    """Dataset split of every source (held out from training)."""
    questions: int = 100
    """Number of questions N per source (the paper's table: 100)."""
    samples: int = 4
    """Sampled answers K per question and prompt (for the means, diversity and accuracy); greedy gives one."""
    modes: list[str] = dataclasses.field(default_factory=lambda: list(MODES))
    """How each prompt is answered: ``sampled`` (K answers with the heads' T and P) and/or ``greedy`` (one argmax answer); default both."""
    max_new_tokens: int | None = None
    """Length limit of each answer; None: per source (32 for arithmetic, 1024 otherwise); a number applies to every source."""
    batch_size: int = 16
    """Questions generated together (each with K rows)."""
    phrasings: str | None = None
    """Phrasing file; None: the built-in one. Only its eval families are used."""
    compare_heads: str | None = None
    """Heads to compare accuracy without a command against (e.g. trained without decoding control; sampled plain prompts); None: no comparison."""
    scorer: str = "math-verify"
    """Answer checker: ``math-verify`` or ``exact``."""
    seed: int = 0
    """Seed of the sampling (the same for the paired runs) and of the arithmetic generator."""
    data_dir: str | None = None
    """Folder of dataset files for known names (default: $AUTODECO_DATA_DIR)."""
    resamples: int = BOOTSTRAP_RESAMPLES
    """Bootstrap resamples of the paired intervals."""

    def __post_init__(self):
        if self.dataset is not None and self.datasets is not None:
            raise ValueError(
                f"dataset and datasets are both given (dataset={self.dataset!r}, datasets={self.datasets!r}); "
                "give one source with --dataset or several with --datasets"
            )
        sources = list(self.datasets) if self.datasets is not None else [self.dataset or DEFAULT_SOURCE]
        if not sources or not all(isinstance(source, str) and source.strip() for source in sources):
            raise ValueError(f"datasets must name at least one question source, got {sources!r}")
        if len(set(sources)) != len(sources):
            raise ValueError(f"datasets must name each source once, got {sources!r}")
        self.datasets, self.dataset = sources, None  # one spelling, so --dataset X and --datasets X resume each other
        modes = list(self.modes) if isinstance(self.modes, (list, tuple)) else [self.modes]
        if not modes or any(mode not in MODES for mode in modes) or len(set(modes)) != len(modes):
            raise ValueError(f"modes must be one or both of {', '.join(MODES)} (each once), got {self.modes!r}")
        self.modes = modes
        if self.compare_heads is not None and SAMPLED not in self.modes:
            raise ValueError(f"compare_heads compares sampled accuracy: add {SAMPLED} to --modes (got {self.modes!r}) "
                             "or leave --compare-heads out")
        for name in ("questions", "samples", "batch_size", "resamples") + (("max_new_tokens",) if self.max_new_tokens is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        from autodeco.problems.answers import SCORERS

        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")

    def max_new_tokens_for(self, source: str) -> int:
        """The answer length limit of ``source``: the explicit one, else the source's default.

        Example:
            >>> config = ControlEvalConfig(datasets=["arithmetic", "gsm8k"])
            >>> config.max_new_tokens_for("arithmetic"), config.max_new_tokens_for("gsm8k")
            (32, 1024)
        """
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        from autodeco.problems import default_max_new_tokens

        return default_max_new_tokens(source)


# ------------------------------------------------------------------------------------------ commands


def eval_families(phrasings) -> dict[str, tuple]:
    """``kind -> eval families`` (file order) of every kind the file has (low and high always: the file is checked
    for them when it is read; neutral may be missing, and then no neutral control is run)."""
    families = {kind: tuple(phrasings.families_for(EVAL_SPLIT, kind)) for kind in KINDS}
    return {kind: found for kind, found in families.items() if found}


def question_commands(families: Sequence, count: int) -> list[Command]:
    """The command of each of ``count`` questions: question ``i`` gets family ``i mod F``, phrasing ``(i // F)`` of it.

    Every family gets ``count // F`` or one more question; within a family the phrasings take turns.

    Example:
        >>> from autodeco.data.phrasings import PhrasingFamily
        >>> family = lambda name, phrasings: PhrasingFamily(name=name, kind="low", split="eval", placement="after",
        ...                                                 language="en", style="plain", phrasings=phrasings)
        >>> a, b = family("a", ("a1", "a2")), family("b", ("b1",))
        >>> [command.text for command in question_commands([a, b], 5)]
        ['a1', 'b1', 'a2', 'b1', 'a1']
    """
    if not families:
        raise ValueError("question_commands needs at least one phrasing family, got none")
    commands = []
    for index in range(count):
        family = families[index % len(families)].commands()  # family i mod F
        commands.append(family[(index // len(families)) % len(family)])  # its phrasings in turn
    return commands


def run_conditions(kinds: Sequence[str]) -> tuple[str, ...]:
    """The prompts each question gets: the plain one and one per command kind present, in :data:`CONDITIONS` order.

    Example:
        >>> run_conditions(["low", "high"])
        ('none', 'low', 'high')
    """
    return tuple(condition for condition in CONDITIONS if condition == PLAIN or condition in kinds)


def command_record(command: Command) -> dict[str, str]:
    """What the report keeps of a question's command: its text, family and placement."""
    return {"text": command.text, "family": command.family, "placement": command.placement}


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
        A JSON-ready dict (see :func:`summarise`) with ``settings`` added.

    Example:
        >>> result = control_evaluation(ControlEvalConfig(datasets=["arithmetic", "gsm8k"]))  # doctest: +SKIP
        >>> result["by_source"]["gsm8k"]["modes"]["greedy"]["directions"]["low"]["temperature"]["moved"]  # doctest: +SKIP
        0.97
    """
    from autodeco.problems import load_problems

    phrasings = load_phrasings(config.phrasings)  # bad files fail before any model loads
    families = eval_families(phrasings)
    problems = {source: load_problems(source, split=config.split, limit=config.questions, seed=config.seed,
                                      data_dir=config.data_dir)
                for source in config.datasets}
    commands = {source: {kind: question_commands(found, len(problems[source])) for kind, found in families.items()}
                for source in problems}
    conditions = run_conditions(list(families))
    loaded, reference = _load(config.heads, config.base)
    compared = None
    if config.compare_heads is not None:
        compared, compare_reference = _load(config.compare_heads, config.base, llm=loaded.model.llm)
    runs = [("heads", loaded, tuple(config.modes), conditions)]
    if compared is not None:
        runs.append(("compare", compared, (SAMPLED,), (PLAIN,)))
    from autodeco.common.fingerprint import tensors_fingerprint

    settings = {
        **dataclasses.asdict(config),
        "heads": reference, "model": loaded.description,
        "heads_fingerprint": tensors_fingerprint(loaded.model.head_state_dict()),
        "compare_heads": compare_reference if compared is not None else None,
        "compare_heads_fingerprint": tensors_fingerprint(compared.model.head_state_dict()) if compared is not None else None,
        "phrasings": phrasings.source, "phrasings_fingerprint": phrasings.fingerprint,
        "conditions": list(conditions),
        "eval_families": [_family_record(family) for found in families.values() for family in found],
        "max_new_tokens_per_source": {source: config.max_new_tokens_for(source) for source in problems},
        "distinct_ngram": DISTINCT_NGRAM,
        "greedy_values": "teacher-forced",  # greedy decoding records no T/P: its answers are teacher-forced
    }
    problem_ids = {source: [problem.id for problem in found] for source, found in problems.items()}
    record = _Progress(output, settings, problem_ids, overwrite) if output is not None else None
    questions = _answer_all(config, problems, commands, runs, progress, record)
    result = summarise(questions, resamples=config.resamples, seed=config.seed)
    result["settings"] = settings
    return result


def _family_record(family) -> dict:
    return {"name": family.name, "kind": family.kind, "split": family.split, "placement": family.placement,
            "language": family.language, "style": family.style, "phrasings": list(family.phrasings)}


_NOT_AFFECTING_ANSWERS = ("resamples", "heads", "compare_heads", "phrasings", "data_dir", "model")
"""Settings a resumed run may change: the bootstrap (only the summary reads it) and paths (their content is
compared through the fingerprints and the problems' ids)."""


class _Progress:
    """A run folder's record of finished batches: what to skip on resume, and where new ones go.

    Each line holds one (source, batch start, heads run, mode, prompt) and its questions' values.
    """

    def __init__(self, output: str | os.PathLike, settings: dict, problem_ids: dict[str, list[str]], overwrite: bool):
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
        self.done = {progress_key(row): row["values"] for row in read_jsonl_tolerant(self.folder / PROGRESS_FILE)}

    def get(self, key: tuple, count: int) -> list[dict] | None:
        """The recorded values of ``key`` when all ``count`` questions of its batch are there, else None."""
        stored = self.done.get(key)
        return stored if stored is not None and len(stored) == count else None

    def add(self, key: tuple, values: list[dict]) -> None:
        from autodeco.common.jsonl import append_jsonl

        source, start, run, mode, condition = key
        append_jsonl(self.folder / PROGRESS_FILE, [{"source": source, "start": start, "run": run, "mode": mode,
                                                    "condition": condition, "values": values}])


def progress_key(row: dict) -> tuple:
    """``(source, start, run, mode, condition)`` of a progress line: what one finished pass is recorded under.

    Example:
        >>> progress_key({"source": "gsm8k", "start": 16, "run": "heads", "mode": "greedy", "condition": "low"})
        ('gsm8k', 16, 'heads', 'greedy', 'low')
    """
    return row.get("source"), row.get("start"), row.get("run"), row.get("mode"), row.get("condition")


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


def _answer_all(config: ControlEvalConfig, problems: dict, commands: dict, runs, progress: bool,
                record: _Progress | None) -> list[dict]:
    """Every question's values per heads run, mode and prompt; batch by batch, each batch's runs with one seed."""
    from tqdm.auto import tqdm

    tokenizer = runs[0][1].tokenizer
    questions = {
        source: [{"source": source, "id": problem.id, "question": problem.question, "answer": problem.answer,
                  "commands": {kind: command_record(commands[source][kind][index]) for kind in commands[source]},
                  "heads": {}, "compare": {}}
                 for index, problem in enumerate(found)]
        for source, found in problems.items()
    }
    same_answer = SAMPLED in runs[0][2]
    passes = sum(len(modes) * len(conditions) for _, _, modes, conditions in runs) + same_answer
    bar = tqdm(total=passes * sum(map(len, problems.values())), desc="control-eval", unit="question",
               disable=not progress)
    for source, found in problems.items():
        for start in range(0, len(found), config.batch_size):
            rows = range(start, min(start + config.batch_size, len(found)))
            batch = [questions[source][row] for row in rows]
            seed = derived_seed("control-eval", config.seed, source, found[start].id)  # one seed for every paired run
            for name, loaded, modes, conditions in runs:
                for mode in modes:
                    for condition in conditions:
                        key = (source, start, name, mode, condition)
                        values = record.get(key, len(rows)) if record is not None else None
                        if values is None:
                            prompts = [_messages(found[row], commands[source], condition, row) for row in rows]
                            values = _answer_batch(loaded.model, tokenizer, prompts, [found[row] for row in rows],
                                                   mode, config, seed, config.max_new_tokens_for(source))
                            if record is not None:
                                record.add(key, values)
                        for question, value in zip(batch, values):
                            question[name].setdefault(mode, {})[condition] = value
                        bar.update(len(rows))
            if same_answer:
                _same_answers(runs[0][1].model, tokenizer, found, commands[source], batch, rows, runs[0][3],
                              record, (source, start, SAME_ANSWER, SAMPLED, "all"))
                bar.update(len(rows))
    bar.close()
    flat = [question for found in questions.values() for question in found]
    for question in flat:
        if not question["compare"]:
            del question["compare"]
        for run in ("heads", "compare"):
            for by_condition in question.get(run, {}).values():
                for values in by_condition.values():
                    values.pop("token_ids", None)  # needed only to teacher-force; the report keeps the texts
    return flat


def _messages(problem, commands: dict[str, list[Command]], condition: str, row: int) -> list[dict[str, str]]:
    """The chat messages of question ``row`` as it is (``none``) or with its command of kind ``condition``."""
    return command_messages(problem.prompt(), None if condition == PLAIN else commands[condition][row])


def _answer_batch(model, tokenizer, prompts, problems, mode: str, config: ControlEvalConfig, seed: int,
                  max_new_tokens: int) -> list[dict]:
    """One batch of prompts answered in ``mode``: each question's values (see :func:`_question_values`)."""
    from autodeco.problems.answers import score
    from autodeco.sampling.inference import render_prompt
    from autodeco.sampling.rollouts import prefill
    from autodeco.sampling.settings import DecodingSetting

    batch = prefill(model.llm, tokenizer, [render_prompt(tokenizer, prompt) for prompt in prompts])
    if mode == SAMPLED:
        completions = _complete(model, tokenizer, batch, seed, DecodingSetting.autodeco(), config.samples,
                                max_new_tokens)
    else:
        completions = _complete(model, tokenizer, batch, seed, DecodingSetting.greedy(), 1, max_new_tokens)
        completions = _with_heads_values(model, tokenizer, prompts, completions)
    values = []
    for problem, samples in zip(problems, completions):
        scored = [score(sample.text, problem.answer, config.scorer) for sample in samples]
        values.append(_question_values(samples, scored, diversity=mode == SAMPLED))
    return values


def _with_heads_values(model, tokenizer, prompts, completions):
    """Greedy completions with the heads' T and P at each of their tokens, teacher-forced after their own prompt.

    Greedy decoding takes the argmax of the base's logits and records no T or P; one teacher-forced pass
    per batch reads the heads' values at the positions that chose each greedy token.
    """
    items = [(prompt, sample.token_ids) for prompt, samples in zip(prompts, completions) for sample in samples]
    per_answer = iter(teacher_forced_values(model, tokenizer, items))
    return [[dataclasses.replace(sample, temperatures=temperatures, top_ps=top_ps)
             for sample, (temperatures, top_ps) in zip(samples, per_answer)]
            for samples in completions]


def _same_answers(model, tokenizer, problems, commands, batch: list[dict], rows, conditions, record: _Progress | None,
                  key: tuple) -> None:
    """Teacher-force each question's plain sampled answers under every prompt: the heads' values on identical tokens."""
    values = record.get(key, len(rows)) if record is not None else None
    if values is None:
        items, places = [], []
        for question, row in zip(batch, rows):
            answers = [answer for answer in question["heads"][SAMPLED][PLAIN]["token_ids"] if answer]
            for condition in conditions:
                prompt = _messages(problems[row], commands, condition, row)
                items += [(prompt, answer) for answer in answers]
                places += [(row, condition)] * len(answers)
        pooled = {(row, condition): ([], []) for row in rows for condition in conditions}
        for place, (temperatures, top_ps) in zip(places, teacher_forced_values(model, tokenizer, items)):
            pooled[place][0].extend(temperatures)
            pooled[place][1].extend(top_ps)
        values = [{condition: _means(*pooled[row, condition]) for condition in conditions} for row in rows]
        if record is not None:
            record.add(key, values)
    for question, value in zip(batch, values):
        question["same_answer"] = value


def _means(temperatures: list[float], top_ps: list[float]) -> dict[str, float]:
    if not temperatures:
        return {"temperature": math.nan, "top_p": math.nan, "tokens": 0}
    return {"temperature": statistics.fmean(temperatures), "top_p": statistics.fmean(top_ps), "tokens": len(temperatures)}


def teacher_forced_values(model, tokenizer, items: Sequence[tuple], rows: int = TEACHER_FORCED_ROWS):
    """The heads' T and P at every token of each answer, fed after its prompt (chat-rendered).

    The values at the positions that predict the answer tokens are the ones a decoding step computes
    there: for a sampled answer the values it was drawn with, for a greedy one the values the heads
    give at each argmax token. Logits and heads are computed from the last prompt position on only
    (:func:`autodeco.evaluation.teacher_forcing.completion_predictions`).

    Args:
        items: ``(prompt, answer token ids)`` pairs; the prompt a string or chat messages.
        rows: sequences per forward pass.

    Returns:
        ``[(temperatures, top_ps)]``, one pair of per-token lists per item (empty for an empty answer).
    """
    import torch

    from autodeco.core.defaults import IGNORE_INDEX
    from autodeco.data.tokens import TrainingExample, tokenize_prompt
    from autodeco.evaluation.teacher_forcing import completion_predictions

    values = [([], []) for _ in items]
    filled = [index for index, (_, answer) in enumerate(items) if len(answer)]
    if not filled:
        return values
    prompt_ids: dict[str, list[int]] = {}
    examples = []
    for index in filled:
        prompt, answer = items[index]
        name = repr(prompt)
        if name not in prompt_ids:
            prompt_ids[name] = tokenize_prompt(tokenizer, prompt)
        ids, answer = prompt_ids[name], list(answer)
        examples.append(TrainingExample(torch.tensor(ids + answer), torch.tensor([IGNORE_INDEX] * len(ids) + answer)))
    for tokens in completion_predictions(model, tokenizer, examples, rows, with_logits=False, from_first_label=True):
        for example, temperature, top_p in zip(tokens["example"].tolist(), tokens["temperature"].tolist(),
                                               tokens["top_p"].tolist()):
            values[filled[example]][0].append(temperature)
            values[filled[example]][1].append(top_p)
    return values


def same_answer_means(model, tokenizer, prompt, answers: Sequence[Sequence[int]]) -> dict[str, float]:
    """The heads' mean T and P over the tokens of ``answers``, each fed after ``prompt`` (chat-rendered).

    The values at the positions that predict the answer tokens are the ones ``generate()`` would
    have sampled those tokens with; they are pooled over all answers' tokens, as for generated answers
    (see :func:`teacher_forced_values`).

    Returns:
        ``{"temperature", "top_p", "tokens"}`` (NaN means when the answers hold no token).
    """
    pooled = teacher_forced_values(model, tokenizer, [(prompt, answer) for answer in answers])
    return _means([value for temperatures, _ in pooled for value in temperatures],
                  [value for _, top_ps in pooled for value in top_ps])


def _complete(model, tokenizer, batch, seed: int, setting, num_samples: int, max_new_tokens: int):
    from autodeco.sampling.rollouts import complete

    return complete(model, tokenizer, batch, setting, num_samples=num_samples, max_new_tokens=max_new_tokens, seed=seed)


def _question_values(samples, scored, *, diversity: bool = True) -> dict:
    """One question under one prompt: token-pooled mean T and P, accuracy, diversity (K > 1 only), the answers."""
    temperatures = [value for sample in samples for value in sample.temperatures]
    top_ps = [value for sample in samples for value in sample.top_ps]
    answers = [extracted for extracted, _ in scored]
    values = {**_means(temperatures, top_ps), "accuracy": sum(bool(correct) for _, correct in scored) / len(scored)}
    if diversity:
        values["distinct_answers"] = distinct_answers(answers)
        values["distinct_ngrams"] = distinct_ngram_ratio([sample.token_ids for sample in samples])
    return {**values, "answers": answers, "texts": [sample.text for sample in samples],
            "token_ids": [list(sample.token_ids) for sample in samples]}
