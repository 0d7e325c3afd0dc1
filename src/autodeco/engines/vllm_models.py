"""AutoDeco inside vLLM: model classes whose ``compute_logits`` runs the heads, and the per-request state they read.

vLLM itself is imported only when vLLM asks for one of these classes (through the plugin's lazy
registration, :mod:`autodeco.engines.vllm_plugin`): the classes are built on first access by the
module's ``__getattr__`` and cached, so importing this module needs torch only.

How one decoding step runs (PAPER.md section 4):

1. vLLM calls :meth:`AutoDecoRequests.update_state` before the forward pass; it keeps, for every row
   of the running batch, the request's settings (from its ``SamplingParams``) and where to record the
   values used.
2. The model's ``compute_logits`` turns the sampled rows' hidden states into logits (the base's own
   code), then runs :func:`autodeco.core.dynamic.dynamic_step` on them, with the heads of
   :class:`autodeco.model.heads.AutoDecoHeads` (the Hugging Face model's own): the heads predict T and P,
   the user's multipliers apply (``T = T_head * temperature``, ``P = min(1, P_head * top_p)``), and
   the logits come back divided by T with ``-inf`` outside the top-P nucleus. vLLM divides the logits
   by the request's ``temperature`` afterwards, so the row is multiplied by it first: vLLM's sampler
   then samples exactly AutoDeco's distribution (and a greedy request, ``temperature=0``, takes its argmax).
3. The values used are written to the request's record (see :mod:`autodeco.engines.vllm`).

Per-request settings, all optional (``SamplingParams.extra_args``, ``vllm_xargs`` over HTTP):

- ``autodeco`` (bool, default true): false samples the base model with vLLM's own settings;
- ``autodeco_top_p`` (float > 0, default 1): the multiplier on the heads' top-p; a request that gives it
  must keep its own ``top_p`` at 1 (refused otherwise). A plain request's ``top_p`` below 1 is not an
  AutoDeco setting: vLLM applies it after AutoDeco's nucleus, as a second cut (like ``top_k``);
- ``autodeco_record`` (str): the key of a record registered with :func:`open_record`;
- ``autodeco_heads`` (str): which heads set decodes the request, by its id among the exported folder's
  ``more_heads`` (:func:`~autodeco.engines.vllm_export.export_for_vllm`); absent: the folder's own heads.
  Every heads set stays on the device: a step runs :func:`~autodeco.core.dynamic.dynamic_step` once per
  heads set present in the batch, on its rows (:func:`warp_rows`), so rows of one batch may use different heads.

The request's own ``temperature`` is the multiplier on the heads' temperature (0 = greedy). vLLM's
``top_k``/``min_p`` act on AutoDeco's distribution afterwards, as ``generate()``'s warpers do; vLLM's
penalties act on the warped logits (``generate()`` applies them before the heads).
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from autodeco.core.dynamic import dynamic_step
from autodeco.core.multipliers import MultiplierError, Multipliers
from autodeco.engines.vllm_export import CONFIG_KEY, HeadsSettings, base_architecture, more_heads_settings
from autodeco.model.checkpoint import BASE_PREFIX, HEAD_PREFIXES
from autodeco.model.heads import AutoDecoHeads

ENABLE_KEY = "autodeco"
TOP_P_KEY = "autodeco_top_p"
RECORD_KEY = "autodeco_record"
HEADS_KEY = "autodeco_heads"
GREEDY_TEMPERATURE = 1e-5
"""vLLM decodes a request greedily below this temperature (its ``_SAMPLING_EPS``)."""


# ------------------------------------------------------------------------------------- per-request state


@dataclasses.dataclass
class RowSettings:
    """One running request's AutoDeco settings, read from its ``SamplingParams``."""

    enabled: bool = True
    """Warp this row's logits (False: the base's logits, sampled with vLLM's own settings)."""
    temperature: float = 1.0
    """Multiplier on the heads' temperature (1 for a greedy request: the values recorded are the heads')."""
    top_p: float = 1.0
    """Multiplier on the heads' top-p."""
    compensation: float = 1.0
    """The request's own temperature, by which vLLM divides the logits afterwards (1 when greedy)."""
    record: list | None = None
    """Where the values used go: ``record[i] = (T, P)`` of the i-th generated token."""
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    """vLLM's live list of the request's generated tokens (its length is the position being sampled)."""
    heads: str | None = None
    """The id of the heads set that decodes this row (None: the model folder's own heads)."""

    @classmethod
    def from_params(cls, params, output_token_ids: list[int]) -> "RowSettings":
        extra = params.extra_args or {}
        enabled = bool(extra.get(ENABLE_KEY, True))
        greedy = params.temperature < GREEDY_TEMPERATURE
        temperature = 1.0 if greedy else float(params.temperature)
        key = extra.get(RECORD_KEY)
        with _RECORDS_LOCK:
            record = _RECORDS.get(key) if key is not None else None
        heads = extra.get(HEADS_KEY)
        return cls(enabled, temperature, float(extra.get(TOP_P_KEY, 1.0)), temperature, record, output_token_ids,
                   None if heads is None else str(heads))


