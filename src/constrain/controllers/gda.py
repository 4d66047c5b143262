"""Projected gradient ascent on the multipliers (GDA) and helpers shared by the rules.

The helpers (signal checking, validated coefficient types) live here because every other
controller module already depends on this one; they are private to the package.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, Field
from torch import Tensor

from .._errors import ShapeError
from ._base import Coefficient, Controller, ControllerState
from ._registry import register

__all__ = ["GDA"]


def _checked_signal(multipliers: Tensor, signal: Tensor, controller: str) -> Tensor:
    """Return ``signal`` in the multipliers' dtype after checking its shape and device.

    Raises:
        ShapeError: If the signal's shape or device differs from the multipliers'.
    """
    if signal.shape != multipliers.shape:
        raise ShapeError(
            f"controller {controller!r}: the error signal has shape {tuple(signal.shape)} "
            f"but the multipliers have shape {tuple(multipliers.shape)}; pass one "
            "violation per multiplier."
        )
    if signal.device != multipliers.device:
        raise ShapeError(
            f"controller {controller!r}: the error signal is on {signal.device} but the "
            f"multipliers are on {multipliers.device}; move both to the same device."
        )
    return signal.to(dtype=multipliers.dtype)


def _entries(value: Coefficient) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


def _finite_coefficient(value: Coefficient) -> Coefficient:
    entries = _entries(value)
    if not entries:
        raise ValueError("give a scalar or at least one value per multiplier")
    if not all(math.isfinite(v) for v in entries):
        raise ValueError("every value must be finite")
    return value


def _nonnegative_coefficient(value: Coefficient) -> Coefficient:
    _finite_coefficient(value)
    if any(v < 0 for v in _entries(value)):
        raise ValueError("every value must be >= 0")
    return value


FiniteCoefficient = Annotated[Coefficient, AfterValidator(_finite_coefficient)]
"""A finite scalar, or one finite value per multiplier."""

NonNegativeCoefficient = Annotated[Coefficient, AfterValidator(_nonnegative_coefficient)]
"""A finite scalar >= 0, or one such value per multiplier."""

OpenUnitFloat = Annotated[float, Field(gt=-1, lt=1, allow_inf_nan=False)]
"""A float in the open interval (-1, 1) (momentum / EMA coefficients that may be negative)."""

UnitFloat = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
"""A float in [0, 1) (EMA / Adam decay coefficients)."""


@register("gda")
class GDA(Controller):
    """Gradient ascent on the multipliers (projected GDA once the formulation projects).

    Update, with error signal ``e_t`` (the constraint violation)::

        lam_{t+1} = lam_t + lr * e_t

    Stateless. Equal to :class:`~constrain.controllers.NuPI` with ``ki = 1, kp = 0`` (any
    ``nu``).

    Attributes:
        lr: Step size ``eta``. Default ``0.01``.
    """

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam + lr * e`` and the (empty) state."""
        e = _checked_signal(multipliers, signal, self.name)
        return multipliers + self.lr * e, {}
