"""The Lagrangian formulation."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

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

    linear_terms: ClassVar[bool] = True

    def terms(
        self, multipliers: Tensor, values: Tensor, equality: Tensor, state: FormulationState
    ) -> Tensor:
        """``lam . g~``."""
        return multipliers @ values
