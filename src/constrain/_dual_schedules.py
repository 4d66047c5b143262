"""The dual side's schedules in a run: the controller's step size and the penalty.

:class:`DualSchedules` holds the :class:`~constrain.schedules.ScheduleRunner` of each
schedule the solver was given (``dual_lr_schedule``, ``penalty_schedule``), applies this
step's values to the dual side and advances the schedules after the step. See
:mod:`constrain.schedules` for the kinds of schedules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from ._errors import ConfigError
from .controllers import Controller, ControllerMap
from .duals import Duals
from .formulations import Formulation, PenalizedFormulation
from .schedules import Schedule, ScheduleRunner

__all__ = ["DualSchedules"]

_NO_SCHEDULE = nullcontext()


class DualSchedules(dict[str, ScheduleRunner]):
    """The run's schedules by name (``"dual_lr"``, ``"penalty"``).

    Args:
        controller: The run's controller (a step-size schedule needs a single one).
        formulation: The run's formulation (a penalty schedule needs a penalty).
        dual_lr: The controller's step size per step, or ``None``. Values ``>= 0``: a
            schedule may reach 0 (cosine annealing to 0), unlike a controller's constant
            ``lr``.
        penalty: The penalty coefficient per step, or ``None``.

    Raises:
        ConfigError: For a step-size schedule with per-group controllers; for a penalty
            schedule without a penalty formulation, or together with the formulation's own
            growth schedule or its per-entry penalties (a mapping or an updater); for a
            schedule of the wrong kind.
    """

    def __init__(
        self,
        controller: Controller | ControllerMap,
        formulation: Formulation,
        dual_lr: Schedule | None,
        penalty: Schedule | None,
    ) -> None:
        super().__init__()
        if dual_lr is not None and dual_lr is penalty:
            raise ConfigError(
                "dual_lr_schedule and penalty_schedule are the same object; a scheduler "
                "would be stepped twice per step. Give each its own schedule."
            )
        if dual_lr is not None:
            if isinstance(controller, ControllerMap):
                raise ConfigError(
                    "dual_lr_schedule sets the step size of one controller, but the controller "
                    f"is per-group ({controller.name}); give each group's controller its own "
                    "lr, or use one controller with the schedule."
                )
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
            if formulation.per_entry:
                what = (
                    f"a feasibility-driven updater ({formulation.updater.name!r})"
                    if formulation.updater is not None
                    else "per-group penalties (a penalty mapping)"
                )
                raise ConfigError(
                    "penalty_schedule sets one penalty for every constraint, but the formulation "
                    f"{formulation.name!r} keeps one penalty per constraint entry with {what}; "
                    "give one of them: drop penalty_schedule, or use a single number as penalty "
                    "and no updater."
                )
            self["penalty"] = ScheduleRunner("penalty_schedule", penalty, positive=False)

    def controller(self, duals: Duals, step: int) -> AbstractContextManager[None]:
        """Inside the block, ``duals`` steps with this step's scheduled ``lr``."""
        if "dual_lr" not in self:
            return _NO_SCHEDULE
        return self._scheduled(duals, step)

    @contextmanager
    def _scheduled(self, duals: Duals, step: int) -> Iterator[None]:
        schedule = self["dual_lr"]
        original = duals.controller
        assert not isinstance(original, ControllerMap)  # refused when built
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
