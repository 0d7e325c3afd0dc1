"""A vLLM-ready folder for an AutoDeco checkpoint (``autodeco export-vllm HEADS OUT``); imports no vLLM.

Why a folder of its own: vLLM reads everything from the folder it is given. It parses ``config.json``
with transformers' ``AutoConfig`` (which knows no ``model_type: autodeco``) and picks the model class
from ``architectures``; it loads the tokenizer and ``generation_config.json`` from there; and it
streams every ``*.safetensors`` file there into the model's ``load_weights``. A heads-only checkpoint
holds a few MB of head tensors and a reference to its base, and none of the rest.

The exported folder holds:

- ``config.json``: the base's own config (its ``model_type``, so transformers parses it), with the
  architecture renamed to the plugin's class (``AutoDecoLlamaForCausalLM`` for a Llama base, see
  :mod:`autodeco.engines.vllm_plugin`) and the heads' settings under the key ``autodeco``;
- symbolic links to the base's weight files and tokenizer/generation files, and to the heads' file
  as ``autodeco_heads.safetensors`` (nothing is copied: the folder takes a few KB).

Official merged checkpoints (base tensors under ``llm.`` beside the heads) export the same way: their
weight files are linked and the plugin strips the ``llm.`` prefix while loading.

**More heads on the same base** (``more_heads``, ``autodeco serve --engine vllm A B``): their settings and
checkpoint folders go under ``autodeco.more_heads`` in ``config.json``, by the id requests name them with;
the plugin's model class reads their tensors from those folders when the engine starts (they are a few
MB) and keeps every heads set on the device (:mod:`autodeco.engines.vllm_models`).

Example:
    >>> vllm_architecture("LlamaForCausalLM")
    'AutoDecoLlamaForCausalLM'
    >>> base_architecture("AutoDecoQwen3MoeForCausalLM")
    'Qwen3MoeForCausalLM'
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from autodeco.common.fingerprint import tensors_fingerprint, text_fingerprint
from autodeco.common.folders import check_apart, staged_folder, users_entries
from autodeco.model.base_model import PICKLE_SUFFIXES, autodeco_home, resolve_base
from autodeco.model.checkpoint import CheckpointError, read_checkpoint

ARCHITECTURE_PREFIX = "AutoDeco"
"""The plugin's class for a base architecture ``X`` is registered as ``AutoDeco`` + ``X``."""

BASE_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
"""Base ``model_type`` -> vLLM architecture, for the architectures the official vLLM fork supports."""

CONFIG_KEY = "autodeco"
"""Key of the heads' settings in the exported ``config.json`` (read by the plugin's model class)."""

MORE_HEADS_KEY = "more_heads"
"""Key, inside the ``autodeco`` entry, of the other heads sets: ``{id: HeadsSettings fields}`` (``source``: their folder)."""

HEADS_FILE = "autodeco_heads.safetensors"
"""Name of the link to the heads' weights in the exported folder."""

_SKIPPED_BASE_FILES = {"config.json", "model.safetensors.index.json"}


def vllm_architecture(base: str) -> str:
    """The plugin's architecture name for a base architecture (``LlamaForCausalLM`` -> ``AutoDecoLlamaForCausalLM``)."""
    return ARCHITECTURE_PREFIX + base


def base_architecture(architecture: str) -> str:
    """Inverse of :func:`vllm_architecture`.

    Raises:
        ValueError: for a name without the prefix.
    """
    if not architecture.startswith(ARCHITECTURE_PREFIX):
        raise ValueError(f"{architecture!r} is not an AutoDeco architecture name (they start with {ARCHITECTURE_PREFIX!r})")
    return architecture[len(ARCHITECTURE_PREFIX) :]


