"""On-policy data: training prompts -> K answers each with the current heads -> rewards -> teacher-forcing rows.

Shared by both on-policy objectives (:mod:`autodeco.training.reward`, :mod:`autodeco.training.rejection`):

* :func:`training_problems`: the training split of a problem source, less the held-out questions, chosen as
  ``autodeco sample`` chooses them (:func:`autodeco.sampling.trajectories.is_heldout`);
* :func:`draw_groups`: the answers, drawn with the heads through the rollout engine ``autodeco sample`` and
  ``autodeco eval`` use (:class:`autodeco.sampling.rollouts.HFRollouts`: each prompt prefilled once, then the
  compacting decode loop), under the AutoDeco setting;
* :func:`verified_reward`: 1 for a verified answer that ended by itself, else 0 (an answer cut off at the token
  limit counts as wrong, like ``autodeco eval --scoring strict``);
* :func:`group_examples`: each answer as a teacher-forcing row, with the exact token ids that were sampled.

Randomness: each generation batch is drawn with a seed derived from ``(seed parts, key of its first prompt)``
(the reward recipe's key: the prompt's place in the step and its problem id), so a resumed run draws the same
answers. The decode loop draws every row from torch's one global generator, so the answers of a prompt depend
on the other prompts of its batch (how many, which); the batch is a function of the step and of the process,
so a run resumed with the same settings and processes draws what it drew before. With one prompt per batch
(``rollout_batch_size=1``) each prompt's answers have a seed of their own and do not depend on the split.

A vLLM engine (:class:`autodeco.engines.vllm.VllmRollouts`) answers the same ``prefill``/``complete`` calls; using
it here would need the heads' new weights loaded into the engine after every optimizer step (not done yet).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import torch

from autodeco.common.seeds import derived_seed
from autodeco.core.defaults import IGNORE_INDEX
from autodeco.data.tokens import TrainingExample
from autodeco.problems.problem import Problem

Reward = Callable[[Problem, str, bool], float]
"""``reward(problem, answer text, finished) -> float``: the score of one answer (``finished``: it ended with an end
token within the limit)."""


@dataclasses.dataclass
class Group:
    """One prompt's K answers and their rewards."""

    problem: Problem
    prompt_ids: list[int]
    """The rendered prompt's token ids, as the answers were generated from them."""
    completions: list
    """K :class:`~autodeco.sampling.rollouts.Completion` (token ids up to and including the end token, if any)."""
    finished: list[bool]
    """Whether each answer ended with an end token (else it was cut off at ``max_new_tokens``)."""
    rewards: list[float]


def verified_reward(scorer: str = "math-verify", *, timeout_s: float | None = None) -> Reward:
    """The production reward: 1.0 for an answer that ended by itself and that ``scorer`` verifies, else 0.0.

    Example:
        >>> reward = verified_reward("exact")
        >>> problem = Problem("p", "What is 2 + 2?", "4", "demo", "arithmetic")
        >>> reward(problem, "2 + 2 = \\\\boxed{4}", True), reward(problem, "2 + 2 = \\\\boxed{4}", False)
        (1.0, 0.0)
    """
    from autodeco.problems.answers import DEFAULT_TIMEOUT_S, score

    def reward(problem: Problem, text: str, finished: bool) -> float:
        if not finished:
            return 0.0
        _, correct = score(text, problem.answer, scorer, timeout_s=timeout_s or DEFAULT_TIMEOUT_S)
        return 1.0 if correct else 0.0

    return reward


def training_problems(settings, seed: int) -> list[Problem]:
    """The problems training draws prompts from: the training split, less the held-out questions.

    Args:
        settings: a :class:`~autodeco.training.reward_config.RolloutSettings` (source, limit, data_dir,
            heldout_fraction).
        seed: the run's seed (the arithmetic generator's and the held-out split's, as in ``autodeco sample``).

    Raises:
        ValueError: no problem is left (naming the source and the fix).
    """
    from autodeco.problems import load_problems
    from autodeco.sampling.trajectories import is_heldout

    problems = load_problems(
        settings.source, split="train", limit=settings.limit, seed=seed, data_dir=settings.data_dir
    )
    kept = [problem for problem in problems if not is_heldout(problem.question, settings.heldout_fraction, seed)]
    if not kept:
        raise ValueError(
            f"dataset {settings.source!r} leaves no training problem ({len(problems)} read, all held out); raise "
            "--limit or lower --heldout-fraction"
        )
    return kept


