"""Nothing the user owns is lost: every writer refuses folders it did not make and outputs that overlap its inputs.

The rule (autodeco.common.folders): a new or empty folder is written; a folder autodeco made is replaced
atomically with the files the user added since carried over; any other non-empty folder is refused before
anything is written, as is an output equal to, inside or containing one of the command's inputs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autodeco import AutoDecoForCausalLM
from autodeco.cli import main
from autodeco.common.folders import MANIFEST, FolderRefused, check_apart, staged_folder
from autodeco.common.runlock import run_lock
from helpers import tiny_llama


def run(capsys, *argv):
    status = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes; symlinks by their target."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(folder))] = os.readlink(path).encode()
        elif path.is_file():
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def users_folder(folder: Path) -> Path:
    """A folder of the user's: a thesis, a CSV, a source tree, a hidden file."""
    (folder / "src").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{Four years}")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    (folder / "src" / "main.py").write_text("print('mine')\n")
    (folder / ".env").write_text("KEY=1\n")
    return folder


@pytest.fixture
def model():
    return AutoDecoForCausalLM.from_base(tiny_llama(), seed=0)


# the library: save_pretrained and the folder writer ------------------------------------------------


@pytest.mark.parametrize("where", ["named", "working folder"])
def test_save_pretrained_refuses_a_folder_of_the_users_and_leaves_it_untouched(tmp_path, model, monkeypatch, where):
    folder = users_folder(tmp_path / "project")
    before = snapshot(folder)
    monkeypatch.chdir(folder)
    with pytest.raises(FolderRefused, match="files autodeco did not write.*new or empty folder"):
        model.save_pretrained(folder if where == "named" else ".")
    assert snapshot(folder) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["project"]  # no staging debris


def test_save_pretrained_into_an_empty_working_folder_stays_there(tmp_path, model, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    model.save_pretrained(".")
    assert Path.cwd() == (tmp_path / "empty").resolve()
    assert {"config.json", "model.safetensors", MANIFEST} <= set(os.listdir("."))
    model.save_pretrained(".")  # again: ours now
    assert Path("config.json").exists() and Path.cwd() == (tmp_path / "empty").resolve()


def test_files_added_to_an_autodeco_folder_survive_a_new_save(tmp_path, model):
    heads = model.save_pretrained(tmp_path / "heads")
    (heads / "NOTES.md").write_text("lr 1e-3 was better")
    (heads / "plots").mkdir()
    (heads / "plots" / "curve.png").write_bytes(b"\x89PNG")
    (heads / "link").symlink_to("NOTES.md")
    before = snapshot(heads)
    model.save_pretrained(heads)
    after = snapshot(heads)
    for name in ("NOTES.md", "plots/curve.png", "link"):
        assert after[name] == before[name]
    assert (heads / "NOTES.md").stat().st_nlink == 1  # the old folder's link is gone with it: one real file
    assert AutoDecoForCausalLM.from_pretrained(heads, base_model=tiny_llama()) is not None


def test_a_users_file_that_a_new_write_would_overwrite_is_refused(tmp_path):
    with staged_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("ours")
    (tmp_path / "out" / "b.txt").write_text("the user's")
    with pytest.raises(FolderRefused, match="b.txt, which autodeco did not write"):
        with staged_folder(tmp_path / "out") as staging:
            (staging / "a.txt").write_text("ours again")
            (staging / "b.txt").write_text("would overwrite")
    assert (tmp_path / "out" / "b.txt").read_text() == "the user's"
    assert (tmp_path / "out" / "a.txt").read_text() == "ours"


def test_a_checkpoint_written_before_the_manifest_is_recognised_and_its_model_card_kept(tmp_path, model):
    heads = model.save_pretrained(tmp_path / "heads")
    (heads / MANIFEST).unlink()
    (heads / "README.md").write_text("# card")
    model.save_pretrained(heads)
    assert (heads / "README.md").read_text() == "# card"
    assert json.loads((heads / MANIFEST).read_text())["files"] == ["config.json", "model.safetensors"]


def test_a_folder_with_someone_elses_config_json_is_not_taken_for_ours(tmp_path, model):
    folder = tmp_path / "other-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    before = snapshot(folder)
    with pytest.raises(FolderRefused):
        model.save_pretrained(folder)
    assert snapshot(folder) == before


@pytest.mark.parametrize("relation", ["is", "inside", "contains"])
def test_check_apart_refuses_each_overlap(tmp_path, relation):
    source = tmp_path / "base"
    source.mkdir()
    output = {"is": source, "inside": source / "sub" / "out", "contains": tmp_path}[relation]
    with pytest.raises(FolderRefused, match="the base model"):
        check_apart(output, {"base model": source})
    check_apart(tmp_path / "sibling", {"base model": source})  # beside it: fine


def test_save_pretrained_refuses_to_write_into_its_local_base(tmp_path):
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    model = AutoDecoForCausalLM.from_base(str(base), seed=0)
    before = snapshot(base)
    with pytest.raises(FolderRefused, match="base model"):
        model.save_pretrained(base / "heads")
    assert snapshot(base) == before


# the commands -------------------------------------------------------------------------------------


def test_init_on_a_users_folder_or_onto_its_base_changes_nothing(tmp_path, tiny_chat_model_dir, capsys):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_chat_model_dir, base)
    before = snapshot(base)
    status, _, err = run(capsys, "init", base, "--base", base)
    assert status == 1 and "is the base model" in err and "Traceback" not in err
    status, _, err = run(capsys, "init", base.parent, "--base", base)
    assert status == 1 and "contains the base model" in err
    assert snapshot(base) == before
    project = users_folder(tmp_path / "project")
    before = snapshot(project)
    status, _, err = run(capsys, "init", project, "--base", base)
    assert status == 1 and "files autodeco did not write" in err
    assert snapshot(project) == before


