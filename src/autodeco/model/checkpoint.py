"""Reading and writing AutoDeco checkpoints (safetensors only, written atomically).

Three layouts are read:
- heads-only (ours or official): ``config.json`` (``model_type: autodeco``) and a safetensors
  file holding only ``temp_head.*`` / ``top_p_head.*`` tensors (``model.safetensors`` or
  ``autodeco_heads.safetensors``);
- merged: the same, with the base model's tensors beside the heads under the prefix ``llm.``
  (one file, or shards listed in ``model.safetensors.index.json``).
Pickle files (``.bin``, ``.pt``) are never opened.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from autodeco.common.folders import recover_interrupted_swap, staged_folder
from autodeco.common.jsonl import JsonContentError, read_json
from autodeco.model.base_model import PICKLE_SUFFIXES, pickle_weights_message
from autodeco.model.config import AutoDecoConfig
from autodeco.model.shipped import resolve_heads_reference

HEAD_PREFIXES = ("temp_head.", "top_p_head.")
BASE_PREFIX = "llm."
HEADS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, corrupt, or does not fit the base model."""


@dataclasses.dataclass
class CheckpointContents:
    """What a checkpoint folder holds."""

    path: Path
    config: AutoDecoConfig
    head_tensors: dict[str, torch.Tensor]
    weight_files: list[Path]
    merged: bool
    """True when the base model's weights are stored too (under ``llm.``)."""


def read_checkpoint(path: str | os.PathLike) -> CheckpointContents:
    """Read the config and head tensors of a checkpoint folder, without loading any base weights.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    folder = resolve_heads_reference(path)  # a folder, or shipped:<name>
    recover_interrupted_swap(folder)
    if not folder.exists():
        raise CheckpointError(f"checkpoint {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {str(folder)!r} is a file; pass the folder holding config.json")
    config = AutoDecoConfig.from_json_dict(_read_json(folder / CONFIG_FILE), source=str(folder / CONFIG_FILE))
    weight_files = _weight_files(folder)
    head_tensors: dict[str, torch.Tensor] = {}
    merged = False
    for file in weight_files:
        try:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():
                    if name.startswith(HEAD_PREFIXES):
                        head_tensors[name] = handle.get_tensor(name)
                    elif name.startswith(BASE_PREFIX):
                        merged = True
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{str(file)!r} is not a readable safetensors file ({error}); re-save the checkpoint") from None
    if not head_tensors:
        raise CheckpointError(
            f"{str(folder)!r} holds no temp_head.* or top_p_head.* tensors in {[file.name for file in weight_files]}"
        )
    return CheckpointContents(folder, config, head_tensors, weight_files, merged)


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Tensors holding NaN or infinite values, each with a count (``{"temp_head.mlp.0.weight": "3 NaN"}``)."""
    found = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            found[name] = ", ".join(part for part in (f"{nan} NaN" * bool(nan), f"{inf} infinite" * bool(inf)) if part)
    return found


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse head tensors holding NaN or infinite values (they would load and then fail while decoding).

    Raises:
        CheckpointError: naming each bad tensor.
    """
    bad = non_finite_tensors(tensors)
    if bad:
        listed = "; ".join(f"{name} ({count})" for name, count in bad.items())
        raise CheckpointError(
            f"{source}: head weights are not finite: {listed}. The heads are broken (training diverged or the "
            "file was damaged); use an earlier checkpoint or train again"
        )


def _read_json(file: Path):
    if not file.exists():
        raise CheckpointError(f"{str(file)!r} is missing: an AutoDeco checkpoint folder needs its config.json")
    try:
        return read_json(file, what="checkpoint file", fix="restore it or re-save the checkpoint")
    except JsonContentError as error:  # not UTF-8, not JSON, nested too deeply, ...
        raise CheckpointError(str(error)) from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        content = _read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{str(index)!r} has no weight_map object; restore it or re-save the checkpoint")
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(file.name for file in folder.iterdir() if file.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(pickle_weights_message(folder, pickles))
    raise CheckpointError(f"{str(folder)!r} holds no .safetensors weight file")


def write_checkpoint(
    path: str | os.PathLike, config: AutoDecoConfig, tensors: dict[str, torch.Tensor], *, extra_files: dict | None = None,
    inputs: dict[str, str | os.PathLike | None] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``path`` atomically.

    Written through :func:`autodeco.common.folders.staged_folder`: built beside the target and swapped
    in, so an interrupted save never leaves a half-written checkpoint where a good one was, a swap cut
    short is completed on the next use, and files get the user's usual permissions (umask). A folder
    autodeco did not make is refused, files a user added to one it made are kept, and ``path`` may not
    be, lie inside or contain the base model (a local folder) or any of ``inputs``.
    """
    target = Path(path).expanduser().resolve()
    _make_parent(target)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"cannot save into {str(target)!r}: it is a file; choose another path or remove it")
    inputs = {"base model": _local_base(config.base_model_name_or_path), **(inputs or {})}
    with staged_folder(target, inputs=inputs, option="the checkpoint folder") as staging:
        write_checkpoint_files(staging, config, tensors, extra_files=extra_files)
    return target


def _local_base(reference: str | None) -> str | None:
    """The base model's folder when it is a local one (hub ids and the embedded name are not paths)."""
    if not reference or ":" in reference.split("/")[0]:
        return None
    return reference if Path(reference).expanduser().is_dir() else None


def write_checkpoint_files(
    folder: Path, config: AutoDecoConfig, tensors: dict[str, torch.Tensor], *, extra_files: dict | None = None
) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing folder that is being staged."""
    save_file(_without_shared_storage(tensors), folder / HEADS_FILE, metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_json_dict(), indent=2, sort_keys=False) + "\n")
    for name, content in (extra_files or {}).items():
        (folder / name).write_text(content)


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(
            f"cannot save into {str(target)!r}: a part of {str(target.parent)!r} is a file, not a folder; choose another path"
        ) from None
    except PermissionError:
        raise CheckpointError(f"cannot create {str(target.parent)!r}: permission denied; choose a folder you can write") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot save into {str(target.parent)!r}: it is not writable; choose a folder you can write")


def _without_shared_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per storage (tied embeddings), contiguous and on the CPU, as safetensors requires."""
    seen: set[tuple[int, int]] = set()
    unique = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        unique[name] = tensor.detach().to("cpu").contiguous()
    return unique
