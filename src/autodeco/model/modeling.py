"""``AutoDecoForCausalLM``: a frozen causal LM with a temperature head and a top-p head."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import ModelOutput

from autodeco.core.dynamic import blank_after_end
from autodeco.core.multipliers import Multipliers
from autodeco.model.base_model import base_reference, check_token_ids, context_length, load_base_model, room_after_prompt
from autodeco.model.checkpoint import BASE_PREFIX, CheckpointError, check_finite, read_checkpoint, write_checkpoint
from autodeco.model.compat import CACHE_ARGUMENT, output_cache
from autodeco.model.config import AutoDecoConfig
from autodeco.model.generation import (
    AutoDecoLogitsProcessor,
    capture_output_head_input,
    check_decoding_mode,
    generate_with_base,
    output_head,
    output_head_shape,
    sanitized_generation_config,
)
from autodeco.model.heads import AutoDecoHeads


@dataclasses.dataclass
class AutoDecoOutput(ModelOutput):
    """Output of :meth:`AutoDecoForCausalLM.forward`.

    The training losses are not part of it: :mod:`autodeco.core.losses` computes them from ``logits``,
    ``temperature`` and ``top_p`` (what the training recipe does).

    Attributes:
        logits: ``(B, L, V)`` the base model's unscaled logits.
        temperature, top_p: ``(B, L)`` per-position predictions (1.0 for a disabled head).
        head_input: ``(B, L, H)`` the final hidden states the heads read (what other heads would read too).
        cache / past_key_values: the base model's cache, under the name the installed transformers
            uses for it (``cache`` from 5.24 on, ``past_key_values`` before).
    """

    logits: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    head_input: torch.Tensor | None = None
    # The cache field follows the installed transformers, like the base model's own outputs.
    if CACHE_ARGUMENT == "cache":
        cache: Any = None
    else:
        past_key_values: Any = None


@dataclasses.dataclass
class AutoDecoGenerateOutput(GenerateDecoderOnlyOutput):
    """``generate()`` output with the per-token values used: ``temperatures`` and ``top_ps``, each ``(B, new_tokens)``.

    Positions after a sequence's end-of-sequence token hold NaN.
    """

    temperatures: torch.Tensor | None = None
    top_ps: torch.Tensor | None = None


class AutoDecoForCausalLM(AutoDecoHeads):
    """A causal LM that predicts its own temperature and top-p for every token.

    The base model is ``model.llm`` and stays frozen; only ``temp_head`` and ``top_p_head`` train. The heads,
    their policy and their loader are those of :class:`~autodeco.model.heads.AutoDecoHeads`.

    Example:
        >>> model = AutoDecoForCausalLM.from_base("embedded:SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> output = model(input_ids)  # doctest: +SKIP
        >>> output.temperature.shape, output.top_p.shape  # doctest: +SKIP
        (torch.Size([1, 12]), torch.Size([1, 12]))
    """

    config_class = AutoDecoConfig
    """What ``AutoModelForCausalLM.register`` checks against the registered config class."""

    input_modalities = "text"
    """What the model reads, as transformers models declare it (a pipeline's ``repr`` shows it)."""

    output_modalities = "text"
    """What the model writes, likewise."""

    def __init__(self, llm: nn.Module, config: AutoDecoConfig):
        nn.Module.__init__(self)  # the base first, then the heads (AutoDecoHeads.add_heads): the tensors' order
        check_base_fits(config, llm)
        self.config = config
        self.llm = llm
        self.llm.requires_grad_(False)
        self.llm.eval()
        self.add_heads()
        device = output_head(llm).weight.device
        self.temp_head.to(device)
        self.top_p_head.to(device)

    # ----------------------------------------------------------------------------------------- creation

    @classmethod
    def from_base(
        cls,
        base: str | os.PathLike | nn.Module,
        *,
        enable_temperature_head: bool = True,
        enable_top_p_head: bool = True,
        use_enhanced_features: bool = True,
        dtype: torch.dtype | str | None = None,
        trust_remote_code: bool = False,
        seed: int | None = None,
    ) -> "AutoDecoForCausalLM":
        """Wrap a base model with fresh (untrained) heads.

        Args:
            base: hub id, local folder, ``embedded:SmolLM2-135M-Instruct``, or a loaded causal LM.
            enable_temperature_head: predict temperatures (else T = 1).
            enable_top_p_head: predict top-p (else P = 1).
            use_enhanced_features: the top-p head reads the four probability features.
            dtype: dtype to load the base in (default: the checkpoint's).
            trust_remote_code: allow the base's own modelling code (off unless you ask).
            seed: seed for the heads' initial weights.
        """
        if isinstance(base, nn.Module):
            llm, reference = base, getattr(base, "name_or_path", None) or None
        else:
            llm, reference = load_base_model(base, dtype=dtype, trust_remote_code=trust_remote_code), base_reference(base)
        vocab_size, hidden_size = output_head_shape(llm)  # the full shape, also under ZeRO-3 partitioning
        config = AutoDecoConfig(
            hidden_size=hidden_size,
            vocab_size=vocab_size,
            base_model_name_or_path=reference,
            base_model_type=llm.config.model_type,
            enable_temperature_head=enable_temperature_head,
            enable_top_p_head=enable_top_p_head,
            use_enhanced_features=use_enhanced_features,
            base_config=llm.config.to_dict(),
        )
        if seed is None:
            return cls(llm, config)
        with torch.random.fork_rng(devices=[]):  # seed the heads without touching the caller's random state
            torch.manual_seed(seed)
            return cls(llm, config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        base_model: str | os.PathLike | nn.Module | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        config: AutoDecoConfig | None = None,
        torch_dtype: torch.dtype | str | None = None,
        **transformers_kwargs,
    ) -> "AutoDecoForCausalLM":
        """Load a heads-only (ours or official) or merged checkpoint.

        Also what ``transformers.AutoModelForCausalLM.from_pretrained(path, ...)`` ends in (see
        :mod:`autodeco.model.auto`), so it takes the keywords that call passes on.

        Args:
            path: the checkpoint folder.
            base_model: the base to put the heads on; overrides the one the checkpoint records
                (and, for a merged checkpoint, the base weights stored in it).
            dtype, trust_remote_code: as in :meth:`from_base`.
            device_map: where to put the base (transformers' ``device_map``: ``"auto"``, ``"cpu"``, a dict);
                the heads follow the base's output layer. Not used with a loaded ``base_model``.
            config: a config to use instead of the checkpoint's (what ``AutoModelForCausalLM`` passes).
            torch_dtype: transformers' older name for ``dtype``.
            **transformers_kwargs: the bookkeeping ``AutoModelForCausalLM`` adds (``_from_auto``, a ``revision``
                of None, ...); anything else is refused, naming it.

        Raises:
            CheckpointError: missing or corrupt files, no recorded base, or heads that do not fit the base.
            ValueError: a keyword this loader does not use, or ``dtype`` and ``torch_dtype`` that disagree.
        """
        dtype = _one_dtype(dtype, torch_dtype)
        _check_auto_kwargs(transformers_kwargs, path)
        contents = read_checkpoint(path)
        check_finite(contents.head_tensors, str(contents.path))
        config = contents.config if config is None else config
        if isinstance(base_model, nn.Module):
            if device_map is not None:
                raise ValueError(
                    f"device_map={device_map!r} places a base loaded here, but base_model is a loaded model; "
                    "move it yourself (base.to(...)) and drop device_map"
                )
            llm = base_model
            check_base_fits(
                config, llm, given=getattr(base_model, "name_or_path", None) or type(base_model).__name__,
                heads=str(contents.path),
            )
        elif base_model is not None:
            llm = load_base_model(base_model, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map)
            check_base_fits(config, llm, given=str(base_model), heads=str(contents.path))
            config = dataclasses.replace(config, base_model_name_or_path=base_reference(base_model))
        elif contents.merged:
            llm = _load_merged_base(contents.path, config, dtype, trust_remote_code, device_map)
        else:
            reference = config.base_model_name_or_path
            if not reference:
                raise CheckpointError(
                    f"{str(contents.path)!r} does not record its base model; pass base_model= (or --base)"
                )
            llm = load_base_model(
                _relative_to(reference, contents.path), dtype=dtype, trust_remote_code=trust_remote_code,
                device_map=device_map,
            )
        model = cls(llm, config)
        model.load_head_tensors(contents.head_tensors, source=str(contents.path))
        return model

    def save_pretrained(self, path: str | os.PathLike, *, merged: bool = False) -> Path:
        """Save the heads (a few MB: ``config.json`` + ``model.safetensors``), or with ``merged=True`` the base too."""
        tensors = dict(self.head_state_dict())
        if merged:
            tensors.update({BASE_PREFIX + name: tensor for name, tensor in self.llm.state_dict().items()})
        return write_checkpoint(path, self.config, tensors)

    # ------------------------------------------------------------------------------------ forward pass

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **base_kwargs,
    ) -> AutoDecoOutput:
        """Run the base model once and the heads on every position.

        Args:
            input_ids: ``(B, L)``.
            attention_mask: ``(B, L)``.
            **base_kwargs: passed to the base model (``cache`` or ``past_key_values``, ``position_ids``, ...).

        Returns:
            an :class:`AutoDecoOutput`; the training losses follow from it through :mod:`autodeco.core.losses`.
        """
        with capture_output_head_input(self.llm) as capture, torch.no_grad():
            base_output = self.llm(input_ids=input_ids, attention_mask=attention_mask, **base_kwargs)
        logits = base_output.logits  # (B, L, V)
        temperature, top_p = self.predict(capture.hidden_states, logits)  # (B, L) each
        return AutoDecoOutput(
            logits=logits, temperature=temperature, top_p=top_p, head_input=capture.hidden_states,
            **{CACHE_ARGUMENT: output_cache(base_output)},
        )

    def train(self, mode: bool = True) -> "AutoDecoForCausalLM":
        """Put the heads in training mode; the frozen base always stays in eval mode."""
        super().train(mode)
        self.llm.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.temp_head.mlp[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The base model's dtype (what a transformers pipeline reports); the heads may differ."""
        return self.llm.dtype

    @classmethod
    def can_generate(cls) -> bool:
        """True: :meth:`generate` exists (what ``transformers.pipeline("text-generation", ...)`` asks first)."""
        return True

    @property
    def generation_config(self):
        """The base's token ids and lengths, without its sampling defaults (what :meth:`generate` applies itself).

        A fresh copy on every read: what a caller (such as a ``transformers`` pipeline) changes in it
        applies only where that caller passes it back to :meth:`generate`.
        """
        return sanitized_generation_config(self.llm.generation_config)

    # -------------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        do_sample: bool = True,
        temperature: float | None = None,
        top_p: float | None = None,
        generation_config=None,
        logits_processor: LogitsProcessorList | None = None,
        return_dict_in_generate: bool = False,
        **kwargs,
    ):
        """Generate with dynamic decoding: each token uses the temperature and top-p its heads predict.

        Runs the base model's ``generate()`` (KV cache, batching with left padding, streamers,
        stopping criteria all work) with none of the base's sampling defaults (``top_k=50``,
        repetition penalties, ...): only what you pass here applies.

        What each sampling argument means here, step by step:

        1. the base model's logits; logits processors that transformers puts first
           (``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``, ``min_new_tokens``, ...)
           and then ``logits_processor`` change them;
        2. the heads predict T and P; ``temperature`` and ``top_p`` multiply them; the logits are
           divided by T and cut to the top-P nucleus;
        3. transformers' warpers then act on those warped logits: ``top_k`` keeps the k most likely
           tokens of the nucleus, ``min_p``, ``typical_p``, ``epsilon_cutoff``, ``eta_cutoff`` likewise
           (each off unless passed);
        4. a token is sampled (or, with ``do_sample=False`` or ``temperature=0``, the most likely one is taken).

        Beam search (``num_beams > 1``), group beam, contrastive, assisted, prompt-lookup, constrained
        and DoLa decoding are refused: they score or re-rank beyond the single sampled step the heads warp.

        A prompt must be shorter than the base's context (``max_position_embeddings``); when prompt
        plus ``max_new_tokens`` would run past it, ``max_new_tokens`` is lowered to fit, with a warning.

        Args:
            input_ids: ``(B, L)`` prompt ids (left-padded for batches).
            attention_mask: ``(B, L)``.
            do_sample: sample with the heads' values (True, the default) or decode greedily (False).
            temperature: multiplier on each predicted temperature: a finite number >= 0 (default 1; 0 means greedy).
            top_p: multiplier on each predicted top-p, capped at 1: a finite number > 0 (default 1). Both are
                checked once, as :class:`~autodeco.core.multipliers.Multipliers` (at most 1e4 each).
            generation_config: a ``GenerationConfig``; its temperature/top_p act as multipliers too
                (its ``top_k`` is ignored, since ``GenerationConfig`` sets 50 by default: pass ``top_k=`` instead).
            logits_processor: extra processors, applied before the heads' warping.
            return_dict_in_generate: return an :class:`AutoDecoGenerateOutput` with ``temperatures``
                and ``top_ps`` (``(B, new_tokens)``), the values actually used.
            **kwargs: any other ``generate()`` argument (``max_new_tokens``, ``streamer``, ``top_k``, ``min_p``, ...).

        Returns:
            token ids ``(B, L + new_tokens)``, or an :class:`AutoDecoGenerateOutput`.

        Raises:
            ValueError: a NaN, infinite, negative or too large ``temperature``/``top_p`` (or ``top_p`` 0), an
                unsupported decoding mode, a prompt as long as the context, or token ids the base cannot embed.
        """
        check_decoding_mode(kwargs, generation_config)
        if generation_config is not None:
            generation_config = generation_config.__class__.from_dict(generation_config.to_dict())
            temperature = generation_config.temperature if temperature is None else temperature
            top_p = generation_config.top_p if top_p is None else top_p
            generation_config.temperature, generation_config.top_p, generation_config.top_k = None, None, None
            do_sample = generation_config.do_sample if generation_config.do_sample is not None else do_sample
            generation_config.do_sample = None
        multipliers = Multipliers(  # checked here, once; passed down unchanged
            temperature=1.0 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p
        )
        if input_ids is not None:
            check_prompt_shape(input_ids)
            check_token_ids(self.llm, input_ids)
            self._fit_context(input_ids.shape[1], kwargs, generation_config)
        sample = do_sample and not multipliers.greedy
        if generation_config is not None:
            kwargs["generation_config"] = generation_config
        if not sample and not return_dict_in_generate:
            return generate_with_base(
                self.llm, input_ids, attention_mask, sample=False, logits_processor=logits_processor, **kwargs
            )
        applied = multipliers if sample else dataclasses.replace(multipliers, temperature=1.0)  # greedy: heads' T
        output, (temperatures, top_ps) = self.generate_dynamic(  # (B, steps) each
            input_ids, attention_mask, applied, sample=sample, logits_processor=logits_processor,
            return_dict_in_generate=return_dict_in_generate, **kwargs,
        )
        if not return_dict_in_generate:
            return output
        eos = kwargs.get("eos_token_id")
        if eos is None and generation_config is not None:
            eos = generation_config.eos_token_id
        eos = self.llm.generation_config.eos_token_id if eos is None else eos
        temperatures, top_ps = blank_after_end(output.sequences, [temperatures, top_ps], eos)
        return AutoDecoGenerateOutput(**dict(output), temperatures=temperatures, top_ps=top_ps)

    def generate_dynamic(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        multipliers: Multipliers,
        *,
        sample: bool,
        logits_processor: LogitsProcessorList | None = None,
        on_step=None,
        **kwargs,
    ):
        """The model's token stream: the base's ``generate()`` with the heads' processor, checked arguments assumed.

        What :meth:`generate` runs once it has checked its arguments, and what the Hugging Face engine runs for
        each request (:mod:`autodeco.engines.hf`), so that both decode with the same code.

        Args:
            input_ids, attention_mask: ``(B, L)`` left-padded prompts.
            multipliers: the user's scales (a greedy run passes a temperature multiplier of 1, so the
                temperatures recorded are the heads' own: :meth:`~autodeco.core.multipliers.Multipliers.applied`).
            sample: warp and sample (True) or take the argmax of the base's logits, recording T and P.
            logits_processor: processors run before the heads' warping.
            on_step: called with each step's ``(temperature (B,), top_p (B,))`` as soon as they are computed
                (before the step's token is chosen), e.g. to pair them with a streamer's tokens.
            **kwargs: any other ``generate()`` argument (``max_new_tokens``, ``streamer``, ``eos_token_id``, ...).

        Returns:
            ``(output, (temperatures (B, steps), top_ps (B, steps)))``: ``generate()``'s output and the values used
            at each step (not blanked after the end token).
        """
        with capture_output_head_input(self.llm) as capture:
            processor = AutoDecoLogitsProcessor(self, capture, multipliers, sample, on_step=on_step)
            processors = LogitsProcessorList([*(logits_processor or []), processor])
            output = generate_with_base(
                self.llm, input_ids, attention_mask, sample=sample, logits_processor=processors, **kwargs
            )
        return output, processor.recorded()

    def _fit_context(self, prompt_length: int, kwargs: dict, generation_config) -> None:
        """Refuse a prompt that fills the base's context; lower ``max_new_tokens`` that would run past it."""
        room = room_after_prompt(prompt_length, context_length(self.llm))
        if room is None:
            return
        requested = kwargs.get("max_new_tokens", getattr(generation_config, "max_new_tokens", None))
        if isinstance(requested, int) and requested > room:
            warnings.warn(
                f"prompt ({prompt_length} tokens) + max_new_tokens ({requested}) exceeds the base model's context of "
                f"{prompt_length + room} positions; generating at most {room} new tokens",
                stacklevel=3,
            )
            kwargs["max_new_tokens"] = room
            if generation_config is not None:
                generation_config.max_new_tokens = room


def check_base_fits(config: AutoDecoConfig, llm: nn.Module, *, given: str | None = None, heads: str | None = None) -> None:
    """Refuse a base whose hidden size, vocabulary or type differs from what the heads were made for.

    Args:
        config: the heads' config; its ``base_model_name_or_path`` is the base they were made for.
        llm: the base model given.
        given: how the given base was named (for the message), when it differs from the recorded one.
        heads: where the heads come from (for the message).
    """
    vocab_size, hidden_size = output_head_shape(llm)
    made_for = f"heads{f' in {heads!r}' if heads else ''} were made for base {config.base_model_name_or_path!r}"
    given_base = f"the given base {given!r}" if given else "the given base model"
    advice = "load them with the base they were trained on (or pass that base with --base)"
    if hidden_size != config.hidden_size:
        raise CheckpointError(
            f"{made_for} (hidden size {config.hidden_size}) but {given_base} has hidden size {hidden_size}; {advice}"
        )
    if vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{made_for} (vocabulary of {config.vocab_size}) but {given_base} has {vocab_size}; {advice}"
        )
    base_type = getattr(getattr(llm, "config", None), "model_type", None)
    if config.base_model_type and base_type and base_type != config.base_model_type:
        raise CheckpointError(
            f"{made_for} (a {config.base_model_type!r} model) but {given_base} is a {base_type!r} model; {advice}"
        )


