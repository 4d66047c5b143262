"""The multiplier-controller contract.

A controller is an update rule for Lagrange multipliers with explicit state, in the style
of an optax transform: :meth:`Controller.init` creates the state for a vector of
multipliers and :meth:`Controller.update` maps ``(multipliers, error signal, state)`` to
``(new multipliers, new state)``. Controllers are pure functions of their inputs; they
never modify tensors in place and never project: projection onto the multiplier domain
(``lam >= 0`` for inequality constraints) is the formulation's job and happens after every
update. Controller state (momentum buffers, EMAs, integrals) is never projected.

Convention (docs/algorithms.md, 'Notation and conventions'): the multiplier player
*ascends* the Lagrangian and its error signal is the constraint violation ``e_t = g(x_t)``
(``h(x_t)`` for equalities), so plain gradient ascent is ``lam <- lam + lr * e_t``.

State layout: every state tensor has the multipliers' dimension as its *last* dimension,
so that indexed (per-sample) multipliers can gather and scatter rows of the state with
``state[key][..., indices]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from .._errors import ShapeError

__all__ = [
    "Coefficient",
    "Controller",
    "ControllerState",
    "FiniteFloat",
    "NonNegativeFloat",
    "PositiveFloat",
    "as_coefficient",
]

ControllerState = dict[str, Tensor]
"""Explicit controller state: named tensors whose last dimension indexes multipliers."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Coefficient = float | tuple[float, ...]
"""A hyperparameter given either as one scalar or as one value per multiplier."""


def as_coefficient(value: Coefficient, like: Tensor, name: str) -> Tensor | float:
    """Return ``value`` as a float or as a tensor broadcastable against ``like``.

    Args:
        value: A scalar, or a sequence with one entry per multiplier.
        like: The multipliers (gives size, dtype and device).
        name: Field name used in error messages.

    Raises:
        ShapeError: If a per-multiplier sequence has the wrong length.
    """
    if isinstance(value, (int, float)):
        return float(value)

    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.shape[-1:] != like.shape[-1:]:
        raise ShapeError(
            f"controller field {name!r} has {tensor.shape[-1]} per-constraint values but "
            f"there are {like.shape[-1]} multipliers; give one value per multiplier or a "
            "single scalar."
        )
    return tensor


class Controller(BaseModel):
    """Base class of every multiplier update rule.

    Subclasses are frozen pydantic models whose fields are the hyperparameters (validated
    when the controller is built) and which implement :meth:`update` (and :meth:`init`
    when they carry state). Register a subclass with
    :func:`constrain.controllers.register`.

    Attributes:
        lr: Step size ``eta`` of the multiplier update. Default ``0.01`` for every rule but
            ``pid``, whose ``lr`` scales its output (default ``1.0``). A conservative value:
            the right step depends on the scale of the constraints, and the problems of
            ``constrain_problems`` set their own (``constrain show PROBLEM``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""
    """Registry name, set by :func:`constrain.controllers.register`."""

    extrapolates: ClassVar[bool] = False
    """True for controllers that need an extrapolation (look-ahead) step: the solver then
    evaluates the problem a second time at the extrapolated point."""

    supports_equality: ClassVar[bool] = True
    """False for rules that only make sense for non-negative multipliers (e.g.
    multiplicative weights); the solver rejects them for equality constraints."""

    lr: PositiveFloat = 1e-2

    @field_validator("*", mode="before")
    @classmethod
    def _sequences_to_tuples(cls, value: object) -> object:
        if isinstance(value, Tensor):
            value = value.detach().cpu().tolist()
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            try:
                values = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError("expected a number or a flat sequence of numbers") from None
            if not all(math.isfinite(v) for v in values):
                raise ValueError("every entry must be finite")
            return values
        return value

    def init(self, multipliers: Tensor) -> ControllerState:
        """Create the controller state for ``multipliers`` (a 1-d tensor).

        Returns:
            A dict of tensors; empty for stateless rules.
        """
        return {}

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return the new (unprojected) multipliers and the new state.

        Args:
            multipliers: Current multipliers ``lam_t`` (1-d).
            signal: Error signal ``e_t`` (same shape), e.g. the constraint violation.
            state: State returned by :meth:`init` or a previous :meth:`update`.
        """
        raise NotImplementedError

    def extrapolate(self, multipliers: Tensor, signal: Tensor, state: ControllerState) -> Tensor:
        """Look-ahead multipliers for extrapolation methods (unprojected).

        Only called when :attr:`extrapolates` is true. The solver projects the result, lets
        the primal player take its look-ahead step with it, evaluates the problem there and
        then calls :meth:`update` from the *original* multipliers with the look-ahead signal:

            lam_half = extrapolate(lam_t, e(x_t));  lam_{t+1} = update(lam_t, e(x_half)).

        The default takes the same step as :meth:`update` without advancing the state.
        """
        return self.update(multipliers, signal, state)[0]

    def initial_multipliers(self, like: Tensor) -> Tensor | None:
        """Multipliers this rule must start from, or ``None`` to use the solver's default.

        Multiplicative rules cannot start from zero and override this.
        """
        return None

    def spec(self) -> dict[str, object]:
        """A JSON-serialisable description: ``{"name": ..., **hyperparameters}``."""
        return {"name": self.name, **self.model_dump()}


# -- shared by the rules: signal checking and validated coefficient types ---------------------
def largest(dtype: torch.dtype) -> float:
    """``torch.finfo(dtype).max`` of a floating dtype (looked up once per dtype)."""
    value = _LARGEST.get(dtype)
    if value is None:
        value = _LARGEST[dtype] = torch.finfo(dtype).max
    return value


_LARGEST: dict[torch.dtype, float] = {}


def checked_signal(multipliers: Tensor, signal: Tensor, controller: str) -> Tensor:
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
    return signal if signal.dtype is multipliers.dtype else signal.to(multipliers.dtype)


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
