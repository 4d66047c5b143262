"""Values that depend on the step: right-hand-side schedules and dual-side schedules.

**Registered schedules** (:class:`StepSchedule` subclasses: ``constant``, ``linear``,
``cosine``, ``exponential``, ``piecewise``) are validated, serialisable functions of the
step. Their first use is a constraint whose bound moves during training, ``g(x) <= b_t``,
e.g. a fairness tolerance tightened from 0.1 to 0.02 over the first half of a run (a
curriculum on the constraint). The solver reads the bound at every step, so the violation
that drives the multipliers, the primal loss and the records all use ``b_t`` of the current
step.

Declare one on the constraint (``Constraint("gap", rhs=constrain.schedules.Linear(
start=0.1, end=0.02, steps=500))`` or ``rhs={"name": "linear", ...}``; a problem field named
by ``@constraint(rhs="tolerance")`` may hold one too), or for any problem from the solver or
a run configuration: ``Solver(..., rhs_schedule={"parity*": {"name": "linear", "start":
0.1, "end": 0.02, "steps": 500}})``, ``rhs_schedule:`` in a config file, or ``--set
rhs_schedule.parity*.end=0.02``. See docs/algorithms.md, 'Right-hand-side schedules'.
Registered schedules are components (``constrain list``); third-party ones come from the
entry-point group ``constrain.schedules``.

**Dual-side schedules**: the controller's step size and the formulation's penalty
(``Solver(..., dual_lr_schedule=..., penalty_schedule=...)``). Such a schedule is either

* a callable of the step, ``schedule(t) -> value`` (pure: nothing to checkpoint), e.g.
  ``lambda t: 0.1 / (1 + t) ** 0.5`` or a registered schedule such as
  ``constrain.schedules.Cosine(start=0.1, end=0.01, steps=1000)``; or
* a torch learning-rate scheduler (``torch.optim.lr_scheduler.*``) built on a
  :class:`ScheduledValue`, the one-number stand-in optimizer whose ``lr`` the scheduler
  drives::

      dual_lr = constrain.ScheduledValue(0.1)
      cosine = torch.optim.lr_scheduler.CosineAnnealingLR(dual_lr, T_max=1000)
      solver = constrain.Solver(..., dual_lr_schedule=cosine)

  The solver reads the value at the start of each step and steps the scheduler after it
  (the order of ``optimizer.step(); scheduler.step()``); the scheduler's and the value's
  states are saved in checkpoints, so that a resumed run continues bit for bit.

Metric-driven schedulers (``ReduceLROnPlateau``) need an argument the solver does not have;
step them yourself and pass a callable reading ``scheduled_value.value``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ._components import build_component
from ._errors import CheckpointError, ConfigError, describe
from ._registry import Registry

__all__ = [
    "SCHEDULES",
    "Constant",
    "Cosine",
    "Exponential",
    "Linear",
    "Piecewise",
    "RhsSchedule",
    "Schedule",
    "ScheduleRunner",
    "ScheduledValue",
    "StepSchedule",
    "build",
    "names",
    "register",
]

S = TypeVar("S", bound="type[RhsSchedule]")

SCHEDULES: Registry[type[RhsSchedule]] = Registry("rhs schedule", "constrain.schedules")
"""All registered right-hand-side schedules."""

Finite = Annotated[float, Field(allow_inf_nan=False)]


class RhsSchedule(BaseModel):
    """Base class of registered schedules: :meth:`at` maps a step to a value (``b_t`` for a
    right-hand side).

    Subclasses are frozen pydantic models (their fields are validated options) registered
    with :func:`register`. Serialising one (``model_dump``) includes its registered
    ``name``, so a dumped schedule builds back with :func:`build`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""

    def at(self, step: int) -> float:
        """The value at step ``step`` (0-based solver step count)."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        """``at(step)``: a registered schedule is a callable of the step, so it serves as a
        dual-side schedule (``dual_lr_schedule``, ``penalty_schedule``) too."""
        return self.at(step)

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


StepSchedule = RhsSchedule
"""Another name of :class:`RhsSchedule`, for schedules used beyond right-hand sides."""


Schedule = Callable[[int], float] | LRScheduler
"""A callable of the step or a torch LR scheduler over a :class:`ScheduledValue`."""


class ScheduledValue(torch.optim.Optimizer):
    """A single number that ``torch.optim.lr_scheduler`` schedulers can drive.

    A stand-in optimizer with one parameter group whose ``lr`` is the value (its ``step``
    does nothing). Build a torch scheduler on it and pass the scheduler as a schedule.

    Args:
        value: The initial value (finite).

    Raises:
        ConfigError: If ``value`` is not a finite number.
    """

    def __init__(self, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"ScheduledValue needs a finite number; got {value!r}.")
        super().__init__([torch.zeros(0, requires_grad=True)], {"lr": float(value)})

    @property
    def value(self) -> float:
        """The current value (the parameter group's ``lr``)."""
        return float(self.param_groups[0]["lr"])

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Nothing to do (schedulers check that it was called before their own step)."""
        return None


class ScheduleRunner:
    """One schedule as the solver uses it: the value at a step, the advance after it,
    and the state for checkpoints.

    Args:
        what: What is scheduled (for messages), e.g. ``"dual_lr_schedule"``.
        schedule: A callable of the step or a torch LR scheduler over a
            :class:`ScheduledValue`.
        positive: Values must be ``> 0`` (step sizes); else ``>= 0`` (penalties).

    Raises:
        ConfigError: If ``schedule`` is neither, or the scheduler drives another optimizer.
    """

    def __init__(self, what: str, schedule: Schedule, *, positive: bool) -> None:
        self.what, self.positive = what, positive
        self.scheduler: LRScheduler | None = None
        self._epoch = 0  # the scheduler's last_epoch after the solver's own steps
        self.function: Callable[[int], float] | None = None
        if isinstance(schedule, ReduceLROnPlateau):
            raise ConfigError(
                f"{what}: ReduceLROnPlateau needs a metric at each step, which the solver does "
                "not have; step it yourself with your metric and pass a callable reading its "
                "value instead (lambda t: scheduled_value.value)."
            )
        if isinstance(schedule, LRScheduler):
            if not isinstance(schedule.optimizer, ScheduledValue):
                raise ConfigError(
                    f"{what}: a torch scheduler must be built on a constrain.ScheduledValue "
                    f"(the value it drives); this one drives a {type(schedule.optimizer).__name__}."
                )
            self.scheduler = schedule
            self._epoch = schedule.last_epoch
        elif callable(schedule):
            self.function = schedule
        else:
            raise ConfigError(
                f"{what}: expected a callable of the step or a torch LR scheduler over a "
                f"constrain.ScheduledValue; got {describe(schedule)}."
            )

    def value(self, step: int) -> float:
        """The scheduled value at ``step``.

        Raises:
            ConfigError: If the value is not a finite number in the allowed range.
        """
        if self.scheduler is not None:
            if self.scheduler.last_epoch != self._epoch:
                raise ConfigError(
                    f"{self.what}: its torch scheduler was stepped outside the solver "
                    f"(last_epoch {self.scheduler.last_epoch}, expected {self._epoch}); the "
                    "solver steps it once after each step. Do not call its step() yourself, "
                    "and do not pass one scheduler as two schedules."
                )
            value: object = self.scheduler.optimizer.param_groups[0]["lr"]
        else:
            assert self.function is not None
            value = self.function(step)
        single = (isinstance(value, torch.Tensor) and value.numel() == 1) or (
            isinstance(value, np.ndarray) and value.size == 1
        )
        if single:
            value = value.item()  # type: ignore[attr-defined]
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
            or (self.positive and value == 0)
        ):
            bound = "a finite number > 0" if self.positive else "a finite number >= 0"
            raise ConfigError(f"{self.what} gave {value!r} at step {step}; expected {bound}.")
        return float(value)

    def advance(self) -> None:
        """Step a torch scheduler (after the step that used its value)."""
        if self.scheduler is not None:
            self.scheduler.optimizer.step()
            self.scheduler.step()
            self._epoch = self.scheduler.last_epoch

    def state_dict(self) -> dict[str, Any]:
        """``{}`` for a callable; the scheduler's and the value's states otherwise."""
        if self.scheduler is None:
            return {}
        return {
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "value": copy.deepcopy(self.scheduler.optimizer.state_dict()),
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            CheckpointError: If the checkpoint has no state for this run's scheduler.
        """
        if self.scheduler is None:
            return
        if not isinstance(state, Mapping) or "scheduler" not in state:
            raise CheckpointError(
                f"{self.what}: this run schedules with a torch scheduler but the checkpoint "
                f"holds no scheduler state ({describe(state)}); resume with the saved run's "
                "schedules."
            )
        self.scheduler.optimizer.load_state_dict(copy.deepcopy(dict(state["value"])))
        self.scheduler.load_state_dict(copy.deepcopy(dict(state["scheduler"])))
        self._epoch = self.scheduler.last_epoch
