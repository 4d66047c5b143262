"""Right-hand sides that depend on the step: constraint schedules.

A constraint ``g(x) <= b_t`` whose bound moves during training, e.g. a fairness tolerance
tightened from 0.1 to 0.02 over the first half of a run (a curriculum on the constraint).
The solver reads the bound at every step, so the violation that drives the multipliers,
the primal loss and the records all use ``b_t`` of the current step.

Declare one on the constraint (``Constraint("gap", rhs=constrain.schedules.Linear(
start=0.1, end=0.02, steps=500))`` or ``rhs={"name": "linear", ...}``; a problem field named
by ``@constraint(rhs="tolerance")`` may hold one too), or for any problem from the solver or
a run configuration: ``Solver(..., rhs_schedule={"parity*": {"name": "linear", "start":
0.1, "end": 0.02, "steps": 500}})``, ``rhs_schedule:`` in a config file, or ``--set
rhs_schedule.parity*.end=0.02``. See docs/algorithms.md, 'Right-hand-side schedules'.

Schedules are registered components (``constrain list``); third-party ones come from the
entry-point group ``constrain.schedules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from ._components import build_component
from ._errors import ConfigError
from ._registry import Registry

__all__ = [
    "SCHEDULES",
    "Constant",
    "Cosine",
    "Exponential",
    "Linear",
    "Piecewise",
    "RhsSchedule",
    "build",
    "names",
    "register",
]

S = TypeVar("S", bound="type[RhsSchedule]")

SCHEDULES: Registry[type[RhsSchedule]] = Registry("rhs schedule", "constrain.schedules")
"""All registered right-hand-side schedules."""

Finite = Annotated[float, Field(allow_inf_nan=False)]


class RhsSchedule(BaseModel):
    """Base class of right-hand-side schedules: :meth:`at` maps a step to ``b_t``.

    Subclasses are frozen pydantic models (their fields are validated options) registered
    with :func:`register`. Serialising one (``model_dump``) includes its registered
    ``name``, so a dumped schedule builds back with :func:`build`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""

    def at(self, step: int) -> float:
        """The right-hand side at step ``step`` (0-based solver step count)."""
        raise NotImplementedError

    @model_serializer(mode="wrap")
    def _with_name(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {"name": self.name, **handler(self)}

    def __str__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{self.name}({options})"


def register(name: str, *, overwrite: bool = False) -> Callable[[S], S]:
    """Class decorator registering a :class:`RhsSchedule` subclass under ``name``."""

    def decorator(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, RhsSchedule)):
            raise ConfigError(
                f"@register({name!r}) expects a subclass of constrain.schedules.RhsSchedule; "
                f"got {cls!r}."
            )
        cls.name = name
        SCHEDULES.register(name, overwrite=overwrite)(cls)
        return cls

    return decorator


def names() -> list[str]:
    """Names of all registered schedules."""
    return SCHEDULES.names()


def build(spec: float | RhsSchedule | Mapping[str, Any]) -> RhsSchedule:
    """Build a schedule from a mapping ``{"name": ..., **options}``, a number (a
    :class:`Constant`) or pass an instance through.

    Raises:
        UnknownNameError: For an unknown name (lists the known ones).
        ConfigError: For invalid options, naming each field.
    """
    if isinstance(spec, bool):
        raise ConfigError(f"an rhs schedule cannot be a bool; got {spec!r}.")
    if isinstance(spec, (int, float)):
        return Constant(value=float(spec))
    return build_component(SCHEDULES, RhsSchedule, spec, {})


class _Ramp(RhsSchedule):
    """From ``start`` (up to step ``begin``) to ``end`` (from step ``begin + steps``)."""

    start: Finite
    end: Finite
    steps: int = Field(ge=1)
    begin: int = Field(default=0, ge=0)

    def fraction(self, step: int) -> float:
        """``clip((step - begin) / steps, 0, 1)``."""
        return min(max((step - self.begin) / self.steps, 0.0), 1.0)


@register("constant")
class Constant(RhsSchedule):
    """``b_t = value`` (the plain right-hand side, as a schedule)."""

    value: Finite

    def at(self, step: int) -> float:
        """``value`` at every step."""
        return self.value


@register("linear")
class Linear(_Ramp):
    """Linear interpolation: ``b_t = start + (end - start) * s`` with
    ``s = clip((t - begin) / steps, 0, 1)``.

    Attributes:
        start: Bound up to step ``begin``.
        end: Bound from step ``begin + steps`` on.
        steps: Length of the ramp (>= 1).
        begin: First step of the ramp (>= 0).
    """

    def at(self, step: int) -> float:
        """``start + (end - start) * s``."""
        return self.start + (self.end - self.start) * self.fraction(step)


@register("cosine")
class Cosine(_Ramp):
    """Cosine interpolation (slow at both ends): ``b_t = end + (start - end) *
    (1 + cos(pi s)) / 2`` with ``s = clip((t - begin) / steps, 0, 1)``.

    Attributes:
        start: Bound up to step ``begin``.
        end: Bound from step ``begin + steps`` on.
        steps: Length of the ramp (>= 1).
        begin: First step of the ramp (>= 0).
    """

    def at(self, step: int) -> float:
        """``end + (start - end) * (1 + cos(pi s)) / 2``."""
        s = self.fraction(step)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * s))


@register("exponential")
class Exponential(_Ramp):
    """Geometric interpolation (a constant ratio per step): ``b_t = start * (end /
    start) ** s`` with ``s = clip((t - begin) / steps, 0, 1)``; ``start`` and ``end`` must
    be non-zero and of the same sign.

    Attributes:
        start: Bound up to step ``begin``.
        end: Bound from step ``begin + steps`` on.
        steps: Length of the ramp (>= 1).
        begin: First step of the ramp (>= 0).
    """

    @model_validator(mode="after")
    def _same_sign(self) -> Exponential:
        if self.start * self.end <= 0:
            raise ValueError(
                f"start and end must be non-zero and of the same sign for a geometric "
                f"interpolation; got start={self.start}, end={self.end} (use 'linear')"
            )
        return self

    def at(self, step: int) -> float:
        """``start * (end / start) ** s``."""
        s = self.fraction(step)
        if s >= 1.0:
            return self.end
        return float(self.start * (self.end / self.start) ** s)


@register("piecewise")
class Piecewise(RhsSchedule):
    """Piecewise constant: ``b_t = values[k]`` where ``k`` is the number of milestones
    ``<= t`` (so ``values[0]`` before the first milestone).

    Attributes:
        milestones: Strictly increasing steps at which the bound changes (>= 1 entry).
        values: One more value than milestones.
    """

    milestones: tuple[int, ...] = Field(min_length=1)
    values: tuple[float, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Piecewise:
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"milestones must increase strictly; got {list(self.milestones)}")
        if any(m < 0 for m in self.milestones):
            raise ValueError(f"milestones must be >= 0; got {list(self.milestones)}")
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError(
                f"give one more value than milestones: {len(self.milestones)} milestones need "
                f"{len(self.milestones) + 1} values; got {len(self.values)}"
            )
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError(f"every value must be finite; got {list(self.values)}")
        return self

    def at(self, step: int) -> float:
        """``values[#{milestones <= step}]``."""
        k = sum(1 for m in self.milestones if m <= step)
        return self.values[k]
