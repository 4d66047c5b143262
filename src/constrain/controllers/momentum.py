"""Polyak (heavy-ball) momentum on the multipliers, in torch's convention."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Controller, ControllerState
from ._registry import register
from .gda import OpenUnitFloat, _checked_signal

__all__ = ["Momentum"]


@register("momentum")
class Momentum(Controller):
    """Gradient ascent with Polyak (heavy-ball) momentum, torch.optim.SGD's convention.

    Update, with error signal ``e_t`` and a buffer ``b`` that starts at zero::

        b_t       = beta * b_{t-1} + e_t
        lam_{t+1} = lam_t + lr * b_t

    Equal to :class:`~constrain.controllers.NuPI` with ``lr = 1, nu = beta,
    ki = lr / (1 - beta), kp = -lr * beta / (1 - beta)**2`` (ALGORITHMS.md section 1).

    Attributes:
        lr: Step size ``eta``. Default ``0.01``.
        beta: Momentum coefficient in the open interval (-1, 1); negative values are
            allowed (they damp oscillations instead of amplifying them). Default ``0.9``.

    State:
        ``buffer``: the momentum buffer ``b`` (shape of the multipliers).
    """

    beta: OpenUnitFloat = 0.9

    def init(self, multipliers: Tensor) -> ControllerState:
        """A zero momentum buffer."""
        return {"buffer": torch.zeros_like(multipliers)}

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam + lr * (beta * b + e)`` and the new buffer."""
        e = _checked_signal(multipliers, signal, self.name)
        buffer = self.beta * state["buffer"] + e
        return multipliers + self.lr * buffer, {"buffer": buffer}
