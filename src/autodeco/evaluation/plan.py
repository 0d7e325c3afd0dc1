"""The plan of an evaluation: every stage's settings, samples and decoding steps, counted before generating.

``autodeco eval`` prints it (:func:`format_plan`) with a time estimate measured on a short warm-up,
so a run too large for the machine is seen before it starts.
"""

from __future__ import annotations

from autodeco.evaluation.config import EvalConfig
from autodeco.evaluation.methods import CONTROL_METHODS, tuning_candidates
from autodeco.sampling.settings import GREEDY, static_setting

__all__ = ["format_plan", "plan_stages"]


def plan_stages(config: EvalConfig, methods: dict[str, str], num_problems: int, num_tuning: int) -> list[dict]:
    """Every stage's planned settings, samples, new-token bound and generation steps, before anything is generated.

    Counts are for a fresh run (a resumed one skips what is done). ``methods`` maps the fixed methods to their
    setting keys (the heuristics are added per stage, as they are chosen). A batch of ``batch_size`` problems
    runs one ``generate()`` call per setting and seed, of at most ``max_new_tokens`` steps.

    Example:
        >>> config = EvalConfig(methods=("greedy", "autodeco", "oracle"), seeds=(0, 1), samples_per_seed=2,
        ...                     oracle_temperatures=(0.5, 1.0), oracle_top_ps=(0.5, 1.0), max_new_tokens=32)
        >>> [(stage["stage"], stage["settings"], stage["samples"], stage["steps"]) for stage in
        ...  plan_stages(config, {"greedy": "greedy", "autodeco": "autodeco"}, 10, 0)]
        [('methods', 4, 130, 224), ('oracle top-p', 1, 40, 64)]
    """
    per_problem = len(config.seeds) * config.samples_per_seed
    seeds = len(config.seeds)
    stages = []
    heuristics = config.heuristics
    if heuristics and num_tuning:
        candidates = sum(len(tuning_candidates(name)) for name in heuristics)
        stages.append(
            _stage(
                "tune",
                candidates,
                candidates * num_tuning * config.samples_per_seed,
                candidates,
                num_tuning,
                config,
                f"{num_tuning} problems of the {config.tune_split} split x " f"{config.samples_per_seed} samples",
            )
        )
    fixed = {key for name, key in methods.items() if name not in CONTROL_METHODS}
    if "oracle" in config.methods:
        fixed |= {static_setting(temperature, 1.0) for temperature in config.oracle_temperatures}
    sampled = sum(1 for key in fixed if key != GREEDY) + len(heuristics)
    greedy = int(GREEDY in fixed)
    samples = num_problems * (sampled * per_problem + greedy)
    stages.append(
        _stage(
            "methods",
            sampled + greedy,
            samples,
            sampled * seeds + greedy,
            num_problems,
            config,
            f"{num_problems} problems",
        )
    )
    controls = config.controls
    if controls:
        stages.append(
            _stage(
                "controls",
                len(controls),
                len(controls) * num_problems * per_problem,
                len(controls) * seeds,
                num_problems,
                config,
                "values drawn from the methods stage's AutoDeco samples",
            )
        )
    if "oracle" in config.methods:
        second = len([top_p for top_p in config.oracle_top_ps if top_p != 1.0])
        stages.append(
            _stage(
                "oracle top-p",
                second,
                second * num_problems * per_problem,
                second * seeds,
                num_problems,
                config,
                "top-p grid at the best temperature of the methods stage",
            )
        )
    return stages


def _stage(
    name: str,
    settings: int,
    samples: int,
    runs_per_batch: int,
    problems: int,
    config: EvalConfig,
    what: str,
) -> dict:
    batches = -(-problems // config.batch_size)
    return {
        "stage": name,
        "settings": settings,
        "samples": samples,
        "max_tokens": samples * config.max_new_tokens,
        "steps": runs_per_batch * batches * config.max_new_tokens,
        "what": what,
    }


def format_plan(stages: list[dict], seconds_per_step: float | None) -> str:
    """The plan as printed before a run: one line per stage, the totals and the time estimate.

    The estimate assumes every generation call runs to ``max_new_tokens`` (a batch stops only when its
    last row ends), at the step time measured on a full batch of AutoDeco (the slowest method).

    Example:
        >>> stages = [{"stage": "methods", "settings": 3, "samples": 120, "max_tokens": 3840, "steps": 96,
        ...            "what": "10 problems"}]
        >>> print(format_plan(stages, 0.05))
        plan: methods: 3 settings, 120 samples, <= 3,840 new tokens (10 problems)
        total: 120 samples, <= 3,840 new tokens in <= 96 decoding steps of a batch
        estimate: at most about 0 min (5 s) at the warm-up's 50 ms per step; answers that all end early finish sooner
    """
    lines = [
        f"plan: {stage['stage']}: {stage['settings']} settings, {stage['samples']:,} samples, "
        f"<= {stage['max_tokens']:,} new tokens ({stage['what']})"
        for stage in stages
    ]
    samples, tokens = (
        sum(stage["samples"] for stage in stages),
        sum(stage["max_tokens"] for stage in stages),
    )
    steps = sum(stage["steps"] for stage in stages)
    lines.append(f"total: {samples:,} samples, <= {tokens:,} new tokens in <= {steps:,} decoding steps of a batch")
    if seconds_per_step:
        seconds = steps * seconds_per_step
        lines.append(
            f"estimate: at most about {seconds / 60:.0f} min ({seconds:.0f} s) at the warm-up's "
            f"{seconds_per_step * 1000:.0f} ms per step; answers that all end early finish sooner"
        )
    return "\n".join(lines)
