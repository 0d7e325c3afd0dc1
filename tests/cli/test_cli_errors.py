"""User errors on the ``autodeco`` command line: one line naming the problem and the fix, exit status 1, no traceback."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autodeco.cli import main


def run(capsys, *argv):
    status = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


IN_THE_WAY = ("a file is in the way", "is a file, not a folder")
"""How a file where a folder should be is described (by the OS-error handler, or by the run-folder lock)."""

UNDER_A_FILE = ("a part of this path is a file", "lies under a file", *IN_THE_WAY)


def mentions_any(message: str, phrases: tuple[str, ...]) -> bool:
    return any(phrase in message for phrase in phrases)


def refused(capsys, *argv, says: tuple[str, ...]):
    """Run ``autodeco argv``; assert a one-line user error that contains every text in ``says``."""
    status, out, err = run(capsys, *argv)
    assert status == 1, (out, err)
    assert "Traceback" not in err and "internal error" not in err, err
    message = [line for line in err.splitlines() if line.startswith("autodeco: error: ")]
    assert len(message) == 1, err
    for text in says:
        assert text in message[0], f"{text!r} not in {message[0]!r}"
    return message[0]


def run_subprocess(args, *, stdin: bytes = b"", env: dict | None = None):
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "autodeco.cli", *args], input=stdin, capture_output=True, timeout=300, env=environment,
    )


# non-finite numbers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag, value", [
    (["generate", "hi", "--top-p", "nan"], "--top-p", "nan"),
    (["generate", "hi", "--temperature", "inf"], "--temperature", "inf"),
    (["eval", "--oracle-step", "nan"], "--oracle-step", "nan"),
    (["sample", "--temperature", "inf"], "--temperature", "inf"),
    (["sample", "--top-p=-inf"], "--top-p", "-inf"),
    (["train", "t.jsonl", "--learning-rate", "nan"], "--learning-rate", "nan"),
    (["train", "t.jsonl", "--max-grad-norm", "inf"], "--max-grad-norm", "inf"),
])
def test_non_finite_number_flags_are_refused_naming_the_flag(capsys, argv, flag, value):
    refused(capsys, *argv, says=(f"{flag} must be a finite number", value))


@pytest.mark.parametrize("flag", ["--static", "--meanshift"])
def test_non_finite_pairs_are_refused_naming_the_flag(capsys, flag):
    refused(capsys, "eval", flag, "nan,1", says=(flag, "two finite numbers", "'nan,1'"))


# contradictory or pointless flags -------------------------------------------------------------------------------


def test_fresh_heads_with_heads_is_refused(capsys, tmp_path):
    refused(capsys, "generate", "hi", "--fresh-heads", "--heads", tmp_path / "heads",
            says=("--fresh-heads and --heads", "contradict", "drop --heads", "drop --fresh-heads"))


@pytest.mark.parametrize("flag, value", [("--temperature", "0.5"), ("--top-p", "0.9")])
def test_greedy_with_sampling_multipliers_is_refused(capsys, flag, value):
    refused(capsys, "generate", "hi", "--greedy", flag, value, says=("--greedy ignores --temperature and --top-p", value))


@pytest.mark.parametrize("flag, value", [("--meanshift-data", "heldout.jsonl"), ("--meanshift", "0.7,0.9")])
def test_meanshift_flags_without_the_meanshift_method_are_refused(capsys, flag, value):
    refused(capsys, "eval", "--methods", "greedy", "default", flag, value,
            says=(f"{flag} {value}", "only used by the meanshift method", "greedy default", "add meanshift to --methods"))


@pytest.mark.parametrize("argv, says", [
    (["eval", "--seeds", "0"], ("--seeds must be >= 1", "got 0")),
    (["eval", "--samples-per-seed", "0"], ("--samples-per-seed must be >= 1", "got 0")),
    (["eval", "--batch-size", "0"], ("--batch-size must be >= 1", "got 0")),
    (["eval", "--limit", "0"], ("--limit must be >= 1", "got 0", "leave --limit out")),
    (["eval", "--limit", "-3"], ("--limit must be >= 1", "got -3")),
    (["eval", "--max-new-tokens", "0"], ("--max-new-tokens must be >= 1", "got 0")),
    (["sample", "--limit", "0"], ("limit (--limit) must be >= 1", "got 0")),
    (["sample", "--samples-per-prompt", "0"], ("samples_per_prompt (--samples-per-prompt) must be >= 1", "got 0")),
    (["sample", "--batch-size", "0"], ("batch_size must be >= 1", "got", " 0")),
    (["train", "t.jsonl", "--batch-size", "0"], ("per_device_batch_size (--batch-size)", "got 0")),
    (["train", "t.jsonl", "--max-steps", "0"], ("max_steps (--max-steps) must be >= 1", "got 0")),
    (["generate", "hi", "--batch-size", "0"], ("--batch-size must be >= 1", "got 0")),
    (["generate", "hi", "--max-new-tokens", "0"], ("--max-new-tokens must be >= 1", "got 0")),
    (["generate", "hi", "--temperature", "-1"], ("--temperature must be >= 0", "got -1.0")),
    (["generate", "hi", "--top-p", "0"], ("--top-p must be > 0", "got 0.0")),
    (["heldout", "h", "d.jsonl", "--batch-size", "0"], ("--batch-size must be >= 1", "got 0")),
    (["heldout", "h", "d.jsonl", "--max-examples", "0"], ("--max-examples must be >= 1", "got 0")),
])
def test_counts_that_make_no_sense_are_refused_naming_the_flag(capsys, argv, says):
    refused(capsys, *argv, says=says)


# operating-system errors ----------------------------------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


def _output_argv(command, output, model_dir):
    small = ["--base", model_dir, "--max-new-tokens", "2"]
    return {
        "sample": ["sample", "--output", output, "--limit", "1", "--samples-per-prompt", "1", *small],
        "eval": ["eval", "--output", output, "--limit", "1", "--seeds", "1", "--samples-per-seed", "1",
                 "--methods", "greedy", *small],
        "generate": ["generate", "hi", "--trace", "--trace-dir", output, *small],
        "init": ["init", output, "--base", model_dir],
    }[command]


@pytest.mark.parametrize("command", ["sample", "eval", "generate"])
def test_output_that_is_a_file_is_a_clear_error_before_any_work(command, a_file, tiny_chat_model_dir, capsys):
    message = refused(capsys, *_output_argv(command, a_file, tiny_chat_model_dir), says=(str(a_file), "choose"))
    assert mentions_any(message, IN_THE_WAY), message
    assert a_file.read_text() == "not a folder\n"


@pytest.mark.parametrize("command", ["sample", "eval", "generate", "init"])
def test_output_under_a_file_is_a_clear_error(command, a_file, tiny_chat_model_dir, capsys):
    message = refused(capsys, *_output_argv(command, a_file / "run", tiny_chat_model_dir), says=(str(a_file), "choose"))
    assert mentions_any(message, UNDER_A_FILE), message


def test_train_output_that_is_a_file_is_a_clear_error(a_file, tmp_path, tiny_chat_model_dir, capsys):
    from helpers import write_arithmetic

    data = write_arithmetic(tmp_path / "t.jsonl", count=4)
    message = refused(capsys, "train", data, "--base", tiny_chat_model_dir, "--output", a_file, "--max-steps", "1",
                      "--no-progress", says=(str(a_file),))
    assert mentions_any(message, IN_THE_WAY), message
    message = refused(capsys, "train", data, "--base", tiny_chat_model_dir, "--output", a_file / "run", "--max-steps",
                      "1", "--no-progress", says=(str(a_file / "run"),))
    assert mentions_any(message, UNDER_A_FILE), message


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder nobody may create files in: a chmod 555 one, or /sys for root (whom chmod does not stop)."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys")
    try:
        (folder / "autodeco-probe").mkdir()
    except OSError:
        yield folder
    else:  # pragma: no cover - a writable /sys
        (folder / "autodeco-probe").rmdir()
        pytest.skip("no unwritable folder on this machine")


@pytest.mark.parametrize("command", ["sample", "eval", "generate", "init"])
def test_unwritable_folder_is_a_clear_error(command, unwritable_folder, tiny_chat_model_dir, capsys):
    message = refused(capsys, *_output_argv(command, unwritable_folder / "autodeco-run", tiny_chat_model_dir),
                      says=(f"{unwritable_folder}/autodeco-run",))
    assert mentions_any(message, ("check the permissions", "choose a folder you can write to")), message


@pytest.mark.parametrize("error, says", [
    (PermissionError(errno.EACCES, "Permission denied", "/runs/x/run.json"),
     ("cannot use '/runs/x/run.json': Permission denied", "check the permissions")),
    (OSError(errno.EROFS, "Read-only file system", "/runs/x"), ("'/runs/x'", "read-only", "writable disk")),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/samples.jsonl"),
     ("'/runs/x/samples.jsonl'", "No space left on device", "the disk is full")),
])
def test_operating_system_errors_name_the_path_and_the_fix(error, says, monkeypatch, capsys):
    import autodeco.sampling.trajectories as trajectories

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(trajectories, "sample_trajectories", fail)
    refused(capsys, "sample", "--output", "/runs/x", says=says)


def test_unwritable_trace_dir_fails_before_the_model_is_loaded(a_file, monkeypatch, capsys):
    import autodeco.sampling.inference as inference

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the trace folder was checked")

    monkeypatch.setattr(inference, "load_for_generation", never)
    refused(capsys, "generate", "hi", "--trace", "--trace-dir", a_file, says=(str(a_file), "a file is in the way"))


# bugs stay tracebacks -------------------------------------------------------------------------------------------


def test_a_bug_shows_its_traceback_and_asks_to_be_reported(monkeypatch, capsys):
    import autodeco.sampling.trajectories as trajectories

    def buggy(*args, **kwargs):
        raise ZeroDivisionError("an internal slip")

    monkeypatch.setattr(trajectories, "sample_trajectories", buggy)
    status, _, err = run(capsys, "sample", "--output", "/nowhere")
    assert status == 70  # INTERNAL_ERROR_STATUS: neither a user error (1) nor a usage error (2)
    assert "Traceback" in err and "ZeroDivisionError: an internal slip" in err
    assert "this is a bug in autodeco" in err and "please report it" in err


# text encodings -------------------------------------------------------------------------------------------------


def test_non_utf8_prompt_file_is_named(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"1 + 1 =\n\xff\xfe\n")
    refused(capsys, "generate", "--file", prompts, says=(f"prompt file {str(prompts)!r} is not UTF-8 text", "iconv"))


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_non_utf8_standard_input_is_a_clear_error(locale):
    result = run_subprocess(["generate", "--max-new-tokens", "1"], stdin=b"\xff\n", env={"LC_ALL": locale})
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert "autodeco: error: standard input is not UTF-8 text" in err and "iconv" in err


def test_non_utf8_argument_is_a_clear_error():
    result = run_subprocess([os.fsdecode(b"\xff\xfe"), "--max-new-tokens", "1"])
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert "autodeco: error: argument 1 is not UTF-8 text (b'\\xff\\xfe')" in err
    result = run_subprocess(["generate", os.fsdecode(b"caf\xe9")])
    assert result.returncode == 1 and "argument 2 is not UTF-8 text" in result.stderr.decode()


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_unknown_scorer_is_refused_before_the_run_folder_is_written(command, tmp_path, tiny_chat_model_dir, capsys):
    output = tmp_path / "run"
    refused(capsys, command, "--scorer", "regex", "--output", output, "--base", tiny_chat_model_dir,
            says=("--scorer must be one of math-verify, exact", "'regex'"))
    assert not output.exists()


def test_prompt_file_that_is_a_folder_is_named(tmp_path, capsys):
    refused(capsys, "generate", "--file", tmp_path, says=(f"prompt file {str(tmp_path)!r} is a folder",))
