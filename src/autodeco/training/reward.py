"""The reward recipe (``autodeco train --objective reward``): fit the heads to the accuracy of their own answers.

The paper's likelihood loss fits T and P to verified answers sampled at T = 1, not to accuracy. Here each
optimizer step is on-policy:

1. take ``prompts_per_step`` training prompts (a seeded stream of epochs over the training problems, as the
   likelihood recipe's data order: :func:`autodeco.training.data.global_batch`);
2. draw K answers to each with the *current* heads (dynamic decoding, hard nucleus; :mod:`.on_policy`);
3. score them: reward 1 for a verified answer that ended within ``max_new_tokens``, else 0;
4. advantages: each answer's reward minus its group's mean, divided by the group's std unless
   ``--no-normalize-advantages`` (GRPO); a group whose rewards are all equal gives no gradient;
5. policy gradient on the heads only (the base is frozen):
   ``loss = -sum_i A_i sum_t log pi(y_{i,t}) / (answer tokens)``, with ``-log pi`` the soft top-p NLL of the
   sampled token under the heads' T and P, teacher-forced (:mod:`.reward_step`). The gradient reaches T through
   ``softmax(l / T)`` and P through the soft top-p mask: the sampler uses the hard nucleus, the gradient the
   soft one (see :mod:`autodeco.core.policy_gradient` for what that surrogate does at the nucleus boundary);
6. optionally ``kl_weight * `` the mean squared drift of ``(log T, P)`` from the starting heads' values on the same
   tokens (a cheap stand-in for a KL between the two sampling distributions; off by default).

Processes (``accelerate launch``): each takes every N-th prompt of the step, draws and scores its own answers,
and the float64 gradient sums and statistics are all-reduced, then divided by the global answer-token count, so
every process takes the same step. The answers depend on how the prompts are split (the decode loop draws
from one generator per batch), so the number of processes is a setting a resumed run must keep. DeepSpeed is
refused (the decode loop would need the partitioned base gathered).

The output folder is the likelihood recipe's (:mod:`autodeco.training.state`): ``train_config.json``, ``run.lock``,
``checkpoint-<step>/`` (heads, optimizer, no pickle), ``log.jsonl``, ``training_curve.png``, ``heads/``. Nothing
random depends on torch's global state (the rollouts fork it), so a run killed at any moment and restarted
with the same folder ends, on CPU, with bitwise the heads of an uninterrupted run.

Log columns per step: ``reward_mean``, ``signal_share`` (groups whose rewards differ), ``finished_share``
(answers that ended), ``answer_tokens``, ``loss`` (policy loss + kl_weight * drift), ``policy_loss``, ``kl``
(mean drift), ``temperature_mean``/``temperature_std``/``top_p_mean`` over answer tokens (teacher-forced, the
heads before the step's update), ``greedy_like_share`` (answer tokens with T < 0.05 or a nucleus of one token:
the top token's probability at T reaches P), ``rollout_seconds``, ``step_seconds``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

from autodeco.core.policy_gradient import group_advantages, groups_with_signal
from autodeco.training import state
from autodeco.training.config import ADAM_BETAS, ADAM_EPSILON
from autodeco.training.curve import append_log, truncate_log
from autodeco.training.on_policy import (
    Reward,
    draw_groups,
    group_examples,
    problems_fingerprint,
    rewards_tensor,
    training_problems,
    verified_reward,
)
from autodeco.training.reward_config import RewardConfig
from autodeco.training.reward_curve import write_reward_curve
from autodeco.training.reward_step import STATISTICS, step_gradient

RECIPE = "autodeco.training.reward"
"""How the final heads' training record names this recipe."""

ROLLOUT_STATISTICS = ("answers", "groups", "signal_groups", "reward_sum", "finished")
"""Per-step sums over this process's answers, reduced with the loss step's :data:`~.reward_step.STATISTICS`."""


@dataclasses.dataclass
class RewardResult:
    """What :func:`train_with_reward` did."""

    output_dir: Path
    heads_dir: Path
    steps: int
    resumed_from: int | None
    """Step of the checkpoint this invocation resumed from (None: started fresh)."""
    already_finished: bool
    last_log: dict | None
    main_process: bool = True