_RECORDS: dict[str, list] = {}
_RECORDS_LOCK = threading.Lock()


def open_record(key: str) -> list:
    """Register a list that the request whose ``extra_args[autodeco_record]`` is ``key`` fills with ``(T, P)`` pairs.

    The list is written in the process that runs the model (an in-process engine: see :mod:`autodeco.engines.vllm`).
    """
    record: list = []
    with _RECORDS_LOCK:
        _RECORDS[key] = record
    return record


def close_record(key: str) -> None:
    """Forget a record registered with :func:`open_record`."""
    with _RECORDS_LOCK:
        _RECORDS.pop(key, None)


class BatchRows:
    """The settings of every row of vLLM's persistent batch, kept up to date from its batch updates."""

    def __init__(self):
        self.rows: dict[int, RowSettings] = {}
        self.fresh = False
        """True between a batch update and the step's first ``compute_logits`` (later calls, prompt logprobs, record nothing)."""

    def update(self, batch_update) -> None:
        self.fresh = True
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output_token_ids in batch_update.added:
            self.rows[index] = RowSettings.from_params(params, output_token_ids)
        for first, second, direction in batch_update.moved:
            moving = self.rows.pop(first, None)
            if direction.name == "SWAP":
                other = self.rows.pop(second, None)
                if other is not None:
                    self.rows[first] = other
            if moving is not None:
                self.rows[second] = moving

    def take(self, num_rows: int) -> list[RowSettings] | None:
        """The settings of the step's ``num_rows`` sampled rows, once per step; None for any further call."""
        if not self.fresh:
            return None
        self.fresh = False
        return [self.rows.get(index) or RowSettings() for index in range(num_rows)]


_BATCH = BatchRows()
"""The batch of the engine in this process (vLLM runs one model per worker process)."""


def warp_rows(heads, hidden_states: torch.Tensor, logits: torch.Tensor, rows: list[RowSettings] | None):
    """AutoDeco's logits for the rows that use it, the base's for the others; records the values used.

    Args:
        heads: the heads (:class:`~autodeco.model.heads.AutoDecoHeads`), or ``{id: heads}`` with the default
            under None: each row is decoded by the heads its ``heads`` id names (the rows of each heads set
            stepped together).
        hidden_states: ``(B, H)`` final hidden states of the sampled rows.
        logits: ``(B, V)`` the base's logits of those rows.
        rows: each row's settings, or None (prompt logprobs: multipliers 1, nothing recorded).

    Returns:
        ``(B, V)`` float32 logits for vLLM's sampler.
    """
    if rows is None:
        rows = [RowSettings() for _ in range(logits.shape[0])]
    heads_sets = heads if isinstance(heads, dict) else {None: heads}
    by_heads: dict[str | None, list[int]] = {}
    for index, row in enumerate(rows):
        if row.enabled:
            by_heads.setdefault(row.heads if row.heads in heads_sets else None, []).append(index)
    if len(by_heads) > 1:  # several heads sets in the batch: each steps its own rows
        output = logits.to(dtype=torch.float32, copy=True)  # (B, V), the input left as it is
        for name, indices in by_heads.items():
            group = [rows[index] for index in indices]
            index = torch.tensor(indices, device=logits.device)
            output.index_copy_(0, index, _warp_active(
                heads_sets[name], hidden_states.index_select(0, index), logits.index_select(0, index), group,
                list(range(len(group))),
            ))
        return output
    active = next(iter(by_heads.values()), [])
    if not active:
        return logits
    return _warp_active(heads_sets[next(iter(by_heads))], hidden_states, logits, rows, active)


