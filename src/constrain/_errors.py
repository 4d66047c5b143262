"""Exception hierarchy of :mod:`constrain`.

Every error raised on purpose by the library derives from :class:`ConstrainError` and
names the offending part, what was expected, what was received and, where one exists,
how to fix it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConstrainError",
    "NonFiniteError",
    "ShapeError",
    "UnknownNameError",
    "describe",
]


class ConstrainError(Exception):
    """Base class of every error raised on purpose by :mod:`constrain`."""


class ConfigError(ConstrainError, ValueError):
    """A configuration value or declaration is invalid."""


class UnknownNameError(ConfigError):
    """A name (controller, formulation, prox, problem, ...) is not registered."""


class ShapeError(ConstrainError, ValueError):
    """A tensor has the wrong shape, dtype or device."""


class NonFiniteError(ConstrainError, FloatingPointError):
    """A NaN or infinite value appeared in an objective, constraint or multiplier."""


class CheckpointError(ConstrainError, RuntimeError):
    """A checkpoint is missing, corrupt, truncated or belongs to another run."""


def describe(value: Any) -> str:
    """Return a short human-readable description of ``value`` for error messages.

    Tensors are described by shape, dtype and device rather than by their contents.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"
