"""Every registered controller states the defaults of its hyperparameters in its docstring."""

from __future__ import annotations

import inspect

import pytest

from constrain import controllers


def _stated(cls: type, field: str, default: object) -> bool:
    doc = inspect.getdoc(cls) or ""
    return f"Default ``{default!r}``" in doc or f"Default ``{default}``" in doc


@pytest.mark.parametrize("name", controllers.names())
def test_controller_defaults_are_stated(name: str) -> None:
    cls = controllers.get(name)
    missing = [
        f"{field} (default {info.default!r})"
        for field, info in cls.model_fields.items()
        if not _stated(cls, field, info.default)
    ]
    assert not missing, f"controller {name!r} does not state the defaults of {missing}"
