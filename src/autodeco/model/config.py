"""The heads' configuration: what is saved in ``config.json`` next to the head weights.

The file is readable by the official AutoDeco code (``model_type: autodeco``, the base
config's fields at the top level) and ours keeps its own extras under the ``autodeco`` key.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

from autodeco.common.jsonl import read_json

FORMAT_VERSION = 1
"""Version of this project's extra fields in ``config.json``."""

_OWN_KEYS = {
    "model_type",
    "architectures",
    "base_model_name_or_path",
    "base_model_type",
    "enable_temperature_head",
    "enable_top_p_head",
    "use_enhanced_features",
    "temperature_hidden_size",
    "top_p_hidden_size",
    "autodeco",
    "_name_or_path",
}


_TRANSFORMERS_PLUMBING = ("name_or_path", "_from_auto", "_from_pipeline", "_commit_hash", "code_revision")
"""Keywords transformers' ``AutoConfig.from_pretrained`` hands to ``from_dict`` for its own bookkeeping."""


@dataclasses.dataclass
class AutoDecoConfig:
    """Configuration of the AutoDeco heads on one base model.

    Also what ``transformers.AutoConfig.from_pretrained(HEADS)`` returns once autodeco is registered
    (:mod:`autodeco.model.auto`): :meth:`from_dict` and the class attributes below are the part of
    transformers' config protocol its Auto classes use.
    """

    model_type: ClassVar[str] = "autodeco"
    """The ``model_type`` in ``config.json`` (ours and the official code's), the key transformers' Auto classes use."""

    sub_configs: ClassVar[dict[str, Any]] = {}
    """No nested configs (transformers' ``AutoModel*`` asks, to unwrap multimodal configs)."""

    architectures: ClassVar[list[str]] = ["AutoDecoForCausalLM"]
    """The model class, by name, for transformers' ``pipeline()`` (which tries ``transformers.<name>`` classes too).

    Not the file's ``architectures`` (``AutoDecoModelForCausalLM``, or the base's in official files): a base class
    named there would load the base without its heads.
    """

    hidden_size: int
    """Width of the base model's final hidden state, the heads' input."""

    vocab_size: int
    """Number of logits the base model's output head produces."""

    base_model_name_or_path: str | None = None
    """Where the base model comes from: a hub id, a local path, or ``embedded:...``."""

    base_model_type: str | None = None
    """The base config's ``model_type`` (``llama``, ``qwen2``, ...), checked on load."""

    enable_temperature_head: bool = True
    """Use the temperature head; when off, every token uses temperature 1."""

    enable_top_p_head: bool = True
    """Use the top-p head; when off, every token uses top-p 1."""

    use_enhanced_features: bool = True
    """The top-p head also reads max probability, entropy, variance and top-5 mass (the paper's default)."""

    trained: bool | None = False
    """False for fresh heads, True after training; None when unknown (checkpoints from elsewhere)."""

    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Free-form record of how the heads were trained (recipe, steps, data)."""

    base_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The base model's config as a dict, saved too so the file stays readable by the official code."""

    def __post_init__(self):
        for name in ("hidden_size", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("enable_temperature_head", "enable_top_p_head", "use_enhanced_features"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false (a JSON boolean), got {value!r}")
        if self.trained is not None and not isinstance(self.trained, bool):
            raise ValueError(f"trained must be true, false or null, got {self.trained!r}")
        for name in ("training", "base_config"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        if not (self.enable_temperature_head or self.enable_top_p_head):
            raise ValueError(
                "at least one head must be enabled (enable_temperature_head or enable_top_p_head); "
                "with neither, the model is just the base model"
            )

    def to_json_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: base fields first, then the AutoDeco fields."""
        content = {key: value for key, value in self.base_config.items() if key not in _OWN_KEYS}
        content.update(
            model_type="autodeco",
            architectures=["AutoDecoModelForCausalLM"],
            base_model_name_or_path=self.base_model_name_or_path,
            base_model_type=self.base_model_type,
            enable_temperature_head=self.enable_temperature_head,
            enable_top_p_head=self.enable_top_p_head,
            use_enhanced_features=self.use_enhanced_features,
            hidden_size=self.hidden_size,
            temperature_hidden_size=self.hidden_size,
            top_p_hidden_size=self.hidden_size,
            autodeco={
                "format_version": FORMAT_VERSION,
                "vocab_size": self.vocab_size,
                "trained": self.trained,
                "training": self.training,
            },
        )
        return content

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "AutoDecoConfig":
        """Read a heads ``config.json`` (see :meth:`from_json_dict`).

        Raises:
            ValueError: naming the file: not UTF-8, not JSON, nested too deeply, or a missing or wrong field.
            OSError: the file cannot be opened.
        """
        content = read_json(path, what="heads config", fix="restore the file, or re-save the checkpoint")
        return cls.from_json_dict(content, source=os.fspath(path))

    @classmethod
    def from_json_dict(cls, content: dict[str, Any], source: str = "config.json") -> "AutoDecoConfig":
        """Read ours or an official AutoDeco ``config.json``.

        Raises:
            ValueError: naming the file and the missing or wrong field.
        """
        if not isinstance(content, dict):
            raise ValueError(
                f"{source} holds a JSON {type(content).__name__}, not an object: it is not an AutoDeco config.json "
                "(restore the file, or re-save the checkpoint)"
            )
        if content.get("model_type") != "autodeco":
            raise ValueError(
                f"{source} has model_type {content.get('model_type')!r}, not 'autodeco': this is not an "
                "AutoDeco checkpoint (to wrap a plain model, use AutoDecoForCausalLM.from_base or `autodeco init`)"
            )
        extras = _mapping(content, "autodeco", source)
        text_config = _mapping(content, "text_config", source)
        training = _mapping(extras, "training", source, "autodeco.training")
        hidden_size = _first_given(
            content.get("temperature_hidden_size"), content.get("hidden_size"), text_config.get("hidden_size")
        )
        vocab_size = _first_given(extras.get("vocab_size"), content.get("vocab_size"), text_config.get("vocab_size"))
        if hidden_size is None or vocab_size is None:
            raise ValueError(f"{source} lacks hidden_size or vocab_size; the heads cannot be sized")
        base_config = {key: value for key, value in content.items() if key not in _OWN_KEYS}
        base_model_type = content.get("base_model_type")
        reference = content.get("base_model_name_or_path") or content.get("_name_or_path") or None
        for name, value in (("base_model_type", base_model_type), ("base_model_name_or_path", reference)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{source}: {name} must be a string, got {value!r}; fix it in the file")
        if base_model_type:
            base_config["model_type"] = base_model_type
        try:
            return cls(
                hidden_size=hidden_size,
                vocab_size=vocab_size,
                base_model_name_or_path=reference,
                base_model_type=base_model_type,
                enable_temperature_head=content.get("enable_temperature_head", True),
                enable_top_p_head=content.get("enable_top_p_head", True),
                use_enhanced_features=content.get("use_enhanced_features", True),
                trained=extras.get("trained") if "autodeco" in content else None,
                training=dict(training),
                base_config=base_config,
            )
        except ValueError as error:
            raise ValueError(f"{source}: {error}; fix the value in the file (or re-save the checkpoint)") from None


    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """What ``AutoConfig.from_pretrained`` calls with the parsed ``config.json`` (transformers' config protocol).

        Keywords naming a field (``enable_top_p_head=False``, say) override the file's value, as they do for
        transformers' own configs; with ``return_unused_kwargs=True`` the others come back as ``(config, unused)``
        (what ``AutoModelForCausalLM.from_pretrained`` passes on to the model), otherwise they are refused.

        Raises:
            ValueError: a wrong field in the file or in the keywords, or an unknown keyword.
        """
        return_unused = kwargs.pop("return_unused_kwargs", False)
        folder = kwargs.get("name_or_path")
        source = os.path.join(os.fspath(folder), "config.json") if folder else "config.json"
        for name in _TRANSFORMERS_PLUMBING:
            kwargs.pop(name, None)
        config = cls.from_json_dict(config_dict, source=source)
        fields = {field.name for field in dataclasses.fields(cls)}
        overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in fields}
        if overrides:
            try:
                config = dataclasses.replace(config, **overrides)
            except ValueError as error:
                raise ValueError(f"{source}: {error} (passed as a keyword to from_pretrained)") from None
        if return_unused:
            return config, kwargs
        if kwargs:
            raise ValueError(
                f"AutoDecoConfig takes no keyword {sorted(kwargs)} (passed with {source!r}); its fields are "
                f"{sorted(fields)}: pass only those, or pass loading options to AutoModelForCausalLM.from_pretrained"
            )
        return config


def describe_heads(config: AutoDecoConfig) -> list[tuple[str, Any]]:
    """What a heads config says about its base and its heads, as (name, value) rows for people to read.

    Used by ``autodeco info`` and the model card ``autodeco export-hub`` writes.
    """
    return [
        ("base model", config.base_model_name_or_path or "(not recorded)"),
        ("base type", config.base_model_type or "(not recorded)"),
        ("hidden size", config.hidden_size),
        ("vocabulary", config.vocab_size),
        ("temperature head", "enabled" if config.enable_temperature_head else "disabled (T = 1)"),
        ("top-p head", "enabled" if config.enable_top_p_head else "disabled (P = 1)"),
        ("top-p features", "max prob, entropy, variance, top-5 mass" if config.use_enhanced_features else "none"),
    ]


def _mapping(content: dict[str, Any], key: str, source: str, name: str | None = None) -> dict[str, Any]:
    """``content[key]`` when it is a JSON object, ``{}`` when absent or null; anything else is refused."""
    value = content.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {name or key!r} must be a JSON object, got {value!r}; fix or remove it")
    return value


def _first_given(*values: Any) -> Any:
    """The first value that is not None (a size of 0 is kept, so that it is refused rather than skipped)."""
    return next((value for value in values if value is not None), None)
