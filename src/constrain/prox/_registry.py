"""Registry of proximal operators: ``fn(x, strength, **options) -> Tensor``.

A registered prox takes a tensor ``x`` and the already step-size-scaled penalty weight
``strength`` (the solver passes ``strength * lr``) and returns a *new* tensor with the
shape, dtype and device of ``x``; ``x`` itself is never modified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

from .._errors import ConfigError
from .._registry import Registry

__all__ = ["PROX", "ProxFn", "get", "names", "register"]

ProxFn = Callable[..., Tensor]
"""A proximal operator ``fn(x: Tensor, strength: float, **options) -> Tensor``."""

F = TypeVar("F", bound=Callable[..., Any])

PROX: Registry[ProxFn] = Registry("prox", "constrain.prox")
"""All registered proximal operators; third-party ones come from the entry-point group
``constrain.prox`` (each entry point loads a function with the signature above)."""


def register(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Decorator registering a proximal operator under ``name``.

    The function must accept ``(x, strength, **options)`` and return a new tensor of
    ``x``'s shape, dtype and device, leaving ``x`` untouched.

    Example:
        >>> import torch
        >>> @register("scale-down", overwrite=True)
        ... def scale_down(x: torch.Tensor, strength: float) -> torch.Tensor:
        ...     return x / (1.0 + strength)
    """

    def decorator(fn: F) -> F:
        if not callable(fn):
            raise ConfigError(
                f"@register({name!r}) expects a function fn(x, strength, **options) -> Tensor; "
                f"got {fn!r}."
            )
        PROX.register(name, overwrite=overwrite)(fn)
        return fn

    return decorator


def get(name: str) -> ProxFn:
    """Return the proximal operator registered under ``name``.

    Raises:
        UnknownNameError: For an unknown name; the message lists the known ones.
    """
    return PROX.get(name)


def names() -> list[str]:
    """Names of all registered proximal operators."""
    return PROX.names()