@dataclasses.dataclass
class Run:
    """What :func:`setup` prepares for :func:`train` and :func:`save`."""

    output: Path
    settings: dict
    tokenizer: object
    problems: list
    model: object
    start_heads: object | None
    """The starting heads on the same base (drift penalty), or None when ``kl_weight`` is 0."""
    parameters: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    start_step: int
    resumed_from: Path | None


def train_with_reward(
    config: RewardConfig, *, overwrite: bool = False, progress: bool = True, reward: Reward | None = None
) -> RewardResult:
    """Train (or resume training) the heads by policy gradient on the reward of their own answers.

    Args:
        config: the settings.
        overwrite: delete this recipe's files in ``config.output_dir`` first and start again.
        progress: show a progress bar (on the main process).
        reward: ``reward(problem, text, finished) -> float``; None: :func:`~.on_policy.verified_reward` with
            ``config.scorer`` (1 for a verified answer that ended, else 0).

    Raises:
        ValueError: bad problems or settings (before any model loads), an output folder holding another run,
            or a DeepSpeed launch.

    Example:
        >>> train_with_reward(RewardConfig(output_dir="run", max_steps=50)).heads_dir  # doctest: +SKIP
        PosixPath('run/heads')
    """
    from autodeco.training.distributed import make_accelerator, uses_deepspeed

    accelerator = make_accelerator()
    if uses_deepspeed(accelerator):
        raise ValueError(
            "--objective reward does not run under DeepSpeed (the rollouts need the whole base on each process); "
            "launch without a DeepSpeed config (plain accelerate launch, or one process)"
        )
    source = config.source if Path(config.source).expanduser().is_file() else None
    inputs = {"problems file": source, "data folder": config.data_dir, "heads": config.heads, "base model": config.base}
    with state.run_folder_lock(Path(config.output_dir), accelerator, inputs):
        return _train_locked(config, accelerator, overwrite=overwrite, progress=progress,
                             reward=reward or verified_reward(config.scorer))


def run_settings(config: RewardConfig, problems, num_processes: int) -> dict:
    """What ``train_config.json`` records: every setting, the resolved base, the fingerprints, the processes."""
    from autodeco.common.fingerprint import model_reference_fingerprint, tensors_fingerprint
    from autodeco.model.checkpoint import read_checkpoint

    base = state.resolved_base(config)
    settings = dataclasses.asdict(config)
    settings.update(
        objective="reward",
        base=base,
        base_fingerprint=model_reference_fingerprint(base),
        heads_fingerprint=(
            None if config.heads is None else tensors_fingerprint(read_checkpoint(config.heads).head_tensors)
        ),
        problems=len(problems),
        problems_fingerprint=problems_fingerprint(problems),
        num_processes=num_processes,
        rollout_processes=num_processes,  # recorded under a name that matters: the answers depend on the split
    )
    return settings


def _train_locked(
    config: RewardConfig, accelerator, *, overwrite: bool, progress: bool, reward: Reward
) -> RewardResult:
    output = Path(config.output_dir)
    heads_dir = output / state.HEADS_DIR
    if overwrite and accelerator.is_main_process:
        state.clear_output(output)
    accelerator.wait_for_everyone()
    problems = training_problems(config, config.seed)
    settings = run_settings(config, problems, accelerator.num_processes)
    state.check_stored_settings(output, settings)
    finished = state.finished_steps(output)
    if finished is not None:
        _say(accelerator, f"training in {output} already finished ({finished} steps; heads in {heads_dir}); "
                          "nothing to do (pass --overwrite to train again)")
        return RewardResult(output, heads_dir, finished, None, True, None, accelerator.is_main_process)
    run = setup(config, accelerator, settings, problems)
    last_log = train(run, config, accelerator, progress=progress, reward=reward)
    save(run, accelerator, last_log, config.max_steps)
    resumed_from = run.start_step if run.resumed_from is not None else None
    return RewardResult(output, heads_dir, config.max_steps, resumed_from, False, last_log, accelerator.is_main_process)


