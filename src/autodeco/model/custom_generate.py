"""Dynamic decoding for a plain transformers model through ``generate(custom_generate=FOLDER_OR_REPO)``.

``autodeco export-hub`` writes ``custom_generate/generate.py`` into a heads folder; that file is a shell
around :func:`generate_with_heads`, so the decoding that runs is this package's, at the installed version.

How transformers (5.x) runs it: ``base.generate(**inputs, custom_generate=X, trust_remote_code=True)``
checks that ``X`` (a local folder or a Hub repo) holds ``custom_generate/generate.py``, checks
``custom_generate/requirements.txt`` against the installed packages, copies ``generate.py`` into its
modules cache (``HF_MODULES_CACHE``) and calls its ``generate(model=base, **every_generate_argument)``.
Because the file runs from that cache, it cannot find the heads beside itself: :func:`heads_location`
reads the ``custom_generate`` argument the user gave ``generate()`` instead.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

HEADS_FILES = ("config.json", "*.safetensors")
"""What a Hub repo must provide for the heads (the card and ``custom_generate/`` are not needed)."""

ARCHITECTURE_FIELDS = ("num_hidden_layers", "num_attention_heads", "intermediate_size")
"""Base config fields compared besides type, hidden size and vocabulary: a base of the same family but
another size has other hidden states, which the heads were not trained on."""


def generate_with_heads(model, *args, heads: str | os.PathLike | None = None, **arguments):
    """Run AutoDeco's ``generate()`` on a plain causal LM with the heads of an exported folder or Hub repo.

    Samples exactly what ``AutoDecoForCausalLM.from_pretrained(heads).generate(...)`` samples under the same
    seed (building the heads does not touch the random state), and with ``return_dict_in_generate=True``
    returns the same :class:`~autodeco.model.modeling.AutoDecoGenerateOutput` (``temperatures``, ``top_ps``).
    The base is put in eval mode with its gradients off, as ``AutoDecoForCausalLM`` keeps it.

    Args:
        model: the base model (a ``transformers`` causal LM) whose ``generate()`` was called.
        *args: at most one: the prompt ids (what ``generate(inputs)`` takes positionally).
        heads: the heads folder or Hub repo (default: what was passed as ``custom_generate``).
        **arguments: every other ``generate()`` argument, as transformers hands them over (``None`` ones dropped).

    Raises:
        ValueError: the heads cannot be found, or they were made for another base (naming both).

    Example:
        >>> output = base.generate(**inputs, custom_generate="runs/heads-hub", trust_remote_code=True,
        ...                        return_dict_in_generate=True)  # doctest: +SKIP
        >>> output.temperatures.shape  # (B, new_tokens)  # doctest: +SKIP
    """
    from autodeco.model.modeling import AutoDecoForCausalLM

    if len(args) > 1:
        raise ValueError(f"generate() got {len(args)} positional arguments; pass the prompt ids only, the rest by name")
    arguments = {name: value for name, value in arguments.items() if value is not None}
    prompt = args[0] if args else arguments.pop("inputs", None)
    if prompt is not None:
        arguments.setdefault("input_ids", prompt)
    folder = heads_folder(heads if heads is not None else heads_location(model))
    with torch.random.fork_rng(devices=[]):  # the heads' (overwritten) initial weights draw random numbers
        wrapped = AutoDecoForCausalLM.from_pretrained(folder, base_model=check_same_base(folder, model))
    return wrapped.generate(**arguments)


def heads_location(model) -> str:
    """The ``custom_generate`` argument of the ``generate()`` call running on ``model`` (a folder or Hub repo).

    Raises:
        ValueError: no such call on the stack (the function was called directly): pass ``heads=``.
    """
    frame = sys._getframe(1)
    while frame is not None:
        local = frame.f_locals
        if frame.f_code.co_name == "generate" and local.get("self") is model and isinstance(
            local.get("custom_generate"), (str, os.PathLike)
        ):
            return os.fspath(local["custom_generate"])
        frame = frame.f_back
    raise ValueError(
        "cannot tell where the AutoDeco heads are: no model.generate(custom_generate=...) call is running on this "
        "model; call model.generate(..., custom_generate=HEADS_FOLDER_OR_REPO, trust_remote_code=True), or pass heads="
    )


def heads_folder(location: str | os.PathLike) -> Path:
    """A local folder as it is; a Hub repo id downloaded (its config and weights only) to the Hub cache."""
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(location), allow_patterns=list(HEADS_FILES)))
    except Exception as error:  # huggingface_hub raises a dozen kinds (offline, not found, gated, bad id)
        raise ValueError(
            f"cannot find the AutoDeco heads {str(location)!r}: not a local folder, and the Hub download failed "
            f"({type(error).__name__}: {error}); pass the exported folder's path or a Hub repo id you can reach"
        ) from None


def check_same_base(folder: Path, model):
    """Return ``model`` when it is the base the heads in ``folder`` record; otherwise raise naming both.

    Type, hidden size and vocabulary are checked by :func:`~autodeco.model.modeling.check_base_fits`;
    :data:`ARCHITECTURE_FIELDS` against the base config the heads recorded. A different name alone (a local
    copy of a Hub model) only warns.

    Raises:
        ValueError (a :class:`~autodeco.model.checkpoint.CheckpointError`): the heads do not fit this base.
    """
    from autodeco.model.base_model import is_embedded
    from autodeco.model.checkpoint import CheckpointError, read_checkpoint
    from autodeco.model.modeling import check_base_fits

    config = read_checkpoint(folder).config
    given = getattr(model, "name_or_path", None) or type(model).__name__
    recorded = config.base_model_name_or_path or "(not recorded)"
    check_base_fits(config, model, given=given, heads=str(folder))
    base_fields = getattr(model, "config", None)
    for field in ARCHITECTURE_FIELDS:
        made_for, seen = config.base_config.get(field), getattr(base_fields, field, None)
        if made_for is not None and seen is not None and made_for != seen:
            raise CheckpointError(
                f"the heads in {str(folder)!r} were made for base {recorded!r} ({field} {made_for}) but the given base "
                f"{given!r} has {field} {seen}; call generate() on the base the heads record"
            )
    if config.base_model_name_or_path and not is_embedded(recorded) and _short_name(recorded) != _short_name(given):
        warnings.warn(
            f"the heads in {str(folder)!r} record base {recorded!r}, the given model is {given!r}; their shapes fit, "
            "but heads decode well only on the model they were trained on",
            stacklevel=3,
        )
    return model


def _short_name(reference: str) -> str:
    """``org/Model-Name`` and ``/any/path/Model-Name`` compare equal: the last part, lower case."""
    return Path(str(reference).rstrip("/")).name.lower()
