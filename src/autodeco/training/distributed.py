"""The distributed setup of the recipe: ``accelerate`` processes and, optionally, DeepSpeed ZeRO-3 for the frozen base.

The recipe reduces the heads' gradients itself (see :mod:`autodeco.training.loss_step`), so no
``DistributedDataParallel`` wrapper is involved. Under DeepSpeed ZeRO-3 (an ``accelerate`` config with a
DeepSpeed plugin) the frozen base is handed to DeepSpeed, which partitions its parameters across the
processes (at load time with ``zero3_init_flag: true``) and gathers each layer's weights for its forward
pass; the heads (a few MB) are not part of the DeepSpeed engine: they stay whole on every process, so
their checkpoints need no gathering. See :func:`configure_deepspeed` and :func:`place_model`.
"""

from __future__ import annotations

import contextlib
import os

import torch

from autodeco.training.config import TrainConfig


def make_accelerator():
    """An ``Accelerator`` for this launch; several processes on a machine without a GPU use CPU and gloo.

    ``accelerate launch --multi_gpu --num_processes N`` (or ``configs/accelerate/cpu_2proc.yaml``)
    starts N processes with torchrun; on a machine without a GPU accelerate would leave each of
    them alone (as if ``ACCELERATE_USE_CPU`` were unset), so the CPU backend is asked for here.
    Under DeepSpeed without a GPU, accelerate would also leave the process-group backend unset and
    count one process while DeepSpeed counts N; asking for gloo makes both count N.
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from accelerate.utils.environment import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    without_gpu = several and not torch.cuda.is_available()
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and without_gpu:
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    return Accelerator(cpu=without_gpu)


def uses_deepspeed(accelerator) -> bool:
    """Whether this launch runs under a DeepSpeed plugin (``distributed_type: DEEPSPEED``)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


@contextlib.contextmanager
def base_loading(accelerator):
    """Load the base as the DeepSpeed plugin's ``zero3_init_flag`` says (outside DeepSpeed: nothing to do).

    accelerate registers the DeepSpeed config with transformers whatever the flag, and transformers
    then always builds the model inside ``deepspeed.zero.Init`` (partitioned while loading). With
    ``zero3_init_flag: false`` the registration is lifted while the base loads, so that each process
    loads it whole and DeepSpeed partitions it when it takes it, as the flag promises.
    """
    plugin = accelerator.state.deepspeed_plugin if uses_deepspeed(accelerator) else None
    if plugin is None or plugin.zero3_init_flag:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def deepspeed_precision(deepspeed_config: dict) -> str | None:
    """The dtype DeepSpeed computes the base in: ``bfloat16``, ``float16``, ``float32``, or None when left to accelerate.

    Example:
        >>> deepspeed_precision({"bf16": {"enabled": True}}), deepspeed_precision({}), deepspeed_precision({"fp16": {"enabled": "auto"}})
        ('bfloat16', 'float32', None)
    """
    enabled = {name: deepspeed_config.get(name, {}).get("enabled", False) for name in ("bf16", "fp16")}
    if "auto" in enabled.values():
        return None
    if enabled["bf16"]:
        return "bfloat16"
    return "float16" if enabled["fp16"] else "float32"


def configure_deepspeed(accelerator, config: TrainConfig) -> None:
    """Write this run's batch and clipping settings into the DeepSpeed config, and check its precision.

    The recipe accumulates and reduces the heads' gradients itself, so DeepSpeed sees one
    micro-batch per step. Gradient clipping is set explicitly (``max_grad_norm``, or 0.0 for none):
    DeepSpeed clips at 1.0 unless told otherwise, and accelerate drops a falsy ``gradient_clipping``
    from its own config. (The heads are clipped by the recipe; the engine holds no trained parameter.)

    Raises:
        ValueError: the DeepSpeed config computes in another dtype than ``config.dtype``.
    """
    if not uses_deepspeed(accelerator):
        return
    deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
    precision = deepspeed_precision(deepspeed_config)
    if precision is not None and config.dtype not in ("auto", precision):
        source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the DeepSpeed config"
        raise ValueError(
            f"the DeepSpeed config {source} computes the base in {precision} but the training dtype is "
            f"{config.dtype!r}; pass --dtype {precision}, or change bf16/fp16 'enabled' in the DeepSpeed config"
        )
    deepspeed_config["train_micro_batch_size_per_gpu"] = config.per_device_batch_size
    deepspeed_config["gradient_accumulation_steps"] = 1  # accumulation is done here, by hand
    deepspeed_config["train_batch_size"] = config.per_device_batch_size * accelerator.num_processes
    deepspeed_config["gradient_clipping"] = 0.0 if config.max_grad_norm is None else float(config.max_grad_norm)


def place_model(model, accelerator, config: TrainConfig):
    """Put the model on this process's device; under DeepSpeed, let ZeRO partition the frozen base.

    Only ``model.llm`` goes into the DeepSpeed engine (with no optimizer: ZeRO-3 then partitions
    the parameters and gathers them around each module's forward). The heads stay outside it.
    """
    if uses_deepspeed(accelerator):
        engine = accelerator.prepare(model.llm)
        object.__setattr__(model, "_deepspeed_engine", engine)  # keep it alive without registering a submodule
        model.temp_head.to(accelerator.device)
        model.top_p_head.to(accelerator.device)
        return model
    return model.to(accelerator.device)


def is_partitioned(module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned any of ``module``'s parameters (they carry a ``ds_id``)."""
    return any(hasattr(parameter, "ds_id") for parameter in module.parameters())


def partition_summary(model, accelerator, partitioned_while_loading: bool) -> str:
    """One line on how ZeRO-3 split the base: tensors partitioned, the values each process holds, clipping.

    A partitioned parameter is an empty tensor outside its module's forward pass; its shard is in
    ``ds_tensor``. Parameters below ``stage3_param_persistence_threshold`` may stay whole everywhere.
    """
    parameters = list(model.llm.parameters())
    partitioned = [parameter for parameter in parameters if hasattr(parameter, "ds_id") and parameter.numel() == 0]
    total = sum(getattr(parameter, "ds_numel", parameter.numel()) for parameter in parameters)
    held = sum(parameter.ds_tensor.numel() for parameter in partitioned) + sum(
        parameter.numel() for parameter in parameters if parameter.numel() > 0
    )
    counts = torch.tensor([len(partitioned), held], dtype=torch.float64, device=accelerator.device)
    gathered = accelerator.gather(counts.unsqueeze(0)).reshape(-1, 2)  # (processes, 2)
    per_process = ", ".join(f"{int(values)}" for values in gathered[:, 1].tolist())
    when = "while loading (zero3_init_flag)" if partitioned_while_loading else "after loading"
    return (
        f"ZeRO-3: base partitioned {when} across {accelerator.num_processes} processes: "
        f"{int(gathered[:, 0].min())} of {len(parameters)} tensors partitioned, "
        f"values held per process [{per_process}] of {total}; "
        f"DeepSpeed gradient_clipping {model._deepspeed_engine.gradient_clipping()}"
    )
