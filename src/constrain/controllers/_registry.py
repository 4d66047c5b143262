"""Registry of multiplier controllers: lookup by name, build from configs, plug-ins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .._components import build_component
from .._errors import ConfigError
from .._registry import Registry
from ._base import Controller

__all__ = ["CONTROLLERS", "build", "get", "names", "register"]

C = TypeVar("C", bound=type[Controller])


def _adopt(name: str, cls: type[Controller]) -> None:
    """Check that ``cls`` is a :class:`Controller` subclass and give it its registry name."""
    if not (isinstance(cls, type) and issubclass(cls, Controller)):
        raise ConfigError(
            f"the controller registered as {name!r} must be a subclass of "
            f"constrain.controllers.Controller; got {cls!r}."
        )
    cls.name = name


CONTROLLERS: Registry[type[Controller]] = Registry(
    "controller", "constrain.controllers", adopt=_adopt
)
"""All registered controller classes; third-party ones come from the entry-point group
``constrain.controllers`` (each entry point loads a :class:`Controller` subclass)."""


def register(name: str, *, overwrite: bool = False) -> Callable[[C], C]:
    """Class decorator registering a :class:`Controller` subclass under ``name``.

    Example:
        >>> @register("my-gda")
        ... class MyGDA(Controller):
        ...     def update(self, multipliers, signal, state):
        ...         return multipliers + self.lr * signal, state
    """

    def decorator(cls: C) -> C:
        CONTROLLERS.register(name, overwrite=overwrite)(cls)
        return cls

    return decorator


def get(name: str) -> type[Controller]:
    """Return the controller class registered under ``name``."""
    return CONTROLLERS.get(name)


def names() -> list[str]:
    """Names of all registered controllers."""
    return CONTROLLERS.names()


def build(spec: str | Controller | Mapping[str, Any], **params: Any) -> Controller:
    """Build a controller from a name, a mapping, or pass an instance through.

    Args:
        spec: A registered name (``"nupi"``), a mapping ``{"name": "nupi", "ki": 0.1, ...}``,
            or a :class:`Controller` instance (returned as is, or copied with ``params``).
        **params: Hyperparameters, overriding those in ``spec``.

    Raises:
        UnknownNameError: For an unknown name (lists the known ones).
        ConfigError: For invalid hyperparameters, naming each field.
    """
    return build_component(CONTROLLERS, Controller, spec, params)