def test_export_vllm_never_destroys_its_heads_or_a_users_folder(tmp_path, tiny_chat_model_dir, capsys):
    status, _, err = run(capsys, "init", tmp_path / "heads", "--base", tiny_chat_model_dir)
    assert status == 0, err
    heads = tmp_path / "heads"
    before = snapshot(heads)
    for out in (heads, heads / "export", tmp_path):
        status, _, err = run(capsys, "export-vllm", heads, out)
        assert status == 1 and "the heads" in err and "Traceback" not in err, (out, err)
    assert snapshot(heads) == before
    project = users_folder(tmp_path / "project")
    before = snapshot(project)
    status, _, err = run(capsys, "export-vllm", heads, project)
    assert status == 1 and "files autodeco did not write" in err
    assert snapshot(project) == before
    status, _, err = run(capsys, "export-vllm", heads, tmp_path / "export")
    assert status == 0, err
    status, _, err = run(capsys, "export-vllm", heads, tmp_path / "export")  # ours: replaced
    assert status == 0, err


def test_merge_and_split_refuse_their_own_inputs(tmp_path, tiny_chat_model_dir, capsys):
    assert run(capsys, "init", tmp_path / "heads", "--base", tiny_chat_model_dir)[0] == 0
    heads_before = snapshot(tmp_path / "heads")
    status, _, err = run(capsys, "merge", tmp_path / "heads", tmp_path / "heads")
    assert status == 1 and "is the heads" in err
    assert run(capsys, "merge", tmp_path / "heads", tmp_path / "merged")[0] == 0
    merged_before = snapshot(tmp_path / "merged")
    status, _, err = run(capsys, "split", tmp_path / "merged", tmp_path / "merged")
    assert status == 1 and "is the merged checkpoint" in err
    assert snapshot(tmp_path / "heads") == heads_before and snapshot(tmp_path / "merged") == merged_before


# run folders -----------------------------------------------------------------------------------------


def test_a_run_refuses_a_folder_of_the_users(tmp_path):
    folder = users_folder(tmp_path / "project")
    before = snapshot(folder)
    with pytest.raises(FolderRefused, match="files autodeco did not write"):
        with run_lock(folder, "sample"):
            pass
    assert snapshot(folder) == before


