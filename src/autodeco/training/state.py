"""The training run's folder: settings record, resumable checkpoints, final heads (no pickle).

Output folder::

    train_config.json       the settings and the fingerprints of data, base and initial heads
                            (a restart with different ones is refused)
    run.lock                held by the running process (a second run on the folder is refused)
    log.jsonl               one line per logging step: losses, learning rate, kept tokens, T/P stats
    training_curve.png      losses and mean +- std of T and P against the step
    checkpoint-<step>/      heads (config.json, model.safetensors) + training_state.{safetensors,json}
    heads/                  the final heads (``trained: true``, settings in ``config.training``)

Checkpoints are written to a hidden staging folder and renamed into place, so a run killed at any
moment leaves only complete ``checkpoint-<step>`` folders (and staging debris, removed on restart).
A checkpoint holds the heads, the optimizer state (safetensors plus JSON scalars) and the RNG state;
the learning-rate schedule and the data order are functions of the step, so nothing else is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from autodeco.common.fingerprint import model_reference_fingerprint, tensors_fingerprint
from autodeco.common.folders import BACKUP_TAG, recover_interrupted_swap, staged_folder
from autodeco.common.jsonl import read_json
from autodeco.common.runlock import run_lock
from autodeco.data.trajectories import DataReport, data_fingerprint
from autodeco.model.base_model import EMBEDDED_MODEL
from autodeco.training.config import ControlConfig, TrainConfig
from autodeco.training.curve import CURVE_FILE, LOG_FILE, write_training_curve

CONFIG_FILE = "train_config.json"
HEADS_DIR = "heads"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_FILE = "training_state.json"
STATE_FORMAT = 1

_NOT_AFFECTING_RESULT = {
    "data", "output_dir", "save_every", "keep_last", "log_every", "per_device_batch_size",
    "gradient_accumulation_steps", "control_phrasings", "control_anchor", "control_data",
}
"""Settings a resumed run may change: paths (the data, the phrasings and the anchor are compared by content), bookkeeping, and the
split of the global batch (compared as ``global_batch_size``)."""


CONTROL_SETTINGS = tuple(ControlConfig().flat())
"""The decoding-control settings under their recorded (flat) keys, recorded only when the option is on."""

# ---------------------------------------------------------------------------------- stored settings


def resolved_base(config: TrainConfig) -> str:
    """The base model reference: ``config.base``, else the init heads' recorded base, else the embedded model."""
    if config.base is not None:
        return config.base
    if config.heads is not None:
        from autodeco.model.checkpoint import read_checkpoint

        recorded = read_checkpoint(config.heads).config.base_model_name_or_path
        if recorded:
            return recorded
    return EMBEDDED_MODEL


def run_settings(config: TrainConfig, num_processes: int) -> dict[str, Any]:
    """What ``train_config.json`` records: every setting, the resolved base, the data's fingerprint."""
    settings = dataclasses.asdict(config)
    del settings["control"]
    settings.update(config.control.flat())  # flat control_* keys, as recorded before the settings were nested
    base = resolved_base(config)
    settings.update(
        base=base,
        base_fingerprint=model_reference_fingerprint(base),
        heads_fingerprint=_heads_fingerprint(config.heads),
        data=[str(Path(path).resolve()) for path in config.data],
        data_fingerprint=data_fingerprint(config.data),
        num_processes=num_processes,
        global_batch_size=config.global_batch_size(num_processes),
    )
    if config.control_enabled:
        from autodeco.data.phrasings import load_phrasings

        phrasings = load_phrasings(config.control.phrasings)
        settings.update(control_phrasings=phrasings.source, control_phrasings_fingerprint=phrasings.fingerprint)
        if config.control.top_p_scale != "bounded":  # the room is unused: recorded as before it existed
            settings.pop("control_top_p_room")
        if config.control.data:
            settings["control_data"] = [str(Path(path).resolve()) for path in config.control.data]
            settings["control_data_fingerprint"] = data_fingerprint(config.control.data)
        else:  # recorded as before the option existed, so older control runs still resume
            settings.pop("control_data")
        if not config.control.neutral:
            settings.pop("control_neutral")
            settings.pop("control_neutral_tolerance")
        if config.control.anchor is not None:
            settings["control_anchor_fingerprint"] = _heads_fingerprint(config.control.anchor)
        else:  # no anchor: recorded as before the option existed, so older control runs still resume
            settings.pop("control_anchor")
            settings.pop("control_anchor_weight")
    else:  # decoding control off: recorded as before the option existed, so older runs still resume
        for name in CONTROL_SETTINGS:
            settings.pop(name)
    return settings


