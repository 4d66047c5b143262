"""Registry of formulations."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import ConfigError
from .._registry import Registry
from .._validation import build_model

if TYPE_CHECKING:
    from ._base import Formulation

__all__ = ["FORMULATIONS", "build", "register"]

F = TypeVar("F", bound="type[Formulation]")

FORMULATIONS: Registry[type[Formulation]] = Registry("formulation", "constrain.formulations")


def register(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Class decorator registering a :class:`Formulation` subclass under ``name``."""

    def decorator(cls: F) -> F:
        cls.name = name
        FORMULATIONS.register(name, overwrite=overwrite)(cls)
        return cls

    return decorator


def build(spec: str | Formulation | Mapping[str, Any], **params: Any) -> Formulation:
    """Build a formulation from a name, a mapping with a ``name`` key, or an instance."""
    from ._base import Formulation

    if isinstance(spec, Formulation):
        if not params:
            return spec
        return build_model(
            type(spec), {**spec.model_dump(), **params}, f"formulation {spec.name!r}"
        )
    if isinstance(spec, Mapping):
        values = dict(spec)
        if "name" not in values:
            raise ConfigError(
                f"a formulation mapping needs a 'name' key (one of {FORMULATIONS.names()}); "
                f"got keys {sorted(values)}."
            )
        name = values.pop("name")
        return build(name, **{**values, **params})
    if isinstance(spec, str):
        cls = FORMULATIONS.get(spec)
        return build_model(cls, params, f"formulation {cls.name!r}")
    raise ConfigError(
        f"formulation must be a name, a mapping or a Formulation; got {spec!r} "
        f"({type(spec).__name__})."
    )
