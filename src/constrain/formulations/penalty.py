"""The quadratic penalty formulation (no multipliers)."""

from __future__ import annotations

from torch import Tensor

from ..multipliers import Multipliers, StackedConstraints
from ._base import FormulationState, NonNegative, PenalizedFormulation
from ._registry import register

__all__ = ["QuadraticPenalty"]


@register("quadratic_penalty")
class QuadraticPenalty(PenalizedFormulation):
    """``f + (c/2) (||max(g, 0)||^2 + ||h||^2)``: a penalty method without multipliers.

    There are no multipliers: a controller given with this formulation is never used (the
    solver keeps the multipliers at zero; ``constrain run`` warns and reports none). The
    minimiser of the penalised loss violates a constraint by about ``lambda* / c``
    (``lambda*`` its exact multiplier), so feasibility needs a large ``c``, reached by a
    :class:`PenaltySchedule` (``growth > 1``) or set directly. A large ``c`` also makes the
    primal problem stiff: its curvature grows like ``c ||grad g||^2``, so the primal step
    size must shrink like ``1 / c`` (for ``min ||x||^2 s.t. sum(x) = 1`` in 10 dimensions,
    plain gradient descent with step 0.1 diverges for ``c = 10`` and converges for
    ``c = 1``).

    Args:
        penalty: Initial penalty coefficient ``c >= 0``. Default ``1.0``, as for
            :class:`AugmentedLagrangian`, where ``c`` plays the same role.
        schedule: When and how ``c`` grows (default: constant).
    """

    uses_multipliers = False

    penalty: NonNegative = 1.0

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
