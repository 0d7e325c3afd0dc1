"""Checkpoint files: layouts, interoperability with the official format, and every bad-input error."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from autodeco import AutoDecoForCausalLM
from autodeco.model.base_model import BaseModelError, load_base_model
from autodeco.model.checkpoint import CheckpointError, read_checkpoint
from helpers import tiny_llama

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "official"


@pytest.fixture
def heads_dir(tmp_path):
    model = AutoDecoForCausalLM.from_base(tiny_llama(), seed=0)
    return model.save_pretrained(tmp_path / "heads"), model


def test_heads_only_checkpoint_is_small_and_official_named(heads_dir):
    path, model = heads_dir
    contents = read_checkpoint(path)
    assert not contents.merged
    assert set(contents.head_tensors) == {
        f"{head}.mlp.{layer}.{kind}" for head in ("temp_head", "top_p_head") for layer in (0, 2) for kind in ("weight", "bias")
    }
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "autodeco"
    assert config["base_model_type"] == "llama"
    assert config["enable_temperature_head"] and config["enable_top_p_head"] and config["use_enhanced_features"]
    assert config["autodeco"]["trained"] is False
    total = sum(file.stat().st_size for file in path.iterdir())
    assert total < 200_000


def test_official_heads_only_checkpoint_loads_as_unknown_training(tmp_path):
    model = AutoDecoForCausalLM.from_pretrained(OFFICIAL / "heads-only", base_model=OFFICIAL / "tiny-llama")
    assert model.config.trained is None
    # and our save of it is readable by the same loader, with identical tensors
    saved = model.save_pretrained(tmp_path / "resaved")
    again = AutoDecoForCausalLM.from_pretrained(saved, base_model=OFFICIAL / "tiny-llama")
    for name, tensor in model.head_state_dict().items():
        assert torch.equal(tensor, again.head_state_dict()[name])


def test_merge_and_split_round_trip(tmp_path, heads_dir):
    path, model = heads_dir
    merged = model.save_pretrained(tmp_path / "merged", merged=True)
    assert read_checkpoint(merged).merged
    loaded = AutoDecoForCausalLM.from_pretrained(merged)
    ids = torch.randint(3, 128, (1, 9))
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.temperature, b.temperature) and torch.equal(a.top_p, b.top_p)


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nowhere")


def test_missing_config(tmp_path, heads_dir):
    path, _ = heads_dir
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        read_checkpoint(path)


def test_corrupt_config(heads_dir):
    path, _ = heads_dir
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint(path)


def test_not_an_autodeco_config(tmp_path):
    shutil.copytree(OFFICIAL / "tiny-llama", tmp_path / "plain")
    with pytest.raises(ValueError, match="not an AutoDeco checkpoint"):
        read_checkpoint(tmp_path / "plain")


def test_corrupt_safetensors(heads_dir):
    path, _ = heads_dir
    (path / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(path)


def test_truncated_safetensors(heads_dir):
    path, _ = heads_dir
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(path)


def test_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path, heads_dir, monkeypatch):
    path, model = heads_dir
    (path / "model.safetensors").unlink()
    torch.save(model.head_state_dict(), path / "pytorch_model.bin")

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle file was opened")

    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(CheckpointError, match="safetensors only"):
        AutoDecoForCausalLM.from_pretrained(path, base_model=tiny_llama())


def test_heads_for_another_base_are_refused_naming_both_sizes(heads_dir):
    path, _ = heads_dir
    with pytest.raises(CheckpointError, match="hidden size 16.*hidden size 32"):
        AutoDecoForCausalLM.from_pretrained(path, base_model=tiny_llama(hidden_size=32))
    with pytest.raises(CheckpointError, match="vocabulary of 128.*has 256"):
        AutoDecoForCausalLM.from_pretrained(path, base_model=tiny_llama(vocab_size=256))


def test_heads_for_another_model_type_are_refused(heads_dir):
    path, _ = heads_dir
    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2,
    ))
    with pytest.raises(CheckpointError, match="'llama'.*'qwen2'"):
        AutoDecoForCausalLM.from_pretrained(path, base_model=qwen)


def test_head_tensor_with_wrong_shape_is_refused(tmp_path, heads_dir):
    path, model = heads_dir
    from safetensors.torch import save_file

    tensors = {name: tensor.clone() for name, tensor in model.head_state_dict().items()}
    tensors["top_p_head.mlp.0.weight"] = torch.zeros(256, 99)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"top_p_head.mlp.0.weight has shape \(256, 99\)"):
        AutoDecoForCausalLM.from_pretrained(path, base_model=tiny_llama())


def test_checkpoint_without_base_reference_asks_for_one(heads_dir):
    path, _ = heads_dir
    config = json.loads((path / "config.json").read_text())
    config["base_model_name_or_path"] = None
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pass base_model"):
        AutoDecoForCausalLM.from_pretrained(path)


def test_non_causal_lm_base_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "bert-encoder")
    config = json.loads((tmp_path / "bert-encoder" / "config.json").read_text())
    config["model_type"] = "clip"  # a model type with no causal-LM class at all
    config["architectures"] = ["CLIPModel"]
    (tmp_path / "bert-encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BaseModelError, match="not a causal language model"):
        load_base_model(tmp_path / "bert-encoder")


def test_missing_base_folder_is_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="no config.json"):
        load_base_model(tmp_path / "empty")


def test_interrupted_save_keeps_previous_checkpoint(heads_dir, monkeypatch):
    path, model = heads_dir
    before = (path / "model.safetensors").read_bytes()
    import autodeco.model.checkpoint as checkpoint_module

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)
    with pytest.raises(OSError):
        model.save_pretrained(path)
    assert (path / "model.safetensors").read_bytes() == before
    assert [entry.name for entry in path.parent.iterdir() if entry.name.startswith(".")] == []
