"""Nesterov momentum on the multipliers, in torch's convention."""

from __future__ import annotations

from ._registry import register
from .momentum import Momentum

__all__ = ["Nesterov"]


@register("nesterov")
class Nesterov(Momentum):
    """Gradient ascent with Nesterov momentum, torch.optim.SGD(nesterov=True)'s convention.

    Update, with error signal ``e_t`` and a buffer ``b`` that starts at zero::

        b_t       = beta * b_{t-1} + e_t
        lam_{t+1} = lam_t + lr * (e_t + beta * b_t)

    Equal to :class:`~constrain.controllers.NuPI` with ``lr = 1, nu = beta,
    ki = lr / (1 - beta), kp = -lr * beta**2 / (1 - beta)**2`` (docs/algorithms.md,
    'The nuPI reduction table').

    Attributes:
        lr: Step size ``eta``. Default ``0.01``.
        beta: Momentum coefficient in the open interval (-1, 1); negative values are
            allowed (the nuPI paper's baseline uses ``beta = -0.3``). Default ``0.9``.

    State:
        ``buffer``: the momentum buffer ``b`` (shape of the multipliers).
    """

    nesterov = True
