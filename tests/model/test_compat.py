"""autodeco follows the installed transformers' name for the key-value cache (renamed in 5.24)."""

import logging

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from autodeco.model.compat import CACHE_ARGUMENT
from autodeco.model.modeling import AutoDecoOutput
from autodeco.sampling.inference import load_for_generation, render_prompt
from autodeco.sampling.rollouts import complete, prefill
from autodeco.sampling.settings import DecodingSetting


@pytest.fixture
def transformers_warnings(caplog):
    """The warnings transformers logs during the test, with its warn-once memory cleared first."""
    warning_once = getattr(logging.Logger, "warning_once", None)
    if hasattr(warning_once, "cache_clear"):
        warning_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="transformers"):
        yield lambda: [record.getMessage() for record in caplog.records if record.name.startswith("transformers")]


def test_the_cache_field_is_the_one_transformers_uses():
    assert CACHE_ARGUMENT in CausalLMOutputWithPast.__dataclass_fields__
    assert CACHE_ARGUMENT in AutoDecoOutput.__dataclass_fields__


def test_forward_returns_the_base_cache_without_deprecation_warnings(tiny_autodeco, transformers_warnings):
    model = tiny_autodeco("llama")
    input_ids = torch.tensor([[5, 6, 7, 8]])
    output = model(input_ids, use_cache=True)
    cache = output[CACHE_ARGUMENT]
    assert cache is not None and cache.get_seq_length() == 4
    # The cache feeds the next step like the base model's own.
    step = model(torch.tensor([[9]]), **{CACHE_ARGUMENT: cache}, use_cache=True)
    full = model(torch.tensor([[5, 6, 7, 8, 9]]))
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], rtol=1e-5, atol=1e-5)
    assert not [message for message in transformers_warnings() if "deprecated" in message]


def test_shared_prefill_rollouts_raise_no_deprecation_warnings(tiny_chat_model_dir, transformers_warnings):
    loaded = load_for_generation(None, str(tiny_chat_model_dir), seed=3)
    prompts = [render_prompt(loaded.tokenizer, "What is 2 + 3?")]
    batch = prefill(loaded.model.llm, loaded.tokenizer, prompts)
    assert batch.cache is not None
    for setting in (DecodingSetting.greedy(), DecodingSetting.autodeco()):
        complete(loaded.model, loaded.tokenizer, batch, setting, num_samples=2, max_new_tokens=4)
    assert not [message for message in transformers_warnings() if "deprecated" in message]
