"""The quadratic penalty formulation (no multipliers)."""

from __future__ import annotations

from torch import Tensor

from ._base import FormulationState, PenalizedFormulation, PenaltySpec
from ._registry import register

__all__ = ["QuadraticPenalty"]


@register("quadratic_penalty")
class QuadraticPenalty(PenalizedFormulation):
    """``f + (c/2) (||max(g, 0)||^2 + ||h||^2)``: a penalty method without multipliers.

    There are no multipliers: a controller given with this formulation is never used (the
    solver keeps the multipliers at zero; ``constrain run`` warns and reports none). The
    minimiser of the penalised loss violates a constraint by about ``lambda* / c``
    (``lambda*`` its exact multiplier), so feasibility needs a large ``c``, reached by a
    :class:`PenaltySchedule` (``growth > 1``), a per-entry ``updater`` or set directly. A
    large ``c`` also makes the primal problem stiff: its curvature grows like
    ``c ||grad g||^2``, so the primal step size must shrink like ``1 / c`` (for
    ``min ||x||^2 s.t. sum(x) = 1`` in 10 dimensions, plain gradient descent with step 0.1
    diverges for ``c = 10`` and converges for ``c = 1``).

    With one penalty per entry (a ``penalty`` mapping or an ``updater``) the term is
    ``sum_i (c_i/2) max(g_i, 0)^2 + sum_k (c_k/2) h_k^2``.

    Args:
        penalty: Initial penalty coefficient ``c > 0`` (0 is refused), or ``{pattern: c}``
            per constraint group. Default ``1.0``, as for :class:`AugmentedLagrangian`,
            where ``c`` plays the same role.
        schedule: When and how one shared ``c`` grows (default: constant).
        updater: Per-entry feasibility-driven growth (see docs/algorithms.md,
            'Penalty updaters').
    """

    uses_multipliers = False

    penalty: PenaltySpec = 1.0

    def terms(
        self, multipliers: Tensor, values: Tensor, equality: Tensor, state: FormulationState
    ) -> Tensor:
        """``(c/2) (||max(g, 0)||^2 + ||h||^2)`` (the multipliers are not used)."""
        violated = values.where(equality, values.clamp_min(0))
        c = state["penalty"]
        if c.dim() == 0:
            return 0.5 * c * (violated * violated).sum()
        return (0.5 * c * violated * violated).sum()  # one penalty per entry
