"""``autodeco eval``: every decoding method on the same problems, with the same sample budget.

Methods (PAPER.md sections 5 and 8):

- ``greedy``: one deterministic answer per problem;
- ``default``: static T = 1.0, P = 1.0;
- ``autodeco``: the heads' per-token T and P;
- ``meanshift``: the static pair (mean T, mean P) of the heads' own teacher-forced predictions on
  held-out verified trajectories;
- ``oracle``: expert-guided tuning searched on the test set itself: T on a grid at P = 1.0, then P
  on a grid at the best T. Reported, and labelled, as test-set tuned;
- any static pair the user gives.

Sampled methods draw ``samples_per_seed`` answers per problem for each seed. Each prompt is
prefilled once per batch and its cache shared by every setting and seed (:mod:`autodeco.sampling.rollouts`);
settings that coincide (default and the grid's T = 1.0, P = 1.0) are generated once. Every answer
is appended to ``samples.jsonl`` as it is produced, so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from autodeco.common.fingerprint import files_fingerprint, model_reference_fingerprint, tensors_fingerprint
from autodeco.common.jsonl import check_resume_config, write_json_atomic
from autodeco.common.runlock import run_lock
from autodeco.common.seeds import derived_seed
from autodeco.evaluation.records import RecordWriter, SampleRecord, read_records
from autodeco.sampling.settings import AUTODECO, GREEDY, DecodingSetting, static_setting

METHODS = ("greedy", "default", "autodeco", "meanshift", "oracle")
"""Built-in method names, in report order."""

DEFAULT_TEMPERATURE_GRID = tuple(round(0.1 * step, 1) for step in range(1, 11))
"""The oracle's temperature grid: 0.1, 0.2, ..., 1.0 (searched at P = 1.0)."""

DEFAULT_TOP_P_GRID = tuple(round(0.1 * step, 1) for step in range(1, 11))
"""The oracle's top-p grid: 0.1, ..., 1.0 (searched at the best temperature)."""