@dataclasses.dataclass
class HeadsSettings:
    """What the plugin's model class needs to build the heads (stored under ``autodeco`` in ``config.json``)."""

    hidden_size: int
    """Width of the base's final hidden state."""
    vocab_size: int
    """Number of logits of the base's output head."""
    enable_temperature_head: bool = True
    """Use the temperature head (else T = 1)."""
    enable_top_p_head: bool = True
    """Use the top-p head (else P = 1)."""
    use_enhanced_features: bool = True
    """The top-p head reads the four probability features."""
    source: str = ""
    """The checkpoint the heads come from (for messages)."""

    @classmethod
    def from_config_value(cls, value) -> "HeadsSettings":
        """Read the ``autodeco`` entry of an exported ``config.json``.

        Raises:
            ValueError: when the entry is missing or malformed, saying how to make a folder.
        """
        if not isinstance(value, dict):
            raise ValueError(
                f"the model folder's config.json has no '{CONFIG_KEY}' object (got {value!r}): it is not a vLLM-ready "
                "AutoDeco folder; make one with `autodeco export-vllm HEADS OUT`"
            )
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: item for key, item in value.items() if key in names})

    @classmethod
    def from_checkpoint(cls, contents) -> "HeadsSettings":
        """The settings of a read checkpoint (:class:`~autodeco.model.checkpoint.CheckpointContents`)."""
        config = contents.config
        return cls(
            hidden_size=config.hidden_size, vocab_size=config.vocab_size,
            enable_temperature_head=config.enable_temperature_head, enable_top_p_head=config.enable_top_p_head,
            use_enhanced_features=config.use_enhanced_features, source=str(contents.path.resolve()),
        )


def more_heads_settings(value) -> dict[str, HeadsSettings]:
    """The other heads sets of an exported ``config.json``'s ``autodeco`` entry, by id (none: ``{}``)."""
    more = (value or {}).get(MORE_HEADS_KEY) or {} if isinstance(value, dict) else {}
    return {name: HeadsSettings.from_config_value(item) for name, item in more.items()}


def _more_heads_entry(contents, more_heads: Mapping[str, str | os.PathLike]) -> dict:
    """``{id: settings}`` of the other heads sets, checked: one base (:func:`~autodeco.engines.heads_sets.check_one_base`)
    and the shapes of the first heads."""
    from autodeco.engines.heads_sets import check_one_base

    more = {name: read_checkpoint(reference) for name, reference in more_heads.items()}
    check_one_base([contents, *more.values()], [str(contents.path), *(str(item.path) for item in more.values())])
    entry = {}
    for name, other in more.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"a heads id must be a non-empty string, but is {name!r}")
        config = other.config
        if (config.hidden_size, config.vocab_size) != (contents.config.hidden_size, contents.config.vocab_size):
            raise CheckpointError(
                f"heads {str(other.path)!r} fit hidden size {config.hidden_size} and {config.vocab_size} logits, but "
                f"{str(contents.path)!r} {contents.config.hidden_size} and {contents.config.vocab_size}: they were "
                "made for another base; serve them from a server of their own"
            )
        entry[name] = dataclasses.asdict(HeadsSettings.from_checkpoint(other))
    return entry


