"""Vector norms ``||x||_p`` for ``p`` in ``{1, 2, inf}``, plain or squared (entrywise on
matrices: the norm of the flattened entries)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import field_validator
from torch import Tensor

from ._expr import CvxpyContext, Expression, Shape, TorchContext, Unary, import_cvxpy

__all__ = ["Norm"]

NormOrder = Literal[1, 2, "inf"]
_ALIASES: dict[object, NormOrder] = {
    1: 1,
    2: 2,
    "1": 1,
    "2": 2,
    "l1": 1,
    "l2": 2,
    "inf": "inf",
    "linf": "inf",
    math.inf: "inf",
}


class Norm(Unary):
    """The norm ``||x||_p`` (``p = 1, 2, inf``) of all entries, or its square ``||x||_p^2``.

    ``||x||_1 = sum_i |x_i|``, ``||x||_2 = sqrt(sum_i x_i^2)``, ``||x||_inf = max_i |x_i|``.
    All are convex; the square of a norm is convex too (a non-negative convex function
    squared). Only ``||x||_2^2`` is smooth.

    Args:
        arg: ``x`` (any shape; matrices are flattened).
        p: ``1``, ``2`` or ``"inf"`` (also ``math.inf``, ``"l1"``, ``"l2"``, ``"linf"``).
        squared: Return ``||x||_p^2``.
    """

    p: NormOrder = 2
    squared: bool = False

    def __init__(self, arg: Expression, p: object = 2, squared: bool = False) -> None:
        super().__init__(arg, p=p, squared=squared)

    @field_validator("p", mode="before")
    @classmethod
    def _order(cls, value: object) -> object:
        key = value.lower() if isinstance(value, str) else value
        try:
            return _ALIASES[key]
        except (KeyError, TypeError):
            raise ValueError(f"p must be 1, 2 or 'inf'; got {value!r}") from None

    def is_smooth(self) -> bool:
        """Only ``||x||_2^2`` is differentiable everywhere."""
        return self.p == 2 and self.squared and self.arg.is_smooth()

    def _shape_of(self) -> Shape:
        return ()

    def _torch(self, ctx: TorchContext) -> Tensor:
        x = self.arg._torch(ctx).reshape(-1)
        if self.p == 2 and self.squared:
            return x.square().sum()
        order = math.inf if self.p == "inf" else float(self.p)
        value: Tensor = torch.linalg.vector_norm(x, ord=order)
        return value.square() if self.squared else value

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        x = self.arg._cvxpy(ctx)
        if self.arg.ndim >= 2:
            x = cp.vec(x, order="C")
        if self.p == 2 and self.squared:
            return cp.sum_squares(x)
        value = {1: cp.norm1, 2: cp.norm2, "inf": cp.norm_inf}[self.p](x)
        return cp.square(value) if self.squared else value

    def label(self) -> str:
        name = {1: "norm1", 2: "norm2", "inf": "norm_inf"}[self.p]
        return f"{name}({self.arg.label()})" + ("^2" if self.squared else "")
