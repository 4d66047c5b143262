"""Extragradient on the multipliers (Korpelevich): a look-ahead step, then the real one."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ._base import Controller, ControllerState, checked_signal
from ._registry import register

__all__ = ["ExtraGradient"]


@register("extragradient")
class ExtraGradient(Controller):
    """Extragradient ascent on the multipliers.

    The solver evaluates the problem twice per step (:attr:`extrapolates` is ``True``).
    With ``e(x)`` the error signal at primal point ``x``::

        lam_half  = lam_t + lr * e(x_t)          # extrapolate(), state unchanged
        x_half    = primal look-ahead step using proj(lam_half)
        lam_{t+1} = lam_t + lr * e(x_half)       # update(), from the *original* lam_t

    (the primal player does the same: its real step is taken from ``x_t`` with the
    gradient at ``(x_half, lam_half)``). On bilinear games, where simultaneous gradient
    descent-ascent spirals outwards, this converges (docs/algorithms.md, 'Extragradient').

    Stateless.

    Attributes:
        lr: Step size ``eta`` of both the look-ahead and the real step. Default ``0.01``.
    """

    extrapolates: ClassVar[bool] = True

    def extrapolate(self, multipliers: Tensor, signal: Tensor, state: ControllerState) -> Tensor:
        """Return the look-ahead multipliers ``lam_t + lr * e(x_t)`` (unprojected)."""
        e = checked_signal(multipliers, signal, self.name)
        return multipliers + self.lr * e

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam_t + lr * e(x_half)``; ``signal`` is the look-ahead signal."""
        e = checked_signal(multipliers, signal, self.name)
        return multipliers + self.lr * e, {}
