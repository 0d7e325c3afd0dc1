"""vLLM as an :class:`~autodeco.engines.base.Engine` and as the rollout engine of ``autodeco sample``/``eval``.

The engine runs vLLM's own ``LLMEngine`` **in this process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one
worker): the AutoDeco model class (:mod:`autodeco.engines.vllm_models`) writes the temperature and
top-p it used for each token into a record that this module registered for the request
(:func:`~autodeco.engines.vllm_models.open_record`, named in ``SamplingParams.extra_args``), and the
values come out with the token, streamed. Stock vLLM 0.32 carries no per-token custom value from the
model to the client (its outputs hold token ids, text and logprobs only); sharing the process is
the channel that needs no fork, no pseudo-tokens in the logprobs and no developer RPC. The price: one
device per engine (no tensor or pipeline parallelism), which is what the rollouts need
(data-parallel runs start one engine per device).

A background thread owns the ``LLMEngine``: requests from any thread are queued to it, it steps the
engine while work is pending (every running request in one batch) and hands each request its
outputs; closing a :meth:`VllmEngine.stream` early aborts the request.

**Several heads on one base** (``load_engine(heads, more_heads={id: folder}, plain_base=True)``): the exported
folder carries every heads set (:func:`~autodeco.engines.vllm_export.export_for_vllm`'s ``more_heads``) and the
model class keeps them all on the device; a request's ``heads`` id goes to it in ``extra_args``
(``autodeco_heads``), so rows of one batch may use different heads. The plain base is vLLM's own sampling at
the request's absolute temperature and top-p (``extra_args {"autodeco": false}``), its T and P those values.

Example (needs vLLM; see ``bin/test-vllm``):
    >>> engine = VllmEngine.from_checkpoint("runs/heads")  # doctest: +SKIP
    >>> request = GenerationRequest(prompt_ids=engine.tokenizer.encode("2+2="), max_tokens=8)  # doctest: +SKIP
    >>> [(event.text, round(event.temperature, 2)) for event in engine.stream(request)]  # doctest: +SKIP
    [('4', 0.61), ...]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from autodeco.core.multipliers import Multipliers
from autodeco.engines.base import GenerationRequest, TokenEvent
from autodeco.engines.heads_sets import check_plain_base_top_p
from autodeco.engines.vllm_models import ENABLE_KEY, HEADS_KEY, RECORD_KEY, TOP_P_KEY, close_record, open_record

ENGINE_DEFAULTS = {"enforce_eager": True, "enable_prefix_caching": True, "enable_chunked_prefill": False}
"""Engine arguments used unless given: eager mode (no CUDA-graph/compile warm-up), and no chunked prefill:
vLLM 0.32 rewinds a seeded request's generator after a partial prefill step, which its CPU generators
refuse (``RuntimeError: CPU Generator does not use offset``); whole prompts per step avoid that step."""

@dataclasses.dataclass(frozen=True)
class BaseSampling:
    """How a row decoded by the base model alone samples: absolute values, vLLM's own sampler (no heads).

    Raises:
        ValueError: a temperature that is negative or not finite, or a top-p outside ``(0, 1]``.
    """

    temperature: float = 1.0
    """Absolute temperature (0: greedy)."""
    top_p: float = 1.0
    """Absolute top-p (ignored when greedy)."""

    def __post_init__(self):
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"a base row's temperature must be a finite number >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"a base row's top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass
class RowRequest:
    """One generation of a batch: the rollouts' lower-level request.

    ``decoding`` says who picks T and P: :class:`~autodeco.core.multipliers.Multipliers` for an AutoDeco row
    (the heads' values, scaled; their values are recorded), :class:`BaseSampling` for a row of the base
    alone at absolute values (static and greedy settings).
    """

    prompt_ids: list[int]
    max_tokens: int
    decoding: Multipliers | BaseSampling = Multipliers()
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.decoding, (Multipliers, BaseSampling)):
            raise TypeError(
                f"RowRequest.decoding must be Multipliers (AutoDeco) or BaseSampling (the base alone), "
                f"got {type(self.decoding).__name__}"
            )

    @property
    def autodeco(self) -> bool:
        """Whether the heads decode this row (and their per-token values are recorded)."""
        return isinstance(self.decoding, Multipliers)


@dataclasses.dataclass
class RowResult:
    """What a :class:`RowRequest` produced."""

    token_ids: list[int]
    """Generated ids, the end-of-sequence token included when generation stopped on it."""
    temperatures: list[float] | None
    """Per-token T used (AutoDeco rows), else None."""
    top_ps: list[float] | None
    finish_reason: str


class VllmEngine:
    """vLLM's engine with the AutoDeco plugin, behind the :class:`~autodeco.engines.base.Engine` contract.

    Args:
        model: a vLLM-ready folder (:func:`~autodeco.engines.vllm_export.export_for_vllm`) or a plain
            base model folder (rollouts of the base alone).
        model_name: the id served in ``/v1/models`` (default: the folder's name).
        plain_base_name: also serve the base without heads under this id (absolute temperature and top-p).
        **engine_args: vLLM ``EngineArgs`` (``dtype``, ``max_model_len``, ``seed``, ...) over :data:`ENGINE_DEFAULTS`.
    """

    def __init__(self, model: str | os.PathLike, *, model_name: str | None = None, plain_base_name: str | None = None,
                 **engine_args):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the worker shares this process: see the module docstring
        from transformers import AutoTokenizer
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        self.model_path = str(Path(model).expanduser().resolve())
        self.model_name = model_name or Path(self.model_path).name
        self.plain_base_name = plain_base_name
        self.model_names = _served_names(self.model_path, self.model_name, plain_base_name)
        """Every id served: ``model_name`` (the folder's own heads), the folder's ``more_heads``, the plain base."""
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        args = EngineArgs(model=self.model_path, **{**ENGINE_DEFAULTS, **engine_args})
        self._engine = LLMEngine.from_engine_args(args)
        self.max_model_len = _max_model_len(self._engine)
        """Positions of the context vLLM runs (its ``max_model_len``: the engine argument, else the model's)."""
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        self._outputs: dict[str, queue.SimpleQueue] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._drive, name="autodeco-vllm", daemon=True)
        self._thread.start()

    @classmethod
    def from_checkpoint(
        cls, heads: str | os.PathLike, *, base: str | None = None, model_name: str | None = None,
        more_heads: dict[str, str | os.PathLike] | None = None, plain_base: bool = False, **engine_args
    ) -> "VllmEngine":
        """An engine for an AutoDeco checkpoint (heads-only or merged), exported once to a cached vLLM-ready folder;
        with ``more_heads`` (``{id: checkpoint}``, the same base) and the plain base when ``plain_base``."""
        from autodeco.engines.heads_sets import base_id
        from autodeco.engines.vllm_export import cached_export
        from autodeco.model.checkpoint import read_checkpoint

        name = model_name or Path(heads).name
        plain = None
        if plain_base:
            recorded = read_checkpoint(heads).config.base_model_name_or_path
            plain = base_id(base or recorded, taken=[name, *(more_heads or {})])
        folder = cached_export(heads, base=base, more_heads=more_heads)
        return cls(folder, model_name=name, plain_base_name=plain, **engine_args)

    # ------------------------------------------------------------------------------------------ contract

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Yield one :class:`TokenEvent` per generated token, with the T and P used (see the module docstring)."""
        name = self.model_name if request.heads is None else request.heads
        if name not in self.model_names:
            raise ValueError(f"model {name!r} is not served here; this engine serves {', '.join(map(repr, self.model_names))}")
        plain = name == self.plain_base_name
        if plain:
            check_plain_base_top_p(request.top_p, name)
        key = f"{request.request_id or 'request'}-{uuid.uuid4().hex}"
        record = None if plain else open_record(key)
        params = self._sampling_params(
            BaseSampling(request.temperature, request.top_p) if plain else request.multipliers, seed=request.seed,
            max_tokens=request.max_tokens, stop=list(request.stop), record=None if plain else key, stream=True,
            heads=None if name == self.model_name else name,
        )
        outputs = self._submit(key, request.prompt_ids, params)
        emitted, finished = 0, False
        try:
            for output in _until_finished(outputs):
                completion = output.outputs[0]
                new_ids = list(completion.token_ids)
                for offset, token in enumerate(new_ids):
                    last = offset == len(new_ids) - 1
                    if plain:  # the base's own sampling: the request's values are the ones used
                        temperature, top_p = request.temperature, request.top_p
                    else:
                        temperature, top_p = record[emitted] if emitted < len(record) else (math.nan, math.nan)
                    reason = _finish_reason(completion.finish_reason) if last and output.finished else None
                    emitted += 1
                    yield TokenEvent(token, completion.text if last else "", temperature, top_p, reason)
                finished = output.finished
        finally:
            if not finished:
                self._incoming.put(("abort", key, None, None))
            close_record(key)

    # ------------------------------------------------------------------------------------------ rollouts

    def generate(self, rows: list[RowRequest]) -> list[RowResult]:
        """Run every row in one continuous batch and return their results in order."""
        keys = [f"row-{uuid.uuid4().hex}" for _ in rows]
        records = [open_record(key) if row.autodeco else None for key, row in zip(keys, rows)]
        try:
            pending = []
            for key, row in zip(keys, rows):
                params = self._sampling_params(
                    row.decoding, seed=row.seed, max_tokens=row.max_tokens, stop=None,
                    record=key if row.autodeco else None, stream=False,
                )
                pending.append(self._submit(key, row.prompt_ids, params))
            results = []
            for outputs, record in zip(pending, records):
                final = list(_until_finished(outputs))[-1].outputs[0]
                token_ids = list(final.token_ids)
                values = list(record[: len(token_ids)]) if record is not None else None
                results.append(RowResult(
                    token_ids,
                    [value[0] for value in values] if values is not None else None,
                    [value[1] for value in values] if values is not None else None,
                    _finish_reason(final.finish_reason),
                ))
            return results
        finally:
            for key in keys:
                close_record(key)

    def close(self) -> None:
        """Stop the engine's thread (the engine is freed with the object)."""
        self._closed = True
        self._incoming.put(("wake", None, None, None))
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------------------- internals

    def _sampling_params(self, decoding: Multipliers | BaseSampling, *, seed, max_tokens, stop, record, stream,
                         heads: str | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        temperature = float(decoding.temperature)
        if isinstance(decoding, Multipliers):  # vLLM's temperature field carries the multiplier; the plugin reads it
            extra = {TOP_P_KEY: float(decoding.top_p)}
            if record is not None:
                extra[RECORD_KEY] = record
            if heads is not None:
                extra[HEADS_KEY] = heads
            sampling = {"temperature": temperature, "top_p": 1.0}
        else:
            extra = {ENABLE_KEY: False}
            sampling = {"temperature": temperature, "top_p": float(decoding.top_p) if temperature > 0 else 1.0}
        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        return SamplingParams(
            **sampling, top_k=0, seed=seed, max_tokens=max_tokens, stop=stop or None, extra_args=extra,
            output_kind=kind, detokenize=stream,
        )

    def _submit(self, key: str, prompt_ids: list[int], params) -> queue.SimpleQueue:
        outputs: queue.SimpleQueue = queue.SimpleQueue()
        self._incoming.put(("add", key, (list(prompt_ids), params), outputs))
        return outputs

    def _drive(self) -> None:
        """The engine's thread: take new requests and aborts, step while anything runs, hand out the outputs."""
        while not self._closed:
            block = not self._engine.has_unfinished_requests()
            try:
                items = [self._incoming.get(timeout=0.5)] if block else []
            except queue.Empty:
                continue
            while True:
                try:
                    items.append(self._incoming.get_nowait())
                except queue.Empty:
                    break
            for action, key, payload, outputs in items:
                self._apply(action, key, payload, outputs)
            if not self._engine.has_unfinished_requests():
                continue
            try:
                produced = self._engine.step()
            except Exception as error:  # the engine is broken: every waiting request learns why
                for outputs in self._outputs.values():
                    outputs.put(error)
                self._outputs.clear()
                continue
            for output in produced:
                outputs = self._outputs.get(output.request_id)
                if outputs is None:
                    continue
                outputs.put(output)
                if output.finished:
                    del self._outputs[output.request_id]

    def _apply(self, action: str, key: str, payload, outputs) -> None:
        from vllm.inputs import TokensPrompt

        if action == "add":
            prompt_ids, params = payload
            try:
                self._engine.add_request(key, TokensPrompt(prompt_token_ids=prompt_ids), params)
            except Exception as error:  # a request vLLM refuses (too long, bad settings): only its caller hears
                outputs.put(error)
                return
            self._outputs[key] = outputs
        elif action == "abort" and key in self._outputs:
            del self._outputs[key]
            self._engine.abort_request([key])


def load_engine(
    heads: str | os.PathLike | None, *, base: str | None = None, model_name: str | None = None, seed: int = 0,
    more_heads: dict[str, str | os.PathLike] | None = None, plain_base: bool = False, **engine_args,
) -> VllmEngine:
    """The vLLM engine for ``heads`` on ``base`` (what ``autodeco serve --engine vllm`` runs).

    Args:
        heads: a heads checkpoint; None: the heads shipped for ``base`` (the embedded default's), else fresh
            heads seeded with ``seed`` (saved once under ``$AUTODECO_HOME/heads``).
        base: the base model (default: the one the heads record; the embedded default without heads).
        model_name: the id served in ``/v1/models``.
        more_heads: other heads checkpoints of the same base, by the id requests name them with.
        plain_base: also serve the base without heads (:func:`~autodeco.engines.heads_sets.base_id`).
        **engine_args: vLLM engine arguments.
    """
    from autodeco.model.shipped import heads_or_default

    heads = heads_or_default(heads, base)
    if heads is None:
        from autodeco.engines.vllm_export import saved_heads
        from autodeco.model.base_model import EMBEDDED_MODEL
        from autodeco.model.modeling import AutoDecoForCausalLM

        heads = saved_heads(AutoDecoForCausalLM.from_base(base or EMBEDDED_MODEL, seed=seed))
    if more_heads or plain_base:
        engine_args = {**engine_args, "more_heads": more_heads, "plain_base": plain_base}
    return VllmEngine.from_checkpoint(heads, base=base, model_name=model_name, seed=seed, **engine_args)


def _served_names(folder: str, model_name: str, plain_base_name: str | None) -> list[str]:
    """The ids a vLLM-ready ``folder`` serves: ``model_name``, its ``more_heads`` ids, then the plain base's."""
    from autodeco.engines.vllm_export import CONFIG_KEY, more_heads_settings

    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    names = [model_name, *more_heads_settings(config.get(CONFIG_KEY))]
    if plain_base_name is not None:
        names.append(plain_base_name)
    if len(set(names)) != len(names):
        raise ValueError(f"an id is served twice among {names}; give each heads set its own id")
    return names


def _max_model_len(engine) -> int | None:
    """The context length vLLM settled on (``model_config.max_model_len``), or None if this vLLM hides it."""
    config = getattr(engine, "model_config", None)
    if config is None:
        config = getattr(getattr(engine, "vllm_config", None), "model_config", None)
    value = getattr(config, "max_model_len", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _until_finished(outputs: queue.SimpleQueue) -> Iterator:
    while True:
        item = outputs.get()
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.finished:
            return


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"



class VllmRollouts:
    """vLLM as the rollout engine of ``autodeco sample``/``eval`` (:class:`~autodeco.engines.base.RolloutEngine`), as
    :class:`autodeco.sampling.rollouts.HFRollouts`, with :class:`~autodeco.sampling.rollouts.Completion` records
    of the same form (text, ids up to the end-of-sequence token, per-token T and P for AutoDeco).

    Greedy and static settings sample the base model (``autodeco: false``), AutoDeco uses the heads with
    multipliers 1; each row has its own seed, derived from the call's ``seed``. Settings that need per-step
    logic outside the model (the shuffle controls' value pools, or any other kind) are refused.
    """

    def __init__(self, engine: VllmEngine, tokenizer):
        self.engine, self.tokenizer = engine, tokenizer
        self.max_model_len = engine.max_model_len
        """Positions of the context vLLM runs."""

    def close(self) -> None:
        """Stop the vLLM engine's thread."""
        self.engine.close()

    def prefill(self, rendered_prompts: list[str]):
        """Encode the prompts (left-padded, as the HF engine's batch); vLLM caches their prefixes itself."""
        from autodeco.sampling.inference import encode_prompts
        from autodeco.sampling.rollouts import PromptBatch

        encoded = encode_prompts(self.tokenizer, rendered_prompts, "cpu")
        return PromptBatch(encoded["input_ids"], encoded["attention_mask"], None)

    def complete(self, batch, setting, *, num_samples: int = 1, max_new_tokens: int = 256, seed: int = 0,
                 value_pools=None, **options):
        """``completions[prompt][sample]`` under ``setting``, as :func:`autodeco.sampling.rollouts.complete`."""
        from autodeco.common.seeds import derived_seed
        from autodeco.sampling.rollouts import Completion
        from autodeco.sampling.settings import AUTODECO, GREEDY, STATIC

        if value_pools is not None or setting.kind not in (GREEDY, STATIC, AUTODECO) or options:
            raise ValueError(
                f"the vLLM engine runs the greedy, static and autodeco settings; {setting.key!r} needs per-step logic "
                "outside the model (value pools or a heuristic sampler): run it with --engine hf"
            )
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]
        rows = []
        for prompt_index, prompt in enumerate(prompts):
            for sample in range(num_samples):
                row_seed = derived_seed("vllm-row", seed, prompt_index, sample)
                if setting.kind == AUTODECO:
                    rows.append(RowRequest(prompt, max_new_tokens, Multipliers(), row_seed))
                elif setting.kind == STATIC:
                    rows.append(RowRequest(prompt, max_new_tokens, BaseSampling(setting.temperature, setting.top_p), row_seed))
                else:
                    rows.append(RowRequest(prompt, max_new_tokens, BaseSampling(0.0, 1.0), None))
        flat = [
            Completion(self.tokenizer.decode(result.token_ids, skip_special_tokens=True), result.token_ids,
                       result.temperatures, result.top_ps)
            for result in self.engine.generate(rows)
        ]
        return [flat[start : start + num_samples] for start in range(0, len(flat), num_samples)]
