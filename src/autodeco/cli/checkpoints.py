"""``autodeco init / merge / split / info``: make, convert and inspect heads checkpoints."""

from __future__ import annotations

from pathlib import Path

from autodeco.common.console import say
from autodeco.model.base_model import EMBEDDED_MODEL


def init(
    out: str,
    base: str = EMBEDDED_MODEL,
    no_temperature_head: bool = False,
    no_top_p_head: bool = False,
    use_enhanced_features: bool = True,
    seed: int = 0,
    trust_remote_code: bool = False,
):
    """Wrap a base model with fresh heads and save the heads-only checkpoint.

    Args:
        out: folder to write (config.json + model.safetensors, a few MB).
        base: base model: hub id, local folder (recorded as an absolute path) or embedded:SmolLM2-135M-Instruct.
        no_temperature_head: disable the temperature head (T = 1).
        no_top_p_head: disable the top-p head (P = 1).
        use_enhanced_features: the top-p head reads the four probability features besides the hidden state and T (the official default).
        seed: seed for the heads' initial weights.
        trust_remote_code: allow the base's own modelling code.
    """
    from autodeco.model.modeling import AutoDecoForCausalLM

    _check_output(out, {"base model": base})
    model = AutoDecoForCausalLM.from_base(
        base, enable_temperature_head=not no_temperature_head, enable_top_p_head=not no_top_p_head,
        use_enhanced_features=use_enhanced_features, seed=seed, trust_remote_code=trust_remote_code,
    )
    path = model.save_pretrained(out)
    say(f"fresh heads for {base} saved to {path} ({_size(path)}, {model.num_head_parameters():,} parameters)")


def merge(heads: str, out: str, base: str | None = None):
    """Write a merged checkpoint: the base model's weights (under llm.) and the heads in one folder.

    Args:
        heads: heads-only checkpoint folder.
        out: folder to write.
        base: base model to merge with (default: the one the heads record).
    """
    from autodeco.model.modeling import AutoDecoForCausalLM

    _check_output(out, {"heads": heads, "base model": base})
    model = AutoDecoForCausalLM.from_pretrained(heads, base_model=base)
    path = model.save_pretrained(out, merged=True)
    say(f"merged checkpoint written to {path} ({_size(path)})")


def split(merged: str, out: str, base: str | None = None):
    """Extract the heads of a merged checkpoint into a heads-only checkpoint (no base weights are loaded).

    Args:
        merged: merged checkpoint folder.
        out: folder to write.
        base: base model reference to record (default: the one the merged checkpoint records).
    """
    from autodeco.model.base_model import base_reference
    from autodeco.model.checkpoint import read_checkpoint, write_checkpoint

    _check_output(out, {"merged checkpoint": merged, "base model": base})
    contents = read_checkpoint(merged)
    config = contents.config
    if base is not None:
        config.base_model_name_or_path = base_reference(base)
    if not config.base_model_name_or_path:
        raise ValueError(f"{merged!r} records no base model; pass --base so the heads know what they belong to")
    path = write_checkpoint(out, config, contents.head_tensors, inputs={"merged checkpoint": merged})
    say(f"heads of {merged} written to {path} ({_size(path)}), base {config.base_model_name_or_path}")


def info(path: str):
    """Describe what a checkpoint holds: layout, base model, heads, sizes.

    Args:
        path: checkpoint folder.
    """
    from autodeco.model.checkpoint import check_finite, non_finite_tensors, read_checkpoint
    from autodeco.model.config import describe_heads

    contents = read_checkpoint(path)
    config = contents.config
    broken = non_finite_tensors(contents.head_tensors)
    parameters = sum(tensor.numel() for tensor in contents.head_tensors.values())
    trained = {True: "yes", False: "no (fresh heads)", None: "unknown (not recorded)"}[config.trained]
    origin = "autodeco" if config.trained is not None else "official AutoDeco format"
    rows = [
        ("layout", "merged (base weights + heads)" if contents.merged else "heads only"),
        ("written by", origin),
        *describe_heads(config),
        ("head parameters", f"{parameters:,}"),
        ("head weights", f"NOT FINITE in {len(broken)} tensor(s): unusable" if broken else "finite"),
        ("trained", trained),
        ("files", ", ".join(f"{file.name} ({_size(file)})" for file in contents.weight_files)),
    ]
    for key, value in config.training.items():
        rows.append((f"training.{key}", value))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        say(f"{name:<{width}}  {value}")
    check_finite(contents.head_tensors, path)  # after the table: the error names each broken tensor, exit status 1


