"""The ``autodeco`` command line on a tiny local model with a character-level tokenizer."""

import json

import pytest

from autodeco.cli import main


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_chat_model_dir):
    return tiny_chat_model_dir


def run(capsys, *argv):
    status = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_every_subcommand_has_help(capsys):
    from autodeco.cli import COMMANDS

    assert set(COMMANDS) >= {"quickstart", "sample", "train", "heldout", "eval", "generate", "init", "merge", "split"}
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: autodeco " + command in capsys.readouterr().out


def test_generate_with_trace_writes_table_html_png_json(tiny_model_dir, tmp_path, capsys):
    status, out, err = run(
        capsys, "generate", "What is 7 + 5?", "--base", tiny_model_dir, "--max-new-tokens", 8,
        "--trace", "--trace-dir", tmp_path / "traces",
    )
    assert status == 0, err
    assert "UNTRAINED" in out and "untrained" in err
    assert (tmp_path / "traces" / "trace-1.png").read_bytes()[:4] == b"\x89PNG"
    assert "<span" in (tmp_path / "traces" / "trace-1.html").read_text()
    trace = json.loads((tmp_path / "traces" / "trace-1.json").read_text())
    assert 1 <= len(trace["tokens"]) <= 8
    assert all(0 < token["temperature"] < 2 and 0 < token["top_p"] < 1 for token in trace["tokens"])


def test_generate_reads_prompts_from_file_and_stdin(tiny_model_dir, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 + 1 =\n\n2 + 2 =\n")
    status, out, err = run(capsys, "generate", "--file", prompts, "--base", tiny_model_dir, "--max-new-tokens", 3)
    assert status == 0, err
    assert "=== prompt 1: 1 + 1 =" in out and "=== prompt 2: 2 + 2 =" in out
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("3 + 3 =\n"))
    status, out, err = run(capsys, "generate", "-", "--base", tiny_model_dir, "--max-new-tokens", 3, "--greedy")
    assert status == 0, err


def test_generate_rejects_empty_prompt(tiny_model_dir, capsys):
    status, out, err = run(capsys, "generate", "   ", "--base", tiny_model_dir)
    assert status == 1
    assert "prompt 1 is empty" in err


def test_generate_rejects_missing_prompt_file(capsys):
    status, _, err = run(capsys, "generate", "--file", "/nonexistent/prompts.txt")
    assert status == 1 and "does not exist" in err


def test_init_info_merge_split(tiny_model_dir, tmp_path, capsys):
    status, out, err = run(capsys, "init", tmp_path / "heads", "--base", tiny_model_dir, "--no-top-p-head")
    assert status == 0, err
    status, out, err = run(capsys, "info", tmp_path / "heads")
    assert status == 0, err
    assert "heads only" in out and "disabled (P = 1)" in out and "no (fresh heads)" in out
    status, out, err = run(capsys, "merge", tmp_path / "heads", tmp_path / "merged")
    assert status == 0, err
    status, out, err = run(capsys, "info", tmp_path / "merged")
    assert "merged" in out
    status, out, err = run(capsys, "split", tmp_path / "merged", tmp_path / "split")
    assert status == 0, err
    status, out, err = run(capsys, "generate", "hi", "--heads", tmp_path / "split", "--max-new-tokens", 2)
    assert status == 0, err


def test_bad_checkpoint_gives_clear_error_and_nonzero_exit(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    status, _, err = run(capsys, "info", tmp_path / "broken")
    assert status == 1 and "not an AutoDeco checkpoint" in err
    status, _, err = run(capsys, "generate", "hi", "--heads", tmp_path / "missing")
    assert status == 1 and "does not exist" in err


def test_sample_and_eval_commands_end_to_end(tiny_model_dir, tmp_path, capsys):
    status, out, err = run(
        capsys, "sample", "--base", tiny_model_dir, "--output", tmp_path / "s", "--limit", 4,
        "--samples-per-prompt", 2, "--max-new-tokens", 6,
    )
    assert status == 0, err
    assert "| all | 4 | 8 |" in out and (tmp_path / "s" / "progress.jsonl").exists()
    status, out, err = run(
        capsys, "eval", "--base", tiny_model_dir, "--output", tmp_path / "e", "--limit", 3, "--seeds", 2,
        "--samples-per-seed", 2, "--max-new-tokens", 5, "--methods", "greedy", "default", "autodeco",
        "--static", "0.7,0.9",
    )
    assert status == 0, err
    assert "| static T=0.7 P=0.9 |" in out and "report:" in out
    status, out, err = run(capsys, "eval", "--base", tiny_model_dir, "--output", tmp_path / "x", "--static", "0.7")
    assert status == 1 and "--static takes T,P" in err
    status, out, err = run(capsys, "eval", "--base", tiny_model_dir, "--output", tmp_path / "x", "--oracle-step", 0.3)
    assert status == 1 and "divide 1.0 evenly" in err


# flags derived from the config dataclasses ------------------------------------------------------


def _help(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "sample"])
def test_every_config_field_is_a_documented_flag(capsys, command):
    import dataclasses

    from autodeco.cli import COMMANDS
    from autodeco.cli._parser import field_docs

    config_class, exclude, flags = COMMANDS[command].__config__
    text = " ".join(_help(capsys, command).split())
    docs = field_docs(config_class)
    for field in dataclasses.fields(config_class):
        if field.name in exclude or field.name in ("base", "seed"):
            continue
        flag = "--" + flags.get(field.name, field.name.replace("_", "-"))
        assert flag in text, f"{config_class.__name__}.{field.name} has no flag {flag}"
        assert docs[field.name].split()[0] in text, f"{field.name}'s help is not its docstring"


def test_help_shows_each_default_once(capsys):
    import re

    from autodeco.cli import COMMANDS

    for command in COMMANDS:
        text = " ".join(_help(capsys, command).split())
        assert "(default: None)" not in text
        assert not re.search(r"default[^-]*\(default:", text), f"autodeco {command} --help gives a default twice"


def test_temperature_flags_say_whether_they_multiply(capsys):
    assert "not a multiplier" in " ".join(_help(capsys, "sample").split())
    assert "a multiplier, not an absolute value" in " ".join(_help(capsys, "generate").split())


def test_config_flags_reach_the_config(monkeypatch):
    import autodeco.training.recipe as recipe

    seen = {}

    def fake_train_heads(config, **kwargs):
        seen["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "train_heads", fake_train_heads)
    status = main(["train", "t.jsonl", "--max-grad-norm", "none", "--batch-size", "3", "--no-dft-weighting",
                   "--no-use-enhanced-features", "--preset", "paper"])
    config = seen["config"]
    assert status == 130
    assert config.max_grad_norm is None and config.per_device_batch_size == 3
    assert not config.dft_weighting and not config.use_enhanced_features
    assert config.learning_rate == 5e-6  # unset flags keep the preset's values


@pytest.mark.parametrize("command", ["", "train", "sample", "eval", "generate", "quickstart", "init"])
def test_help_does_not_load_torch(command):
    import subprocess
    import sys

    code = (
        "import sys\nfrom autodeco.cli import main\n"
        f"try:\n    main({[command, '--help'] if command else ['--help']!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
