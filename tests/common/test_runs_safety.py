"""Run folders (issue 13): one run per folder, resumes checked against content, nothing written by a failed start.

CLI cases go through the real entry point (``autodeco.cli.main``); cases with a lock or a kill run
``python -m autodeco.cli`` as subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autodeco.cli import main
from autodeco.common.runlock import LOCK_FILE, RunFolderInUse, run_lock
from autodeco.problems import DataError, load_problems

ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(capsys, *argv) -> tuple[int, str]:
    status = main([str(argument) for argument in argv])
    return status, capsys.readouterr().err


def write_problems(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


PROBLEMS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in ((5, 7), (2, 3), (4, 4))]
SAMPLE_FLAGS = ("--samples-per-prompt", 2, "--max-new-tokens", 4, "--batch-size", 2, "--heldout-fraction", 0)


def sample_argv(model_dir, data, output, *extra):
    return ("sample", "--dataset", data, "--base", model_dir, "--output", output, "--limit", "none",
            *SAMPLE_FLAGS, "--scorer", "exact", *extra)


# ----------------------------------------------------------------------------------------------- the lock


HOLDER = """
import sys, time
from autodeco.common.runlock import run_lock
with run_lock(sys.argv[1], "sample"):
    print("locked", flush=True)
    time.sleep(120)
"""


def start_holder(folder: Path) -> subprocess.Popen:
    """A second process holding the folder's lock, as a running ``autodeco sample`` does."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                               env=ENVIRONMENT)
    assert process.stdout.readline().strip() == "locked"
    return process


def cli_process(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autodeco.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env=ENVIRONMENT)


def test_a_second_run_on_a_locked_folder_fails_at_once_naming_the_pid(tiny_chat_model_dir, tmp_path):
    output = tmp_path / "run"
    holder = start_holder(output)
    try:
        for argv in (
            ("sample", "--dataset", "arithmetic", "--limit", 2, "--base", tiny_chat_model_dir, "--output", output),
            ("eval", "--limit", 2, "--base", tiny_chat_model_dir, "--methods", "greedy", "--output", output),
            ("train", tmp_path / "none.jsonl", "--output", output),
            ("quickstart", "--base", tiny_chat_model_dir, "--output", output),
        ):
            (tmp_path / "none.jsonl").write_text('{"prompt": "1+1?", "completion": "2"}\n')
            result = cli_process(*argv)
            assert result.returncode == 1, (argv[0], result.stderr)
            assert f"{output} is already in use by PID {holder.pid} (started " in result.stderr, result.stderr
            assert "wait for it or choose another --output" in result.stderr
            assert "Traceback" not in result.stderr
        assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE]  # nothing written by the refused runs
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_dies_with_its_process_even_on_kill_9(tmp_path):
    holder = start_holder(tmp_path)
    with pytest.raises(RunFolderInUse, match=f"PID {holder.pid}"):
        with run_lock(tmp_path, "eval"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_lock(tmp_path, "sample"):  # no stale lock (the holder ran a sample; a resume is one too)
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())


def test_two_concurrent_sample_runs_one_refused_and_a_killed_one_resumes_without_duplicates(
    tiny_chat_model_dir, tmp_path
):
    output = tmp_path / "run"
    problems = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(100) for b in range(30)]
    data = write_problems(tmp_path / "p.jsonl", problems)
    argv = [sys.executable, "-m", "autodeco.cli",
            *map(str, sample_argv(tiny_chat_model_dir, data, output, "--batch-size", 1, "--max-new-tokens", 16))]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENVIRONMENT)
    try:
        deadline = time.monotonic() + 120
        while not rows(output / "progress.jsonl"):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENVIRONMENT)
        assert second.returncode == 1 and f"is already in use by PID {first.pid}" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGKILL)  # killed mid-run: its lock goes with it
        first.wait()
    done = len(rows(output / "progress.jsonl"))
    assert 0 < done < len(problems)
    write_problems(data, problems[: done + 3])  # finish quickly: three problems left
    resumed = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENVIRONMENT)
    assert resumed.returncode == 0, resumed.stderr
    progress = [row["problem_id"] for row in rows(output / "progress.jsonl")]
    assert len(progress) == len(set(progress)) == done + 3
    trajectories = [(row["problem_id"], row["sample"]) for row in rows(output / "trajectories.jsonl")]
    assert len(trajectories) == len(set(trajectories))
    assert json.loads((output / "stats.json").read_text())["problems"] == done + 3