def setup(config: RewardConfig, accelerator, settings: dict, problems) -> Run:
    """Load the model (and the starting heads for the drift penalty), build the optimizer, restore a checkpoint."""
    from autodeco.model.base_model import load_tokenizer
    from autodeco.training.recipe import load_model, trainable_parameters

    output = Path(config.output_dir)
    tokenizer = load_tokenizer(settings["base"])
    model = load_model(config, settings["base"]).to(accelerator.device)
    if accelerator.is_main_process:
        state.prepare_output(output, settings)
    start_heads = starting_heads(model) if config.kl_weight > 0 else None
    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPSILON, weight_decay=config.weight_decay
    )
    start_step, checkpoint = 0, state.latest_checkpoint(output)
    if checkpoint is not None:
        start_step = state.restore_checkpoint(checkpoint, model, optimizer)
        _say(accelerator, f"resuming from {checkpoint} (step {start_step} of {config.max_steps})")
    if accelerator.is_main_process:
        truncate_log(output, start_step)
    _say(accelerator, f"reward training: {len(problems)} training problems from {config.source}, "
                      f"{config.prompts_per_step} prompts x {config.answers_per_prompt} answers per step")
    return Run(output, settings, tokenizer, problems, model, start_heads, parameters, optimizer, start_step, checkpoint)


def starting_heads(model):
    """A frozen copy of ``model``'s heads as they are now, on the same base (nothing is loaded twice)."""
    from autodeco.model.modeling import AutoDecoForCausalLM

    with torch.random.fork_rng(devices=[]):  # the placeholder heads it builds first leave torch's state alone
        copy = AutoDecoForCausalLM(model.llm, dataclasses.replace(model.config))
    copy.load_head_tensors({name: tensor.detach().clone() for name, tensor in model.head_state_dict().items()},
                           source="the starting heads")
    copy.temp_head.requires_grad_(False).eval()
    copy.top_p_head.requires_grad_(False).eval()
    return copy


def train(run: Run, config: RewardConfig, accelerator, *, progress: bool, reward: Reward) -> dict | None:
    """The loop from ``run.start_step`` to ``config.max_steps``; returns the last ``log.jsonl`` row."""
    from tqdm.auto import tqdm

    from autodeco.data.tokens import pad_token_id
    from autodeco.model.base_model import end_token_ids
    from autodeco.sampling.rollouts import HFRollouts

    engine, end_ids = HFRollouts(run.model, run.tokenizer), end_token_ids(run.model.llm, run.tokenizer)
    bar = tqdm(total=config.max_steps, initial=run.start_step, desc="reward training", unit="step",
               disable=not (progress and accelerator.is_main_process))
    last_log = None
    for step in range(run.start_step, config.max_steps):
        started = time.perf_counter()
        keys, problems = step_problems(run.problems, step, config, accelerator)
        groups = draw_groups(
            engine, run.tokenizer, problems, answers=config.answers_per_prompt, max_new_tokens=config.max_new_tokens,
            batch_size=config.rollout_batch_size, seed_parts=("reward rollouts", config.seed, step), reward=reward,
            end_ids=end_ids, keys=keys,
        )
        rollout_seconds = time.perf_counter() - started
        metrics = optimizer_step(run, config, accelerator, groups, pad_token_id(run.tokenizer))
        metrics.update(rollout_seconds=round(rollout_seconds, 4), step_seconds=round(time.perf_counter() - started, 4))
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", T=f"{metrics['temperature_mean']:.3f}",
                        P=f"{metrics['top_p_mean']:.3f}")
        done = step + 1
        if done % config.log_every == 0 or done == config.max_steps:
            last_log = {"step": done, "learning_rate": config.learning_rate, **metrics}
            if accelerator.is_main_process:
                append_log(run.output, last_log)
        if done % config.save_every == 0 and done < config.max_steps and accelerator.is_main_process:
            state.save_checkpoint(run.output, done, run.model, run.optimizer, config,
                                  examples_seen=done * config.prompts_per_step, write_curve=write_reward_curve)
    bar.close()
    return last_log


def step_problems(problems: list, step: int, config: RewardConfig, accelerator) -> tuple[list[str], list]:
    """This process's prompts of step ``step`` (every N-th of the step's ``prompts_per_step``, a seeded stream of
    epochs over the problems), with their keys ``"<place in the step>:<problem id>"`` for the rollouts' seeds."""
    from autodeco.training.data import global_batch

    items = global_batch(step, config.prompts_per_step, len(problems), config.seed)  # (epoch, index) pairs
    mine = list(enumerate(items))[accelerator.process_index :: accelerator.num_processes]
    return [f"{place}:{problems[index].id}" for place, (_, index) in mine], [problems[index] for _, (_, index) in mine]