def export_for_vllm(
    heads: str | os.PathLike, output: str | os.PathLike, *, base: str | None = None,
    more_heads: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """Write a vLLM-ready folder for the checkpoint ``heads`` into ``output`` (atomically; replaced if present).

    Args:
        heads: a heads-only checkpoint (ours or official) or an official merged checkpoint.
        output: the folder to write.
        base: the base model to put the heads on (default: the one the checkpoint records; a merged
            checkpoint uses its own weights). ``embedded:...`` resolves to the converted embedded model.
        more_heads: other heads checkpoints of the same base, by the id requests pick them with
            (``extra_args {"autodeco_heads": ID}``); loaded from their folders when the engine starts.

    Returns:
        ``output`` as an absolute path.

    Raises:
        CheckpointError: unreadable checkpoint, no recorded base, a base vLLM cannot load with the plugin, or
            more heads recorded for another base (naming both).
    """
    contents = read_checkpoint(heads)
    config = contents.config
    more_entry = _more_heads_entry(contents, more_heads or {})
    check_apart(output, {"heads": contents.path}, option="the export folder")  # before the base is resolved or converted
    users_entries(Path(output).expanduser(), option="the export folder")
    settings = HeadsSettings.from_checkpoint(contents)
    if contents.merged and base is None:
        base_fields = dict(config.base_config)
        model_type = base_fields.get("model_type") or config.base_model_type
        architecture = BASE_ARCHITECTURES.get(model_type)
        weight_files = [file.resolve() for file in contents.weight_files]
        side_files = _side_files(contents.path)
        if not any(file.name == "tokenizer_config.json" for file in side_files) and config.base_model_name_or_path:
            reference = _relative_to(config.base_model_name_or_path, contents.path)
            if Path(resolve_base(reference)).is_dir():
                side_files = _side_files(Path(resolve_base(reference))) + side_files
        heads_file = None
    else:
        reference = base or config.base_model_name_or_path
        if not reference:
            raise CheckpointError(f"{str(contents.path)!r} does not record its base model; pass base= (or --base)")
        base_dir = Path(resolve_base(_relative_to(reference, contents.path) if base is None else reference))
        if not base_dir.is_dir():
            raise CheckpointError(
                f"the base {reference!r} is not a local folder ({base_dir}); vLLM-ready folders link the base's files: "
                "download the base first (e.g. `huggingface-cli download NAME --local-dir DIR`) and pass --base DIR"
            )
        base_fields = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
        model_type = base_fields.get("model_type")
        architectures = base_fields.get("architectures") or [BASE_ARCHITECTURES.get(model_type)]
        architecture = architectures[0]
        weight_files = sorted(path.resolve() for path in base_dir.glob("*.safetensors"))
        if not weight_files:
            raise CheckpointError(f"the base folder {str(base_dir)!r} holds no .safetensors weights; vLLM-ready folders need them")
        side_files = _side_files(base_dir)
        heads_file = _heads_file(contents.weight_files)
    if architecture not in BASE_ARCHITECTURES.values():
        raise CheckpointError(
            f"the base is a {model_type!r} model ({architecture}); the vLLM plugin supports "
            f"{', '.join(sorted(BASE_ARCHITECTURES.values()))}"
        )
    exported = {**base_fields, "model_type": model_type, "architectures": [vllm_architecture(architecture)],
                CONFIG_KEY: {**dataclasses.asdict(settings), **({MORE_HEADS_KEY: more_entry} if more_entry else {})}}
    for key in ("base_model_name_or_path", "base_model_type", "enable_temperature_head", "enable_top_p_head",
                "use_enhanced_features", "temperature_hidden_size", "top_p_hidden_size"):
        exported.pop(key, None)
    target = Path(output).expanduser().resolve()
    inputs = {"heads": contents.path, "base model": None if contents.merged and base is None else base_dir}
    with staged_folder(target, inputs=inputs, option="the export folder") as staging:
        (staging / "config.json").write_text(json.dumps(exported, indent=2) + "\n")
        for file in side_files:
            if not (staging / file.name).exists():
                (staging / file.name).symlink_to(file.resolve())
        for file in weight_files:
            (staging / file.name).symlink_to(file)
        if heads_file is not None:
            (staging / HEADS_FILE).symlink_to(heads_file.resolve())
    return target


def cached_export(
    heads: str | os.PathLike, *, base: str | None = None, more_heads: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """:func:`export_for_vllm` into ``$AUTODECO_HOME/vllm/<fingerprint>``, reused while the checkpoints are unchanged."""
    from autodeco.model.shipped import resolve_heads_reference

    folder = resolve_heads_reference(heads).resolve()
    more = {name: resolve_heads_reference(reference).resolve() for name, reference in (more_heads or {}).items()}
    key = text_fingerprint([str(folder), str(base), *_stats(folder),
                            *(f"{name}={path}:{','.join(_stats(path))}" for name, path in more.items())])
    target = autodeco_home() / "vllm" / key
    if not (target / "config.json").exists():
        export_for_vllm(folder, target, base=base, more_heads=more)
    return target


def _stats(folder: Path) -> list[str]:
    return [f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in sorted(folder.iterdir())]


def saved_heads(model) -> Path:
    """Save in-memory (fresh) heads once under ``$AUTODECO_HOME/heads/<fingerprint>`` so that vLLM can load them."""
    target = autodeco_home() / "heads" / tensors_fingerprint(model.head_state_dict())
    if not (target / "config.json").exists():
        model.save_pretrained(target)
    return target


def _heads_file(weight_files: list[Path]) -> Path:
    if len(weight_files) != 1:
        raise CheckpointError(f"a heads-only checkpoint should hold one weight file, found {[f.name for f in weight_files]}")
    return weight_files[0]


def _side_files(folder: Path) -> list[Path]:
    """Tokenizer, generation config, chat template...: every file but configs and weights."""
    return [
        path for path in sorted(folder.iterdir())
        if path.is_file() and path.name not in _SKIPPED_BASE_FILES and path.suffix != ".safetensors"
        and path.suffix not in PICKLE_SUFFIXES and not path.name.startswith(".")
    ]


def _relative_to(reference: str, checkpoint: Path) -> str:
    candidate = checkpoint / reference
    return str(candidate) if not Path(reference).is_absolute() and candidate.exists() else reference
