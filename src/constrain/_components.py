"""Helpers that turn pydantic validation errors into :class:`ConfigError` messages."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from ._errors import ConfigError, short_repr

if TYPE_CHECKING:
    from ._registry import Registry

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "bools_for_numbers",
    "build_component",
    "build_model",
    "field_owners",
    "format_validation_error",
    "refuse_bools_for_numbers",
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
        if field == "(root)":  # a model-level check: its message names the fields
            lines.append(f"  {msg}")
        else:
            lines.append(f"  {field}: {msg}; received {short_repr(received)}")
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
    refuse_bools_for_numbers(cls, params, owner)
    try:
        return cls(**dict(params))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, owner, registry)) from None


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def _parts(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union (or ``Annotated``) annotation, else the annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _parts(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return tuple(p for arg in typing.get_args(annotation) for p in _parts(arg))
    return (annotation,)


def _admits_bool(annotation: Any) -> bool:
    for part in _parts(annotation):
        if part in (bool, Any, object) or isinstance(part, typing.TypeVar):
            return True
        if typing.get_origin(part) is typing.Literal and any(
            isinstance(a, bool) for a in typing.get_args(part)
        ):
            return True
    return False


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _admits_str(annotation: Any) -> bool:
    for part in _parts(annotation):
        if part in (str, Any, object) or isinstance(part, typing.TypeVar):
            return True
        if typing.get_origin(part) is typing.Literal and any(
            isinstance(a, str) for a in typing.get_args(part)
        ):
            return True
    return False


def _item_annotations(annotation: Any) -> list[Any]:
    """Item annotations of the sequence alternatives (``tuple[float, ...]`` -> ``float``)."""
    items = []
    for part in _parts(annotation):
        if typing.get_origin(part) in (tuple, list, set, frozenset):
            items += [a for a in typing.get_args(part) if a is not Ellipsis]
    return items


def _numeric(annotation: Any) -> bool:
    return any(part in (int, float, complex) for part in _parts(annotation))


def bools_for_numbers(cls: type[BaseModel], data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Fields of ``cls`` that ``data`` gives a bool (or a string) although they take numbers.

    pydantic (lax mode) reads ``True`` as ``1`` and ``"0.1"`` as ``0.1``, so ``steps=True``
    or ``--set controller.lr=true`` would run with 1: bool is not a number here, and a
    quoted number is a typing slip. Checks a bool or a string for a numeric field, a sequence holding a bool for a sequence of numbers, and recurses
    into nested models given as mappings. Returns ``"field: ... received True"`` lines.
    """
    lines = []
    fields = cls.model_fields
    for name, value in data.items():
        field = fields.get(name) if isinstance(name, str) else None
        if field is None:
            continue
        annotation, path = field.annotation, f"{prefix}{name}"
        if _is_bool(value):
            if not _admits_bool(annotation) and _numeric(annotation):
                lines.append(
                    f"  {path}: expected a number, not a bool (true/false is not 1/0 here); "
                    f"received {value!r}"
                )
        elif isinstance(value, str) and _numeric(annotation) and not _admits_str(annotation):
            if _looks_numeric(value):  # other strings pydantic refuses by itself
                lines.append(
                    f"  {path}: expected a number, not a string (write {value.strip()}, not "
                    f"{short_repr(value)})"
                )
        elif isinstance(value, (list, tuple)) and any(_is_bool(v) for v in value):
            items = _item_annotations(annotation)
            if items and not any(_admits_bool(a) for a in items) and any(map(_numeric, items)):
                lines.append(
                    f"  {path}: expected numbers, not bools (true/false is not 1/0 here); "
                    f"received {short_repr(value)}"
                )
        elif isinstance(value, Mapping):
            for part in _parts(annotation):
                if isinstance(part, type) and issubclass(part, BaseModel):
                    lines += bools_for_numbers(part, value, f"{path}.")
    return lines


def refuse_bools_for_numbers(cls: type[BaseModel], data: Mapping[str, Any], owner: str) -> None:
    """Raise :class:`ConfigError` if ``data`` gives a bool for a numeric field of ``cls``
    (see :func:`bools_for_numbers`)."""
    lines = bools_for_numbers(cls, data)
    if lines:
        raise ConfigError(f"invalid {owner}:\n" + "\n".join(lines))


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
