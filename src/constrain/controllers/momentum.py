"""Polyak (heavy-ball) momentum on the multipliers, in torch's convention."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import Controller, ControllerState, OpenUnitFloat, checked_signal
from ._registry import register

__all__ = ["Momentum"]


@register("momentum")
class Momentum(Controller):
    """Gradient ascent with Polyak (heavy-ball) momentum, torch.optim.SGD's convention.

    Update, with error signal ``e_t`` and a buffer ``b`` that starts at zero::

        b_t       = beta * b_{t-1} + e_t
        lam_{t+1} = lam_t + lr * b_t

    Equal to :class:`~constrain.controllers.NuPI` with ``lr = 1, nu = beta,
    ki = lr / (1 - beta), kp = -lr * beta / (1 - beta)**2`` (docs/algorithms.md,
    'The nuPI reduction table').

    Attributes:
        lr: Step size ``eta``. Default ``0.01``.
        beta: Momentum coefficient in the open interval (-1, 1); negative values are
            allowed (they damp oscillations instead of amplifying them). Default ``0.9``.

    State:
        ``buffer``: the momentum buffer ``b`` (shape of the multipliers).
    """

    beta: OpenUnitFloat = 0.9
    nesterov: ClassVar[bool] = False
    """Step along ``e + beta * b`` (Nesterov) instead of ``b`` (Polyak)."""

    def init(self, multipliers: Tensor) -> ControllerState:
        """A zero momentum buffer."""
        return {"buffer": torch.zeros_like(multipliers)}

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam + lr * (beta * b + e)`` and the new buffer."""
        e = checked_signal(multipliers, signal, self.name)
        buffer = self.beta * state["buffer"] + e
        direction = e + self.beta * buffer if self.nesterov else buffer
        return multipliers + self.lr * direction, {"buffer": buffer}
