"""Multiplicative weights (exponentiated gradient) on the multipliers."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import Controller, ControllerState, PositiveFloat, checked_signal
from ._registry import register

__all__ = ["MultiplicativeWeights"]


@register("multiplicative")
class MultiplicativeWeights(Controller):
    """Multiplicative-weights (exponentiated-gradient) ascent on the multipliers.

    Update, with error signal ``e_t``::

        lam_{t+1} = lam_t * exp(lr * e_t)

    This is the dual update of fairlearn's ``ExponentiatedGradient`` without its total-mass
    bound ``B`` (coupling all multipliers through their sum would break indexed,
    per-sample use). Multipliers stay positive, so projection never acts; a multiplier at
    zero stays at zero forever, hence :meth:`initial_multipliers` starts every multiplier
    at ``initial_value``. Large ``lr * e_t`` overflows to ``inf``: keep ``lr`` small
    relative to the size of the violations (docs/algorithms.md, 'Multiplicative weights').

    Only for inequality constraints (:attr:`supports_equality` is ``False``): a
    multiplier of an equality constraint must be able to change sign.

    Stateless.

    Attributes:
        lr: Step size ``eta`` in the exponent. Default ``0.01``.
        initial_value: Positive starting value of every multiplier. Default ``1.0``.
    """

    supports_equality: ClassVar[bool] = False

    initial_value: PositiveFloat = 1.0

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam * exp(lr * e)`` and the (empty) state."""
        e = checked_signal(multipliers, signal, self.name)
        return multipliers * torch.exp(self.lr * e), {}

    def initial_multipliers(self, like: Tensor) -> Tensor:
        """``initial_value`` everywhere (multiplicative updates cannot leave zero)."""
        return torch.full_like(like, self.initial_value)
