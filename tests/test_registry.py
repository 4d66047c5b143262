"""The generic name registry: lookups, suggestions, duplicates and entry-point plug-ins."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from constrain import ConfigError, UnknownNameError, _registry
from constrain._registry import Registry


def _registry_with(*names: str) -> Registry[object]:
    registry: Registry[object] = Registry("widget")
    for name in names:
        registry.add(name, object())
    return registry


def test_register_get_and_listing() -> None:
    registry: Registry[Any] = Registry("widget")

    @registry.register("alpha")
    def alpha() -> str:
        return "a"

    beta = registry.add("beta_two", object())
    assert registry.get("alpha") is alpha
    assert registry.get("beta_two") is beta
    assert registry.names() == ["alpha", "beta_two"]
    assert registry.items() == [("alpha", alpha), ("beta_two", beta)]
    assert "alpha" in registry and "gamma" not in registry
    assert list(registry) == ["alpha", "beta_two"] and len(registry) == 2
    assert repr(registry) == "Registry('widget', names=['alpha', 'beta_two'])"


def test_lookup_normalises_case_spaces_dashes_and_underscores() -> None:
    registry = _registry_with("weight_sharing", "iris-svm")
    ws, iris = registry.get("weight_sharing"), registry.get("iris-svm")
    assert registry.get(" Weight-Sharing ") is ws
    assert registry.get("IRIS_SVM") is iris


def test_unknown_name_lists_known_names_and_the_closest() -> None:
    registry = _registry_with("nupi", "gda", "pid")
    with pytest.raises(UnknownNameError) as info:
        registry.get("nupii")
    message = str(info.value)
    assert "unknown widget 'nupii'." in message
    assert "Did you mean 'nupi'?" in message
    assert "Known widgets: gda, nupi, pid." in message
    with pytest.raises(UnknownNameError) as info:
        registry.get("zzzzzz")
    assert "Did you mean" not in str(info.value)
    with pytest.raises(UnknownNameError, match="must be a string"):
        registry.get(3)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)  # unknown names are configuration errors


def test_duplicates_and_bad_names() -> None:
    registry: Registry[object] = Registry("widget")
    first, second = object(), object()
    registry.add("a", first)
    registry.add("a", first)  # the same object again is harmless
    with pytest.raises(ConfigError, match="a widget named 'a' is already registered"):
        registry.add("a", second)
    registry.add("a", second, overwrite=True)
    assert registry.get("a") is second
    for bad in ("", "  ", None):
        with pytest.raises(ConfigError, match="non-empty string"):
            registry.register(bad)  # type: ignore[arg-type]


def test_entry_point_plugins_are_loaded_once_and_broken_ones_warn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = EntryPoint("plugged", "constrain._errors:ConfigError", "test.group")
    broken = EntryPoint("broken", "no_such_module_xyz:thing", "test.group")
    shadowed = EntryPoint("builtin", "constrain._errors:ShapeError", "test.group")
    calls: list[str] = []

    def fake_entry_points(group: str) -> list[EntryPoint]:
        calls.append(group)
        return [good, broken, shadowed]

    monkeypatch.setattr(_registry, "entry_points", fake_entry_points)
    registry: Registry[object] = Registry("widget", "test.group")
    builtin = registry.add("builtin", object())
    with pytest.warns(UserWarning, match="could not load widget plug-in 'broken'"):
        names = registry.names()
    assert names == ["builtin", "plugged"]
    assert registry.get("plugged") is ConfigError
    assert registry.get("builtin") is builtin  # built-ins win over plug-ins
    registry.names()
    assert calls == ["test.group"]
