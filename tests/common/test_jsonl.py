"""Reading users' JSON: every failure (too deep, not JSON, not UTF-8, too long an integer) is a ValueError naming the file."""

import pytest

from autodeco.cli import main
from autodeco.common.jsonl import (
    JsonContentError,
    check_resume_config,
    parse_json,
    read_json,
    read_jsonl_tolerant,
)
from autodeco.model.config import AutoDecoConfig
from autodeco.data.phrasings import ControlPhrasingsError, load_phrasings
from autodeco.data.trajectories import TrainingDataError, read_trajectories

DEEP = "[" * 100_000 + "]" * 100_000
"""Nested far deeper than Python's JSON parser recurses: a RecursionError inside ``json.loads``."""

BAD_CONTENTS = {
    "nested 100,000 levels": (DEEP.encode(), "JSON nested too deeply"),
    "an integer of 5,000 digits": (b'{"a": ' + b"9" * 5000 + b"}", "JSON that cannot be read"),
    "not JSON": (b'{"a": ', "not valid JSON"),
    "not UTF-8": (b'{"a": "\xff"}', "not UTF-8"),
}


@pytest.mark.parametrize(("content", "message"), list(BAD_CONTENTS.values()), ids=list(BAD_CONTENTS))
def test_read_json_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(JsonContentError, match=rf"heads config {path}.*{message}.*re-save"):
        read_json(path, what="heads config", fix="re-save it")


def test_read_json_skips_a_byte_order_mark(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert read_json(path) == {"a": 1}
    assert parse_json("\ufeff[1]", "x") == [1]


@pytest.mark.parametrize(("content", "message"), list(BAD_CONTENTS.values()), ids=list(BAD_CONTENTS))
def test_a_heads_config_that_cannot_be_read_is_named(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path}.*{message}"):
        AutoDecoConfig.from_json_file(path)


def test_a_deep_line_in_a_run_file_is_named_and_a_deep_torn_last_line_dropped(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"a": 1}\n' + DEEP + '\n{"a": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: JSON nested too deeply"):
        read_jsonl_tolerant(path)
    path.write_text('{"a": 1}\n' + DEEP[:1000])
    assert read_jsonl_tolerant(path) == [{"a": 1}]


def test_a_deep_stored_run_configuration_is_named(tmp_path):
    (tmp_path / "sample_config.json").write_text(DEEP)
    with pytest.raises(ValueError, match="sampling run .*sample_config.json: JSON nested too deeply.*--overwrite"):
        check_resume_config(tmp_path / "sample_config.json", {}, what="sampling run", fix="pass --overwrite")


@pytest.mark.parametrize(
    ("line", "message"),
    [(DEEP, "JSON nested too deeply"), ('{"prompt": ' + "9" * 5000 + "}", "JSON that cannot be read")],
)
def test_training_data_lines_that_cannot_be_read_are_named(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "1+1?", "completion": "2"}\n' + line + "\n")
    with pytest.raises(TrainingDataError, match=rf"{path}:2: {message}"):
        read_trajectories([path])


def test_training_data_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "1+1?", "completion": "2"}\n')
    assert read_trajectories([path])[0].prompt == "1+1?"


def test_a_deep_phrasing_file_is_named(tmp_path):
    path = tmp_path / "phrasings.json"
    path.write_text(DEEP)
    with pytest.raises(ControlPhrasingsError, match="phrasings.json.* is JSON nested too deeply"):
        load_phrasings(path)


def test_the_cli_names_a_deep_data_file_in_one_line(tmp_path, tiny_chat_model_dir, capsys):
    data = tmp_path / "deep.jsonl"
    data.write_text('{"problem": "P", "gt": ' + DEEP + "}\n")
    argv = ["sample", "--dataset", data, "--base", tiny_chat_model_dir, "--output", tmp_path / "run"]
    assert main([str(word) for word in argv]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autodeco: error: ")]
    assert len(errors) == 1 and "deep.jsonl, line 1: JSON nested too deeply" in errors[0]


def test_info_names_a_deep_heads_config(tmp_path, tiny_autodeco, capsys):
    folder = tiny_autodeco("llama").save_pretrained(tmp_path / "heads")
    (folder / "config.json").write_text(DEEP)
    assert main(["info", str(folder)]) == 1
    assert "JSON nested too deeply" in capsys.readouterr().err
