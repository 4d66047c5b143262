"""Helpers that turn pydantic validation errors into :class:`ConfigError` messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._registry import Registry

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "build_component",
    "build_model",
    "field_owners",
    "format_validation_error",
]


def format_validation_error(
    exc: ValidationError, owner: str, registry: Registry[Any] | None = None
) -> str:
    """Render a pydantic ``ValidationError`` as one message naming each bad field.

    Args:
        exc: The validation error.
        owner: What was being built, e.g. ``"controller 'nupi'"``.
        registry: Where the component came from; an unknown field that other registered
            components have is reported as belonging to them (``"ki: not a field of
            controller 'gda'; ki belongs to controller(s) nupi, pid"``).
    """
    lines = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err.get("loc", ())) or "(root)"
        received = err.get("input")
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            owners = field_owners(registry, field) if registry is not None else []
            if registry is not None and owners:
                msg = (
                    f"not a field of {owner}; {field} belongs to {registry.kind}(s) "
                    f"{', '.join(owners)}"
                )
            else:
                msg = "unknown field (check its spelling)"
        lines.append(f"  {field}: {msg}; received {received!r}")
    return f"invalid {owner}:\n" + "\n".join(lines)


def field_owners(registry: Registry[Any], field: str) -> list[str]:
    """Names of the registered components (pydantic classes) that have the field ``field``."""
    owners = []
    for name, cls in registry.items():
        fields = getattr(cls, "model_fields", None)
        if isinstance(fields, Mapping) and field in fields:
            owners.append(name)
    return sorted(owners)


def build_model(
    cls: type[M], params: Mapping[str, Any], owner: str, registry: Registry[Any] | None = None
) -> M:
    """Instantiate pydantic model ``cls`` from ``params``, raising :class:`ConfigError`.

    Raises:
        ConfigError: Naming every offending field, what it expected and what it got (and,
            for an unknown field that other components of ``registry`` have, which).
    """
    try:
        return cls(**dict(params))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, owner, registry)) from None


def build_component(
    registry: Registry[type[M]],
    base: type[M],
    spec: str | M | Mapping[str, Any],
    params: Mapping[str, Any],
) -> M:
    """Build a registered component (controller, formulation, ...) from a config value.

    Args:
        registry: Where names are looked up (its ``kind`` names the component in errors).
        base: The component base class; an instance of it is passed through, or copied
            with ``params`` applied.
        spec: A registered name, a mapping ``{"name": ..., **options}`` or an instance.
        params: Options overriding those in ``spec``.

    Raises:
        UnknownNameError: For an unknown name (lists the known ones).
        ConfigError: For a mapping without ``name``, a value of another type, or invalid
            options (naming each field).
    """
    kind = registry.kind
    if isinstance(spec, base):
        if not params:
            return spec
        owner = f"{kind} {getattr(spec, 'name', '')!r}"
        return build_model(type(spec), {**spec.model_dump(), **params}, owner, registry)
    if isinstance(spec, Mapping):
        values = dict(spec)
        if "name" not in values:
            raise ConfigError(
                f"a {kind} mapping needs a 'name' key (one of {registry.names()}); got keys "
                f"{sorted(values)}."
            )
        name: str | M | Mapping[str, Any] = values.pop("name")
        return build_component(registry, base, name, {**values, **params})
    if isinstance(spec, str):
        cls = registry.get(spec)
        return build_model(cls, params, f"{kind} {getattr(cls, 'name', spec)!r}", registry)
    raise ConfigError(
        f"{kind} must be a name, a mapping with a 'name' key or a {base.__name__} instance; "
        f"got {spec!r} ({type(spec).__name__})."
    )