# --------------------------------------------------------------------------------------- content checks


def test_problem_ids_follow_content_not_line_numbers(tmp_path):
    before = load_problems(str(write_problems(tmp_path / "p.jsonl", PROBLEMS)))
    after = load_problems(str(write_problems(tmp_path / "p.jsonl", [{"question": "New?", "answer": "1"}, *PROBLEMS])))
    assert [problem.id for problem in after[1:]] == [problem.id for problem in before]
    twice = load_problems(str(write_problems(tmp_path / "p.jsonl", [PROBLEMS[0], PROBLEMS[0]])))
    assert twice[1].id == twice[0].id + "#2"
    edited = load_problems(str(write_problems(tmp_path / "p.jsonl", [{**PROBLEMS[0], "answer": "13"}])))
    assert edited[0].id != before[0].id


def test_eval_resume_after_an_answer_was_edited_is_refused(tiny_chat_model_dir, tmp_path, capsys):
    data = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    argv = ("eval", "--dataset", data, "--base", tiny_chat_model_dir, "--methods", "greedy", "--max-new-tokens", 4,
            "--scorer", "exact", "--output", tmp_path / "eval")
    assert run_cli(capsys, *argv)[0] == 0
    write_problems(data, [{**PROBLEMS[0], "answer": "13"}, *PROBLEMS[1:]])  # 12 -> 13
    status, error = run_cli(capsys, *argv)
    assert status == 1, error
    assert "1 no longer in the data" in error and "1 new" in error and "an answer was edited" in error
    assert "--overwrite" in error and "Traceback" not in error
    assert run_cli(capsys, *argv, "--overwrite")[0] == 0


def test_sample_resume_after_a_line_was_inserted_samples_only_the_new_problem(tiny_chat_model_dir, tmp_path, capsys):
    data = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    output = tmp_path / "sample"
    assert run_cli(capsys, *sample_argv(tiny_chat_model_dir, data, output))[0] == 0
    first = rows(output / "progress.jsonl")
    write_problems(data, [PROBLEMS[0], {"question": "What is 9 + 9?", "answer": "18"}, *PROBLEMS[1:]])
    assert run_cli(capsys, *sample_argv(tiny_chat_model_dir, data, output))[0] == 0
    progress = rows(output / "progress.jsonl")
    assert progress[: len(first)] == first  # the old problems were not sampled again
    ids = [row["problem_id"] for row in progress]
    assert len(ids) == len(set(ids)) == 4
    assert set(ids) == {problem.id for problem in load_problems(str(data))}
    assert json.loads((output / "stats.json").read_text())["problems"] == 4
    # An edited answer is refused: the stored answers were checked against the old one.
    write_problems(data, [{**PROBLEMS[0], "answer": "13"}, *PROBLEMS[1:]])
    status, error = run_cli(capsys, *sample_argv(tiny_chat_model_dir, data, output))
    assert status == 1 and "no longer in the data" in error and "--overwrite" in error, error


def test_eval_resume_with_other_heads_is_refused(tiny_chat_model_dir, tmp_path, capsys):
    from autodeco.model.checkpoint import read_checkpoint, write_checkpoint

    heads = tmp_path / "heads"
    assert run_cli(capsys, "init", heads, "--base", tiny_chat_model_dir)[0] == 0
    data = write_problems(tmp_path / "p.jsonl", PROBLEMS)
    argv = ("eval", "--dataset", data, "--heads", heads, "--base", tiny_chat_model_dir, "--methods", "greedy",
            "--max-new-tokens", 4, "--output", tmp_path / "eval")
    assert run_cli(capsys, *argv)[0] == 0
    checkpoint = read_checkpoint(heads)
    write_checkpoint(heads, checkpoint.config, {name: tensor + 1 for name, tensor in checkpoint.head_tensors.items()})
    status, error = run_cli(capsys, *argv)
    assert status == 1 and "heads_fingerprint" in error and "--overwrite" in error, error


