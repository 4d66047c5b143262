"""The Lagrangian formulation."""

from __future__ import annotations

from torch import Tensor

from ..layout import StackedConstraints
from ..multipliers import Multipliers
from ._base import Formulation, FormulationState
from ._registry import register

__all__ = ["Lagrangian"]


@register("lagrangian")
class Lagrangian(Formulation):
    """``L(x, lam) = f(x) + lam . g(x)``, with ``lam >= 0`` for inequalities.

    Primal loss ``f + lam . g~`` (``g~``: proxies where given, else ``g``), dual signal
    ``g`` (the true values). Per-sample groups add ``sum_i lam_i g~_i`` over the observed
    samples.
    """

    def primal_loss(
        self,
        objective: Tensor,
        stacked: StackedConstraints,
        multipliers: Multipliers,
        state: FormulationState,
    ) -> Tensor:
        loss = objective + multipliers.dense.detach().to(stacked.primal.dtype) @ stacked.primal
        for name, iv in stacked.per_sample.items():
            lam = multipliers.per_sample[name].detach()[iv.indices]
            loss = loss + lam @ iv.primal
        return loss