def problems_fingerprint(problems: Sequence[Problem]) -> str:
    """A short hash of the problems' ids, questions and answers (a resumed run must train on the same ones).

    Example:
        >>> len(problems_fingerprint([Problem("p", "What is 2 + 2?", "4", "demo", "arithmetic")]))
        16
    """
    digest = hashlib.sha256()
    for problem in problems:
        digest.update("\x1f".join((problem.id, problem.question, problem.answer)).encode() + b"\x1e")
    return digest.hexdigest()[:16]


@torch.no_grad()
def draw_groups(
    engine, tokenizer, problems: Sequence[Problem], *, answers: int, max_new_tokens: int, batch_size: int,
    seed_parts: tuple, reward: Reward, end_ids: Sequence[int], keys: Sequence[str] | None = None,
) -> list[Group]:
    """K answers to each problem with the engine's model and heads (the AutoDeco setting), scored.

    Args:
        engine: a rollout engine (``prefill(rendered prompts)``, ``complete(batch, setting, ...)``).
        tokenizer: the base's tokenizer (with its chat template).
        problems: the prompts to answer, in order.
        answers: K, answers per problem.
        max_new_tokens: most tokens per answer.
        batch_size: problems per generation batch.
        seed_parts: what the batches' seeds are derived from, with the key of each batch's first problem.
        reward: scores one answer (:func:`verified_reward` in production).
        end_ids: the token ids that end an answer.
        keys: one string per problem naming it in the seeds (None: the problem ids).

    Returns:
        One :class:`Group` per problem, in order.
    """
    from autodeco.sampling.inference import render_prompt
    from autodeco.sampling.settings import DecodingSetting

    groups = []
    for start in range(0, len(problems), batch_size):
        batch_problems = problems[start : start + batch_size]
        batch = engine.prefill([render_prompt(tokenizer, problem.prompt()) for problem in batch_problems])
        seed = derived_seed(*seed_parts, batch_problems[0].id if keys is None else keys[start])
        completions = engine.complete(
            batch, DecodingSetting.autodeco(), num_samples=answers, max_new_tokens=max_new_tokens, seed=seed
        )
        for row, (problem, samples) in enumerate(zip(batch_problems, completions)):
            prompt_ids = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
            finished = [bool(sample.token_ids) and sample.token_ids[-1] in end_ids for sample in samples]
            rewards = [float(reward(problem, sample.text, done)) for sample, done in zip(samples, finished)]
            groups.append(Group(problem, prompt_ids, list(samples), finished, rewards))
    return groups


def group_examples(groups: Sequence[Group]) -> list[TrainingExample]:
    """Every answer as a teacher-forcing row: prompt ids then the sampled ids, labels on the answer only.

    Rows are group-major (the K answers of the first prompt first), as :func:`rewards_tensor` lays out rewards.

    Example:
        >>> from autodeco.sampling.rollouts import Completion
        >>> problem = Problem("p", "q", "1", "demo", "arithmetic")
        >>> example = group_examples([Group(problem, [5, 6], [Completion("a", [7, 2])], [True], [1.0])])[0]
        >>> example.input_ids.tolist(), example.labels.tolist()
        ([5, 6, 7, 2], [-100, -100, 7, 2])
    """
    examples = []
    for group in groups:
        for completion in group.completions:
            ids = group.prompt_ids + list(completion.token_ids)
            labels = [IGNORE_INDEX] * len(group.prompt_ids) + list(completion.token_ids)
            examples.append(
                TrainingExample(torch.tensor(ids), torch.tensor(labels), group.problem.id, group.problem.prompt())
            )
    return examples


def rewards_tensor(groups: Sequence[Group]) -> torch.Tensor:
    """``(G, K)`` float32 rewards of the groups' answers.

    Example:
        >>> group = Group(Problem("p", "q", "1", "demo", "arithmetic"), [5], [None, None], [True, False], [1.0, 0.0])
        >>> rewards_tensor([group])
        tensor([[1., 0.]])
    """
    if not groups:
        return torch.zeros(0, 0)
    return torch.tensor([group.rewards for group in groups], dtype=torch.float32)
