"""Quadratic blocks: ``x' P x`` with ``P`` positive semidefinite, ``sum_i x_i^2`` and the
elementwise square."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._errors import ConfigError, ShapeError
from ._expr import (
    CvxpyContext,
    Expression,
    Shape,
    TorchContext,
    Unary,
    import_cvxpy,
    to_float64_tensor,
)

__all__ = ["QuadForm", "Square", "SumSquares"]

_PSD_TOLERANCE = 1e-10


class QuadForm(Unary):
    """The quadratic form ``x' P x`` with ``P`` symmetric positive semidefinite (convex).

    Args:
        arg: ``x``, a vector of length ``n``.
        matrix: ``P`` (``n x n``). Symmetric up to ``1e-10`` relative; it is symmetrised.

    Raises:
        ShapeError: If ``P`` is not ``n x n``.
        ConfigError: If ``P`` is not symmetric or has a negative eigenvalue (below
            ``-1e-10 * max|eig|``): the form would not be convex.
    """

    matrix: Tensor

    def __init__(self, arg: Expression, matrix: object) -> None:
        P = to_float64_tensor(matrix, "QuadForm matrix")
        if P.ndim != 2 or P.shape[0] != P.shape[1]:
            raise ShapeError(f"QuadForm: the matrix must be square; got shape {list(P.shape)}.")
        scale = float(P.abs().max()) if P.numel() else 0.0
        if float((P - P.T).abs().max()) > _PSD_TOLERANCE * max(scale, 1.0):
            raise ConfigError(
                "QuadForm: the matrix must be symmetric (x'Px only sees (P + P')/2); pass "
                "(P + P.T) / 2."
            )
        P = 0.5 * (P + P.T)
        smallest = float(torch.linalg.eigvalsh(P).min()) if P.numel() else 0.0
        if smallest < -_PSD_TOLERANCE * max(scale, 1.0):
            raise ConfigError(
                f"QuadForm: the matrix has a negative eigenvalue ({smallest:.3g}), so x'Px is "
                "not convex and has no convex CVXPY form; use a positive semidefinite matrix."
            )
        super().__init__(arg, matrix=P)

    def _shape_of(self) -> Shape:
        n = self.matrix.shape[0]
        if self.arg.shape != (n,):
            raise ShapeError(
                f"QuadForm: x must be a vector of length {n} to match P ({n}x{n}); "
                f"{self.arg.label()!r} has shape {list(self.arg.shape)}."
            )
        return ()

    def _torch(self, ctx: TorchContext) -> Tensor:
        x = self.arg._torch(ctx)
        P = self.matrix.to(dtype=ctx.dtype, device=ctx.device)
        return x @ (P @ x)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.quad_form(self.arg._cvxpy(ctx), cp.psd_wrap(self.matrix.numpy()))

    def label(self) -> str:
        return f"quad_form({self.arg.label()})"


class SumSquares(Unary):
    """Sum of squared entries ``sum_i x_i^2 = ||x||_2^2`` (convex, smooth)."""

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _shape_of(self) -> Shape:
        return ()

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.arg._torch(ctx).square().sum()

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.sum_squares(self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"sum_squares({self.arg.label()})"


class Square(Unary):
    """Elementwise square ``x_i^2`` (convex, smooth); same shape as ``x``.

    ``mean(square(r))`` is the minibatch-friendly form of a mean squared residual.
    """

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.arg._torch(ctx).square()

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.square(self.arg._cvxpy(ctx))

    def label(self) -> str:
        return f"square({self.arg.label()})"
