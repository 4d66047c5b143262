"""The quadratic penalty formulation (no multipliers)."""

from __future__ import annotations

from torch import Tensor

from ..multipliers import ConstraintLayout, Multipliers, StackedConstraints
from ._base import Formulation, FormulationState, NonNegative, PenaltySchedule
from ._registry import register

__all__ = ["QuadraticPenalty"]


@register("quadratic_penalty")
class QuadraticPenalty(Formulation):
    """``f + (c/2) (||max(g, 0)||^2 + ||h||^2)``: a penalty method without multipliers.

    Args:
        penalty: Penalty coefficient ``c >= 0``.
        schedule: When and how ``c`` grows (default: constant).
    """

    uses_multipliers = False

    penalty: NonNegative = 10.0
    schedule: PenaltySchedule = PenaltySchedule()

    def init_state(self, layout: ConstraintLayout) -> FormulationState:
        return self.schedule.init_state(self.penalty, layout)

    def primal_loss(
        self,
        objective: Tensor,
        stacked: StackedConstraints,
        multipliers: Multipliers,
        state: FormulationState,
    ) -> Tensor:
        c = state["penalty"]
        g = stacked.primal
        violated = g.where(stacked.equality, g.clamp_min(0))
        loss = objective + 0.5 * c * (violated * violated).sum()
        for iv in stacked.per_sample.values():
            v = iv.primal if iv.equality else iv.primal.clamp_min(0)
            loss = loss + 0.5 * c * (v * v).sum()
        return loss

    def after_dual_step(
        self, stacked: StackedConstraints, state: FormulationState
    ) -> FormulationState:
        return self.schedule.update(stacked, state)
