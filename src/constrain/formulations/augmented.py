"""The augmented Lagrangian formulation (method of multipliers)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import StackedConstraints
from ._base import FormulationState, PenalizedFormulation
from ._registry import register

__all__ = ["AugmentedLagrangian", "augmented_terms"]


def augmented_terms(lam: Tensor, g: Tensor, equality: Tensor, c: Tensor) -> Tensor:
    """Sum of the augmented-Lagrangian constraint terms, safe at ``c = 0``.

    Inequalities (standard form): ``(1/(2c)) (max(0, lam + c g)^2 - lam^2)``, written as
    ``lam g + (c/2) g^2`` where ``lam + c g >= 0`` and ``-lam^2/(2c)`` elsewhere (which
    needs ``c > 0``; at ``c = 0`` the first branch always applies, so no division by zero
    and no NaN in values or gradients). Equalities: ``mu h + (c/2) h^2``.
    """
    quadratic = lam * g + 0.5 * c * g * g
    active = (lam + c * g) >= 0
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    inactive = -(lam * lam) / (2 * safe_c)
    ineq = torch.where(active, quadratic, inactive)
    return torch.where(equality, quadratic, ineq).sum()


@register("augmented_lagrangian")
class AugmentedLagrangian(PenalizedFormulation):
    """Augmented Lagrangian with penalty ``c`` and an optional penalty schedule.

    Primal loss ``f + (1/(2c)) sum(max(0, lam + c g)^2 - lam^2) + mu.h + (c/2)||h||^2``.
    The dual signal is ``c * g``, so the ``gda`` controller with ``lr=1`` is exactly the
    classical multiplier step ``lam <- max(0, lam + c g)``.

    With one penalty per entry (a ``penalty`` mapping or an ``updater``) every entry uses
    its own ``c_i`` in its term and in its signal ``c_i g_i``.

    Args:
        penalty: Initial penalty coefficient ``c > 0`` (0 is refused), or ``{pattern: c}``
            per constraint group. Default ``1.0``.
        schedule: When and how one shared ``c`` grows (default: constant).
        updater: Per-entry feasibility-driven growth (see docs/algorithms.md,
            'Penalty updaters').
    """

    def terms(
        self, multipliers: Tensor, values: Tensor, equality: Tensor, state: FormulationState
    ) -> Tensor:
        """:func:`augmented_terms` at the current penalty ``c``."""
        return augmented_terms(multipliers, values, equality, state["penalty"])

    def dual_signal(self, stacked: StackedConstraints, state: FormulationState) -> Tensor:
        return state["penalty"] * stacked.violation

    def indexed_signal(self, violation: Tensor, state: FormulationState) -> Tensor:
        return state["penalty"] * violation
