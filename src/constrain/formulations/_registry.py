"""Registry of formulations."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._components import build_component
from .._errors import ConfigError
from .._registry import Registry

if TYPE_CHECKING:
    from ._base import Formulation

__all__ = ["FORMULATIONS", "build", "register"]

F = TypeVar("F", bound="type[Formulation]")


def _adopt(name: str, cls: type[Formulation]) -> None:
    """Check that ``cls`` is a :class:`Formulation` subclass and give it its registry name."""
    from ._base import Formulation

    if not (isinstance(cls, type) and issubclass(cls, Formulation)):
        raise ConfigError(
            f"the formulation registered as {name!r} must be a subclass of "
            f"constrain.formulations.Formulation; got {cls!r}."
        )
    cls.name = name


FORMULATIONS: Registry[type[Formulation]] = Registry(
    "formulation", "constrain.formulations", adopt=_adopt
)


def register(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Class decorator registering a :class:`Formulation` subclass under ``name``."""

    def decorator(cls: F) -> F:
        FORMULATIONS.register(name, overwrite=overwrite)(cls)
        return cls

    return decorator


def build(spec: str | Formulation | Mapping[str, Any], **params: Any) -> Formulation:
    """Build a formulation from a name, a mapping with a ``name`` key, or an instance."""
    from ._base import Formulation

    return build_component(FORMULATIONS, Formulation, spec, params)
