"""The quadratic penalty formulation (no multipliers)."""

from __future__ import annotations

from torch import Tensor

from ._base import FormulationState, PenalizedFormulation, Penalty
from ._registry import register

__all__ = ["QuadraticPenalty"]


@register("quadratic_penalty")
class QuadraticPenalty(PenalizedFormulation):
    """``f + (c/2) (||max(g, 0)||^2 + ||h||^2)``: a penalty method without multipliers.

    Args:
        penalty: Penalty coefficient ``c > 0`` (0 is refused).
        schedule: When and how ``c`` grows (default: constant).
    """

    uses_multipliers = False

    penalty: Penalty = 10.0

    def terms(
        self, multipliers: Tensor, values: Tensor, equality: Tensor, state: FormulationState
    ) -> Tensor:
        """``(c/2) (||max(g, 0)||^2 + ||h||^2)`` (the multipliers are not used)."""
        violated = values.where(equality, values.clamp_min(0))
        return 0.5 * state["penalty"] * (violated * violated).sum()
