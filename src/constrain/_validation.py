"""Helpers that turn pydantic validation errors into :class:`ConfigError` messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._errors import ConfigError

M = TypeVar("M", bound=BaseModel)

__all__ = ["build_model", "format_validation_error"]


def format_validation_error(exc: ValidationError, owner: str) -> str:
    """Render a pydantic ``ValidationError`` as one message naming each bad field.

    Args:
        exc: The validation error.
        owner: What was being built, e.g. ``"controller 'nupi'"``.
    """
    lines = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err.get("loc", ())) or "(root)"
        received = err.get("input")
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        lines.append(f"  {field}: {msg}; received {received!r}")
    return f"invalid {owner}:\n" + "\n".join(lines)


def build_model(cls: type[M], params: Mapping[str, Any], owner: str) -> M:
    """Instantiate pydantic model ``cls`` from ``params``, raising :class:`ConfigError`.

    Raises:
        ConfigError: Naming every offending field, what it expected and what it got.
    """
    try:
        return cls(**dict(params))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, owner)) from None