def _check_output(out: str, inputs: dict[str, str | None]) -> None:
    """Refuse, before loading anything, an output that overlaps an input or holds files autodeco did not write."""
    from autodeco.common.folders import check_apart, users_entries
    from autodeco.model.base_model import is_embedded

    check_apart(out, {name: path for name, path in inputs.items() if not is_embedded(path)}, option="OUT")
    users_entries(Path(out).expanduser(), option="OUT")


def _size(path: Path) -> str:
    path = Path(path)
    total = sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 1e6:.1f} MB" if total >= 1e5 else f"{total / 1e3:.1f} kB"


def export_vllm(heads: str, out: str, base: str | None = None, extra_heads: list[str] | None = None):
    """Write a folder vLLM opens with AutoDeco decoding: `vllm serve OUT`, `LLM(model=OUT)` (needs autodeco installed beside vLLM).

    vLLM reads the config, the tokenizer and every weight file from the folder it is given; a heads-only
    checkpoint holds only the heads and a reference to its base. OUT gets the base's config with the
    plugin's architecture (AutoDeco<Base>) and links (no copies) to the base's weights, tokenizer and
    generation config and to the heads. Merged checkpoints export the same way.

    Args:
        heads: heads-only or merged checkpoint folder (the heads requests get unless they name others).
        out: folder to write (a new or empty folder, or one autodeco wrote: replaced, keeping files you added).
        base: base model (default: the one the heads record; embedded:SmolLM2-135M-Instruct resolves to its converted folder).
        extra_heads: more heads checkpoints (folders or shipped:NAME) of the same base, recorded in OUT under their folder's name (shipped:NAME as NAME; a name taken twice gets -2, -3, ...); a request picks one with extra_args {"autodeco_heads": NAME} (vllm_xargs over HTTP); vLLM reads them from their folders when it starts, so keep them in place.
    """
    from autodeco.engines.vllm_export import export_for_vllm

    more = _extra_heads(heads, list(extra_heads or []))
    path = export_for_vllm(heads, out, base=base, more_heads=more)
    say(f"vLLM-ready folder for {heads}: {path}\n  vllm serve {path}    "
          "(a request's temperature multiplies the heads' T; extra_args/vllm_xargs autodeco_top_p multiplies their P)")
    if more:
        say(f"  other heads, by extra_args/vllm_xargs autodeco_heads: {', '.join(more)}")


def _extra_heads(heads: str, extra_heads: list[str]) -> dict[str, str]:
    """``{id: reference}`` of ``--extra-heads``: ids as ``autodeco serve`` names them (unique against HEADS's own), each
    checkpoint given once, every one recorded for HEADS's base (checked before anything is written).

    Raises:
        ValueError: a checkpoint given twice; CheckpointError: heads recorded for another base, naming both bases.
    """
    if not extra_heads:
        return {}
    from autodeco.engines.heads_sets import check_distinct, check_one_base, heads_ids
    from autodeco.model.checkpoint import read_checkpoint

    references = [heads, *extra_heads]
    check_distinct(references)
    check_one_base([read_checkpoint(reference) for reference in references], references,
                   remedy="one exported folder runs one base: export heads of another base into a folder of their own")
    return dict(zip(heads_ids(references)[1:], extra_heads))


def export_hub(heads: str, out: str, base: str | None = None, repo_id: str | None = None):
    """Write a folder to push to the Hub: the heads, a model card and custom_generate/ for plain transformers models.

    With it, a plain base model decodes with the heads: base.generate(**inputs, custom_generate=OUT,
    trust_remote_code=True) (transformers asks trust_remote_code for a local folder too). The card holds the
    custom_generate tag, usage, the recipe the heads record and the measured sections of their own card.

    Args:
        heads: heads-only or merged checkpoint folder (only the heads are exported).
        out: folder to write (a new or empty folder, or one autodeco wrote: replaced, keeping files you added).
        base: base model to record instead of the heads' own, e.g. its Hub id when the heads record a local path (not loaded).
        repo_id: the Hub repo you will push to, for the card's examples (default: your-name/<OUT's name>).
    """
    from autodeco.model.hub_export import export_for_hub

    path = export_for_hub(heads, out, base=base, repo_id=repo_id)
    say(f"Hub-ready folder for {heads}: {path}\n  base.generate(**inputs, custom_generate={str(path)!r}, "
        "trust_remote_code=True, return_dict_in_generate=True)\n  "
        f"hf upload {repo_id or 'REPO_ID'} {path}")