def check_prompt_shape(input_ids: torch.Tensor) -> None:
    """Refuse prompt ids that are not a ``(B, L)`` batch of at least one row and one token.

    Raises:
        ValueError: quoting the shape and what to pass instead.

    Example:
        >>> check_prompt_shape(torch.zeros(1, 0, dtype=torch.long))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: input_ids has shape (1, 0): the prompt is empty; ...
    """
    shape = tuple(input_ids.shape)
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids has shape {shape}, not (batch, length); pass a 2-D tensor of token ids, e.g. "
            "tokenizer(text, return_tensors='pt').input_ids (for one 1-D prompt: input_ids.unsqueeze(0))"
        )
    if 0 in shape:
        raise ValueError(
            f"input_ids has shape {shape}: the prompt is empty; give at least one row of at least one token "
            "(e.g. the tokenizer's BOS token, or the chat template of an empty message)"
        )


AUTO_BOOKKEEPING = ("_from_auto", "_from_pipeline", "adapter_kwargs", "revision", "cache_dir", "force_download",
                    "local_files_only", "proxies", "subfolder", "token", "code_revision", "_commit_hash")
"""Keywords ``AutoModelForCausalLM.from_pretrained`` passes on for a hub download; empty values are accepted."""


def _check_auto_kwargs(kwargs: dict, path) -> None:
    """Accept transformers' loading bookkeeping when it asks for nothing; refuse everything else by name."""
    unused = {name: value for name, value in kwargs.items() if name not in AUTO_BOOKKEEPING or value not in (None, False, "", {})}
    if unused:
        raise ValueError(
            f"AutoDecoForCausalLM.from_pretrained({str(path)!r}) does not use {sorted(unused)} (got {unused!r}): it reads "
            "a local heads folder and loads the base it records with dtype, device_map and trust_remote_code only. "
            "Drop them, or load the base yourself with those options and pass it as base_model="
        )


