"""Trajectories -> token ids with completion-only labels -> right-padded batches.

A trajectory becomes

    input_ids = tokens(chat_template(prompt)) + tokens(completion) + [EOS]
    labels    = [-100] * len(prompt tokens)   + tokens(completion) + [EOS]

so a loss or a measurement covers the completion and its end only (PAPER.md section 3:
completion-only loss). Training and the teacher-forced evaluations tokenize the same way.

Shapes: ``B`` batch, ``L`` padded length.
"""

from __future__ import annotations

import dataclasses

import torch

from autodeco.core.defaults import IGNORE_INDEX
from autodeco.data.trajectories import OVERLONG_CHOICES, TrainingDataError


@dataclasses.dataclass
class TrainingExample:
    """One tokenized trajectory.

    Attributes:
        input_ids: ``(L,)`` prompt, completion and EOS token ids.
        labels: ``(L,)`` the same ids, -100 on the prompt.
        location: ``file:line`` of the source line.
        prompt: the user message (chat template not applied), when known.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    location: str = ""
    prompt: str | None = None
    """The user message it was built from (decoding-control pairs append a command to it)."""
    control_only: bool = False
    """An unverified answer (``--control-data``): only decoding control's losses see it, never the paper's."""

    @property
    def num_labelled(self) -> int:
        """Number of tokens the loss is computed on (completion + EOS)."""
        return int((self.labels != IGNORE_INDEX).sum())


def tokenize_trajectory(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-rendered prompt and of the completion followed by EOS.

    The prompt is rendered with the tokenizer's chat template (generation prompt included) and
    tokenized without extra special tokens when a template applies (the template writes them);
    the completion is tokenized on its own, without special tokens, and EOS is appended.

    Returns:
        ``(prompt_ids, completion_ids)``; the completion ids end with ``tokenizer.eos_token_id``.

    Raises:
        TrainingDataError: when the tokenizer has no EOS token.
    """
    if tokenizer.eos_token_id is None:
        raise TrainingDataError("the tokenizer has no eos_token; the trajectories' end cannot be marked")
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenize_prompt(tokenizer, prompt), list(completion_ids)


def tokenize_prompt(tokenizer, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of the chat-rendered prompt (generation prompt included), as :func:`tokenize_trajectory` makes them.

    ``prompt`` is the user message, or chat messages (a system command and the question:
    :func:`autodeco.data.phrasings.command_messages`), rendered by
    :func:`autodeco.sampling.inference.render_prompt`.
    """
    from autodeco.sampling.inference import render_prompt

    has_template = bool(getattr(tokenizer, "chat_template", None))
    rendered = render_prompt(tokenizer, prompt)
    return list(tokenizer(rendered, add_special_tokens=not has_template)["input_ids"])


def fit_to_length(
    prompt_ids: list[int], completion_ids: list[int], max_length: int, overlong: str = "truncate"
) -> tuple[list[int], list[int]] | None:
    """Apply the length limit: keep the whole prompt and cut the completion, or give up.

    Args:
        prompt_ids, completion_ids: from :func:`tokenize_trajectory`.
        max_length: most tokens in the sequence.
        overlong: ``"truncate"`` cuts the completion (dropping EOS too); ``"skip"`` returns None.

    Returns:
        ``(input_ids, labels)``, or None when the sequence must be left out: it is too long and
        ``overlong="skip"``, or not even the prompt plus one completion token fits.

    Example:
        >>> fit_to_length([5, 6], [7, 8, 2], max_length=4)
        ([5, 6, 7, 8], [-100, -100, 7, 8])
        >>> fit_to_length([5, 6, 7, 8], [9, 2], max_length=4) is None
        True
    """
    if overlong not in OVERLONG_CHOICES:
        raise ValueError(f"overlong must be one of {OVERLONG_CHOICES}, got {overlong!r}")
    if len(prompt_ids) + len(completion_ids) > max_length:
        if overlong == "skip" or len(prompt_ids) + 1 > max_length:
            return None
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def collate(examples: list[TrainingExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into one batch.

    Returns:
        ``input_ids`` ``(B, L)`` (``pad_token_id`` after the end), ``attention_mask`` ``(B, L)``,
        ``labels`` ``(B, L)`` (-100 after the end).

    Example:
        >>> batch = collate([TrainingExample(torch.tensor([4, 5, 2]), torch.tensor([-100, 5, 2])),
        ...                  TrainingExample(torch.tensor([4, 2]), torch.tensor([-100, 2]))], pad_token_id=0)
        >>> batch["input_ids"].tolist(), batch["labels"][1].tolist()
        ([[4, 5, 2], [4, 2, 0]], [-100, 2, -100])
    """
    width = max(example.input_ids.shape[0] for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, L)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, L)
    for row, example in enumerate(examples):
        length = example.input_ids.shape[0]
        input_ids[row, :length] = example.input_ids
        labels[row, :length] = example.labels
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