def optimizer_step(run: Run, config: RewardConfig, accelerator, groups, pad_id: int) -> dict:
    """Advantages -> summed gradient and statistics -> all-reduce -> mean over answer tokens -> clip -> AdamW."""
    rewards = rewards_tensor(groups)  # (g, K)
    advantages = group_advantages(rewards, normalize=config.normalize_advantages) if groups else rewards  # (g, K)
    gradient, statistics = step_gradient(
        run.model, run.start_heads, run.parameters, group_examples(groups), advantages.reshape(-1),
        steepness=config.steepness, kl_weight=config.kl_weight, batch_size=config.forward_batch_size, pad_id=pad_id,
    )
    signal = float(groups_with_signal(rewards).sum()) if groups else 0.0
    finished = float(sum(sum(group.finished) for group in groups))
    rollout = torch.tensor([rewards.numel(), len(groups), signal, float(rewards.sum()), finished],
                           dtype=torch.float64, device=gradient.device)  # ROLLOUT_STATISTICS
    reduced = accelerator.reduce(torch.cat([gradient, statistics, rollout]), reduction="sum")  # same on every process
    size = gradient.numel()
    values = dict(zip(STATISTICS + ROLLOUT_STATISTICS, reduced[size:].tolist()))
    tokens = max(values["answer_tokens"], 1.0)
    offset = 0
    for parameter in run.parameters:
        parameter.grad = (reduced[offset : offset + parameter.numel()] / tokens).view_as(parameter).to(parameter.dtype)
        offset += parameter.numel()
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.parameters, config.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return step_metrics(values, config.kl_weight)


def step_metrics(values: dict[str, float], kl_weight: float) -> dict:
    """The log row's numbers from a step's reduced sums.

    Example:
        >>> sums = {"answers": 4, "groups": 2, "signal_groups": 1, "reward_sum": 1, "finished": 3, "answer_tokens": 10,
        ...         "policy_loss_sum": -2.0, "drift_sum": 0.0, "temperature_sum": 8.0, "temperature_square_sum": 6.5,
        ...         "top_p_sum": 9.0, "greedy_like_tokens": 2}
        >>> metrics = step_metrics(sums, 0.0)
        >>> metrics["reward_mean"], metrics["signal_share"], metrics["greedy_like_share"]
        (0.25, 0.5, 0.2)
        >>> round(metrics["temperature_std"], 6)  # sqrt(6.5 / 10 - 0.8 ** 2)
        0.1
    """
    tokens, answers = max(values["answer_tokens"], 1.0), max(values["answers"], 1.0)
    temperature_mean = values["temperature_sum"] / tokens
    policy_loss, drift = values["policy_loss_sum"] / tokens, values["drift_sum"] / tokens
    return {
        "reward_mean": values["reward_sum"] / answers,
        "signal_share": values["signal_groups"] / max(values["groups"], 1.0),
        "finished_share": values["finished"] / answers,
        "answer_tokens": values["answer_tokens"] / answers,
        "loss": policy_loss + kl_weight * drift,
        "policy_loss": policy_loss,
        "kl": drift,
        "temperature_mean": temperature_mean,
        "temperature_std": math.sqrt(max(values["temperature_square_sum"] / tokens - temperature_mean**2, 0.0)),
        "top_p_mean": values["top_p_sum"] / tokens,
        "greedy_like_share": values["greedy_like_tokens"] / tokens,
    }


def save(run: Run, accelerator, last_log: dict | None, steps: int) -> None:
    """Write the final heads (``trained: true``, the training record) and the curve; then wait for every process."""
    from autodeco.model.checkpoint import write_checkpoint

    if accelerator.is_main_process:
        record = {"recipe": RECIPE, "objective": "reward", "steps": steps, "problems": len(run.problems),
                  "settings": {key: run.settings[key] for key in sorted(run.settings)}, "final": last_log}
        heads = {name: tensor.detach().to("cpu") for name, tensor in run.model.head_state_dict().items()}
        final_config = dataclasses.replace(run.model.config, trained=True, training=record)
        write_checkpoint(run.output / state.HEADS_DIR, final_config, heads)
        write_reward_curve(run.output)
        _say(accelerator, f"heads written to {run.output / state.HEADS_DIR}")
    accelerator.wait_for_everyone()


def _say(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)
