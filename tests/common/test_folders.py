"""Folders written atomically (autodeco.common.folders) and the training folder's clean-up after a kill."""

import pytest

from autodeco.common.folders import BACKUP_TAG, STAGING_TAG, staged_folder
from autodeco.training.state import remove_staging_folders

DEAD_PID = 2**22 + 12345  # above Linux's largest pid: no such process


def test_a_failed_write_leaves_the_previous_folder_and_no_debris(tmp_path):
    target = tmp_path / "run"
    with staged_folder(target) as folder:
        (folder / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), staged_folder(target) as folder:
        (folder / "a.txt").write_text("second, never finished")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(FileExistsError), staged_folder(tmp_path / "run"):
        pass


def test_training_clean_up_restores_a_checkpoint_caught_between_the_renames_and_drops_staging(tmp_path):
    backup = tmp_path / f".checkpoint-3.{BACKUP_TAG}.{DEAD_PID}.abcd1234"
    (backup / "checkpoint").mkdir(parents=True)
    (backup / "checkpoint" / "state.json").write_text("{}")
    staging = tmp_path / f".checkpoint-3.{STAGING_TAG}.{DEAD_PID}.abcd1234"
    staging.mkdir()
    with pytest.warns(UserWarning, match="restored the checkpoint"):
        remove_staging_folders(tmp_path)
    assert (tmp_path / "checkpoint-3" / "state.json").read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-3"]
