"""Issue 13 (model layer): bad configs, broken heads, generate() arguments, long prompts and killed saves
give clear errors or are recovered, never a silent wrong result or a traceback."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import force_heads, left_padded_batch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from autodeco import AutoDecoForCausalLM
from autodeco.cli import main
from autodeco.model.base_model import BaseModelError
from autodeco.model.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from autodeco.sampling.inference import LoadedModel, _trace_for_row, encode_prompts

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run(capsys, *argv):
    status = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def heads(tmp_path, tiny_autodeco):
    model = tiny_autodeco("llama")
    return model.save_pretrained(tmp_path / "heads"), model


def edit_config(path: Path, change) -> None:
    content = json.loads((path / "config.json").read_text())
    content = change(content)
    (path / "config.json").write_text(json.dumps(content))


# ------------------------------------------------------------------------------------ config validation


def test_string_boolean_in_config_is_refused_not_read_as_true(heads, capsys):
    path, _ = heads
    edit_config(path, lambda content: {**content, "enable_top_p_head": "false"})
    with pytest.raises(ValueError, match=r"config.json: enable_top_p_head must be true or false .* got 'false'"):
        read_checkpoint(path)
    status, out, err = run(capsys, "info", path)
    assert status == 1 and "enable_top_p_head must be true or false" in err and "Traceback" not in err
    assert "enabled" not in out  # before: info said "top-p head  enabled"


def test_fractional_hidden_size_is_refused_not_truncated(heads):
    path, _ = heads
    edit_config(path, lambda content: {**content, "hidden_size": 64.9, "temperature_hidden_size": 64.9})
    with pytest.raises(ValueError, match=r"hidden_size must be a positive integer, got 64.9"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda content: [content], "holds a JSON list, not an object"),
        (lambda content: {**content, "autodeco": "x"}, "'autodeco' must be a JSON object, got 'x'"),
        (lambda content: {**content, "autodeco": {"training": 3}}, "'autodeco.training' must be a JSON object"),
        (lambda content: {**content, "text_config": [1]}, "'text_config' must be a JSON object"),
    ],
)
def test_config_of_the_wrong_shape_names_file_and_key(heads, capsys, change, named):
    path, _ = heads
    edit_config(path, change)
    status, _, err = run(capsys, "info", path)
    assert status == 1 and named in err and "config.json" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ non-finite heads


def test_heads_with_nan_weights_are_refused_at_load_and_reported_by_info(heads, capsys, tiny_causal_lm):
    path, model = heads
    tensors = dict(model.head_state_dict())
    tensors["temp_head.mlp.0.weight"] = tensors["temp_head.mlp.0.weight"].clone()
    tensors["temp_head.mlp.0.weight"][0, :3] = float("nan")
    tensors["top_p_head.mlp.2.bias"] = torch.full_like(tensors["top_p_head.mlp.2.bias"], float("inf"))
    write_checkpoint(path, model.config, tensors)
    with pytest.raises(CheckpointError, match=r"temp_head.mlp.0.weight \(3 NaN\); top_p_head.mlp.2.bias \(1 infinite\)"):
        AutoDecoForCausalLM.from_pretrained(path, base_model=tiny_causal_lm("llama"))
    fresh = AutoDecoForCausalLM.from_base(tiny_causal_lm("llama"), seed=0)
    with pytest.raises(CheckpointError, match="not finite"):
        fresh.load_head_tensors(tensors)
    status, out, err = run(capsys, "info", path)
    assert status == 1 and "Traceback" not in err
    assert "NOT FINITE in 2 tensor(s)" in out and "temp_head.mlp.0.weight (3 NaN)" in err


# ------------------------------------------------------------------------------------ another base


def test_heads_for_another_base_name_their_own_base_and_the_given_one(tmp_path, tiny_causal_lm):
    model = AutoDecoForCausalLM.from_base(tiny_causal_lm("llama"), seed=0)
    model.config.base_model_name_or_path = "org/base-the-heads-were-made-for"
    path = model.save_pretrained(tmp_path / "heads")
    other = LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
    ))
    other.save_pretrained(tmp_path / "other-base")
    with pytest.raises(CheckpointError) as error:
        AutoDecoForCausalLM.from_pretrained(path, base_model=str(tmp_path / "other-base"))
    message = str(error.value)
    assert "made for base 'org/base-the-heads-were-made-for' (hidden size 32)" in message
    assert f"the given base {str(tmp_path / 'other-base')!r} has hidden size 16" in message


# ------------------------------------------------------------------------------------ generate()


def test_generate_passes_top_k_through_after_the_heads(tiny_autodeco):
    model = tiny_autodeco("llama")
    force_heads(model, temperature=1.5, top_p=1.0)
    input_ids, attention_mask = left_padded_batch((5, 5))
    greedy = model.generate(input_ids, attention_mask, do_sample=False, max_new_tokens=6)
    torch.manual_seed(0)
    # before: TypeError "got multiple values for keyword argument 'top_k'"
    top_1 = model.generate(input_ids, attention_mask, top_k=1, max_new_tokens=6, return_dict_in_generate=True)
    assert torch.equal(top_1.sequences, greedy)  # top-k=1 after the heads' warping is greedy
    assert torch.allclose(top_1.temperatures, torch.full_like(top_1.temperatures, 1.5), atol=1e-4)
    torch.manual_seed(0)
    unrestricted = model.generate(input_ids, attention_mask, max_new_tokens=6)
    assert not torch.equal(unrestricted, greedy)  # without top_k the forced T = 1.5 samples other tokens
    torch.manual_seed(0)
    assert model.generate(input_ids, attention_mask, min_p=0.05, repetition_penalty=1.2, max_new_tokens=3).shape == (2, 8)


@pytest.mark.parametrize(
    "arguments, mode",
    [
        ({"num_beams": 2}, "beam search"),
        ({"num_beams": 4, "num_beam_groups": 2}, "beam search"),
        ({"penalty_alpha": 0.6, "top_k": 4}, "contrastive search"),
        ({"prompt_lookup_num_tokens": 3}, "prompt-lookup decoding"),
        ({"generation_config": GenerationConfig(num_beams=3)}, "beam search"),
    ],
)
def test_generate_refuses_beam_and_other_modes_the_heads_do_not_define(tiny_autodeco, arguments, mode):
    model = tiny_autodeco("llama")
    input_ids, attention_mask = left_padded_batch((4,))
    with pytest.raises(ValueError, match=f"asks for {mode}, which dynamic decoding does not support"):
        model.generate(input_ids, attention_mask, max_new_tokens=2, return_dict_in_generate=True, **arguments)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0 (0 means greedy), but is nan"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0 (0 means greedy), but is inf"),
        ({"temperature": -0.5}, "but is -0.5"),
        ({"top_p": float("nan")}, "top_p must be a finite number > 0 (it multiplies each predicted value; 1 keeps them), but is nan"),
        ({"top_p": 0.0}, "top_p must be a finite number > 0"),
        ({"top_p": -1.0}, "but is -1.0"),
        ({"generation_config": GenerationConfig(temperature=float("nan"), do_sample=True)}, "but is nan"),
    ],
)
def test_generate_refuses_nan_inf_and_out_of_range_multipliers(tiny_autodeco, arguments, message):
    model = tiny_autodeco("llama")
    input_ids, attention_mask = left_padded_batch((4,))
    with pytest.raises(ValueError) as error:
        model.generate(input_ids, attention_mask, max_new_tokens=2, **arguments)
    assert message in str(error.value)


def test_cli_generate_top_p_nan_is_a_clear_error(tiny_chat_model_dir, capsys):
    # before: decoded greedily without a word
    status, _, err = run(capsys, "generate", "hi", "--base", tiny_chat_model_dir, "--fresh-heads", "--top-p", "nan")
    assert status == 1 and "must be a finite number" in err and "top" in err and "nan" in err


# ------------------------------------------------------------------------------------ context and vocabulary


def test_prompt_as_long_as_the_context_is_refused_and_a_long_request_is_shortened(tiny_autodeco):
    model = tiny_autodeco("llama")  # max_position_embeddings 256
    input_ids = torch.randint(3, 128, (1, 256))
    with pytest.raises(ValueError, match="the prompt is 256 tokens but the base model's context holds 256"):
        model.generate(input_ids, torch.ones_like(input_ids), max_new_tokens=4)
    input_ids = input_ids[:, :250]
    with pytest.warns(UserWarning, match=r"exceeds the base model's context of 256 positions; generating at most 6"):
        output = model.generate(input_ids, torch.ones_like(input_ids), max_new_tokens=40, eos_token_id=None)
    assert output.shape[1] <= 256


def test_encoding_refuses_a_prompt_longer_than_the_context(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    llm = LlamaForCausalLM.from_pretrained(tiny_chat_model_dir)
    llm.config.max_position_embeddings = 16
    with pytest.raises(ValueError, match=r"prompt 2 of the batch is 20 tokens .* holds 16 .* not truncated"):
        encode_prompts(tokenizer, ["short", "x" * 20], llm=llm)
    assert encode_prompts(tokenizer, ["short"], llm=llm)["input_ids"].shape == (1, 5)


def test_tokenizer_larger_than_the_model_is_a_clear_error(tiny_chat_model_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "small-vocab"
    folder.mkdir()
    for file in tiny_chat_model_dir.iterdir():
        if "token" in file.name or file.name.startswith("special") or file.name.endswith(".jinja"):
            shutil.copy(file, folder / file.name)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )).save_pretrained(folder)
    # before: IndexError inside the embedding
    status, _, err = run(capsys, "generate", "zzz", "--base", folder, "--fresh-heads", "--max-new-tokens", 2)
    assert status == 1 and "Traceback" not in err
    assert "embeds only ids 0..39" in err and "tokenizer does not belong to this base model" in err
    model = AutoDecoForCausalLM.from_base(str(folder), seed=0)
    with pytest.raises(BaseModelError, match="token id 50"):
        model.generate(torch.tensor([[5, 50]]), max_new_tokens=1)


# ------------------------------------------------------------------------------------ printed text


def test_generated_text_has_no_special_tokens(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    ids = tokenizer("42", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    loaded = LoadedModel(model=type("M", (), {"config": type("C", (), {"trained": False})()})(), tokenizer=tokenizer,
                         description="tiny")
    values = torch.ones(len(ids))
    trace = _trace_for_row(tokenizer, "q", torch.tensor(ids), values, values, loaded)
    assert trace.text == tokenizer.decode(ids[:-1]) and "</s>" not in trace.text  # before: "4 2</s>" (<|im_end|> on SmolLM2)
    assert len(trace.tokens) == 3  # the end token keeps its place and values, with empty text


# ------------------------------------------------------------------------------------ checkpoint files


def test_checkpoint_files_follow_the_umask(heads):
    path, _ = heads
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask  # before: 0700
    for file in path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file.name  # before: safetensors 0600


def test_init_records_an_absolute_base_path(tiny_chat_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tiny_chat_model_dir.parent)
    status, _, err = run(capsys, "init", tmp_path / "heads", "--base", tiny_chat_model_dir.name)
    assert status == 0, err
    recorded = json.loads((tmp_path / "heads" / "config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny_chat_model_dir.resolve())  # before: the relative name
    monkeypatch.chdir(tmp_path)
    assert AutoDecoForCausalLM.from_pretrained(tmp_path / "heads").config.base_model_name_or_path == recorded


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    import torch
    from autodeco.model import checkpoint
    from autodeco.model.config import AutoDecoConfig

    target, where = sys.argv[1], sys.argv[2]
    config = AutoDecoConfig(hidden_size=4, vocab_size=8)
    real_replace, real_save = os.replace, checkpoint.save_file

    def replace(source, destination):
        real_replace(source, destination)
        if where == "between-renames" and "autodeco-old" in str(destination):
            os._exit(9)  # killed after the old checkpoint moved aside, before the new one moved in

    def save_file(tensors, file, metadata=None):
        real_save(tensors, file, metadata=metadata)
        if where == "staging":
            os._exit(9)  # killed while the staging folder is being filled

    checkpoint.os.replace = replace
    checkpoint.save_file = save_file
    checkpoint.write_checkpoint(target, config, {"temp_head.mlp.0.weight": torch.full((4, 4), 2.0)})
""")


