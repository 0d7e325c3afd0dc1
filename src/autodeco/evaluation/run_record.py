"""The record of an evaluation run (``run.json``): what was evaluated, checked again when the run resumes.

A resumed run must evaluate the same problems with the same model, heads, data and settings; only
descriptions may differ (:func:`comparable`). Setting keys written here and in the samples never change
meaning, so a run folder stays resumable.
"""

from __future__ import annotations

from pathlib import Path

from autodeco.common.fingerprint import (
    files_fingerprint,
    model_reference_fingerprint,
    tensors_fingerprint,
)
from autodeco.common.jsonl import read_json
from autodeco.evaluation.config import EvalConfig
from autodeco.evaluation.loading import EvalModel
from autodeco.evaluation.methods import CONTROL_METHODS, FACTORIZATION_METHODS
from autodeco.sampling.settings import (
    COMPARISON_METHODS,
    DecodingSetting,
    static_setting,
)

__all__ = ["check_same_problems", "comparable", "fixed_methods", "run_record"]


def check_same_problems(stored_file: Path, run_config: dict) -> None:
    """Refuse a resume whose problems changed (ids follow question and answer), naming a few of them."""
    if not stored_file.exists():
        return
    fix = "choose another --output or pass --overwrite to start again"
    stored = read_json(stored_file, what="evaluation run configuration", fix=fix)
    stored = stored.get("problem_ids") if isinstance(stored, dict) else None
    if stored is None or stored == run_config["problem_ids"]:
        return
    current = set(run_config["problem_ids"])
    gone = [problem_id for problem_id in stored if problem_id not in current]
    new = [problem_id for problem_id in run_config["problem_ids"] if problem_id not in set(stored)]
    parts = [
        f"{len(items)} {label} (e.g. {items[0]!r})"
        for label, items in (("no longer in the data", gone), ("new", new))
        if items
    ] or ["the same problems in another order"]
    raise ValueError(
        f"{stored_file.parent} holds an evaluation of other problems than {run_config['dataset']} now has: "
        f"{'; '.join(parts)}; a question or an answer was edited, or lines were added, removed or moved, so "
        "stored answers would be scored against other problems; choose another output folder or pass --overwrite "
        "to start again"
    )


def fixed_methods(config: EvalConfig, meanshift) -> dict[str, str]:
    """Setting keys of the methods whose settings are known before any generation (all but the heuristics).

    The controls take their parameters' defaults; the head-factorization methods fix the other value at
    MeanShift's pair (``T`` and ``P`` by name).
    """
    settings = {
        "greedy": DecodingSetting.greedy(),
        "default": DecodingSetting.static(1.0, 1.0),
        "autodeco": DecodingSetting.autodeco(),
        **{name: DecodingSetting.of_method(name, {}) for name in CONTROL_METHODS},
    }
    if meanshift is not None:
        settings["meanshift"] = DecodingSetting.static(*meanshift[:2])
        pair = {"T": meanshift[0], "P": meanshift[1]}
        for name in FACTORIZATION_METHODS:
            values = {parameter: pair[parameter] for parameter in COMPARISON_METHODS[name].parameter_names}
            settings[name] = DecodingSetting.of_method(name, values)
    return {name: settings[name].key for name in config.methods if name in settings}


def run_record(config: EvalConfig, loaded: EvalModel, problems, meanshift, tuning_problems) -> dict:
    methods = fixed_methods(config, meanshift)
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
            {
                "temperatures": list(config.oracle_temperatures),
                "top_ps": list(config.oracle_top_ps),
            }
            if "oracle" in config.methods
            else None
        ),
        "meanshift_source": meanshift[2] if meanshift is not None else None,
        "base_fingerprint": model_reference_fingerprint(loaded.model.config.base_model_name_or_path),
        "heads_fingerprint": tensors_fingerprint(loaded.model.head_state_dict()),
        "meanshift_data_fingerprint": (
            files_fingerprint([config.meanshift_data])
            if meanshift is not None and config.meanshift is None and config.meanshift_data is not None
            else None
        ),
        "prompt_template": problems[0].template if problems else None,
        "tuning_problem_ids": [problem.id for problem in tuning_problems],
        "tuning_source": f"{config.tune_dataset or config.dataset} ({config.tune_split} split)"
        if tuning_problems
        else None,
        "heuristics": config.heuristics,
    }


def comparable(run_config: dict) -> dict:
    """The settings a resumed run must share with the stored one (descriptions may differ)."""
    return {key: value for key, value in run_config.items() if key not in ("meanshift_source",)}
