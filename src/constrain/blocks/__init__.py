"""Declarative convex building blocks that evaluate in torch *and* emit CVXPY.

Build an objective and constraints from blocks and the same declaration trains with the
library's solver (torch, any device) and is checked exactly against CVXPY
(:func:`constrain.validate`)::

    from constrain import blocks, Constraint, ConstrainedProblem

    x = blocks.Variable("x", 12)
    problem = ConstrainedProblem(
        objective=0.5 * blocks.quad_form(x, P) + q @ x,
        constraints=[
            Constraint("ineq", "<=", rhs=h, fn=G @ x),
            Constraint("eq", "==", rhs=b, fn=A @ x),
        ],
    )

Leaves: :class:`Variable` (``model.<name>``), :class:`Constant`, :class:`Data`
(``batch[name]``). Affine: ``+``, ``-``, scalar ``*``, elementwise ``*`` and ``@`` with
constants, indexing, :func:`sum`, :func:`mean`, :func:`affine`. Convex: :func:`quad_form`,
:func:`sum_squares`, :func:`square`, :func:`norm` (l1, l2, linf; plain or squared),
:func:`logistic_loss`, :func:`hinge_loss`, :func:`max`, :func:`pos`, :func:`abs`,
:func:`weight_sharing`.
Torch only (no convex CVXPY form, says so when asked): :func:`positive_rate`.
"""

from __future__ import annotations

from ._expr import Constant, Data, Expression, Variable, as_expression
from ._problem import BlockProblem, bounds
from .affine import Add, Index, MatMul, Mean, Multiply, Scale, Sum, affine
from .losses import HingeLoss, LogisticLoss
from .nonconvex import PositiveRate
from .norms import Norm
from .piecewise import Abs, Max, Pos
from .quadratic import QuadForm, Square, SumSquares
from .twin import (
    EQUALITY_DUAL_SIGN,
    BlockForm,
    CvxpyTwin,
    TwinSolution,
    block_form,
    to_cvxpy,
)
from .weight_sharing import WeightSharing

__all__ = [
    "EQUALITY_DUAL_SIGN",
    "Abs",
    "Add",
    "BlockForm",
    "BlockProblem",
    "Constant",
    "CvxpyTwin",
    "Data",
    "Expression",
    "HingeLoss",
    "Index",
    "LogisticLoss",
    "MatMul",
    "Max",
    "Mean",
    "Multiply",
    "Norm",
    "Pos",
    "PositiveRate",
    "QuadForm",
    "Scale",
    "Square",
    "Sum",
    "SumSquares",
    "TwinSolution",
    "Variable",
    "WeightSharing",
    "abs",
    "affine",
    "as_expression",
    "block_form",
    "bounds",
    "hinge_loss",
    "logistic_loss",
    "max",
    "mean",
    "norm",
    "norm1",
    "norm2",
    "norm_inf",
    "pos",
    "positive_rate",
    "quad_form",
    "square",
    "squared_norm",
    "sum",
    "sum_squares",
    "to_cvxpy",
    "weight_sharing",
]


def sum(arg: object, axis: int | None = None) -> Sum:
    """``sum_i x_i`` over all entries (or along ``axis``)."""
    return Sum(as_expression(arg), axis=axis)


def mean(arg: object, axis: int | None = None) -> Mean:
    """``(1/n) sum_i x_i`` over all entries (or along ``axis``)."""
    return Mean(as_expression(arg), axis=axis)


def quad_form(arg: Expression, matrix: object) -> QuadForm:
    """``x' P x`` with ``P`` symmetric positive semidefinite."""
    return QuadForm(arg, matrix)


def sum_squares(arg: object) -> SumSquares:
    """``sum_i x_i^2``."""
    return SumSquares(as_expression(arg))


def square(arg: object) -> Square:
    """Elementwise ``x_i^2``."""
    return Square(as_expression(arg))


def norm(arg: object, p: object = 2) -> Norm:
    """``||x||_p`` for ``p`` in ``{1, 2, "inf"}`` (entrywise on matrices)."""
    return Norm(as_expression(arg), p)


def norm1(arg: object) -> Norm:
    """``||x||_1 = sum_i |x_i|``."""
    return Norm(as_expression(arg), 1)


def norm2(arg: object) -> Norm:
    """``||x||_2``."""
    return Norm(as_expression(arg), 2)


def norm_inf(arg: object) -> Norm:
    """``||x||_inf = max_i |x_i|``."""
    return Norm(as_expression(arg), "inf")


def squared_norm(arg: object, p: object = 2) -> Norm:
    """``||x||_p^2``."""
    return Norm(as_expression(arg), p, squared=True)


def logistic_loss(margins: object) -> LogisticLoss:
    """Elementwise ``log(1 + exp(-z))`` of margins ``z``."""
    return LogisticLoss(as_expression(margins))


def hinge_loss(margins: object) -> HingeLoss:
    """Elementwise ``max(0, 1 - z)`` of margins ``z``."""
    return HingeLoss(as_expression(margins))


def max(arg: object) -> Max:
    """``max_i x_i`` (a scalar)."""
    return Max(as_expression(arg))


def pos(arg: object) -> Pos:
    """Elementwise ``max(x_i, 0)``."""
    return Pos(as_expression(arg))


def abs(arg: object) -> Abs:
    """Elementwise ``|x_i|``."""
    return Abs(as_expression(arg))


def weight_sharing(arg: object) -> WeightSharing:
    """``1/(d-1) sum_{i>j} |w_i - w_j|``."""
    return WeightSharing(as_expression(arg))


def positive_rate(arg: object) -> PositiveRate:
    """Fraction of positive entries (torch only: no convex CVXPY form)."""
    return PositiveRate(as_expression(arg))
