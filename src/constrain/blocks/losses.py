"""Margin losses of linear classifiers, elementwise in the margin ``z = y * (w . x + b)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._expr import CvxpyContext, Expression, Shape, TorchContext, import_cvxpy

__all__ = ["HingeLoss", "LogisticLoss"]


class LogisticLoss(Expression):
    """Elementwise logistic loss of a margin: ``log(1 + exp(-z))`` (convex, smooth).

    Evaluated in torch as ``logaddexp(0, -z)`` (exact and stable for large ``|z|``); the
    CVXPY form is ``logistic(-z)`` (an exponential-cone expression).
    """

    arg: Expression

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg=arg)

    def children(self) -> tuple[Expression, ...]:
        return (self.arg,)

    def _shape_of(self) -> Shape:
        return self.arg.shape

    def _torch(self, ctx: TorchContext) -> Tensor:
        z = self.arg._torch(ctx)
        return torch.logaddexp(torch.zeros_like(z), -z)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.logistic(-self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"logistic_loss({self.arg.label()})"


class HingeLoss(Expression):
    """Elementwise hinge loss of a margin: ``max(0, 1 - z)`` (convex, not smooth)."""

    smooth = False

    arg: Expression

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg=arg)

    def children(self) -> tuple[Expression, ...]:
        return (self.arg,)

    def _shape_of(self) -> Shape:
        return self.arg.shape

    def _torch(self, ctx: TorchContext) -> Tensor:
        return (1.0 - self.arg._torch(ctx)).clamp_min(0.0)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.pos(1.0 - self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"hinge_loss({self.arg.label()})"
