"""What an installed wheel carries: every package of the tree and the built-in search spaces and hardware profiles
(top-level folders in a checkout, mapped into the package by pyproject.toml), so that ``pip install autocompress``
runs ``autocompress run`` on its defaults and ``python -m autocompress.profiling --profile cpu`` finds its profile."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from autocompress.shipped import FOLDERS, builtin_dirs

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _setuptools_cfg() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_listed_packages_are_the_source_trees_and_the_yaml_folders():
    from setuptools import find_packages

    cfg = _setuptools_cfg()
    mapped = {f"autocompress.{d}": d for d in FOLDERS}
    assert cfg["package-dir"] == mapped
    assert set(cfg["packages"]) - set(mapped) == set(find_packages(str(ROOT), include=["autocompress*"]))
    assert set(mapped) <= set(cfg["packages"])
    for pkg, folder in mapped.items():
        assert cfg["package-data"][pkg] == ["*.yaml"] and list((ROOT / folder).glob("*.yaml"))


def test_builtin_folders_are_the_checkouts_here():
    assert builtin_dirs("search_spaces") == [ROOT / "search_spaces"]
    with pytest.raises(ValueError, match="hardware_profiles"):
        builtin_dirs("models")


def _can_build_wheels() -> bool:
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except Exception:
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(not _can_build_wheels(), reason="needs setuptools>=70.1 (or the wheel package) to build a wheel")
def test_a_wheel_carries_the_builtin_spaces_and_profiles(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for d in ("autocompress", *FOLDERS):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("autocompress-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "autocompress").rglob("*.py")}
    assert sources <= names
    for d in FOLDERS:
        assert {f"autocompress/{d}/{p.name}" for p in (ROOT / d).glob("*.yaml")} <= names

    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    code = ("import autocompress, autocompress.config as c, autocompress.profiling.__main__ as m;"
            "print(autocompress.__file__);"
            "print(c.load_space('default').model_dump() is not None, c.load_profile('cpu')[0].name,"
            " m.read_profile('cpu-1thread')['intra_op_threads'])")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    where, got = run.stdout.splitlines()
    assert Path(where).is_relative_to(site)
    assert got == "True cpu 1"


def test_a_users_own_profile_folder_is_read_by_the_search_and_the_target_side_alike(tmp_path, monkeypatch):
    """``./hardware_profiles/NAME.yaml`` in the working directory is found by name by ``autocompress`` (config) and
    by ``python -m autocompress.profiling`` (no pydantic) through the same lookup, before the built-ins."""
    from autocompress.config import ConfigError, load_profile
    from autocompress.profiling.__main__ import read_profile
    from autocompress.profiling.target import TargetError
    from autocompress.shipped import named_file, names

    mine = tmp_path / "hardware_profiles"
    mine.mkdir()
    text = (ROOT / "hardware_profiles" / "cpu-1thread.yaml").read_text().replace("name: cpu-1thread", "name: my-box")
    (mine / "my-box.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert named_file("my-box", "hardware_profiles") == mine / "my-box.yaml"
    assert {"my-box", "cpu", "cpu-1thread"} <= set(names("hardware_profiles"))
    assert read_profile("my-box")["name"] == "my-box" and load_profile("my-box")[0].name == "my-box"
    with pytest.raises(TargetError, match="my-box"):
        read_profile("my-boks")
    with pytest.raises(ConfigError, match="did you mean 'my-box'"):
        load_profile("my-boks")
