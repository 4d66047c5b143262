"""The PID Lagrangian of Stooke, Achiam and Abbeel (ICML 2020)."""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from ._base import (
    Controller,
    ControllerState,
    NonNegativeCoefficient,
    PositiveFloat,
    UnitFloat,
    as_coefficient,
    checked_signal,
)
from ._registry import register

__all__ = ["PID"]


@register("pid")
class PID(Controller):
    """PID Lagrangian multipliers (Stooke, Achiam, Abbeel, "Responsive safety in RL by PID
    Lagrangian methods", ICML 2020).

    A *positional* controller (docs/algorithms.md, 'PID Lagrangian'): the multipliers are
    the controller's output, not an increment of the incoming ones. With error signal
    ``e_t`` (the constraint violation), each update computes::

        I   = max(0, I + ki * e_t)                  # integral with anti-windup
        P   = ema_p * P + (1 - ema_p) * e_t         # EMA of the error
        C_t = ema_d * C_{t-1} + (1 - ema_d) * e_t   # EMA of the constraint value
        D   = max(0, C_t - C_{t-delay})             # only reacts to increases
        lam = lr * max(0, kp * P + I + kd * D)

    Semantics the rule fixes:

    * **lr** scales the whole output. Because ``max(0, .)`` is positively homogeneous this
      is the same as multiplying ``kp``, ``ki`` and ``kd`` by ``lr``; the default
      ``lr = 1`` uses the gains verbatim, as in the paper. With the defaults
      (``ki = 1, kp = kd = 0``) the output is exactly projected gradient ascent
      ``lam_{t+1} = max(0, lam_t + lr * e_t)`` started from zero.
    * **The incoming multipliers are ignored** (only their shape, dtype and device are
      used): ``I``, ``P`` and ``C`` start at zero, so the first output is
      ``lr * max(0, (ki + (1 - ema_p) * kp + (1 - ema_d) * kd) * e_0)`` whatever
      ``lam_0`` is. A warm start must go through the state (e.g. set ``integral`` to
      ``lam_0 / lr``).
    * **Cost = signal.** The rule only sees the violation ``e_t = cost_t - limit``, so ``C``
      is the EMA of the violation rather than of the raw cost. The limit is constant, so
      ``C_t - C_{t-delay}`` agrees with the raw-cost difference up to
      ``limit * ema_d**(t - delay + 1) * (1 - ema_d**delay)``, which vanishes
      geometrically once the EMA has warmed up.
    * **Before ``delay`` steps have elapsed** the missing values ``C_{t-delay}`` (for
      ``t < delay``) are the EMA's initial value 0, exactly as in the authors' reference
      implementation (a ``deque(maxlen=delay)`` seeded with 0). So early on
      ``D = max(0, C_t)``: the derivative term pushes while the smoothed violation is
      positive and is silent while the constraint is satisfied.
    * Only for inequality constraints (the output is clamped at zero):
      :attr:`supports_equality` is ``False``.

    Attributes:
        lr: Overall scale of the output (see above). Default ``1.0`` (the gains are used
            verbatim, as in the paper); unlike the step size of the other rules (default
            ``0.01``), it multiplies the whole output, not an increment.
        kp: Proportional gain (>= 0); a scalar or one value per multiplier. Default ``0.0``.
        ki: Integral gain (>= 0); a scalar or one value per multiplier. Default ``1.0``.
        kd: Derivative gain (>= 0); a scalar or one value per multiplier. Default ``0.0``.
        ema_p: EMA coefficient ``a_p`` of the proportional term, in [0, 1). Default ``0.95``.
        ema_d: EMA coefficient ``a_d`` of the constraint value in the derivative term,
            in [0, 1). Default ``0.95``.
        delay: Number of steps (>= 1) over which the derivative is taken. Default ``10``.

    State:
        ``integral`` (``I``) and ``proportional`` (``P``), shape of the multipliers;
        ``cost_history``, shape ``(delay, *multipliers.shape)``: the values
        ``C_{t-delay}, ..., C_{t-1}`` oldest first (so ``cost_history[-1]`` is the
        current EMA ``C_{t-1}``).
    """

    supports_equality: ClassVar[bool] = False

    lr: PositiveFloat = 1.0
    kp: NonNegativeCoefficient = 0.0
    ki: NonNegativeCoefficient = 1.0
    kd: NonNegativeCoefficient = 0.0
    ema_p: UnitFloat = 0.95
    ema_d: UnitFloat = 0.95
    delay: Annotated[int, Field(ge=1)] = 10

    def init(self, multipliers: Tensor) -> ControllerState:
        """Zero integral, proportional EMA and cost history."""
        return {
            "integral": torch.zeros_like(multipliers),
            "proportional": torch.zeros_like(multipliers),
            "cost_history": multipliers.new_zeros((self.delay, *multipliers.shape)),
        }

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return the PID output (already ``>= 0``) and the new state.

        Raises:
            ShapeError: If a per-multiplier gain has the wrong length, or the signal's
                shape differs from the multipliers'.
        """
        e = checked_signal(multipliers, signal, self.name)
        kp = as_coefficient(self.kp, like=multipliers, name="kp")
        ki = as_coefficient(self.ki, like=multipliers, name="ki")
        kd = as_coefficient(self.kd, like=multipliers, name="kd")
        history = state["cost_history"]
        integral = torch.clamp_min(state["integral"] + ki * e, 0.0)
        proportional = self.ema_p * state["proportional"] + (1.0 - self.ema_p) * e
        cost = self.ema_d * history[-1] + (1.0 - self.ema_d) * e
        derivative = torch.clamp_min(cost - history[0], 0.0)
        output = kp * proportional + integral + kd * derivative
        new = self.lr * torch.clamp_min(output, 0.0)
        new_state = {
            "integral": integral,
            "proportional": proportional,
            "cost_history": torch.cat((history[1:], cost.unsqueeze(0))),
        }
        return new, new_state
