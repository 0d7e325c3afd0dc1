"""The two heads and their policy, one module for every engine.

:class:`AutoDecoHeads` holds the temperature head and the top-p head, the rule that joins them (a disabled
head predicts 1; the top-p head reads the temperature detached, and the probability features when the
config asks for them) and the one loader of their tensors. The Hugging Face model
(:class:`~autodeco.model.modeling.AutoDecoForCausalLM`) is an ``AutoDecoHeads`` with a base model; the vLLM
model class (:mod:`autodeco.engines.vllm_models`) holds one beside vLLM's base. Both run the step of
:func:`autodeco.core.dynamic.dynamic_step` on it.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeco.core.heads import TemperatureHead, TopPHead, probability_features
from autodeco.model.checkpoint import CheckpointError, check_finite
from autodeco.model.config import AutoDecoConfig

FEATURE_CHUNK_ROWS = 256
"""Positions per chunk when computing the top-p features of a whole sequence (bounds memory)."""


class AutoDecoHeads(nn.Module):
    """The temperature head and the top-p head with their policy; their tensors are ``temp_head.*`` / ``top_p_head.*``.

    Args:
        config: the hidden size, which heads are on and whether the top-p head reads the probability features:
            an :class:`~autodeco.model.config.AutoDecoConfig`, or any object with those fields (the vLLM export's
            ``HeadsSettings``). Read at each call, so a change to ``config`` applies at once.

    Example:
        >>> heads = AutoDecoHeads(AutoDecoConfig(hidden_size=8, vocab_size=16))
        >>> heads.predict_temperature(torch.zeros(3, 8)).shape
        torch.Size([3])
    """

    def __init__(self, config: AutoDecoConfig):
        super().__init__()
        self.config = config
        self.add_heads()

    def add_heads(self) -> None:
        """Create fresh heads of ``config.hidden_size`` (from torch's global random state)."""
        self.temp_head = TemperatureHead(self.config.hidden_size)
        self.top_p_head = TopPHead(self.config.hidden_size, use_enhanced_features=self.config.use_enhanced_features)

    # ---------------------------------------------------------------------------------------- tensors

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The heads' tensors under their checkpoint names (``temp_head.mlp.0.weight``, ...)."""
        return {
            **{f"temp_head.{name}": tensor for name, tensor in self.temp_head.state_dict().items()},
            **{f"top_p_head.{name}": tensor for name, tensor in self.top_p_head.state_dict().items()},
        }

    def load_head_tensors(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> set[str]:
        """Load ``temp_head.*`` / ``top_p_head.*`` tensors (other names are ignored); returns the names loaded.

        Raises:
            CheckpointError: a head tensor missing, holding NaN or infinite values, or of a shape this base does
                not fit; naming ``source``, the tensor and what to do.
        """
        expected = self.head_state_dict()
        check_finite({name: tensor for name, tensor in tensors.items() if name in expected}, source)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise CheckpointError(f"{source} lacks head tensors {missing}; save (or export) the heads again")
        for name in expected:
            if tensors[name].shape != expected[name].shape:
                raise CheckpointError(
                    f"{source}: {name} has shape {tuple(tensors[name].shape)} but this base model needs "
                    f"{tuple(expected[name].shape)}; these heads were made for another base model"
                )
        self.load_state_dict({name: tensors[name] for name in expected}, strict=False)
        return set(expected)

    # ---------------------------------------------------------------------------------------- policy

    def to_head_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Cast hidden states to the heads' dtype (the heads may be float32 on a bfloat16 base)."""
        return hidden_states.to(self.temp_head.mlp[0].weight.dtype)

    def predict_temperature(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Temperatures ``(...)`` from hidden states ``(..., H)``; ones when the head is disabled."""
        if not self.config.enable_temperature_head:
            return torch.ones(hidden_states.shape[:-1], device=hidden_states.device)
        return self.temp_head(self.to_head_dtype(hidden_states))

    @property
    def reads_probability_features(self) -> bool:
        """Whether the top-p head is on and reads the four probability features."""
        return self.config.enable_top_p_head and self.config.use_enhanced_features

    def predict_top_p(
        self, hidden_states: torch.Tensor, temperature: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Top-p ``(...)`` from hidden states ``(..., H)`` and the predicted temperature ``(...)``.

        The one place of the heads' policy, for training, evaluation and every decoding step: ones when
        the head is disabled, and the temperature detached (the top-p head never trains the
        temperature head). ``features`` are the probability features of ``logits / (T + 1e-8)``
        (``(..., 4)``, without gradient), required when :attr:`reads_probability_features`.
        """
        if not self.config.enable_top_p_head:
            return torch.ones_like(temperature)
        return self.top_p_head(self.to_head_dtype(hidden_states), temperature.detach(), features)

    def predict(self, hidden_states: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position temperature and top-p.

        Args:
            hidden_states: ``(..., H)`` final hidden states.
            logits: ``(..., V)`` the base model's logits at the same positions.

        Returns:
            ``(temperature (...), top_p (...))``.
        """
        temperature = self.predict_temperature(hidden_states)
        features = None
        if self.reads_probability_features:
            with torch.no_grad():  # logits are frozen and T is detached: the features carry no gradient
                features = _chunked_features(logits, temperature.detach())
        return temperature, self.predict_top_p(hidden_states, temperature, features)

    def num_head_parameters(self) -> int:
        """Number of parameters in the heads (what trains)."""
        return sum(tensor.numel() for tensor in self.head_state_dict().values())


def _chunked_features(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (B*L, V)
    flat_temperature = temperature.reshape(-1)  # (B*L,)
    chunks = [
        probability_features(flat_logits[start : start + FEATURE_CHUNK_ROWS], flat_temperature[start : start + FEATURE_CHUNK_ROWS])
        for start in range(0, flat_logits.shape[0], FEATURE_CHUNK_ROWS)
    ]
    return torch.cat(chunks).reshape(*logits.shape[:-1], -1)  # (..., 4)
