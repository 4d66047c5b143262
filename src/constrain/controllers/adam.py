"""Adam on the multipliers (gradient ascent), a common but poorly behaved baseline."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from ._base import Controller, ControllerState, PositiveFloat, UnitFloat, checked_signal
from ._registry import register

__all__ = ["Adam"]


@register("adam")
class Adam(Controller):
    """Adam applied to the multipliers as gradient *ascent* on the error signal.

    This is ``torch.optim.Adam`` (no weight decay, no AMSGrad) stepping a parameter ``lam``
    whose gradient is ``-e_t``. With ``s`` the per-multiplier step count::

        s   <- s + 1
        m   <- beta1 * m + (1 - beta1) * e_t
        v   <- beta2 * v + (1 - beta2) * e_t**2
        lam <- lam + lr / (1 - beta1**s) * m / (sqrt(v) / sqrt(1 - beta2**s) + eps)

    Keep it as a baseline, not a default: its normalised steps keep a constant size near
    the solution, so the multipliers oscillate instead of settling (docs/algorithms.md,
    'The iris hard-margin SVM').

    The step count is a per-multiplier ``int64`` tensor, so indexed (per-sample)
    multipliers that are gathered, updated and scattered back lazily get the same bias
    correction as if each entry had its own optimizer. Bias corrections are computed in at
    least float32.

    Attributes:
        lr: Step size. Default ``0.01``.
        betas: Decay rates ``(beta1, beta2)`` of the first and second moments, each in
            [0, 1). Default ``(0.9, 0.999)``.
        eps: Positive term added to the denominator. Default ``1e-08``.

    State:
        ``exp_avg`` (``m``), ``exp_avg_sq`` (``v``) and ``step`` (``s``, int64), each with
        the shape of the multipliers.
    """

    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: PositiveFloat = Field(default=1e-8)

    def init(self, multipliers: Tensor) -> ControllerState:
        """Zero moments and a zero step count per multiplier."""
        return {
            "exp_avg": torch.zeros_like(multipliers),
            "exp_avg_sq": torch.zeros_like(multipliers),
            "step": torch.zeros_like(multipliers, dtype=torch.int64),
        }

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return the multipliers after one Adam ascent step and the new state."""
        e = checked_signal(multipliers, signal, self.name)
        beta1, beta2 = self.betas
        step = state["step"] + 1
        exp_avg = torch.lerp(state["exp_avg"], e, 1.0 - beta1)
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * (e * e)
        work = torch.promote_types(multipliers.dtype, torch.float32)
        count = step.to(work)
        bias1 = (1.0 - torch.pow(beta1, count)).to(multipliers.dtype)
        bias2_sqrt = torch.sqrt(1.0 - torch.pow(beta2, count)).to(multipliers.dtype)
        denom = torch.sqrt(exp_avg_sq) / bias2_sqrt + self.eps
        new = multipliers + (self.lr / bias1) * (exp_avg / denom)
        return new, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "step": step}