def killed_write(target: Path, where: str) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), where], env=env, capture_output=True)
    assert result.returncode == 9, result.stderr.decode()


def test_checkpoint_killed_between_the_two_renames_is_restored_on_next_use(tmp_path):
    from autodeco.model.config import AutoDecoConfig

    target = tmp_path / "heads"
    old = {"temp_head.mlp.0.weight": torch.ones(4, 4)}
    write_checkpoint(target, AutoDecoConfig(hidden_size=4, vocab_size=8), old)
    killed_write(target, "between-renames")
    assert not target.exists() and len(list(tmp_path.glob(".heads.autodeco-old.*"))) == 1  # the window
    with pytest.warns(UserWarning, match="restored the checkpoint"):
        contents = read_checkpoint(target)
    assert torch.equal(contents.head_tensors["temp_head.mlp.0.weight"], torch.ones(4, 4))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["heads"]


def test_stale_staging_of_a_killed_write_is_removed_on_the_next_write(tmp_path):
    from autodeco.model.config import AutoDecoConfig

    killed_write(tmp_path / "merged", "staging")
    leftovers = list(tmp_path.glob(".merged.autodeco-staging.*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").exists()
    foreign = tmp_path / ".merged.something-else"
    foreign.mkdir()
    write_checkpoint(tmp_path / "other", AutoDecoConfig(hidden_size=4, vocab_size=8), {"temp_head.w": torch.ones(2)})
    assert sorted(path.name for path in tmp_path.iterdir()) == [".merged.something-else", "other"]


def test_saving_into_a_file_or_under_a_file_is_a_clear_error(tmp_path, heads):
    _, model = heads
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="it is a file"):
        model.save_pretrained(tmp_path / "file")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        model.save_pretrained(tmp_path / "file" / "heads")
