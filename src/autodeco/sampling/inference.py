"""Text in, text out: prompts -> chat template -> batched dynamic generation -> per-token traces."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from autodeco.model.base_model import EMBEDDED_MODEL, check_token_ids, context_length, load_tokenizer, room_after_prompt
from autodeco.model.modeling import AutoDecoForCausalLM
from autodeco.sampling.traces import GenerationTrace, TokenTrace


@dataclasses.dataclass
class LoadedModel:
    """A model ready for text generation."""

    model: AutoDecoForCausalLM
    tokenizer: object
    description: str
    """e.g. ``embedded:SmolLM2-135M-Instruct + untrained heads``."""

    @property
    def heads_trained(self) -> bool:
        return self.model.config.trained is not False


def load_for_generation(
    heads: str | None = None, base: str | None = None, *, seed: int = 0, trust_remote_code: bool = False
) -> LoadedModel:
    """Load heads (or fresh heads when ``heads`` is None) on a base model, with its tokenizer.

    Args:
        heads: a heads checkpoint folder (ours, official or merged); None for fresh heads.
        base: base model reference; default: the one the checkpoint records, else the embedded default.
        seed: seed of the fresh heads' initial weights.
        trust_remote_code: allow the base's own modelling code.
    """
    if heads is not None:
        model = AutoDecoForCausalLM.from_pretrained(heads, base_model=base, trust_remote_code=trust_remote_code)
        state = {True: "trained heads", False: "untrained heads", None: "heads"}[model.config.trained]
        description = f"{model.config.base_model_name_or_path} + {state} from {heads}"
    else:
        base = base or EMBEDDED_MODEL
        model = AutoDecoForCausalLM.from_base(base, seed=seed, trust_remote_code=trust_remote_code)
        description = f"{base} + untrained heads (seed {seed})"
    reference = base or model.config.base_model_name_or_path
    if heads is not None and model.config.base_model_name_or_path is None:
        raise ValueError("cannot find a tokenizer: the checkpoint records no base model; pass --base")
    tokenizer = load_tokenizer(_tokenizer_source(heads, reference), trust_remote_code=trust_remote_code)
    return LoadedModel(model, tokenizer, description)


def _tokenizer_source(heads: str | None, reference: str) -> str:
    # A merged checkpoint may carry its own tokenizer files.
    if heads is not None and (Path(heads) / "tokenizer_config.json").exists():
        return heads
    return reference


def render_prompt(tokenizer, prompt: str | list[dict[str, str]], chat_template: bool = True) -> str:
    """Wrap a user prompt, or chat messages, in the tokenizer's chat template (when it has one and it is asked for).

    Args:
        tokenizer: a tokenizer; its ``chat_template`` is used when set.
        prompt: the user message, or chat messages (``{"role": ..., "content": ...}`` dicts, e.g. a
            system command and the question: :func:`autodeco.data.phrasings.command_messages`).
        chat_template: False renders the text alone.

    Returns:
        The templated text, generation prompt included; without a template, the prompt itself, or
        the messages' contents joined by newlines.

    Raises:
        ValueError: the prompt (all messages together) is empty, a message is not a role and a
            text, or the chat template refuses the messages (some refuse a system message).

    Example:
        >>> class Plain:  # a tokenizer without a chat template
        ...     chat_template = None
        >>> render_prompt(Plain(), [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2 + 2?"}])
        'Be exact.\\n2 + 2?'
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty; give some text to answer")
        if chat_template and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return prompt
    messages = _checked_messages(prompt)
    if chat_template and getattr(tokenizer, "chat_template", None):
        from jinja2.exceptions import TemplateError

        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as error:
            roles = [message["role"] for message in messages]
            raise ValueError(
                f"the tokenizer's chat template refuses messages with roles {roles}: {error}; "
                "put the command in the user message instead (placement 'after' or 'before')"
            ) from None
    return "\n".join(message["content"] for message in messages)


def _checked_messages(messages) -> list[dict[str, str]]:
    """Chat messages as a list of ``{"role", "content"}`` dicts with text, not all of it blank."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"a prompt must be a text or a list of chat messages, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and all(isinstance(message.get(key), str) for key in ("role", "content"))):
            raise ValueError(f"chat message {index} must be a dict with a 'role' and a text 'content', got {message!r}")
    if not any(message["content"].strip() for message in messages):
        raise ValueError("the prompt is empty; give some text to answer")
    return list(messages)


def encode_prompts(
    tokenizer, texts: list[str], device: torch.device | str = "cpu", llm=None
) -> dict[str, torch.Tensor]:
    """Tokenize rendered prompts as one left-padded batch (``input_ids``, ``attention_mask``).

    With ``llm`` (the base model), prompts are checked against it first: a prompt as long as its
    context (``max_position_embeddings``) is refused, never truncated (a cut prompt would be answered
    as if whole), and so are token ids it cannot embed (a tokenizer larger than the model).

    Raises:
        ValueError: naming the prompt, its length and the limit, or the token id and the vocabulary size.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    has_template = bool(getattr(tokenizer, "chat_template", None))
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
    if llm is not None:
        check_prompts_fit(llm, batch["input_ids"], batch["attention_mask"])
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def check_prompts_fit(llm, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Refuse prompts longer than the base's context (leaving no room to generate) or with ids it cannot embed."""
    check_token_ids(llm, input_ids[attention_mask.bool()])
    limit = context_length(llm)
    if limit is None:
        return
    lengths = attention_mask.sum(dim=1).tolist()
    too_long = [(row, length) for row, length in enumerate(lengths) if length >= limit]
    if too_long:
        row, length = too_long[0]
        fix = f"prompts are not truncated: shorten it below {limit} tokens ({len(too_long)} prompt(s) too long)"
        room_after_prompt(length, limit, prompt=f"prompt {row + 1} of the batch", fix=fix)


def generate_traces(
    loaded: LoadedModel,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int | None = 0,
    chat_template: bool = True,
    batch_size: int = 8,
    streamer=None,
) -> list[GenerationTrace]:
    """Generate an answer to each prompt with dynamic decoding and record each token's T and P.

    Args:
        loaded: from :func:`load_for_generation`.
        prompts: user prompts (plain text; the chat template is applied).
        max_new_tokens: generation length limit.
        temperature, top_p: multipliers on the heads' predictions.
        greedy: greedy decoding (values are still recorded).
        seed: random seed for sampling, from which torch's generators draw during the call and are restored after
            it (None: they draw from, and advance, the caller's state).
        chat_template: apply the tokenizer's chat template.
        batch_size: prompts per batch.
        streamer: a transformers streamer (only with batch size 1).
    """
    if seed is None:
        return _generate_traces(loaded, prompts, max_new_tokens, temperature, top_p, greedy, chat_template, batch_size,
                                streamer)
    device = loaded.model.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _generate_traces(loaded, prompts, max_new_tokens, temperature, top_p, greedy, chat_template, batch_size,
                                streamer)


def _generate_traces(
    loaded: LoadedModel, prompts, max_new_tokens, temperature, top_p, greedy, chat_template, batch_size, streamer
) -> list[GenerationTrace]:
    model, tokenizer = loaded.model, loaded.tokenizer
    rendered = [render_prompt(tokenizer, prompt, chat_template) for prompt in prompts]
    traces = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(tokenizer, rendered[start : start + batch_size], model.device, llm=model.llm)
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature, top_p=top_p,
            return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, streamer=streamer,
        )
        new_tokens = output.sequences[:, batch["input_ids"].shape[1] :]
        for row, prompt in enumerate(prompts[start : start + batch_size]):
            traces.append(
                _trace_for_row(tokenizer, prompt, new_tokens[row], output.temperatures[row], output.top_ps[row], loaded)
            )
    return traces


def _trace_for_row(tokenizer, prompt, token_ids, temperatures, top_ps, loaded: LoadedModel) -> GenerationTrace:
    kept = ~torch.isnan(temperatures)
    token_ids = token_ids[kept].tolist()
    pieces = token_pieces(tokenizer, token_ids, skip_special_tokens=True)
    tokens = [
        TokenTrace(text=piece, temperature=float(temperature), top_p=float(top_p))
        for piece, temperature, top_p in zip(pieces, temperatures[kept].tolist(), top_ps[kept].tolist())
    ]
    return GenerationTrace(prompt=prompt, tokens=tokens, model=loaded.description, heads_trained=loaded.heads_trained)


def token_pieces(tokenizer, token_ids: list[int], *, skip_special_tokens: bool = False) -> list[str]:
    """Each token's text as the difference of successive decodes, so multi-byte characters come out whole.

    With ``skip_special_tokens``, special tokens (``<|im_end|>``, ``</s>``) get an empty piece, so the
    text reads as the model's answer while every token keeps its place (and its T and P).
    """
    pieces, previous = [], ""
    for end in range(1, len(token_ids) + 1):
        text = tokenizer.decode(token_ids[:end], skip_special_tokens=skip_special_tokens)
        pieces.append(text[len(previous) :] if text.startswith(previous) else text)
        previous = text
    return pieces
