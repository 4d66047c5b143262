"""The wheel holds every package, the Adult data and the licence, and builds without warnings.

Editable installs import straight from the source tree, so a package missing from the
wheel goes unnoticed everywhere else: this test builds the wheel from a copy of the
sources (so the working tree gets no ``build/`` folder) and compares its contents with
the source tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("pip")
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Installed name -> source folder, e.g. constrain_problems -> problems.
ROOTS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
TOP_LEVEL_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE")
ADULT = "constrain_problems/data/adult"
PROBE = "added_subpackage"


def source_packages() -> dict[str, Path]:
    """Dotted name -> folder, for every folder with an ``__init__.py`` under each root."""
    found = {}
    for name, folder in ROOTS.items():
        base = ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            relative = init.parent.relative_to(base).parts
            found[".".join((name, *relative))] = init.parent
    return found


def _wheel_name(package: str, path: Path) -> str:
    name, *rest = package.split(".")
    return "/".join((name, *rest, path.name))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    """The wheel built from a copy of the sources, and pip's verbose build log."""
    tree = tmp_path_factory.mktemp("tree")
    for name in TOP_LEVEL_FILES:
        shutil.copy2(ROOT / name, tree / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ROOTS.values():
        shutil.copytree(ROOT / folder, tree / folder, ignore=ignore)
        # A package that exists only in the copy: a new subpackage must need no listing.
        probe = tree / folder / PROBE / "nested"
        probe.mkdir(parents=True)
        (probe.parent / "__init__.py").write_text('"""Probe."""\n', encoding="utf-8")
        (probe / "__init__.py").write_text('"""Probe."""\n', encoding="utf-8")
    out = tree / "dist"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONWARNINGS": "default"}
    command = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
    completed = subprocess.run(
        [*command, "-w", str(out), "."],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-4000:]
    (wheel,) = out.glob("constrain-*.whl")
    return zipfile.ZipFile(wheel), log


def test_source_packages_are_found() -> None:
    packages = source_packages()
    assert {"constrain", "constrain.controllers", "constrain.prox", "constrain_problems"} <= set(
        packages
    )


def test_every_package_and_module_is_in_the_wheel(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, _ = built
    names = set(wheel.namelist())
    missing = [
        _wheel_name(package, module)
        for package, folder in source_packages().items()
        for module in sorted(folder.glob("*.py"))
        if _wheel_name(package, module) not in names
    ]
    assert not missing, f"not in the wheel: {missing}"
    # Nothing outside the two installed trees (no tests/, no stray top-level packages).
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {*ROOTS, "constrain-0.1.0.dist-info"}, tops


def test_a_new_subpackage_needs_no_listing(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, _ = built
    names = set(wheel.namelist())
    for name in ROOTS:
        assert f"{name}/{PROBE}/__init__.py" in names
        assert f"{name}/{PROBE}/nested/__init__.py" in names


def test_package_data_is_in_the_wheel(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, _ = built
    names = set(wheel.namelist())
    adult = ROOT / ROOTS["constrain_problems"] / "data" / "adult"
    data = sorted(p.name for p in adult.iterdir() if p.is_file())
    assert {"adult.data.gz", "adult.test.gz", "adult.names"} <= set(data)
    missing = [f"{ADULT}/{name}" for name in data if f"{ADULT}/{name}" not in names]
    assert not missing, f"Adult data not in the wheel: {missing}"
    assert "constrain/py.typed" in names


def test_licence_metadata_is_pep_639(built: tuple[zipfile.ZipFile, str]) -> None:
    wheel, _ = built
    metadata = wheel.read("constrain-0.1.0.dist-info/METADATA").decode()
    assert re.search(r"^License-Expression: MIT$", metadata, re.MULTILINE), metadata[:800]
    assert re.search(r"^License-File: LICENSE$", metadata, re.MULTILINE)
    assert not re.search(r"^Classifier: License ::", metadata, re.MULTILINE)
    assert "constrain-0.1.0.dist-info/licenses/LICENSE" in wheel.namelist()


def test_the_build_shows_no_deprecation_warning(built: tuple[zipfile.ZipFile, str]) -> None:
    _, log = built
    flagged = [line for line in log.splitlines() if re.search(r"deprecat", line, re.IGNORECASE)]
    assert not flagged, "\n".join(flagged)