def oracle_grid(step: float = 0.1) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The oracle's temperature and top-p grids with the given step: ``step, 2 * step, ..., 1.0``.

    Example:
        >>> oracle_grid(0.25)
        ((0.25, 0.5, 0.75, 1.0), (0.25, 0.5, 0.75, 1.0))
    """
    if not 0 < step <= 0.5:
        raise ValueError(f"the oracle grid step must be in (0, 0.5], got {step}")
    count = round(1.0 / step)
    if abs(count * step - 1.0) > 1e-6:
        raise ValueError(f"the oracle grid step must divide 1.0 evenly (0.1, 0.2, 0.25, 0.5), got {step}")
    grid = tuple(round(step * index, 4) for index in range(1, count + 1))
    return grid, grid


CONFIG_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
MEANSHIFT_FILE = "meanshift.json"


@dataclasses.dataclass
class EvalConfig:
    """What to evaluate and with how many samples."""

    dataset: str = "arithmetic"
    """Dataset: ``arithmetic`` (built-in), a known name (``gsm8k``, ``math500``, ``aime24``, ...), a JSONL path or ``hf:...``."""
    split: str = "test"
    """Dataset split."""
    limit: int | None = None
    """Number of problems (None: all; the built-in arithmetic test split has its own default size)."""
    heads: str | None = None
    """Heads checkpoint; None: the heads shipped for the embedded default model."""
    base: str | None = None
    """Base model; None: the one the heads record."""
    methods: tuple[str, ...] = METHODS
    """Which built-in methods to run (subset of :data:`METHODS`)."""
    static: tuple[tuple[float, float], ...] = ()
    """Extra user static (T, P) pairs."""
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    """Seeds; each draws ``samples_per_seed`` answers per problem (paper: 8 seeds x 16)."""
    samples_per_seed: int = 4
    """Answers per problem per seed."""
    max_new_tokens: int | None = None
    """Generation length limit (None: 32 for arithmetic, 1024 for other datasets)."""
    batch_size: int = 16
    """Problems per generation batch (each with ``samples_per_seed`` rows)."""
    scorer: str = "math-verify"
    """Answer checker: ``math-verify`` or ``exact`` (the paper's string match)."""
    oracle_temperatures: tuple[float, ...] = DEFAULT_TEMPERATURE_GRID
    """Oracle temperature grid (searched at P = 1.0)."""
    oracle_top_ps: tuple[float, ...] = DEFAULT_TOP_P_GRID
    """Oracle top-p grid (searched at the best temperature)."""
    meanshift: tuple[float, float] | None = None
    """MeanShift's (T, P) given directly; None: computed from ``meanshift_data`` or recorded with the heads."""
    meanshift_data: str | None = None
    """Held-out verified trajectories (JSONL from ``autodeco sample``) for MeanShift's teacher-forced means."""
    data_dir: str | None = None
    """Folder of dataset files for known names (default: $AUTODECO_DATA_DIR)."""
    seed: int = 0
    """Seed of the arithmetic generator (the problems), independent of the sampling seeds."""

    def __post_init__(self):
        if self.max_new_tokens is None:
            from autodeco.problems import default_max_new_tokens

            self.max_new_tokens = default_max_new_tokens(self.dataset)
        unknown = [name for name in self.methods if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(METHODS)}")
        if not self.methods and not self.static:
            raise ValueError(f"no methods to run; choose some of {', '.join(METHODS)} or give static pairs")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        for name, value in (("samples_per_seed", self.samples_per_seed), ("max_new_tokens", self.max_new_tokens),
                            ("batch_size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        from autodeco.problems.answers import SCORERS

        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; use one of {', '.join(SCORERS)}")
        for temperature, top_p in self.static:
            static_setting(temperature, top_p)  # validates
        if "oracle" in self.methods:
            for name, grid in (("oracle_temperatures", self.oracle_temperatures), ("oracle_top_ps", self.oracle_top_ps)):
                if not grid or any(not 0 < value <= (1.0 if name == "oracle_top_ps" else 100) for value in grid):
                    raise ValueError(f"{name} must be a non-empty grid of positive values (top-p <= 1), got {list(grid)}")
            if 1.0 not in self.oracle_top_ps:
                raise ValueError(f"oracle_top_ps must contain 1.0 (the temperature search runs at P = 1.0), got {list(self.oracle_top_ps)}")

    @property
    def samples_per_problem(self) -> int:
        return len(self.seeds) * self.samples_per_seed


@dataclasses.dataclass
class EvalResult:
    """Where an evaluation wrote its outputs, and its summary."""

    output: Path
    summary: dict
    files: dict[str, Path]
    """The report's files (empty when no ``write_report`` was given)."""
    seconds_generating: float
    samples_generated: int


def evaluate(
    config: EvalConfig,
    output: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    write_report: Callable[[Path, dict, list[SampleRecord]], dict[str, Path]] | None = None,
) -> EvalResult:
    """Run (or resume) an evaluation into the folder ``output`` and summarise it.

    Args:
        config: what to evaluate.
        output: the run folder (``run.json``, ``samples.jsonl``; resumed when it holds a matching run).
        overwrite: discard an existing evaluation in ``output`` instead of resuming it.
        progress: show progress bars.
        write_report: called as ``write_report(output, summary, records)`` to render the report
            (``autodeco eval`` passes :func:`autodeco.views.report.write_report`); the files it
            returns become :attr:`EvalResult.files`. None: no report is written.
    """
    from autodeco.problems import load_problems

    output = Path(output)
    problems = load_problems(config.dataset, split=config.split, limit=config.limit, seed=config.seed,
                             data_dir=config.data_dir)
    meanshift_trajectories = _meanshift_trajectories(config)
    loaded = _load_model(config)
    with run_lock(output, "eval"):
        if overwrite:
            for name in (CONFIG_FILE, SAMPLES_FILE, MEANSHIFT_FILE):
                (output / name).unlink(missing_ok=True)
        meanshift = (
            _meanshift_pair(config, loaded, output, meanshift_trajectories) if "meanshift" in config.methods else None
        )
        run_config = _run_config(config, loaded, problems, meanshift)
        _check_same_problems(output / CONFIG_FILE, run_config)
        fix = "choose another output folder or pass --overwrite to start again"
        if not check_resume_config(output / CONFIG_FILE, _comparable(run_config), what="evaluation", fix=fix):
            write_json_atomic(output / CONFIG_FILE, _comparable(run_config))
        if meanshift is not None and config.meanshift is None and not (output / MEANSHIFT_FILE).exists():
            write_json_atomic(output / MEANSHIFT_FILE, dict(zip(("temperature", "top_p", "source"), meanshift)))
        return _generate_and_summarise(config, loaded, problems, run_config, output, progress, write_report)


def _generate_and_summarise(config, loaded, problems, run_config, output: Path, progress: bool, write_report):
    from autodeco.evaluation.summary import build_summary

    generator = _Generator(config, loaded, problems, output / SAMPLES_FILE, progress)
    generator.run(_first_stage_settings(config, run_config["methods"]), stage="settings")
    if "oracle" in config.methods:
        best_temperature = _best_oracle_temperature(config, output / SAMPLES_FILE, problems)
        second = [DecodingSetting.static(best_temperature, top_p) for top_p in config.oracle_top_ps]
        generator.run(second, stage=f"oracle top-p at T={best_temperature:.2f}")
    records = read_records(output / SAMPLES_FILE)
    summary = build_summary(run_config, records)
    summary["throughput"] = generator.throughput()
    files = write_report(output, summary, records) if write_report is not None else {}
    return EvalResult(output, summary, files, generator.seconds, generator.generated)


# ----------------------------------------------------------------------------------------------- setup


def _load_model(config: EvalConfig):
    from autodeco.pretrained import default_heads_for
    from autodeco.sampling.inference import load_for_generation

    heads = config.heads or default_heads_for(config.base)
    loaded = load_for_generation(heads, config.base)
    loaded.heads_reference = heads or "none: fresh, untrained heads"
    return loaded


def _meanshift_trajectories(config: EvalConfig) -> list | None:
    """The trajectories of ``--meanshift-data`` (read and checked before anything is loaded), or None."""
    if "meanshift" not in config.methods or config.meanshift is not None or config.meanshift_data is None:
        return None
    from autodeco.training.data import read_trajectories

    return read_trajectories([config.meanshift_data], what="--meanshift-data file")


def _meanshift_pair(config: EvalConfig, loaded, output: Path, trajectories) -> tuple[float, float, str]:
    """(mean T, mean P, where they come from) for MeanShift: given, cached, measured, or recorded with the heads.

    Writes nothing: the caller caches a measured pair in ``meanshift.json`` once the run's
    configuration (which records the data's fingerprint) is checked.
    """
    if config.meanshift is not None:
        given = DecodingSetting.static(*config.meanshift)  # rounded as setting keys are
        return given.temperature, given.top_p, "given by the user"
    cached = output / MEANSHIFT_FILE
    if cached.exists():
        stored = json.loads(cached.read_text())
        return stored["temperature"], stored["top_p"], stored["source"]
    if trajectories is not None:
        from autodeco.evaluation.heldout import teacher_forced_means

        temperature, top_p, tokens = teacher_forced_means(loaded.model, loaded.tokenizer, trajectories)
        source = f"teacher-forced means over {tokens} completion tokens of {config.meanshift_data}"
    else:
        recorded = (loaded.model.config.training or {}).get("teacher_forced_means")
        if not recorded:
            raise ValueError(
                "MeanShift needs the heads' mean predictions on held-out trajectories: pass --meanshift-data "
                "(a JSONL of verified trajectories, e.g. heldout.jsonl from autodeco sample), or --meanshift T,P, "
                "or leave meanshift out of --methods"
            )
        temperature, top_p = recorded["temperature"], recorded["top_p"]
        source = recorded.get("source", "recorded in the heads checkpoint")
    # Rounded to the resolution of setting keys: the pair reported is the pair applied.
    applied = DecodingSetting.static(temperature, top_p)
    return applied.temperature, applied.top_p, source


def _check_same_problems(stored_file: Path, run_config: dict) -> None:
    """Refuse a resume whose problems changed (ids follow question and answer), naming a few of them."""
    if not stored_file.exists():
        return
    stored = json.loads(stored_file.read_text(encoding="utf-8")).get("problem_ids")
    if stored is None or stored == run_config["problem_ids"]:
        return
    current = set(run_config["problem_ids"])
    gone = [problem_id for problem_id in stored if problem_id not in current]
    new = [problem_id for problem_id in run_config["problem_ids"] if problem_id not in set(stored)]
    parts = [f"{len(items)} {label} (e.g. {items[0]!r})" for label, items in
             (("no longer in the data", gone), ("new", new)) if items] or ["the same problems in another order"]
    raise ValueError(
        f"{stored_file.parent} holds an evaluation of other problems than {run_config['dataset']} now has: "
        f"{'; '.join(parts)}; a question or an answer was edited, or lines were added, removed or moved, so "
        "stored answers would be scored against other problems; choose another output folder or pass --overwrite "
        "to start again"
    )


def _run_config(config: EvalConfig, loaded, problems, meanshift) -> dict:
    methods = {}
    if "greedy" in config.methods:
        methods["greedy"] = GREEDY
    if "default" in config.methods:
        methods["default"] = static_setting(1.0, 1.0)
    if "autodeco" in config.methods:
        methods["autodeco"] = AUTODECO
    if meanshift is not None:
        methods["meanshift"] = static_setting(*meanshift[:2])
    for temperature, top_p in config.static:
        methods[f"static T={temperature:g} P={top_p:g}"] = static_setting(temperature, top_p)
    return {
        "model": loaded.description,
        "base": loaded.model.config.base_model_name_or_path,
        "heads": loaded.heads_reference,
        "dataset": f"{config.dataset} ({config.split} split)",
        "num_problems": len(problems),
        "problem_ids": [problem.id for problem in problems],
        "problem_seed": config.seed,
        "seeds": list(config.seeds),
        "samples_per_seed": config.samples_per_seed,
        "max_new_tokens": config.max_new_tokens,
        "scorer": config.scorer,
        "methods": methods,
        "oracle_grid": (
            {"temperatures": list(config.oracle_temperatures), "top_ps": list(config.oracle_top_ps)}
            if "oracle" in config.methods else None
        ),
        "meanshift_source": meanshift[2] if meanshift is not None else None,
        "base_fingerprint": model_reference_fingerprint(loaded.model.config.base_model_name_or_path),
        "heads_fingerprint": tensors_fingerprint(loaded.model.head_state_dict()),
        "meanshift_data_fingerprint": (
            files_fingerprint([config.meanshift_data])
            if meanshift is not None and config.meanshift is None and config.meanshift_data is not None else None
        ),
        "prompt_template": problems[0].template if problems else None,
    }


def _comparable(run_config: dict) -> dict:
    """The settings a resumed run must share with the stored one (descriptions may differ)."""
    return {key: value for key, value in run_config.items() if key not in ("meanshift_source",)}


def _first_stage_settings(config: EvalConfig, methods: dict[str, str]) -> list[DecodingSetting]:
    """Every method's setting plus the oracle's temperature grid at P = 1.0, each generated once."""
    keys = list(methods.values())
    if "oracle" in config.methods:
        keys += [static_setting(temperature, 1.0) for temperature in config.oracle_temperatures]
    return [DecodingSetting.from_key(key) for key in dict.fromkeys(keys)]  # default == grid (1.0, 1.0): once


def _best_oracle_temperature(config: EvalConfig, samples: Path, problems) -> float:
    """Step 1 of the oracle: the temperature with the best mean Pass@1 over seeds at P = 1.0 (as the summary computes it)."""
    from autodeco.evaluation.metrics import oracle_from_outcomes
    from autodeco.evaluation.summary import outcomes_by_setting, static_outcomes

    wanted = {problem.id for problem in problems}
    records = [record for record in read_records(samples) if record.problem_id in wanted]
    choice, _ = oracle_from_outcomes(static_outcomes(outcomes_by_setting(records)), list(config.oracle_temperatures), [])
    return choice.temperature


# ---------------------------------------------------------------------------------------------- generation


class _Generator:
    """Generates the missing samples of each setting, batch by batch, appending records as it goes."""

    def __init__(self, config: EvalConfig, loaded, problems, samples_path: Path, progress: bool):
        self.config, self.loaded, self.problems = config, loaded, problems
        self.samples_path, self.progress = samples_path, progress
        self.seconds, self.generated, self.new_tokens = 0.0, 0, 0

    def run(self, settings: list[DecodingSetting], *, stage: str) -> None:
        from tqdm.auto import tqdm

        from autodeco.sampling.inference import render_prompt
        from autodeco.sampling.rollouts import prefill

        done = self._finished_groups()
        plan = [(setting, seed) for setting in settings for seed in self._seeds(setting)]
        work = [
            [(setting, seed) for setting, seed in plan if (problem.id, setting.key, seed) not in done]
            for problem in self.problems
        ]
        total = sum(self._samples_for(setting) for items in work for setting, _ in items)
        bar = tqdm(total=total, desc=f"eval: {stage}", unit="sample", disable=not self.progress)
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        with RecordWriter(self.samples_path) as writer:
            for start in range(0, len(self.problems), self.config.batch_size):
                problems = self.problems[start : start + self.config.batch_size]
                todo = work[start : start + self.config.batch_size]
                if not any(todo):
                    continue
                started = time.perf_counter()
                rendered = [render_prompt(tokenizer, problem.prompt()) for problem in problems]
                batch = prefill(model.llm, tokenizer, rendered)
                self.seconds += time.perf_counter() - started
                for setting, seed in plan:
                    rows = [row for row, items in enumerate(todo) if (setting, seed) in items]
                    if not rows:
                        continue
                    records = self._generate(batch, [problems[row] for row in rows], rows, setting, seed)
                    writer.write_many(records)
                    bar.update(len(records))
        bar.close()

    def _seeds(self, setting: DecodingSetting) -> tuple[int, ...]:
        return (0,) if setting.kind == "greedy" else self.config.seeds

    def _samples_for(self, setting: DecodingSetting) -> int:
        return 1 if setting.kind == "greedy" else self.config.samples_per_seed

    def _generate(self, batch, problems, rows, setting: DecodingSetting, seed: int) -> list[SampleRecord]:
        from autodeco.problems.answers import score
        from autodeco.sampling.inference import token_pieces
        from autodeco.sampling.rollouts import PromptBatch, complete

        if len(rows) != len(batch):  # only some problems of the batch still need this setting and seed
            import torch

            index = torch.tensor(rows)
            cache = None
            if batch.cache is not None:
                import copy

                cache = copy.deepcopy(batch.cache)
                cache.batch_select_indices(index)
            batch = PromptBatch(batch.input_ids[index], batch.attention_mask[index], cache)
        started = time.perf_counter()
        completions = complete(
            self.loaded.model, self.loaded.tokenizer, batch, setting,
            num_samples=self._samples_for(setting), max_new_tokens=self.config.max_new_tokens,
            seed=derived_seed("eval", seed, setting.key, problems[0].id),
        )
        self.seconds += time.perf_counter() - started
        records = []
        for problem, samples in zip(problems, completions):
            for index, completion in enumerate(samples):
                extracted, correct = score(completion.text, problem.answer, self.config.scorer)
                records.append(_record(problem, setting, seed, index, completion, extracted, correct,
                                       token_pieces(self.loaded.tokenizer, completion.token_ids)
                                       if setting.kind == "autodeco" else None))
                self.generated += 1
                self.new_tokens += completion.num_tokens
        return records

    def _finished_groups(self) -> set[tuple[str, str, int]]:
        """(problem, setting, seed) groups already complete; records of incomplete groups (a killed write) are dropped."""
        if not self.samples_path.exists():
            return set()
        records = read_records(self.samples_path)
        counts = Counter((record.problem_id, record.setting, record.seed) for record in records)
        needed = {GREEDY: 1}
        complete = {group for group, count in counts.items() if count >= needed.get(group[1], self.config.samples_per_seed)}
        kept = [record for record in records if (record.problem_id, record.setting, record.seed) in complete]
        if len(kept) != len(records):
            from autodeco.common.jsonl import write_text_atomic

            write_text_atomic(self.samples_path, "".join(record.to_json() + "\n" for record in kept))
        return complete

    def throughput(self) -> dict:
        return {
            "samples_generated_this_run": self.generated,
            "new_tokens_this_run": self.new_tokens,
            "seconds_generating_this_run": round(self.seconds, 2),
            "samples_per_second": round(self.generated / self.seconds, 3) if self.seconds else None,
            "tokens_per_second": round(self.new_tokens / self.seconds, 1) if self.seconds else None,
        }


def _record(problem, setting: DecodingSetting, seed: int, index: int, completion, extracted, correct, pieces):
    import statistics

    fields = {}
    if setting.kind == "static":
        fields = dict(temperature_mean=setting.temperature, temperature_std=0.0, top_p_mean=setting.top_p, top_p_std=0.0)
    elif setting.kind == "autodeco" and completion.temperatures:
        temperatures, top_ps = completion.temperatures, completion.top_ps
        fields = dict(
            temperature_mean=statistics.fmean(temperatures), temperature_std=statistics.pstdev(temperatures),
            top_p_mean=statistics.fmean(top_ps), top_p_std=statistics.pstdev(top_ps),
            temperatures=[round(value, 4) for value in temperatures], top_ps=[round(value, 4) for value in top_ps],
            tokens=pieces,
        )
    return SampleRecord(
        problem_id=problem.id, setting=setting.key, seed=seed, sample=index, text=completion.text,
        extracted=extracted, correct=bool(correct), num_tokens=completion.num_tokens, **fields,
    )
