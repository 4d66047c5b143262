"""The dual side's schedules in a run: the controller's step size and the penalty.

:class:`DualSchedules` holds the :class:`~constrain.schedules.ScheduleRunner` of each
schedule the solver was given (``dual_lr_schedule``, ``penalty_schedule``), applies this
step's values to the dual side and advances the schedules after the step. See
:mod:`constrain.schedules` for the kinds of schedules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ._errors import ConfigError
from .duals import Duals
from .formulations import Formulation, PenalizedFormulation
from .schedules import Schedule, ScheduleRunner

__all__ = ["DualSchedules"]


class DualSchedules(dict[str, ScheduleRunner]):
    """The run's schedules by name (``"dual_lr"``, ``"penalty"``).

    Args:
        formulation: The run's formulation (a penalty schedule needs a penalty).
        dual_lr: The controller's step size per step, or ``None``. Values ``>= 0``: a
            schedule may reach 0 (cosine annealing to 0), unlike a controller's constant
            ``lr``.
        penalty: The penalty coefficient per step, or ``None``.

    Raises:
        ConfigError: For a penalty schedule without a penalty formulation, or together
            with the formulation's own growth schedule; for a schedule of the wrong kind.
    """

    def __init__(
        self, formulation: Formulation, dual_lr: Schedule | None, penalty: Schedule | None
    ) -> None:
        super().__init__()
        if dual_lr is not None and dual_lr is penalty:
            raise ConfigError(
                "dual_lr_schedule and penalty_schedule are the same object; a scheduler "
                "would be stepped twice per step. Give each its own schedule."
            )
        if dual_lr is not None:
            self["dual_lr"] = ScheduleRunner("dual_lr_schedule", dual_lr, positive=False)
        if penalty is not None:
            if not isinstance(formulation, PenalizedFormulation):
                raise ConfigError(
                    "penalty_schedule needs a formulation with a penalty "
                    f"('augmented_lagrangian' or 'quadratic_penalty'); got {formulation.name!r}."
                )
            if formulation.schedule.growth != 1.0:
                raise ConfigError(
                    "penalty_schedule replaces the formulation's own schedule; give one of "
                    f"them (the formulation grows its penalty by {formulation.schedule.growth})."
                )
            self["penalty"] = ScheduleRunner("penalty_schedule", penalty, positive=False)

    @contextmanager
    def controller(self, duals: Duals, step: int) -> Iterator[None]:
        """Inside the block, ``duals`` steps with this step's scheduled ``lr``."""
        schedule = self.get("dual_lr")
        if schedule is None:
            yield
            return
        original = duals.controller
        duals.controller = original.model_copy(update={"lr": schedule.value(step)})
        try:
            yield
        finally:
            duals.controller = original

    def apply_penalty(self, duals: Duals, step: int) -> None:
        """Set this step's scheduled penalty in the formulation state of ``duals``."""
        schedule = self.get("penalty")
        if schedule is None:
            return
        state = duals.formulation_state
        value = schedule.value(step)
        duals.formulation_state = {**state, "penalty": torch.full_like(state["penalty"], value)}

    def advance(self) -> None:
        """After a step: step the torch schedulers."""
        for schedule in self.values():
            schedule.advance()
