"""``autodeco export-vllm HEADS OUT --extra-heads ...``: several heads sets in one vLLM-ready folder (no vLLM needed).

What the plugin does with the recorded sets (every set on the device, picked per row by
``extra_args {"autodeco_heads": ID}``) is tested against the HF model in ``tests/engines/test_vllm.py``;
here: the command records exactly what that engine is built from, and refuses what it cannot serve.
"""

import json
import shutil

import pytest

from autodeco.cli import main
from autodeco.engines.vllm_export import CONFIG_KEY, MORE_HEADS_KEY, export_for_vllm


def run(capsys, *argv):
    status = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def checkpoints(tiny_chat_model_dir, tmp_path_factory):
    """Three heads checkpoints of the tiny chat model (two folders both named ``heads``) and one of a copy of it."""
    folder = tmp_path_factory.mktemp("export-vllm")
    shutil.copytree(tiny_chat_model_dir, folder / "other-base")
    for out, base, seed in [("heads", tiny_chat_model_dir, 0), ("beta", tiny_chat_model_dir, 1),
                            ("run2/heads", tiny_chat_model_dir, 2), ("other", folder / "other-base", 3)]:
        assert main(["init", str(folder / out), "--base", str(base), "--seed", str(seed)]) == 0
    return folder


def test_extra_heads_are_recorded_under_their_serve_ids(checkpoints, tmp_path, capsys):
    status, out, err = run(capsys, "export-vllm", checkpoints / "heads", tmp_path / "out",
                           "--extra-heads", checkpoints / "beta", checkpoints / "run2" / "heads")
    assert status == 0, err
    assert "autodeco_heads: beta, heads-2" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    more = config[CONFIG_KEY][MORE_HEADS_KEY]
    assert list(more) == ["beta", "heads-2"]  # HEADS keeps "heads": the second folder of that name is heads-2
    assert more["beta"]["source"] == str((checkpoints / "beta").resolve())
    assert more["heads-2"]["source"] == str((checkpoints / "run2" / "heads").resolve())
    assert more["beta"]["hidden_size"] == 32 and more["beta"]["enable_top_p_head"] is True
    # exactly the folder the vLLM engine of `autodeco serve A B C --engine vllm` is built from
    library = export_for_vllm(checkpoints / "heads", tmp_path / "library",
                              more_heads={"beta": checkpoints / "beta", "heads-2": checkpoints / "run2" / "heads"})
    assert json.loads((library / "config.json").read_text()) == config


def test_without_extra_heads_the_folder_has_one_heads_set(checkpoints, tmp_path, capsys):
    status, out, err = run(capsys, "export-vllm", checkpoints / "heads", tmp_path / "out")
    assert status == 0, err
    assert MORE_HEADS_KEY not in json.loads((tmp_path / "out" / "config.json").read_text())[CONFIG_KEY]
    assert "autodeco_heads" not in out


def test_extra_heads_of_another_base_are_refused_naming_both_bases(checkpoints, tiny_chat_model_dir, tmp_path, capsys):
    status, _, err = run(capsys, "export-vllm", checkpoints / "heads", tmp_path / "out",
                         "--extra-heads", checkpoints / "beta", checkpoints / "other")
    assert status == 1 and "Traceback" not in err
    assert str((checkpoints / "other-base").resolve()) in err and str(tiny_chat_model_dir.resolve()) in err
    assert "export heads of another base into a folder of their own" in err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_the_same_checkpoint_twice_is_refused(checkpoints, tmp_path, capsys):
    status, _, err = run(capsys, "export-vllm", checkpoints / "heads", tmp_path / "out",
                         "--extra-heads", checkpoints / "beta", checkpoints / "heads" / ".")
    assert status == 1 and "are the same heads checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
