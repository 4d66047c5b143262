"""The nuPI controller of Sohrabi et al. (ICML 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import (
    Controller,
    ControllerState,
    FiniteCoefficient,
    NonNegativeCoefficient,
    OpenUnitFloat,
    as_coefficient,
    checked_signal,
)
from ._registry import register

__all__ = ["NuPI"]


@register("nupi")
class NuPI(Controller):
    """nuPI: a proportional-integral controller on the multipliers with an EMA'd P term.

    Sohrabi, Ramirez, Zhang, Lacoste-Julien, Gallego-Posada, "On PI controllers for
    updating Lagrange multipliers in constrained optimization", ICML 2024. With error
    signal ``e_t`` (the constraint violation) and state ``xi`` (``xi_{-1} = 0``)::

        xi_t      = nu * xi_{t-1} + (1 - nu) * e_t
        lam_{t+1} = lam_t + lr * (ki * e_t + kp * (xi_t - xi_{t-1}))

    Unprojected, this is the positional PI form
    ``lam_{t+1} = lam_0 + lr * (ki * sum_{tau <= t} e_tau + kp * xi_t)``.

    What the hyperparameters do:

    * ``ki`` (integral gain) scales the accumulated violation: with ``kp = 0`` the rule is
      plain gradient ascent with step ``lr * ki``. It drives the violation to zero in the
      long run.
    * ``kp`` (proportional gain) reacts to the *current* (smoothed) violation: it raises
      the multiplier while a constraint is violated and releases it as soon as the
      violation shrinks, which damps the oscillations of pure gradient ascent. Negative
      values are allowed (they are how momentum methods appear in this family).
    * ``nu`` (EMA coefficient, in (-1, 1)) smooths the proportional term over time;
      ``nu = 0`` uses the raw violation (the textbook PI controller), values near 1
      average over about ``1 / (1 - nu)`` steps (useful for noisy, mini-batch signals).

    With ``lr = 1`` it is the same recurrence (up to floating-point rounding) as
    (docs/algorithms.md, 'The nuPI reduction table'):
    GDA with step ``alpha`` (``ki = alpha, kp = 0``, any ``nu``), optimistic GDA (``nu = 0,
    ki = kp = alpha``), Polyak momentum ``beta`` (``nu = beta, ki = alpha / (1 - beta),
    kp = -alpha * beta / (1 - beta)**2``) and Nesterov momentum (same with ``beta**2`` in
    ``kp``). The defaults (``ki = 1, kp = 0, nu = 0``) make it plain GDA with step ``lr``
    (to rounding: GDA's step is one fused kernel).

    Attributes:
        lr: Step size ``eta``, multiplying both gains. Default ``0.01``.
        ki: Integral gain ``kappa_i >= 0``; a scalar or one value per multiplier. Default ``1.0``.
        kp: Proportional gain ``kappa_p`` (any finite sign); a scalar or one value per
            multiplier. Default ``0.0``.
        nu: EMA coefficient of the proportional term, in the open interval (-1, 1). Default ``0.0``.

    State:
        ``xi``: the EMA of the error signal (shape of the multipliers).
    """

    ki: NonNegativeCoefficient = 1.0
    kp: FiniteCoefficient = 0.0
    nu: OpenUnitFloat = 0.0

    def init(self, multipliers: Tensor) -> ControllerState:
        """``xi_{-1} = 0``."""
        return {"xi": torch.zeros_like(multipliers)}

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam + lr * (ki * e + kp * (xi_new - xi))`` and the new EMA ``xi_new``.

        Raises:
            ShapeError: If a per-multiplier ``ki`` or ``kp`` has the wrong length, or the
                signal's shape differs from the multipliers'.
        """
        e = checked_signal(multipliers, signal, self.name)
        ki = as_coefficient(self.ki, like=multipliers, name="ki")
        kp = as_coefficient(self.kp, like=multipliers, name="kp")
        xi_prev = state["xi"]
        xi = self.nu * xi_prev + (1.0 - self.nu) * e
        return multipliers + self.lr * (ki * e + kp * (xi - xi_prev)), {"xi": xi}