def _warp_active(heads: AutoDecoHeads, hidden_states: torch.Tensor, logits: torch.Tensor, rows: list[RowSettings],
                 active: list[int]) -> torch.Tensor:
    """:func:`warp_rows` for one heads set, ``active`` the rows it decodes (the others keep the base's logits)."""
    everything = len(active) == len(rows)
    index = None if everything else torch.tensor(active, device=logits.device)
    hidden = hidden_states if everything else hidden_states.index_select(0, index)
    selected = logits if everything else logits.index_select(0, index)
    temperature = torch.tensor([rows[i].temperature for i in active], device=logits.device)
    top_p = torch.tensor([rows[i].top_p for i in active], device=logits.device)
    warped, used_temperature, used_top_p = dynamic_step(heads, hidden, selected.float(), temperature, top_p)
    compensation = [rows[i].compensation for i in active]
    if any(value != 1.0 for value in compensation):
        warped.mul_(torch.tensor(compensation, device=logits.device).unsqueeze(-1))
    _record(rows, active, used_temperature, used_top_p)
    if everything:
        return warped
    output = logits.float()
    output.index_copy_(0, index, warped)
    return output


def _record(rows: list[RowSettings], active: list[int], temperature: torch.Tensor, top_p: torch.Tensor) -> None:
    if not any(rows[i].record is not None for i in active):
        return
    for position, (used_temperature, used_top_p) in zip(active, torch.stack([temperature, top_p], -1).tolist()):
        row = rows[position]
        if row.record is None:
            continue
        step = len(row.output_token_ids)  # the token about to be sampled (a repeated prefill chunk overwrites)
        del row.record[step:]
        row.record.append((used_temperature, used_top_p))


# ------------------------------------------------------------------------------------------ vLLM classes


def validate_params(params) -> None:
    """Refuse AutoDeco settings vLLM would accept but that would not sample AutoDeco's distribution.

    Raises:
        ValueError: quoting the value and what to pass instead.
    """
    extra = params.extra_args or {}
    if not any(key in extra for key in (TOP_P_KEY, RECORD_KEY, HEADS_KEY)) or not bool(extra.get(ENABLE_KEY, True)):
        return  # not an AutoDeco request (the processor is installed for every model vLLM serves)
    heads = extra.get(HEADS_KEY)
    if heads is not None and _HEADS_IDS is not None and heads not in _HEADS_IDS:
        raise ValueError(
            f"extra_args {{'{HEADS_KEY}': {heads!r}}} names no heads set of this model; it has "
            f"{', '.join(repr(name) for name in sorted(_HEADS_IDS)) or 'none besides its own'} (leave the key out "
            "for the model's own heads)"
        )
    try:
        Multipliers(top_p=extra.get(TOP_P_KEY, 1.0))
    except MultiplierError as error:  # the multiplier's vLLM name, at vLLM's boundary
        raise ValueError(str(error).replace(error.name, TOP_P_KEY, 1)) from None
    if params.top_p != 1.0:
        raise ValueError(
            f"top_p={params.top_p} would cut AutoDeco's nucleus a second time: keep top_p=1 and pass the multiplier "
            f"on the heads' top-p as extra_args {{'{TOP_P_KEY}': {params.top_p}}} (vllm_xargs over HTTP), "
            f"or set extra_args {{'{ENABLE_KEY}': false}} to sample the base model"
        )


_CLASSES: dict[str, type] = {}
_HEADS_IDS: set[str] | None = None
"""The ids of the other heads sets of the model loaded in this process (None before one is loaded)."""


