"""Schedules of the dual side: the controller's step size and the formulation's penalty.

A schedule is either

* a callable of the step, ``schedule(t) -> value`` (pure: nothing to checkpoint), e.g.
  ``lambda t: 0.1 / (1 + t) ** 0.5``; or
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
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ._errors import CheckpointError, ConfigError, describe

__all__ = ["Schedule", "ScheduleRunner", "ScheduledValue"]

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
