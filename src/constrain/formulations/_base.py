"""The formulation contract: how constraints enter the primal loss and the dual signal."""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch import Tensor

from ..layout import ConstraintLayout, StackedConstraints
from ..multipliers import Multipliers

__all__ = [
    "Formulation",
    "FormulationState",
    "PenalizedFormulation",
    "Penalty",
    "PenaltySchedule",
]

FormulationState = dict[str, Tensor]
"""Explicit formulation state (e.g. the current penalty coefficient), saved in checkpoints."""


def _positive_penalty(value: float) -> float:
    if value <= 0:
        raise ValueError(
            "the penalty must be > 0: at 0 the quadratic term vanishes and the augmented "
            "Lagrangian's multiplier step (c * g) does not move, so the constraints would be "
            "ignored; use a positive penalty (or the plain 'lagrangian' formulation)"
        )
    return value


Penalty = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_positive_penalty)]
"""A finite penalty coefficient ``c > 0``."""


class Formulation(BaseModel):
    """Base class of formulations (Lagrangian, augmented Lagrangian, quadratic penalty).

    A formulation turns one :class:`~constrain.multipliers.StackedConstraints` into

    * ``primal_loss``: the scalar the primal player minimises (``backward()`` on it), and
    * ``dual_signal``: the error signal of each multiplier (``None`` if the formulation has
      no multipliers),

    and projects the multipliers onto their domain after every controller update.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""
    uses_multipliers: ClassVar[bool] = True

    def init_state(self, layout: ConstraintLayout) -> FormulationState:
        """Initial formulation state (empty for the plain Lagrangian)."""
        return {}

    def primal_loss(
        self,
        objective: Tensor,
        stacked: StackedConstraints,
        multipliers: Multipliers,
        state: FormulationState,
    ) -> Tensor:
        """The scalar the primal player minimises: ``f`` plus :meth:`terms` of the dense
        entries and of the observed entries of each per-sample group (multipliers
        detached: the primal player does not move them)."""
        dense = multipliers.dense.detach().to(stacked.primal.dtype)
        loss = objective + self.terms(dense, stacked.primal, stacked.equality, state)
        for name, iv in stacked.per_sample.items():
            store = multipliers.per_sample.get(name)  # absent without multipliers
            lam = (
                store.detach()[iv.indices]
                if store is not None
                else torch.zeros_like(iv.primal.detach())
            )
            mask = torch.full_like(lam, iv.equality, dtype=torch.bool)
            loss = loss + self.terms(lam, iv.primal, mask, state)
        return loss

    def terms(
        self, multipliers: Tensor, values: Tensor, equality: Tensor, state: FormulationState
    ) -> Tensor:
        """The constraint terms of the primal loss for one stacked vector ``values``
        (standard form, proxies where given) and its multipliers (a scalar tensor)."""
        raise NotImplementedError

    def dual_signal(self, stacked: StackedConstraints, state: FormulationState) -> Tensor:
        """Error signal for the dense multipliers (default: the violation ``g``)."""
        return stacked.violation

    def indexed_signal(self, violation: Tensor, state: FormulationState) -> Tensor:
        """Error signal for observed per-sample multipliers (default: the violation)."""
        return violation

    def project(self, multipliers: Tensor, equality: Tensor) -> Tensor:
        """Project onto the multiplier domain: ``max(lam, 0)`` for inequalities.

        Args:
            multipliers: Multipliers after a controller update.
            equality: Boolean mask, True where the constraint is an equality.
        """
        return torch.where(equality, multipliers, multipliers.clamp_min(0))

    def after_dual_step(
        self, stacked: StackedConstraints, state: FormulationState
    ) -> FormulationState:
        """Update the formulation state after a multiplier step (penalty schedules)."""
        return state

    def diagnostics(self, state: FormulationState) -> dict[str, Tensor]:
        """What the formulation reports about its state for the history (scalars, on the
        device; none for the plain Lagrangian)."""
        return {}


class PenaltySchedule(BaseModel):
    """Increase a penalty coefficient when the violation stops shrinking.

    Every ``every`` steps: if ``||max(g, 0)|| + ||h||`` exceeds ``shrink`` times its value at
    the previous check, ``c <- min(growth * c, max_penalty)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    growth: float = Field(default=1.0, ge=1.0, allow_inf_nan=False)
    shrink: float = Field(default=0.25, gt=0, le=1, allow_inf_nan=False)
    every: int = Field(default=1, ge=1)
    max_penalty: float = Field(default=1e6, gt=0, allow_inf_nan=False)

    def init_state(self, penalty: float, layout: ConstraintLayout) -> FormulationState:
        return {
            "penalty": torch.tensor(penalty, dtype=layout.dtype, device=layout.device),
            "last_violation": torch.tensor(float("inf"), dtype=layout.dtype, device=layout.device),
            "step": torch.zeros((), dtype=torch.int64, device=layout.device),
        }

    def update(self, stacked: StackedConstraints, state: FormulationState) -> FormulationState:
        if self.growth == 1.0:
            return state
        step = state["step"] + 1
        # Decided on the device (no host synchronisation): off the ``every`` grid only the
        # step count moves.
        due = step % self.every == 0
        v = stacked.violation
        size = torch.where(stacked.equality, v, v.clamp_min(0)).norm()
        for iv in stacked.per_sample.values():
            size = size + (iv.violation if iv.equality else iv.violation.clamp_min(0)).norm()
        grow = due & (size > self.shrink * state["last_violation"])
        penalty = torch.where(
            grow, (state["penalty"] * self.growth).clamp_max(self.max_penalty), state["penalty"]
        )
        last = torch.where(due, size, state["last_violation"])
        return {"penalty": penalty, "last_violation": last, "step": step}


class PenalizedFormulation(Formulation):
    """Base of formulations with a penalty coefficient ``c`` and a :class:`PenaltySchedule`.

    The current ``c`` lives in the formulation state (``state["penalty"]``) so that it is
    checkpointed and grows by the schedule after every multiplier step.

    Args:
        penalty: Initial penalty coefficient ``c > 0`` (0 is refused: it would ignore the
            constraints).
        schedule: When and how ``c`` grows (default: constant).
    """

    penalty: Penalty = 1.0
    schedule: PenaltySchedule = PenaltySchedule()

    def init_state(self, layout: ConstraintLayout) -> FormulationState:
        return self.schedule.init_state(self.penalty, layout)

    def after_dual_step(
        self, stacked: StackedConstraints, state: FormulationState
    ) -> FormulationState:
        return self.schedule.update(stacked, state)

    def diagnostics(self, state: FormulationState) -> dict[str, Tensor]:
        """The current penalty coefficient ``c`` (``{"penalty": c}``)."""
        return {"penalty": state["penalty"]}
