"""The weight-sharing penalty ``R(w) = 1/(d-1) * sum_{i>j} |w_i - w_j|``
(Shakerinava, Sohrabi, Ravanbakhsh et al., 2023)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._errors import ShapeError
from ._expr import CvxpyContext, Expression, Shape, TorchContext, Unary, import_cvxpy

__all__ = ["WeightSharing", "pairwise_differences"]


def pairwise_differences(d: int) -> Any:
    """The sparse ``(d(d-1)/2) x d`` matrix ``D`` with ``(D w)_{(i,j)} = w_i - w_j``, ``i > j``."""
    import scipy.sparse as sp

    i, j = np.tril_indices(d, k=-1)
    rows = np.arange(i.size)
    data = np.concatenate([np.ones(i.size), -np.ones(i.size)])
    return sp.csr_matrix(
        (data, (np.concatenate([rows, rows]), np.concatenate([i, j]))), shape=(i.size, d)
    )


class WeightSharing(Unary):
    """``R(w) = 1/(d-1) * sum_{i>j} |w_i - w_j|`` over all ``d >= 2`` entries of ``w``.

    Torch uses the exact sorted form: with ``w_(0) <= ... <= w_(d-1)`` ascending,
    ``R(w) = sum_k c_k w_(k)`` with ``c_k = (2k - (d-1)) / (d-1)`` (O(d log d)). CVXPY uses
    the pairwise form ``norm1(D w) / (d-1)`` (``D``: :func:`pairwise_differences`; O(d^2)
    rows, so keep ``d`` small for exact checks). Convex, not smooth.
    """

    smooth = False

    def __init__(self, arg: Expression) -> None:
        super().__init__(arg)

    def _shape_of(self) -> Shape:
        if self.arg.size < 2:
            raise ShapeError(
                f"WeightSharing needs at least 2 entries; {self.arg.label()!r} has shape "
                f"{list(self.arg.shape)}."
            )
        return ()

    def _torch(self, ctx: TorchContext) -> Tensor:
        w = self.arg._torch(ctx).reshape(-1)
        d = w.numel()
        k = torch.arange(d, dtype=w.dtype, device=w.device)
        coefficients = (2 * k - (d - 1)) / (d - 1)
        return coefficients @ torch.sort(w).values

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        w = self.arg._cvxpy(ctx)
        if self.arg.ndim != 1:
            w = cp.vec(w, order="C") if self.arg.ndim == 2 else cp.reshape(w, (1,), order="C")
        d = self.arg.size
        return cp.norm1(pairwise_differences(d) @ w) / (d - 1)

    def label(self) -> str:
        return f"weight_sharing({self.arg.label()})"
