"""Projected gradient ascent on the multipliers (GDA)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Controller, ControllerState, checked_signal, largest
from ._registry import register

__all__ = ["GDA"]


@register("gda")
class GDA(Controller):
    """Gradient ascent on the multipliers (projected GDA once the formulation projects).

    Update, with error signal ``e_t`` (the constraint violation)::

        lam_{t+1} = lam_t + lr * e_t

    Stateless. The recurrence of :class:`~constrain.controllers.NuPI` with ``ki = 1,
    kp = 0`` (any ``nu``), to rounding: the step is one fused kernel that rounds once. See
    docs/algorithms.md, 'GDA'.

    Attributes:
        lr: Step size ``eta``. Default ``0.01``.
    """

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam + lr * e`` (one fused kernel, no temporary for ``lr * e``) and the
        (empty) state."""
        e = checked_signal(multipliers, signal, self.name)
        lr = self.lr
        if lr > largest(multipliers.dtype):  # not a scale factor of this dtype:
            return multipliers + lr * e, {}  # the step overflows and is reported as such
        return torch.add(multipliers, e, alpha=lr), {}
