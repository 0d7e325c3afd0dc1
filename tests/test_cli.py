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
