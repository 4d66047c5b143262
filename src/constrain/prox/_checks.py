"""Argument checks shared by the proximal operators."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from numbers import Real

import torch
from torch import Tensor

from .._errors import ConfigError, NonFiniteError, ShapeError, describe

__all__ = [
    "FLOAT_DTYPES",
    "as_flat",
    "check_strength",
    "input_checks_enabled",
    "raise_non_finite",
    "without_input_checks",
]

FLOAT_DTYPES = (torch.float32, torch.float64)

_INPUT_CHECKS = contextvars.ContextVar("constrain_prox_input_checks", default=True)


@contextlib.contextmanager
def without_input_checks() -> Iterator[None]:
    """Skip the proxes' NaN/Inf check of their input inside the block (it synchronises
    with the device). The solver runs its proximal steps so: a non-finite parameter comes
    from a non-finite gradient or evaluation, which the step's record reports."""
    token = _INPUT_CHECKS.set(False)
    try:
        yield
    finally:
        _INPUT_CHECKS.reset(token)


def input_checks_enabled() -> bool:
    """False inside :func:`without_input_checks`."""
    return _INPUT_CHECKS.get()


def check_strength(value: object, name: str = "strength", owner: str = "prox") -> float:
    """Return ``value`` as a Python float, checking that it is finite and ``>= 0``.

    Accepts Python/NumPy real numbers and one-element tensors.

    Raises:
        ConfigError: Naming ``name``, what was expected and what was received.
    """
    expected = "a finite real number >= 0 (the step-size-scaled penalty weight)"
    number: float | None = None
    if isinstance(value, Tensor):
        if value.numel() == 1 and value.dtype != torch.bool and not value.dtype.is_complex:
            number = float(value.detach().reshape(()).item())
    elif isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
    if number is None:
        raise ConfigError(f"{owner}: {name} must be {expected}; received {describe(value)}.")
    if not math.isfinite(number) or number < 0.0:
        raise ConfigError(f"{owner}: {name} must be {expected}; received {number!r}.")
    return number


def as_flat(x: object, owner: str) -> Tensor:
    """Check that ``x`` is a float32/float64 tensor and return it detached and flattened.

    The result is contiguous and may share memory with ``x``: callers must not write to it.

    Raises:
        ShapeError: If ``x`` is not a tensor, or its dtype is not float32 or float64.
    """
    if not isinstance(x, Tensor):
        raise ShapeError(
            f"{owner}: x must be a torch.Tensor of dtype float32 or float64; "
            f"received {describe(x)}."
        )
    if x.dtype not in FLOAT_DTYPES:
        raise ShapeError(
            f"{owner}: x must have dtype float32 or float64; received {describe(x)}. "
            "Convert it first, e.g. x.float() or x.double()."
        )
    return x.detach().reshape(-1).contiguous()


def raise_non_finite(flat: Tensor, shape: torch.Size, owner: str) -> None:
    """Raise :class:`NonFiniteError` describing the non-finite entries of ``flat``.

    Does nothing if every entry is finite.
    """
    bad = ~torch.isfinite(flat)
    count = int(bad.sum().item())
    if count == 0:
        return
    n_nan = int(torch.isnan(flat).sum().item())
    first = int(torch.nonzero(bad)[0, 0].item())
    position = _unravel(first, shape)
    raise NonFiniteError(
        f"{owner}: x contains {count} non-finite value(s) ({n_nan} NaN, {count - n_nan} "
        f"+/-Inf) out of {flat.numel()}; the first is x[{position}] (flat index {first}) = "
        f"{flat[first].item()}. The proximal operator is undefined for non-finite input; "
        "check the step that produced x (learning rate, loss scaling)."
    )


def _unravel(index: int, shape: torch.Size) -> str:
    if len(shape) <= 1:
        return str(index)
    coords: list[int] = []
    for size in reversed(shape):
        coords.append(index % size)
        index //= size
    return ", ".join(str(c) for c in reversed(coords))
