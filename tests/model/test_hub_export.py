"""``autodeco export-hub``: the exported folder, its model card, and transformers' real ``custom_generate`` call on it."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from autodeco.cli import main
from autodeco.common.folders import MANIFEST
from autodeco.model.custom_generate import generate_with_heads
from autodeco.model.hub_export import export_for_hub, measured_sections, model_card
from autodeco.model.modeling import AutoDecoForCausalLM, AutoDecoGenerateOutput
from autodeco.model.shipped import shipped_heads_path
from helpers import tiny_llama


def run(capsys, *argv):
    status = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(autouse=True)
def modules_cache(tmp_path, monkeypatch):
    """transformers copies custom_generate/generate.py into its modules cache: keep that inside the test."""
    import transformers.dynamic_module_utils as dynamic_modules

    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))


@pytest.fixture
def exported(tmp_path, tiny_chat_model_dir):
    """Fresh heads (seed 0) on the tiny chat model, exported: (heads folder, exported folder)."""
    heads = AutoDecoForCausalLM.from_base(tiny_chat_model_dir, seed=0).save_pretrained(tmp_path / "heads")
    with pytest.warns(UserWarning, match="local folder .*tiny-chat-model.*pass --base"):
        return heads, export_for_hub(heads, tmp_path / "hub", repo_id="someone/tiny-heads")


def test_the_folder_holds_heads_card_and_custom_generate(exported):
    heads, out = exported
    assert json.loads((out / "config.json").read_text()) == json.loads((heads / "config.json").read_text())
    assert (out / "model.safetensors").read_bytes() == (heads / "model.safetensors").read_bytes()
    assert "def generate(model, *args, **kwargs)" in (out / "custom_generate" / "generate.py").read_text()
    assert (out / "custom_generate" / "requirements.txt").read_text().startswith("autodeco")
    card = (out / "README.md").read_text()
    front_matter = card.split("---\n")[1]
    assert "- custom_generate" in front_matter and "library_name: transformers" in front_matter
    assert 'custom_generate="someone/tiny-heads", trust_remote_code=True' in card
    assert "## Recipe\n\nNot recorded: these heads are fresh (untrained)." in card
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == [
        "README.md", "config.json", "custom_generate", "model.safetensors"]


@pytest.mark.parametrize("settings", [
    {"do_sample": True},
    {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20},
    {"do_sample": False},
])
def test_custom_generate_on_a_plain_model_samples_exactly_what_autodeco_samples(exported, tiny_chat_model_dir, settings):
    heads, out = exported
    from conftest import left_padded_batch

    input_ids, attention_mask = left_padded_batch(lengths=(7, 4))
    input_ids = input_ids % 100  # the tiny chat model's vocabulary
    arguments = dict(attention_mask=attention_mask, max_new_tokens=12, return_dict_in_generate=True, **settings)
    model = AutoDecoForCausalLM.from_pretrained(heads)
    torch.manual_seed(123)
    ours = model.generate(input_ids, **arguments)
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    torch.manual_seed(123)
    theirs = base.generate(input_ids, custom_generate=str(out), trust_remote_code=True, **arguments)

    assert type(theirs) is AutoDecoGenerateOutput
    assert torch.equal(theirs.sequences, ours.sequences)
    torch.testing.assert_close(theirs.temperatures, ours.temperatures, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(theirs.top_ps, ours.top_ps, rtol=0, atol=0, equal_nan=True)
    assert theirs.temperatures.shape == (2, theirs.sequences.shape[1] - input_ids.shape[1])
    if settings["do_sample"]:  # the heads' values, not the plain base's sampling defaults
        assert not torch.all(theirs.temperatures.nan_to_num(1.0) == 1.0)


def test_custom_generate_returns_token_ids_without_return_dict(exported, tiny_chat_model_dir):
    heads, out = exported
    input_ids = torch.tensor([[5, 6, 7, 8]])
    model = AutoDecoForCausalLM.from_pretrained(heads)
    torch.manual_seed(1)
    ours = model.generate(input_ids, max_new_tokens=6)
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    torch.manual_seed(1)
    assert torch.equal(base.generate(input_ids, custom_generate=str(out), trust_remote_code=True, max_new_tokens=6), ours)


def test_a_base_the_heads_were_not_made_for_is_refused_naming_both(exported):
    _, out = exported
    other = tiny_llama(hidden_size=16, vocab_size=100)
    with pytest.raises(ValueError, match=r"made for base .*tiny-chat-model.*hidden size 32.*given base.*hidden size 16"):
        other.generate(torch.tensor([[5, 6]]), custom_generate=str(out), trust_remote_code=True, max_new_tokens=2)


def test_a_base_of_the_same_width_but_another_depth_is_refused(exported, tiny_chat_model_dir):
    _, out = exported
    deeper = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"\(num_hidden_layers 2\) but the given base .* has num_hidden_layers 3"):
        deeper.generate(torch.tensor([[5, 6]]), custom_generate=str(out), trust_remote_code=True, max_new_tokens=2)


def test_heads_come_from_the_call_or_from_heads(exported, tiny_chat_model_dir):
    heads, _ = exported
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    with pytest.raises(ValueError, match="cannot tell where the AutoDeco heads are"):
        generate_with_heads(base, torch.tensor([[5, 6]]), max_new_tokens=2)
    assert generate_with_heads(base, torch.tensor([[5, 6]]), heads=heads, max_new_tokens=2).shape == (1, 4)


def test_the_card_of_shipped_heads_carries_their_recipe_and_measurements(tmp_path):
    out = export_for_hub("shipped:smollm2-135m-instruct", tmp_path / "hub")
    card = (out / "README.md").read_text()
    own = (shipped_heads_path() / "README.md").read_text()
    assert "| easy_token_drop | 0.6 |" in card and "| steepness | 30.0 |" in card and "150 steps" in card
    assert "### Results (measured, not tuned)" in card and "| these heads | 0.0874 |" in card
    assert "Recipe\n\nOne command" not in card  # the heads' own recipe prose is not copied: the record is
    assert 'load_base_model("embedded:SmolLM2-135M-Instruct")' in card
    assert measured_sections(own).count("## ") == 2


def test_a_hub_id_given_as_base_is_recorded_and_named_in_the_front_matter(tmp_path, exported):
    heads, _ = exported
    out = export_for_hub(heads, tmp_path / "hub2", base="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert json.loads((out / "config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in (out / "README.md").read_text().split("---\n")[1]


def test_model_card_without_a_training_record_says_so(exported):
    from autodeco.model.checkpoint import read_checkpoint

    config = read_checkpoint(exported[0]).config
    card = model_card(config, 10)
    assert "## Measurements\n\nNone travel with these heads" in card


@pytest.mark.filterwarnings("ignore:the heads record their base as the local folder")
def test_cli_exports_refuses_bad_outputs_and_keeps_users_files(tmp_path, exported, capsys):
    heads, _ = exported
    status, out, err = run(capsys, "export-hub", heads, tmp_path / "cli")
    assert status == 0, err
    assert "custom_generate=" in out and (tmp_path / "cli" / "custom_generate" / "generate.py").is_file()
    (tmp_path / "cli" / "notes.txt").write_text("mine")
    assert run(capsys, "export-hub", heads, tmp_path / "cli")[0] == 0  # ours: replaced, the user's file kept
    assert (tmp_path / "cli" / "notes.txt").read_text() == "mine"

    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.tex").write_text("four years")
    for target, message in [(users, "autodeco did not write"), (heads, "is the heads"), (heads / "hub", "lies inside")]:
        status, _, err = run(capsys, "export-hub", heads, target)
        assert status == 1 and message in err and "Traceback" not in err, err
    assert (users / "thesis.tex").read_text() == "four years" and sorted(p.name for p in users.iterdir()) == ["thesis.tex"]


def test_cli_refuses_heads_without_a_recorded_base(tmp_path, capsys):
    model = AutoDecoForCausalLM.from_base(tiny_llama(), seed=0)
    heads = model.save_pretrained(tmp_path / "heads")
    status, _, err = run(capsys, "export-hub", heads, tmp_path / "hub")
    assert status == 1 and "records no base model" in err and "--base" in err and "Traceback" not in err
    assert not (tmp_path / "hub").exists()


@pytest.mark.filterwarnings("ignore:the heads record their base as the local folder")
def test_a_merged_checkpoint_exports_its_heads_only(tmp_path, exported, capsys):
    from safetensors import safe_open

    heads, _ = exported
    assert run(capsys, "merge", heads, tmp_path / "merged")[0] == 0
    out = export_for_hub(tmp_path / "merged", tmp_path / "hub-from-merged")
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
    assert names and all(name.startswith(("temp_head.", "top_p_head.")) for name in names)
    assert (out / "model.safetensors").stat().st_size < (tmp_path / "merged" / "model.safetensors").stat().st_size


def test_a_hub_repo_is_downloaded_with_its_config_and_weights_only(tmp_path, exported, monkeypatch):
    import huggingface_hub

    from autodeco.model.custom_generate import heads_folder

    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        if repo_id == "someone/missing":
            raise OSError("we are offline")
        return str(exported[1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert heads_folder("someone/tiny-heads") == exported[1]
    assert calls == [("someone/tiny-heads", ["config.json", "*.safetensors"])]
    with pytest.raises(ValueError, match=r"cannot find the AutoDeco heads 'someone/missing'.*OSError: we are offline"):
        heads_folder("someone/missing")
