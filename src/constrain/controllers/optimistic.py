"""Optimistic gradient ascent on the multipliers (extrapolation from the past)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Controller, ControllerState, checked_signal
from ._registry import register

__all__ = ["Optimistic"]


@register("optimistic")
class Optimistic(Controller):
    """Optimistic gradient ascent (OGDA), a.k.a. extrapolation from the past.

    Update, with error signal ``e_t`` and ``e_{-1} = 0``::

        lam_{t+1} = lam_t + lr * (2 * e_t - e_{t-1})

    It approximates extragradient without a second evaluation of the problem, reusing the
    previous signal as the look-ahead correction. Equal to
    :class:`~constrain.controllers.NuPI` with ``lr = 1, nu = 0, ki = kp = lr``
    (docs/algorithms.md, 'Optimistic gradient ascent').

    Attributes:
        lr: Step size ``eta``. Default ``0.01``.

    State:
        ``previous_signal``: ``e_{t-1}`` (shape of the multipliers).
    """

    def init(self, multipliers: Tensor) -> ControllerState:
        """``e_{-1} = 0``."""
        return {"previous_signal": torch.zeros_like(multipliers)}

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam + lr * (2 e_t - e_{t-1})`` and store ``e_t``."""
        e = checked_signal(multipliers, signal, self.name)
        step = 2.0 * e - state["previous_signal"]
        return multipliers + self.lr * step, {"previous_signal": e}
