"""Margin losses of linear classifiers, elementwise in the margin ``z = y * (w . x + b)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._expr import CvxpyContext, Expression, TorchContext, Unary, import_cvxpy

__all__ = ["HingeLoss", "LogisticLoss"]


class LogisticLoss(Unary):
    """Elementwise logistic loss of a margin: ``log(1 + exp(-z))`` (convex, smooth).

    Evaluated in torch as ``logaddexp(0, -z)`` (exact and stable for large ``|z|``); the
    CVXPY form is ``logistic(-z)`` (an exponential-cone expression).
    """

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _torch(self, ctx: TorchContext) -> Tensor:
        z = self.arg._torch(ctx)
        return torch.logaddexp(torch.zeros_like(z), -z)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.logistic(-self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"logistic_loss({self.arg.label()})"


class HingeLoss(Unary):
    """Elementwise hinge loss of a margin: ``max(0, 1 - z)`` (convex, not smooth)."""

    smooth = False

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _torch(self, ctx: TorchContext) -> Tensor:
        return (1.0 - self.arg._torch(ctx)).clamp_min(0.0)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.pos(1.0 - self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"hinge_loss({self.arg.label()})"
