"""The quadratic penalty formulation (no multipliers)."""

from __future__ import annotations

from torch import Tensor

from ._base import FormulationState, PenalizedFormulation, PenaltySpec
from ._registry import register

__all__ = ["QuadraticPenalty"]


@register("quadratic_penalty")
class QuadraticPenalty(PenalizedFormulation):
    """``f + (c/2) (||max(g, 0)||^2 + ||h||^2)``: a penalty method without multipliers.

    With one penalty per entry (a ``penalty`` mapping or an ``updater``) the term is
    ``sum_i (c_i/2) max(g_i, 0)^2 + sum_k (c_k/2) h_k^2``.

    Args:
        penalty: Penalty coefficient ``c >= 0``, or ``{pattern: c}`` per constraint group.
        schedule: When and how one shared ``c`` grows (default: constant).
        updater: Per-entry feasibility-driven growth (see docs/algorithms.md,
            'Penalty updaters').
    """

    uses_multipliers = False

    penalty: PenaltySpec = 10.0

    def terms(
        self, multipliers: Tensor, values: Tensor, equality: Tensor, state: FormulationState
    ) -> Tensor:
        """``(c/2) (||max(g, 0)||^2 + ||h||^2)`` (the multipliers are not used)."""
        violated = values.where(equality, values.clamp_min(0))
        c = state["penalty"]
        if c.dim() == 0:
            return 0.5 * c * (violated * violated).sum()
        return (0.5 * c * violated * violated).sum()  # one penalty per entry
