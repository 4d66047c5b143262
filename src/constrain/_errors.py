"""Exception hierarchy of :mod:`constrain`.

Every error raised on purpose by the library derives from :class:`ConstrainError` and
names the offending part, what was expected, what was received and, where one exists,
how to fix it.
"""

from __future__ import annotations

import reprlib
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConstrainError",
    "NonFiniteError",
    "ShapeError",
    "UnknownNameError",
    "describe",
    "short_repr",
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
    return f"{short_repr(value)} ({type(value).__name__})"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` bounded in size however large or deeply nested ``value`` is.

    Containers are shown to a depth of 3 and 6 items per level (``reprlib``), and the text
    is cut to ``limit`` characters, so that an error message never prints (or spends time
    expanding) a huge input such as a YAML alias bomb.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
