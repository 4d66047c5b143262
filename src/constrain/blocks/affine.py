"""Affine blocks: sums, scaling, elementwise and matrix products with constants, indexing,
sum and mean.

Every block here is affine in its variable arguments, so it keeps the curvature of its
arguments (up to the sign of constant factors, which CVXPY tracks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import field_validator
from torch import Tensor

from .._errors import ConfigError, ShapeError, describe
from ._expr import (
    CvxpyContext,
    Expression,
    Shape,
    TorchContext,
    _broadcast_scalar,
    as_expression,
    import_cvxpy,
)

__all__ = ["Add", "Index", "MatMul", "Mean", "Multiply", "Scale", "Sum", "affine"]


class Add(Expression):
    """Sum of terms: ``t_1 + t_2 + ... + t_k``.

    Terms have equal shapes or are scalars (broadcast to the common shape).

    Args:
        terms: Two or more expressions.
    """

    terms: tuple[Expression, ...]

    def __init__(self, *terms: Expression) -> None:
        super().__init__(terms=tuple(terms))

    @classmethod
    def of(cls, left: Expression, right: Expression) -> Add:
        """``left + right``, flattening nested sums into one node."""
        parts: list[Expression] = []
        for term in (left, right):
            parts.extend(term.terms if isinstance(term, Add) else (term,))
        return cls(*parts)

    def children(self) -> tuple[Expression, ...]:
        return self.terms

    def _shape_of(self) -> Shape:
        if len(self.terms) < 2:
            raise ShapeError(f"Add needs at least two terms; got {len(self.terms)}.")
        return _broadcast_scalar([t.shape for t in self.terms], f"Add {self.label()!r}")

    def _torch(self, ctx: TorchContext) -> Tensor:
        out = self.terms[0]._torch(ctx)
        for term in self.terms[1:]:
            out = out + term._torch(ctx)
        return out

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        out = self.terms[0]._cvxpy(ctx)
        for term in self.terms[1:]:
            out = out + term._cvxpy(ctx)
        return out

    def label(self) -> str:
        text = self.terms[0].label()
        for term in self.terms[1:]:
            if isinstance(term, Scale) and term.factor < 0:
                inner = (
                    term.arg.label()
                    if term.factor == -1.0
                    else Scale(term.arg, -term.factor).label()
                )
                text += f" - {inner}"
            else:
                text += f" + {term.label()}"
        return text


class Scale(Expression):
    """Multiplication by a number: ``factor * arg``.

    Args:
        arg: The expression.
        factor: A finite number (negative factors flip the curvature).
    """

    arg: Expression
    factor: float

    def __init__(self, arg: Expression, factor: float) -> None:
        super().__init__(arg=arg, factor=factor)

    @field_validator("factor")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not np.isfinite(value):
            raise ValueError(f"the factor must be finite; got {value!r}")
        return value

    def children(self) -> tuple[Expression, ...]:
        return (self.arg,)

    def _shape_of(self) -> Shape:
        return self.arg.shape

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.factor * self.arg._torch(ctx)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        return self.factor * self.arg._cvxpy(ctx)

    def label(self) -> str:
        inner = self.arg.label()
        if isinstance(self.arg, Add):
            inner = f"({inner})"
        return f"-{inner}" if self.factor == -1.0 else f"{self.factor:g}*{inner}"


def _require_one_constant(left: Expression, right: Expression, who: str) -> None:
    if not left.is_constant() and not right.is_constant():
        raise ConfigError(
            f"{who}: both operands ({left.label()} and {right.label()}) depend on variables, "
            "so the product is not affine and has no convex CVXPY form. Multiply by "
            "constants or data only; for squares use blocks.sum_squares or blocks.quad_form."
        )


class Multiply(Expression):
    """Elementwise product ``left * right`` where one side is constant (or data).

    Args:
        left: First factor.
        right: Second factor (shapes equal, or one of them a scalar).

    Raises:
        ConfigError: If both factors depend on variables (not affine).
    """

    left: Expression
    right: Expression

    def __init__(self, left: object, right: object) -> None:
        super().__init__(left=as_expression(left), right=as_expression(right))

    def children(self) -> tuple[Expression, ...]:
        return (self.left, self.right)

    def _shape_of(self) -> Shape:
        _require_one_constant(self.left, self.right, f"Multiply {self.label()!r}")
        return _broadcast_scalar([self.left.shape, self.right.shape], f"Multiply {self.label()!r}")

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.left._torch(ctx) * self.right._torch(ctx)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        return cp.multiply(self.left._cvxpy(ctx), self.right._cvxpy(ctx))

    def label(self) -> str:
        return f"{_wrap(self.left)}*{_wrap(self.right)}"


def _wrap(expr: Expression) -> str:
    return f"({expr.label()})" if isinstance(expr, (Add, Scale)) else expr.label()


def _matmul_shape(left: Shape, right: Shape, who: str) -> Shape:
    if not left or not right:
        raise ShapeError(f"{who}: @ needs operands with at least one dimension; use * for scalars.")
    inner_left = left[-1]
    inner_right = right[0]
    if inner_left != inner_right:
        raise ShapeError(
            f"{who}: inner dimensions do not match: {list(left)} @ {list(right)} "
            f"({inner_left} != {inner_right})."
        )
    return left[:-1] + right[1:]


class MatMul(Expression):
    """Matrix product ``left @ right`` where one side is constant (or data).

    Shapes follow numpy: ``(m, n) @ (n,) -> (m,)``, ``(n,) @ (n,) -> ()``,
    ``(n,) @ (n, k) -> (k,)``, ``(m, n) @ (n, k) -> (m, k)``.

    Raises:
        ConfigError: If both sides depend on variables (not affine).
    """

    left: Expression
    right: Expression

    def __init__(self, left: object, right: object) -> None:
        super().__init__(left=as_expression(left), right=as_expression(right))

    def children(self) -> tuple[Expression, ...]:
        return (self.left, self.right)

    def _shape_of(self) -> Shape:
        _require_one_constant(self.left, self.right, f"MatMul {self.label()!r}")
        return _matmul_shape(self.left.shape, self.right.shape, f"MatMul {self.label()!r}")

    def _torch(self, ctx: TorchContext) -> Tensor:
        return self.left._torch(ctx) @ self.right._torch(ctx)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        return self.left._cvxpy(ctx) @ self.right._cvxpy(ctx)

    def label(self) -> str:
        return f"{_wrap(self.left)} @ {_wrap(self.right)}"


def _normalise_key(key: object, shape: Shape, who: str) -> tuple[Any, ...]:
    """Turn an index into a tuple of ints, slices and int arrays (validated on ``shape``)."""
    parts = key if isinstance(key, tuple) else (key,)
    if len(parts) > len(shape):
        raise ShapeError(f"{who}: {len(parts)} index parts for shape {list(shape)}.")
    out: list[Any] = []
    for axis, part in enumerate(parts):
        if isinstance(part, slice):
            if part.step is not None and part.step < 0:  # torch has no negative steps
                out.append(tuple(range(*part.indices(shape[axis]))))
            else:
                out.append(part)
            continue
        if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
            out.append(int(part))
            continue
        array = np.asarray(part.cpu().numpy() if isinstance(part, Tensor) else part)
        if array.dtype == np.bool_:
            array = np.flatnonzero(array)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ShapeError(
                f"{who}: index parts must be ints, slices, 1-d integer sequences or boolean "
                f"masks; got {describe(part)}."
            )
        out.append(tuple(int(i) for i in array))
    if sum(isinstance(p, tuple) for p in out) > 1:
        raise ShapeError(f"{who}: at most one index part may be a sequence of integers.")
    return tuple(out)


class Index(Expression):
    """Indexing ``arg[key]`` with ints, slices and (one) integer sequence or boolean mask.

    Args:
        arg: The expression.
        key: As for numpy: e.g. ``0``, ``slice(1, 3)``, ``[0, 2]``, ``(1, slice(None))``.
    """

    arg: Expression
    key: tuple[Any, ...]

    def __init__(self, arg: Expression, key: object) -> None:
        super().__init__(arg=arg, key=_normalise_key(key, arg.shape, f"Index on {arg.label()!r}"))

    def children(self) -> tuple[Expression, ...]:
        return (self.arg,)

    def _numpy_key(self) -> tuple[Any, ...]:
        return tuple(np.asarray(p, dtype=np.int64) if isinstance(p, tuple) else p for p in self.key)

    def _shape_of(self) -> Shape:
        try:
            return tuple(np.empty(self.arg.shape)[self._numpy_key()].shape)
        except IndexError as exc:
            raise ShapeError(
                f"Index on {self.arg.label()!r} (shape {list(self.arg.shape)}): {exc}."
            ) from None

    def _torch(self, ctx: TorchContext) -> Tensor:
        key = tuple(
            torch.tensor(p, dtype=torch.long, device=ctx.device) if isinstance(p, tuple) else p
            for p in self.key
        )
        return self.arg._torch(ctx)[key]

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        return self.arg._cvxpy(ctx)[self._numpy_key()]

    def label(self) -> str:
        def show(p: Any) -> str:
            if isinstance(p, slice):
                return (
                    f"{'' if p.start is None else p.start}:{'' if p.stop is None else p.stop}"
                    + ("" if p.step is None else f":{p.step}")
                )
            return str(list(p)) if isinstance(p, tuple) else str(p)

        return f"{_wrap(self.arg)}[{', '.join(show(p) for p in self.key)}]"


class _Reduction(Expression):
    arg: Expression
    axis: int | None = None

    def __init__(self, arg: object, axis: int | None = None) -> None:
        super().__init__(arg=as_expression(arg), axis=axis)

    def children(self) -> tuple[Expression, ...]:
        return (self.arg,)

    def _shape_of(self) -> Shape:
        if self.axis is None:
            return ()
        if not -self.arg.ndim <= self.axis < self.arg.ndim:
            raise ShapeError(
                f"{type(self).__name__} over axis {self.axis} of {self.arg.label()!r}, which "
                f"has shape {list(self.arg.shape)}."
            )
        axis = self.axis % self.arg.ndim
        return self.arg.shape[:axis] + self.arg.shape[axis + 1 :]

    def _cvxpy_sum(self, ctx: CvxpyContext) -> Any:
        cp = import_cvxpy()
        inner = self.arg._cvxpy(ctx)
        if self.axis is None:
            return cp.sum(inner)
        return cp.sum(inner, axis=self.axis % self.arg.ndim)


class Sum(_Reduction):
    """Sum of the entries: ``sum_i arg_i`` (over all entries, or along ``axis``)."""

    def __init__(self, arg: object, axis: int | None = None) -> None:
        super().__init__(arg, axis)

    def _torch(self, ctx: TorchContext) -> Tensor:
        value = self.arg._torch(ctx)
        return value.sum() if self.axis is None else value.sum(dim=self.axis)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        return self._cvxpy_sum(ctx)

    def label(self) -> str:
        return (
            f"sum({self.arg.label()})"
            if self.axis is None
            else f"sum({self.arg.label()}, axis={self.axis})"
        )


class Mean(_Reduction):
    """Mean of the entries: ``(1/n) sum_i arg_i`` (over all entries, or along ``axis``).

    With :class:`~constrain.blocks.Data` operands the torch value is the minibatch mean
    (an unbiased estimate of the full-data mean that CVXPY sees).
    """

    def __init__(self, arg: object, axis: int | None = None) -> None:
        super().__init__(arg, axis)

    def _torch(self, ctx: TorchContext) -> Tensor:
        value = self.arg._torch(ctx)
        return value.mean() if self.axis is None else value.mean(dim=self.axis)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        count = self.arg.size if self.axis is None else self.arg.shape[self.axis]
        return self._cvxpy_sum(ctx) / count

    def label(self) -> str:
        return (
            f"mean({self.arg.label()})"
            if self.axis is None
            else f"mean({self.arg.label()}, axis={self.axis})"
        )


def affine(matrix: object, arg: Expression, offset: object | None = None) -> Expression:
    """The affine map ``A @ x + b``.

    Args:
        matrix: ``A``: a constant (array or tensor) or a data block.
        arg: ``x``.
        offset: ``b`` (optional): a constant of the output shape, or a scalar.

    Example:
        >>> x = Variable("x", 3)
        >>> g = affine([[1.0, 2.0, 0.0]], x, [-1.0])   # shape (1,)
    """
    out: Expression = MatMul(as_expression(matrix), arg)
    if offset is not None:
        out = out + as_expression(offset)
    return out
