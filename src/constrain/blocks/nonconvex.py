"""Blocks with a torch value but no convex CVXPY form (for metrics and constraint targets
whose exact check is impossible; pair them with a convex surrogate)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._errors import ConfigError
from ._expr import CvxpyContext, Expression, Shape, TorchContext, Unary

__all__ = ["PositiveRate"]


class PositiveRate(Unary):
    """The fraction of entries that are positive: ``(1/n) #{i : x_i > 0}`` (a rate).

    A step function: neither convex nor differentiable (its torch value carries no
    gradient), so it has no convex CVXPY form. Use it as the true value of a rate
    constraint with a convex surrogate (e.g. :class:`~constrain.blocks.HingeLoss` or
    :class:`~constrain.blocks.LogisticLoss`) as the proxy, or as a metric.

    Raises:
        ConfigError: From :meth:`cvxpy`, always.
    """

    smooth = False

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _shape_of(self) -> Shape:
        return ()

    def _torch(self, ctx: TorchContext) -> Tensor:
        return (self.arg._torch(ctx).detach() > 0).to(ctx.dtype).mean()

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        raise ConfigError(
            f"block {self.label()} has no convex CVXPY form: the fraction of positive entries "
            "is a step function, neither convex nor differentiable. Constrain a convex "
            "surrogate instead (blocks.hinge_loss or blocks.logistic_loss of the margins), "
            "e.g. as the constraint's proxy, to validate exactly."
        )

    def label(self) -> str:
        return f"positive_rate({self.arg.label()})"
