"""The quadratic penalty formulation (no multipliers)."""

from __future__ import annotations

from torch import Tensor

from ..layout import StackedConstraints
from ..multipliers import Multipliers
from ._base import FormulationState, NonNegative, PenalizedFormulation
from ._registry import register

__all__ = ["QuadraticPenalty"]


@register("quadratic_penalty")
class QuadraticPenalty(PenalizedFormulation):
    """``f + (c/2) (||max(g, 0)||^2 + ||h||^2)``: a penalty method without multipliers.

    Args:
        penalty: Penalty coefficient ``c >= 0``.
        schedule: When and how ``c`` grows (default: constant).
    """

    uses_multipliers = False

    penalty: NonNegative = 10.0

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
