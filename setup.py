"""Package discovery; every other setting is in pyproject.toml.

The distribution installs two trees under other names than their directories
(``[tool.setuptools] package-dir``): ``src/constrain`` as ``constrain`` and ``problems`` as
``constrain_problems``. ``[tool.setuptools.packages.find]`` names packages after their
directories, so it cannot express the second mapping; this file finds every package
(directories with or without ``__init__.py``, e.g. the data folders) below each root
instead, so that a new subpackage is never left out of the wheel.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"constrain": "src/constrain", "constrain_problems": "problems"}


def packages() -> list[str]:
    found = []
    for name, path in ROOTS.items():
        found.append(name)
        subpackages = find_namespace_packages(path, exclude=["*__pycache__*"])
        found.extend(f"{name}.{sub}" for sub in subpackages)
    return found


setup(packages=packages())
