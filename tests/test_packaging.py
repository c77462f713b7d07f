"""The package as `pip install .` builds it from a clean checkout (not the editable one the suite runs from, whose
egg-info lists what the last install found) holds every file of the packages besides the Python modules that the
code reads at run time: the Lua scripts of flow control and rate limits, the migrations' template."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tracked(*paths: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_a_wheel_built_from_a_clean_checkout_holds_every_file_of_the_packages(tmp_path):
    source = tmp_path / "source"
    for path in tracked("pyproject.toml", "README.md", "ledger", "actors", "service"):
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    packaged = tracked("ledger", "actors", "service")
    assert packaged, "git ls-files found the sources"
    assert sorted(path for path in packaged if path not in names) == []
