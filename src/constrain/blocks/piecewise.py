"""Piecewise-linear blocks: the largest entry, the positive part and the absolute value."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._expr import CvxpyContext, Expression, Shape, TorchContext, Unary, import_cvxpy

__all__ = ["Abs", "Max", "Pos"]


class Max(Unary):
    """The largest entry ``max_i x_i`` (convex, not smooth); a scalar."""

    smooth = False

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _shape_of(self) -> Shape:
        return ()

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.arg._torch(ctx).amax()

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.max(self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"max({self.arg.label()})"


class Pos(Unary):
    """Elementwise positive part ``max(x_i, 0)`` (convex, not smooth)."""

    smooth = False

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.arg._torch(ctx).clamp_min(0.0)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.pos(self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"pos({self.arg.label()})"


class Abs(Unary):
    """Elementwise absolute value ``|x_i|`` (convex, not smooth)."""

    smooth = False

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.arg._torch(ctx).abs()

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.abs(self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"abs({self.arg.label()})"
