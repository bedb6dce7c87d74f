"""The package builds into one ``qkdnet`` namespace from the user's folder layout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("qkdnet", "qkdnet.phy", "qkdnet.link", "qkdnet.hub", "qkdnet.apps")


@pytest.mark.slow
def test_wheel_contains_every_subpackage_and_py_typed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = tmp_path.glob("qkdnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in SUBPACKAGES:
        folder = package.replace(".", "/")
        assert f"{folder}/__init__.py" in names, f"{package} missing from {wheel.name}"
        assert f"{folder}/py.typed" in names, f"{package} has no py.typed in {wheel.name}"
    # The user's folder names must not leak into the wheel as top-level packages.
    for bare in ("stack/", "phy/", "link/", "hub/", "apps/"):
        assert not any(name.startswith(bare) for name in names), f"bare {bare} in wheel"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "GPL-2.0-only" in text


def test_subpackages_import_from_one_namespace() -> None:
    import importlib

    for package in SUBPACKAGES:
        module = importlib.import_module(package)
        assert module.__doc__, f"{package} has no module docstring"