# ------------------------------------------------------------------------------ nothing written by a failure


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--base", "no/such-base-model-folder"), "no/such-base-model-folder"),
        (("--scorer", "fuzzy"), "'fuzzy'"),
        (("--batch-size", 0), "must be >= 1"),
        (("--dataset", "no-such-set"), "unknown dataset 'no-such-set'"),
        (("--temperature", "nan"), "temperature"),
    ],
)
def test_a_failed_sample_leaves_nothing_that_refuses_the_corrected_rerun(
    tiny_chat_model_dir, tmp_path, capsys, extra, message
):
    output = tmp_path / "sample"
    argv = ("sample", "--limit", 2, "--base", tiny_chat_model_dir, "--output", output, *SAMPLE_FLAGS)
    status, error = run_cli(capsys, *argv, *extra)
    assert status == 1 and message in error and "Traceback" not in error, error
    assert not [path.name for path in output.glob("*") if path.name != LOCK_FILE]
    assert run_cli(capsys, *argv)[0] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--base", "no/such-base-model-folder"), "no/such-base-model-folder"),
        (("--scorer", "fuzzy"), "'fuzzy'"),
        (("--batch-size", 0), "must be >= 1"),
        (("--methods", "greedy", "meanshift", "--meanshift-data", "missing.jsonl"), "--meanshift-data file"),
    ],
)
def test_a_failed_eval_leaves_nothing_that_refuses_the_corrected_rerun(
    tiny_chat_model_dir, tmp_path, capsys, extra, message
):
    output = tmp_path / "eval"
    argv = ("eval", "--limit", 2, "--base", tiny_chat_model_dir, "--max-new-tokens", 4, "--output", output)
    status, error = run_cli(capsys, *argv, "--methods", "greedy", *extra)
    assert status == 1 and message in error and "Traceback" not in error, error
    assert not [path.name for path in output.glob("*") if path.name != LOCK_FILE]
    assert run_cli(capsys, *argv, "--methods", "greedy")[0] == 0


def test_a_failed_train_start_leaves_no_record(tiny_chat_model_dir, tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text('{"prompt": "1+1?", "completion": "2"}\n')
    output = tmp_path / "train"
    status, error = run_cli(capsys, "train", data, "--base", tiny_chat_model_dir, "--heads", tmp_path / "no-heads",
                            "--output", output)
    assert status == 1 and "no-heads" in error, error
    assert not (output / "train_config.json").exists()


# ------------------------------------------------------------------------------------- errors name the thing


def test_meanshift_data_is_not_called_a_training_file(tiny_chat_model_dir, tmp_path, capsys):
    binary = tmp_path / "heldout.jsonl"
    binary.write_bytes(b'{"prompt": "a", "completion": "b"}\n\xff\xfe\x00binary\n')
    argv = ("eval", "--limit", 1, "--base", tiny_chat_model_dir, "--methods", "meanshift", "--output", tmp_path / "e")
    status, error = run_cli(capsys, *argv, "--meanshift-data", binary)
    assert status == 1 and f"--meanshift-data file {binary}:2: not UTF-8 text (byte 0xff)" in error, error
    assert "training file" not in error
    status, error = run_cli(capsys, *argv, "--meanshift-data", tmp_path / "missing.jsonl")
    assert status == 1 and "--meanshift-data file" in error and "training file" not in error, error


def test_a_binary_dataset_is_named_with_its_line(tmp_path, capsys):
    binary = tmp_path / "problems.jsonl"
    binary.write_bytes(json.dumps(PROBLEMS[0]).encode() + b"\n\x89PNG\r\n")
    with pytest.raises(DataError, match=rf"{binary}, line 2: not UTF-8 text \(byte 0x89"):
        load_problems(str(binary))
    status, error = run_cli(capsys, "sample", "--dataset", binary, "--output", tmp_path / "s")
    assert status == 1 and f"{binary}, line 2: not UTF-8" in error and "Traceback" not in error, error
    assert not (tmp_path / "s").exists()


def test_a_binary_training_file_is_named_with_its_line(tmp_path):
    from autodeco.data.trajectories import TrainingDataError, read_trajectories

    binary = tmp_path / "t.jsonl"
    binary.write_bytes(b"\xff\n")
    with pytest.raises(TrainingDataError, match=rf"training file {binary}:1: not UTF-8 text \(byte 0xff\)"):
        read_trajectories([binary])