def _heads_fingerprint(heads: str | None) -> str | None:
    """The fingerprint of the initial heads' tensors (None: fresh heads)."""
    if heads is None:
        return None
    from autodeco.model.checkpoint import read_checkpoint

    return tensors_fingerprint(read_checkpoint(heads).head_tensors)


@contextlib.contextmanager
def run_folder_lock(output: Path, accelerator, inputs: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold the run folder's lock (:func:`autodeco.common.runlock.run_lock`) for a training run.

    Only the main process takes it (the others work in the same folder on its behalf); every
    process learns whether it got it, so that all of them stop together when another run holds it.
    ``inputs`` (what the run reads, by name) may not be, lie inside or contain the folder.

    Raises:
        ValueError: another process holds the folder (on every process of this run).
    """
    refused: ValueError | None = None
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:
            try:
                stack.enter_context(run_lock(output, "train", inputs=inputs))
            except ValueError as error:
                refused = error
        if accelerator.num_processes > 1:
            flag = torch.tensor([0.0 if refused is None else 1.0], device=accelerator.device)
            if accelerator.reduce(flag, reduction="sum").item() > 0 and refused is None:
                raise ValueError(f"{output} cannot be used: the main process of this run refused it (see its message)")
        if refused is not None:
            raise refused
        yield


def settings_that_matter(settings: dict[str, Any]) -> dict[str, Any]:
    """The recorded settings that change the trained heads (see ``_NOT_AFFECTING_RESULT``)."""
    ignored = _NOT_AFFECTING_RESULT | {"num_processes", "num_examples", "total_steps"}
    return {key: value for key, value in settings.items() if key not in ignored}


def check_stored_settings(output: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a run whose recorded settings differ in one that matters.

    Raises:
        ValueError: naming each differing setting with the stored and the current value.
    """
    file = output / CONFIG_FILE
    if not file.exists():
        if _checkpoint_folders(output) or (output / HEADS_DIR).exists():
            raise ValueError(
                f"{output} holds checkpoints or heads but no {CONFIG_FILE}, so they cannot be resumed safely; "
                "choose another --output or pass --overwrite to start again"
            )
        return
    from autodeco.common.jsonl import differing_settings

    stored = read_json(file, what="training run configuration", fix="choose another --output or pass --overwrite")
    if not isinstance(stored, dict):
        raise ValueError(f"{file} holds no JSON object; choose another --output or pass --overwrite to start again")
    stored = settings_that_matter(stored)
    current = settings_that_matter(json.loads(json.dumps(settings)))
    differing = differing_settings(stored, current, stored_label="in the stored run")
    if differing:
        raise ValueError(
            f"{file} records a training run with different settings ({'; '.join(differing)}); "
            "to start a new run choose another --output, or pass --overwrite to replace this one"
        )


def prepare_output(output: Path, record: dict[str, Any]) -> None:
    """Create ``output``, remove a killed run's half-written folders, and write ``record`` to ``train_config.json``."""
    from autodeco.common.jsonl import write_json_atomic

    output.mkdir(parents=True, exist_ok=True)
    remove_staging_folders(output)
    write_json_atomic(output / CONFIG_FILE, record)


def finished_steps(output: Path) -> int | None:
    """The step count of a finished run in ``output`` (its ``heads/`` exist), else None."""
    config_file = output / HEADS_DIR / "config.json"
    if not config_file.exists():
        return None
    content = read_json(config_file, what="heads config", fix="choose another --output or pass --overwrite")
    training = content.get("autodeco", {}).get("training", {}) if isinstance(content, dict) else {}
    return training.get("steps") if isinstance(training, dict) else None


# ------------------------------------------------------------------------------------- checkpoints


def _checkpoint_folders(output: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete ``checkpoint-<step>`` in ``output``, oldest first."""
    if not output.is_dir():
        return []
    found = []
    for folder in output.iterdir():
        match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", folder.name)
        if match and (folder / STATE_FILE).exists() and (folder / STATE_TENSORS_FILE).exists():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    folders = _checkpoint_folders(output)
    return folders[-1][1] if folders else None


def save_checkpoint(
    output: Path, step: int, model, optimizer, config: TrainConfig, *, examples_seen: int, write_curve=write_training_curve,
) -> Path:
    """Write ``checkpoint-<step>`` atomically (heads + optimizer state + RNG, no pickle); keep the last K (``config.keep_last``).

    ``write_curve(output)`` redraws the run's curve from its log (another recipe's log has other columns).
    """
    from safetensors.torch import save_file

    from autodeco.model.checkpoint import write_checkpoint_files

    target = output / f"{CHECKPOINT_PREFIX}{step}"
    with staged_folder(target) as staging:
        write_checkpoint_files(staging, model.config, _cpu_heads(model))
        tensors, state = optimizer_state_to_flat(optimizer)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, staging / STATE_TENSORS_FILE)
        state.update(format=STATE_FORMAT, step=step, examples_seen=examples_seen)
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    for _, folder in _checkpoint_folders(output)[: -config.keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
    write_curve(output)
    return target


def restore_checkpoint(folder: Path, model, optimizer) -> int:
    """Load the heads, optimizer state and RNG state of a checkpoint; returns its step."""
    from safetensors.torch import load_file

    from autodeco.model.checkpoint import read_checkpoint

    fix = "delete that checkpoint folder to resume from an earlier one"
    state = read_json(folder / STATE_FILE, what="training state", fix=fix)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{folder / STATE_FILE} has format {state.get('format')!r}, expected {STATE_FORMAT}")
    model.load_head_tensors(read_checkpoint(folder).head_tensors, source=str(folder))
    tensors = load_file(folder / STATE_TENSORS_FILE)
    optimizer.load_state_dict(optimizer_state_from_flat(optimizer, tensors, state))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(state["step"])


def optimizer_state_to_flat(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as safetensors-ready tensors plus JSON-ready scalars (no pickle).

    Example:
        >>> parameter = torch.nn.Parameter(torch.ones(2))
        >>> optimizer = torch.optim.AdamW([parameter])
        >>> parameter.grad = torch.ones(2); optimizer.step()
        >>> sorted(optimizer_state_to_flat(optimizer)[0])
        ['optimizer.0.exp_avg', 'optimizer.0.exp_avg_sq', 'optimizer.0.step']
    """
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    groups = [{key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}
              for group in state_dict["param_groups"]]
    return tensors, {"optimizer_scalars": scalars, "optimizer_param_groups": groups}


def optimizer_state_from_flat(optimizer, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> dict:
    """Inverse of :func:`optimizer_state_to_flat`: an optimizer ``state_dict``."""
    per_parameter: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_parameter.setdefault(int(index), {})[name] = tensor
    for key, value in state.get("optimizer_scalars", {}).items():
        index, name = key.split(".", 1)
        per_parameter.setdefault(int(index), {})[name] = value
    groups = []
    for saved, current in zip(state["optimizer_param_groups"], optimizer.state_dict()["param_groups"]):
        groups.append({**saved, "betas": tuple(saved.get("betas", current.get("betas"))), "params": current["params"]})
    return {"state": per_parameter, "param_groups": groups}


def _cpu_heads(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu") for name, tensor in model.head_state_dict().items()}


def save_final_heads(model, output: Path, settings: dict[str, Any], report: DataReport, steps: int, last_log) -> Path:
    """Write ``heads/`` with ``trained: true`` and the training record, then the final curve."""
    from autodeco.model.checkpoint import write_checkpoint

    record = {
        "recipe": "autodeco.training.recipe",
        "steps": steps,
        "examples": report.examples,
        "settings": {key: settings[key] for key in sorted(settings)},
        "final": last_log,
    }
    final_config = dataclasses.replace(model.config, trained=True, training=record)
    folder = write_checkpoint(output / HEADS_DIR, final_config, _cpu_heads(model))
    write_training_curve(output)
    return folder


def clear_output(output: Path) -> None:
    """Delete this recipe's files in ``output`` (for ``--overwrite``); anything else is left alone."""
    if not output.is_dir():
        return
    for name in (CONFIG_FILE, LOG_FILE, CURVE_FILE):
        (output / name).unlink(missing_ok=True)
    for folder in [output / HEADS_DIR, *(folder for _, folder in _checkpoint_folders(output))]:
        shutil.rmtree(folder, ignore_errors=True)
    for folder in output.glob(CHECKPOINT_PREFIX + "*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
    remove_staging_folders(output)


def remove_staging_folders(output: Path) -> None:
    """Clean up after a killed run: half-written folders (``.checkpoint-*``, ``.heads.*``) are deleted, and a
    checkpoint caught between the two renames of its swap is moved back (:func:`recover_interrupted_swap`)."""
    for pattern in (f".{CHECKPOINT_PREFIX}*", f".{HEADS_DIR}.*"):
        for folder in output.glob(pattern):
            if not folder.is_dir():
                continue
            if f".{BACKUP_TAG}." in folder.name:
                recover_interrupted_swap(output / folder.name[1:].split(".")[0])
            else:
                shutil.rmtree(folder, ignore_errors=True)
