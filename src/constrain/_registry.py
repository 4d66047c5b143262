"""A small name -> object registry with helpful lookup errors and entry-point plug-ins."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from ._errors import ConfigError, UnknownNameError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to objects (classes or functions) of one kind.

    Lookups of unknown names raise :class:`UnknownNameError` listing the known names and
    the closest match. Third-party packages add entries through the entry-point group
    ``entry_point_group``: each entry point's name is the registered name and it loads
    the object itself.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"controller"``).
        entry_point_group: Optional ``importlib.metadata`` entry-point group to load
            plug-ins from, on the first lookup.
        adopt: Called as ``adopt(name, obj)`` for every entry, plug-ins included, before
            it is stored: validates it and tells it its registered name (so a plug-in
            class, or a subclass of a built-in, reports the name it is registered under).
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        adopt: Callable[[str, T], None] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._adopt = adopt
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator registering an object under ``name``.

        Args:
            name: Lower-case name used in configs and on the command line.
            overwrite: Replace an existing entry instead of raising.

        Raises:
            ConfigError: If ``name`` is empty, not a string, or already registered.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{self.kind} name must be a non-empty string; got {name!r}.")

        def decorator(obj: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not obj:
                raise ConfigError(
                    f"a {self.kind} named {name!r} is already registered "
                    f"({self._items[name]!r}); pass overwrite=True to replace it or "
                    "choose another name."
                )
            if self._adopt is not None:
                self._adopt(name, obj)
            self._items[name] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Register ``obj`` under ``name`` (non-decorator form of :meth:`register`)."""
        return self.register(name, overwrite=overwrite)(obj)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        assert self.entry_point_group is not None
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            try:
                loaded = ep.load()
                if self._adopt is not None:
                    self._adopt(ep.name, loaded)
                self._items[ep.name] = loaded
            except Exception as exc:  # a broken plug-in must not break the library
                import warnings

                warnings.warn(
                    f"could not load {self.kind} plug-in {ep.name!r} ({ep.value}): {exc}",
                    stacklevel=2,
                )

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            UnknownNameError: If ``name`` is unknown; the message lists the known names
                and suggests the closest one.
        """
        self._load_plugins()
        if not isinstance(name, str):
            raise UnknownNameError(
                f"{self.kind} name must be a string; got {name!r} ({type(name).__name__})."
            )
        stripped = name.strip().lower()
        for candidate in (name, stripped, stripped.replace("_", "-"), stripped.replace("-", "_")):
            if candidate in self._items:
                return self._items[candidate]
        known = ", ".join(sorted(self._items)) or "(none)"
        close = difflib.get_close_matches(name.lower(), list(self._items), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}.")

    def names(self) -> list[str]:
        """Sorted list of registered names (plug-ins included)."""
        self._load_plugins()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """Sorted ``(name, object)`` pairs."""
        self._load_plugins()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