def _requests_class() -> type:
    from vllm.v1.sample.logits_processor import LogitsProcessor

    class AutoDecoRequests(LogitsProcessor):
        """vLLM logits processor that keeps each running request's AutoDeco settings for ``compute_logits``.

        Its ``apply`` changes nothing: the work happens in the model, which has the hidden states.
        """

        @classmethod
        def validate_params(cls, sampling_params):
            validate_params(sampling_params)

        def __init__(self, vllm_config, device, is_pin_memory):
            global _BATCH
            _BATCH = self.batch = BatchRows()

        def is_argmax_invariant(self) -> bool:
            return True

        def update_state(self, batch_update) -> None:
            self.batch.update(batch_update)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            return logits

    AutoDecoRequests.__module__ = __name__
    AutoDecoRequests.__qualname__ = "AutoDecoRequests"
    return AutoDecoRequests


def _model_class(architecture: str) -> type:
    base = base_architecture(architecture)
    base_class = _base_class(base)

    def __init__(self, *, vllm_config, prefix: str = ""):
        base_class.__init__(self, vllm_config=vllm_config, prefix=prefix)
        settings = HeadsSettings.from_config_value(getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None))
        device = next(self.parameters()).device
        self.autodeco_heads = AutoDecoHeads(settings).to(device=device, dtype=torch.float32)
        self.autodeco_source = settings.source or "the model folder"
        self.autodeco_more_settings = more_heads_settings(getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None))
        self.autodeco_heads_sets = {None: self.autodeco_heads}
        """Every heads set by id (None: the folder's own); the others are not submodules (their tensors are read from
        their checkpoints, not streamed by vLLM), kept on the same device."""

    def compute_logits(self, hidden_states: torch.Tensor, *args, **kwargs):
        logits = base_class.compute_logits(self, hidden_states, *args, **kwargs)
        if logits is None:  # not the last pipeline stage
            return None
        return warp_rows(self.autodeco_heads_sets, hidden_states, logits, _BATCH.take(logits.shape[0]))

    def load_weights(self, weights):
        heads = {}

        def base_weights():
            for name, tensor in weights:
                if name.startswith(HEAD_PREFIXES):
                    heads[name] = tensor
                    continue
                yield (name[len(BASE_PREFIX) :] if name.startswith(BASE_PREFIX) else name), tensor

        loaded = set(base_class.load_weights(self, base_weights()) or ())
        names = self.autodeco_heads.load_head_tensors(heads, self.autodeco_source)
        self.autodeco_heads_sets.update(_load_more_heads(self.autodeco_more_settings, self.autodeco_heads))
        return loaded | {f"autodeco_heads.{name}" for name in names}

    namespace = {"__init__": __init__, "compute_logits": compute_logits, "load_weights": load_weights,
                 "__module__": __name__, "__qualname__": architecture,
                 "__doc__": f"vLLM's {base} with AutoDeco's heads in ``compute_logits``."}
    return type(architecture, (base_class,), namespace)


def _load_more_heads(settings: dict[str, HeadsSettings], default: AutoDecoHeads) -> dict[str, AutoDecoHeads]:
    """The other heads sets, read from their checkpoint folders, on ``default``'s device and dtype."""
    global _HEADS_IDS
    from autodeco.model.checkpoint import read_checkpoint

    weight = default.temp_head.mlp[0].weight
    loaded = {}
    for name, item in settings.items():
        with torch.random.fork_rng(devices=[]):  # fresh weights, replaced at once
            heads = AutoDecoHeads(item)
        heads.load_head_tensors(read_checkpoint(item.source).head_tensors, item.source)
        loaded[name] = heads.to(device=weight.device, dtype=weight.dtype).eval()
    _HEADS_IDS = set(loaded)
    return loaded


def _base_class(architecture: str) -> type:
    import importlib

    from vllm.model_executor.models.registry import _TEXT_GENERATION_MODELS

    if architecture not in _TEXT_GENERATION_MODELS:
        raise ValueError(f"vLLM has no text-generation model {architecture!r}; AutoDeco cannot wrap it")
    module, name = _TEXT_GENERATION_MODELS[architecture]
    return getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), name)


def __getattr__(name: str):
    """Build the vLLM classes on first access (``AutoDecoRequests``, ``AutoDeco<BaseArchitecture>``)."""
    if name.startswith("__") or not name.startswith("AutoDeco"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        _CLASSES[name] = _requests_class() if name == "AutoDecoRequests" else _model_class(name)
    return _CLASSES[name]