def test_a_run_refuses_another_commands_folder_and_its_inputs(tmp_path):
    with run_lock(tmp_path / "s", "sample"):
        (tmp_path / "s" / "train.jsonl").write_text("{}\n")
    with pytest.raises(FolderRefused, match="holds an `autodeco sample` run"):
        with run_lock(tmp_path / "s", "train"):
            pass
    with run_lock(tmp_path / "s", "sample"):  # the same command resumes
        pass
    with pytest.raises(FolderRefused, match="contains the training data"):
        with run_lock(tmp_path, "train", inputs={"training data": tmp_path / "s" / "train.jsonl"}):
            pass


def test_sample_on_a_users_folder_is_refused_by_the_command(tmp_path, tiny_chat_model_dir, capsys):
    folder = users_folder(tmp_path / "project")
    before = snapshot(folder)
    status, _, err = run(capsys, "sample", "--base", tiny_chat_model_dir, "--output", folder, "--limit", 2)
    assert status == 1 and "files autodeco did not write" in err and "Traceback" not in err
    assert snapshot(folder) == before


# standard output carries only results -------------------------------------------------------------------


def test_library_chatter_during_a_command_goes_to_stderr(tmp_path, model, capsys, monkeypatch):
    import logging

    import autodeco.model.checkpoint as checkpoint

    heads = model.save_pretrained(tmp_path / "heads")
    real = checkpoint.read_checkpoint

    def chatty(*args, **kwargs):  # as DeepSpeed does on import: a print and a logger bound to sys.stdout
        print("[WARNING] Setting accelerator to CPU")
        logger = logging.getLogger("chatty-library")
        logger.addHandler(logging.StreamHandler(sys.stdout))
        logger.warning("a library's log line")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "read_checkpoint", chatty)
    status, out, err = run(capsys, "info", heads)
    assert status == 0
    assert "Setting accelerator" not in out and "log line" not in out and "heads only" in out
    assert "Setting accelerator" in err and "log line" in err


def test_converting_a_model_does_not_import_deepspeed(tmp_path):
    """The embedded model's conversion writes its weights without transformers' save_pretrained (which imports
    DeepSpeed through accelerate, and DeepSpeed prints on import): checked on a tiny model, in a fresh process."""
    script = f"""
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from autodeco.model.base_model import _save_weights
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
torch.manual_seed(0)
model = LlamaForCausalLM(config).eval()
_save_weights(model, __import__("pathlib").Path({str(tmp_path)!r}))
assert "deepspeed" not in sys.modules, "deepspeed was imported"
loaded = LlamaForCausalLM.from_pretrained({str(tmp_path)!r}).eval()
ids = torch.tensor([[1, 2, 3]])
assert torch.equal(model(ids).logits, loaded(ids).logits)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_generate_traces_never_overwrite_a_users_file(tmp_path, tiny_chat_model_dir, capsys):
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "trace-1.html").write_text("my own page")
    argv = ("generate", "hi", "--base", tiny_chat_model_dir, "--max-new-tokens", 2, "--trace", "--trace-dir", folder)
    status, _, err = run(capsys, *argv)
    assert status == 1 and "files autodeco did not write" in err
    assert (folder / "trace-1.html").read_text() == "my own page"
    (folder / "trace-1.html").unlink()
    assert run(capsys, *argv)[0] == 0
    (folder / "notes.txt").write_text("seed 0 looked odd")
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    assert (folder / "notes.txt").read_text() == "seed 0 looked odd" and (folder / "trace-1.png").exists()


def test_an_export_written_before_the_manifest_is_replaced(tmp_path, tiny_chat_model_dir, capsys):
    assert run(capsys, "init", tmp_path / "heads", "--base", tiny_chat_model_dir)[0] == 0
    assert run(capsys, "export-vllm", tmp_path / "heads", tmp_path / "export")[0] == 0
    export = tmp_path / "export"
    (export / MANIFEST).unlink()
    (export / "added_tokens.json").symlink_to(Path(tiny_chat_model_dir) / "tokenizer.json")  # a side file link
    status, _, err = run(capsys, "export-vllm", tmp_path / "heads", export)
    assert status == 0, err
    assert (export / MANIFEST).exists() and not (export / "added_tokens.json").exists()  # the old links were ours
