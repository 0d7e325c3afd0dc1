"""Base model folders: pickle weights are refused unopened, unreadable configs are named (model/base_model.py)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from autodeco.cli import main
from autodeco.model.base_model import BaseModelError, load_base_model, resolve_base

PICKLE_LAYOUTS = {
    "pytorch_model.bin": ["pytorch_model.bin"],
    "bin shards with an index": ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    ".pt": ["model.pt"],
    ".pth": ["weights.pth"],
    ".ckpt": ["last.ckpt"],
}


@pytest.fixture
def forbid_unpickling(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle file was opened")

    monkeypatch.setattr(torch, "load", forbidden)


def pickle_base(source, folder, names: list[str]):
    """A copy of the model folder ``source`` whose weights are pickle files ``names`` (no safetensors)."""
    folder.mkdir()
    for file in source.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, folder)
    tensors = load_file(source / "model.safetensors")
    for name in names:
        torch.save(tensors, folder / name)
    if len(names) > 1:
        weight_map = {tensor: names[index % len(names)] for index, tensor in enumerate(tensors)}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("names", list(PICKLE_LAYOUTS.values()), ids=list(PICKLE_LAYOUTS))
def test_a_base_folder_with_only_pickle_weights_is_refused_unopened(names, tiny_chat_model_dir, tmp_path,
                                                                    forbid_unpickling):
    folder = pickle_base(tiny_chat_model_dir, tmp_path / "base", names)
    with pytest.raises(BaseModelError, match=rf"holds only pickle files \[{names[0]!r}.*safetensors only.*save_file"):
        load_base_model(folder)  # before: torch.load(weights_only=True) and an UnpicklingError traceback


def test_the_cli_refuses_a_pickle_base_in_one_line(tiny_chat_model_dir, tmp_path, capsys, forbid_unpickling):
    folder = pickle_base(tiny_chat_model_dir, tmp_path / "base", ["pytorch_model.bin"])
    commands = [["generate", "hi", "--base", folder, "--max-new-tokens", "2"], ["init", tmp_path / "out", "--base", folder]]
    for argv in commands:
        assert main([str(word) for word in argv]) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autodeco: error: ")]
        assert len(errors) == 1 and "pytorch_model.bin" in errors[0] and "safetensors only" in errors[0]


def test_safetensors_beside_a_pickle_file_load_from_the_safetensors(tiny_chat_model_dir, tmp_path, forbid_unpickling):
    folder = tmp_path / "base"
    shutil.copytree(tiny_chat_model_dir, folder)
    (folder / "training_args.bin").write_bytes(b"not read")
    assert load_base_model(folder).config.model_type == "llama"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ('{"model_type": "llama",', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_an_unreadable_base_config_is_named(content, message, tiny_chat_model_dir, tmp_path):
    folder = tmp_path / "base"
    shutil.copytree(tiny_chat_model_dir, folder)
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=rf"base model config .*config.json.*{message}"):
        resolve_base(folder)