def _one_dtype(dtype, torch_dtype):
    """``dtype``, or transformers' older ``torch_dtype`` when only that is given."""
    if torch_dtype is None:
        return dtype
    if dtype is not None and dtype != torch_dtype:
        raise ValueError(
            f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them (torch_dtype is the older name)"
        )
    return torch_dtype


def _relative_to(reference: str, checkpoint: Path) -> str:
    """A relative local base path is read relative to the checkpoint folder when it exists there."""
    candidate = checkpoint / reference
    return str(candidate) if not Path(reference).is_absolute() and candidate.exists() else reference


def _load_merged_base(folder: Path, config: AutoDecoConfig, dtype, trust_remote_code: bool, device_map=None):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    base_fields = dict(config.base_config)
    model_type = base_fields.pop("model_type", None) or config.base_model_type
    if not model_type:
        raise CheckpointError(f"merged checkpoint {str(folder)!r} does not record its base model type")
    base_config = AutoConfig.for_model(model_type, **base_fields)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head tensors are reported as unexpected by the base loader
    try:
        llm = AutoModelForCausalLM.from_pretrained(
            folder, config=base_config, key_mapping={r"^llm\.": ""}, dtype=dtype or "auto",
            trust_remote_code=trust_remote_code, use_safetensors=True,
            **({} if device_map is None else {"device_map": device_map}),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return llm.eval()


def register_with_transformers() -> None:
    """Register :class:`AutoDecoConfig` and :class:`AutoDecoForCausalLM` with ``AutoConfig`` and ``AutoModelForCausalLM``.

    Runs when this module is imported; running it again changes nothing. ``import autodeco`` registers earlier,
    without importing this module (:mod:`autodeco.model.auto`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(AutoDecoConfig.model_type, AutoDecoConfig, exist_ok=True)
    AutoModelForCausalLM.register(AutoDecoConfig, AutoDecoForCausalLM, exist_ok=True)


register_with_transformers()
