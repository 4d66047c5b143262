"""The block expression base class, its leaves and operator overloading.

A block expression is a small tree of pydantic models. Every node

* evaluates in torch: ``expr.torch(model, batch)`` (differentiable, on the device and in
  the dtype of the model's parameters), also available as ``expr(model, batch)`` so that an
  expression can be passed wherever :mod:`constrain` expects a callable ``fn(model, batch)``;
* emits the equivalent CVXPY expression: ``expr.cvxpy(variables, data)``.

Leaves are :class:`Variable` (a named parameter of the model, ``model.<name>``),
:class:`Constant` (data held in the block) and :class:`Data` (an entry ``batch[name]`` of
the batch in torch, the full data set in CVXPY). Inner nodes live in the sibling modules.

Composition uses Python operators: ``a + b``, ``a - b``, ``-a``, ``c * a`` (``c`` a scalar,
or a constant array for an elementwise product), ``a / c``, ``A @ a`` and ``a[key]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from torch import Tensor

from .._components import format_validation_error
from .._errors import ConfigError, ShapeError, describe

if TYPE_CHECKING:
    from .affine import Add, Index, MatMul, Mean, Scale, Sum

__all__ = [
    "Constant",
    "CvxpyContext",
    "Data",
    "Expression",
    "Shape",
    "TorchContext",
    "Unary",
    "Variable",
    "as_expression",
    "import_cvxpy",
    "to_float64_tensor",
]

Shape = tuple[int, ...]

_MAX_NDIM = 2


def import_cvxpy() -> Any:
    """Import and return the optional ``cvxpy`` module.

    Raises:
        ConfigError: If CVXPY is not installed, with the command that installs it.
    """
    try:
        import cvxpy
    except ImportError:
        raise ConfigError(
            "CVXPY is needed for exact validation but is not installed; install it with "
            "`pip install constrain[reference]` (CVXPY and the Clarabel solver)."
        ) from None
    return cvxpy


def to_float64_tensor(value: object, what: str) -> Tensor:
    """Copy ``value`` (number, sequence, array or tensor) into a detached float64 CPU tensor.

    Raises:
        ConfigError: If ``value`` is not numeric or holds NaN/Inf.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a number, array or tensor; got a bool.")
    try:
        if isinstance(value, Tensor):
            tensor = value.detach().to(device="cpu", dtype=torch.float64).clone()
        else:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64)).clone()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"{what}: expected a number, array or tensor; got {describe(value)}."
        ) from None
    if not bool(torch.isfinite(tensor).all()):
        raise ConfigError(
            f"{what}: every entry must be finite; got {describe(value)} with NaN/Inf."
        )
    return tensor


@dataclass
class TorchContext:
    """What a torch evaluation reads: the model, the batch, and the target dtype/device."""

    model: Any
    batch: Any
    dtype: torch.dtype
    device: torch.device


@dataclass
class CvxpyContext:
    """What a CVXPY emission reads: CVXPY variables and the full data by name."""

    variables: Mapping[str, Any]
    data: Mapping[str, Any] = field(default_factory=dict)


def _broadcast_scalar(shapes: Sequence[Shape], who: str) -> Shape:
    """Common shape of operands that are equal-shaped or scalars (size-1 0-d)."""
    non_scalar = {s for s in shapes if s != ()}
    if len(non_scalar) > 1:
        raise ShapeError(
            f"{who}: operand shapes {[list(s) for s in shapes]} do not match; operands must "
            "have the same shape or be scalars. Index or reshape one of them first."
        )
    return next(iter(non_scalar), ())


class Expression(BaseModel):
    """Base class of every block.

    Subclasses implement :meth:`_shape_of` (the static output shape, checked when the block
    is built), :meth:`_torch` and :meth:`_cvxpy`, and list their sub-expressions in
    :meth:`children`.

    Raises:
        ConfigError: At construction, for fields of the wrong type (naming the block).
        ShapeError: At construction, for operands whose shapes do not fit (naming the block).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    # numpy and torch defer binary operators to ours (``A @ x``, ``c * x`` with arrays).
    __array_ufunc__: ClassVar[None] = None
    __array_priority__: ClassVar[float] = 1000.0

    smooth: ClassVar[bool] = True
    """Whether the block is differentiable everywhere (given differentiable arguments)."""

    _shape: Shape = PrivateAttr(default=())
    _variables: dict[str, Variable] | None = PrivateAttr(default=None)
    _data_leaves: dict[str, Data] | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, f"block {type(self).__name__}")
            ) from None
        self._shape = tuple(int(n) for n in self._shape_of())

    # identity semantics: blocks hold tensors, whose == is elementwise
    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    # -- to implement ---------------------------------------------------------------------
    def children(self) -> tuple[Expression, ...]:
        """Direct sub-expressions (empty for leaves)."""
        return ()

    def _shape_of(self) -> Shape:
        """The output shape; raise :class:`ShapeError` if the operands do not fit."""
        raise NotImplementedError

    def _torch(self, ctx: TorchContext) -> Tensor:
        raise NotImplementedError

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        raise NotImplementedError

    def label(self) -> str:
        """A readable formula of the expression, used in reports and error messages."""
        return type(self).__name__

    # -- structure ----------------------------------------------------------------------
    @property
    def shape(self) -> Shape:
        """Static output shape (for :class:`Data` operands: with the full data set)."""
        return self._shape

    @property
    def ndim(self) -> int:
        """Number of output dimensions."""
        return len(self._shape)

    @property
    def size(self) -> int:
        """Number of output entries."""
        return math.prod(self._shape)

    def is_smooth(self) -> bool:
        """True if every block in the tree is differentiable everywhere."""
        return self.smooth and all(child.is_smooth() for child in self.children())

    def variables(self) -> dict[str, Variable]:
        """The :class:`Variable` leaves by name.

        Raises:
            ShapeError: If one name is used with two different shapes.
        """
        if self._variables is None:
            found: dict[str, Variable] = {}
            data: dict[str, Data] = {}
            self._collect(found, data)
            self._variables, self._data_leaves = found, data
        return dict(self._variables)

    def data_leaves(self) -> dict[str, Data]:
        """The :class:`Data` leaves by name."""
        self.variables()
        assert self._data_leaves is not None
        return dict(self._data_leaves)

    def is_constant(self) -> bool:
        """True if the expression has no :class:`Variable` leaf (data counts as constant)."""
        return not self.variables()

    def _collect(self, variables: dict[str, Variable], data: dict[str, Data]) -> None:
        for child in self.children():
            child._collect(variables, data)

    # -- evaluation ---------------------------------------------------------------------
    def torch(self, model: Any, batch: Any = None) -> Tensor:
        """Evaluate in torch at the model's current parameters.

        Args:
            model: An object with one tensor attribute per :class:`Variable` name (e.g.
                :class:`constrain.Variables`); constants follow its dtype and device.
            batch: A mapping holding the :class:`Data` entries (``None`` if there are none).

        Returns:
            A differentiable tensor of shape :attr:`shape` (the first axis of data-driven
            expressions follows the batch).
        """
        dtype, device = torch.get_default_dtype(), torch.device("cpu")
        variables = self.variables()
        if variables:
            first = _read_variable(model, next(iter(variables.values())))
            dtype, device = first.dtype, first.device
        return self._torch(TorchContext(model, batch, dtype, device))

    def __call__(self, model: Any, batch: Any = None) -> Tensor:
        """Same as :meth:`torch`; makes a block usable as ``fn(model, batch)``."""
        return self.torch(model, batch)

    def cvxpy(
        self, variables: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None
    ) -> Any:
        """Emit the equivalent CVXPY expression.

        Args:
            variables: CVXPY variables by name; missing ones are created with the declared
                shapes (pass the same mapping to every expression of one problem).
            data: The full data set by :class:`Data` name.

        Raises:
            ConfigError: If CVXPY is missing, a block has no convex CVXPY form, or a data
                entry is missing.
        """
        cp = import_cvxpy()
        pool = dict(variables or {})
        for name, var in self.variables().items():
            if name not in pool:
                pool[name] = cp.Variable(var.dims, name=name)
        return self._cvxpy(CvxpyContext(pool, dict(data or {})))

    def __str__(self) -> str:
        return self.label()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label()} shape={list(self.shape)}>"

    # -- operators ------------------------------------------------------------------------
    def __add__(self, other: object) -> Add:
        from .affine import Add

        return Add.of(self, as_expression(other))

    def __radd__(self, other: object) -> Add:
        from .affine import Add

        return Add.of(as_expression(other), self)

    def __sub__(self, other: object) -> Add:
        return self + (-as_expression(other))

    def __rsub__(self, other: object) -> Add:
        return as_expression(other) + (-self)

    def __neg__(self) -> Scale:
        from .affine import Scale

        return Scale(self, -1.0)

    def __pos__(self) -> Expression:
        return self

    def __mul__(self, other: object) -> Expression:
        from .affine import Multiply, Scale

        if _is_scalar_number(other):
            return Scale(self, float(other))  # type: ignore[arg-type]
        return Multiply(self, as_expression(other))

    def __rmul__(self, other: object) -> Expression:
        from .affine import Multiply, Scale

        if _is_scalar_number(other):
            return Scale(self, float(other))  # type: ignore[arg-type]
        return Multiply(as_expression(other), self)

    def __truediv__(self, other: object) -> Scale:
        from .affine import Scale

        if not _is_scalar_number(other) or float(other) == 0.0:  # type: ignore[arg-type]
            raise ConfigError(
                f"{self.label()} / {describe(other)}: blocks can only be divided by a non-zero "
                "number (division by an expression is not affine)."
            )
        return Scale(self, 1.0 / float(other))  # type: ignore[arg-type]

    def __matmul__(self, other: object) -> MatMul:
        from .affine import MatMul

        return MatMul(self, as_expression(other))

    def __rmatmul__(self, other: object) -> MatMul:
        from .affine import MatMul

        return MatMul(as_expression(other), self)

    def __getitem__(self, key: object) -> Index:
        from .affine import Index

        return Index(self, key)

    def sum(self, axis: int | None = None) -> Sum:
        """Sum of the entries (along ``axis``); see :class:`~constrain.blocks.Sum`."""
        from .affine import Sum

        return Sum(self, axis=axis)

    def mean(self, axis: int | None = None) -> Mean:
        """Mean of the entries (along ``axis``); see :class:`~constrain.blocks.Mean`."""
        from .affine import Mean

        return Mean(self, axis=axis)


def _is_scalar_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return isinstance(value, (Tensor, np.ndarray)) and value.ndim == 0


def as_expression(value: object) -> Expression:
    """``value`` itself if it is a block, else a :class:`Constant` holding it.

    Raises:
        ConfigError: If ``value`` is neither a block nor numeric data.
    """
    if isinstance(value, Expression):
        return value
    return Constant(value)


def _normalise_shape(shape: object, who: str) -> Shape:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        dims: Shape = (int(shape),)
    elif isinstance(shape, Sequence) and not isinstance(shape, str):
        try:
            dims = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise ShapeError(
                f"{who}: shape must be an int or a tuple of ints; got {shape!r}."
            ) from None
    else:
        raise ShapeError(f"{who}: shape must be an int or a tuple of ints; got {shape!r}.")
    if any(n < 1 for n in dims) or len(dims) > _MAX_NDIM:
        raise ShapeError(
            f"{who}: shape must have at most {_MAX_NDIM} positive dimensions; got {list(dims)}."
        )
    return dims


def _read_variable(model: Any, var: Variable) -> Tensor:
    value = getattr(model, var.name, None)
    if not isinstance(value, Tensor):
        known = (
            [n for n, _ in model.named_parameters()] if hasattr(model, "named_parameters") else []
        )
        raise ConfigError(
            f"block variable {var.name!r} is not a tensor attribute of the model "
            f"({type(model).__name__}); got {describe(value)}. Create it, e.g. "
            f"constrain.Variables({var.name}=torch.zeros({list(var.dims)})); model parameters: "
            f"{known}."
        )
    if tuple(value.shape) != var.dims:
        raise ShapeError(
            f"block variable {var.name!r} is declared with shape {list(var.dims)} but "
            f"model.{var.name} has shape {list(value.shape)}; make them agree."
        )
    return value


class Unary(Expression):
    """Base of the blocks of one operand ``arg``: the field, its child and, unless the
    subclass overrides :meth:`_shape_of`, the operand's shape (elementwise blocks).

    Subclasses with options declare them as further fields and pass them on:
    ``super().__init__(arg, p=p)``.
    """

    arg: Expression

    def __init__(self, arg: Expression, **options: Any) -> None:
        super().__init__(arg=arg, **options)

    def children(self) -> tuple[Expression, ...]:
        return (self.arg,)

    def _shape_of(self) -> Shape:
        return self.arg.shape


class Variable(Expression):
    """A primal variable: the model's tensor attribute ``model.<name>``.

    Args:
        name: Attribute name on the model (e.g. a :class:`constrain.Variables` entry).
        shape: Declared shape: ``()`` for a scalar, ``n`` or ``(n,)`` for a vector,
            ``(m, n)`` for a matrix.

    Example:
        >>> x = Variable("x", shape=3)
    """

    name: str
    dims: Shape

    def __init__(self, name: str, shape: int | Sequence[int] = ()) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"Variable name must be a Python identifier; got {name!r}.")
        super().__init__(name=name, dims=_normalise_shape(shape, f"Variable {name!r}"))

    def _shape_of(self) -> Shape:
        return self.dims

    def _collect(self, variables: dict[str, Variable], data: dict[str, Data]) -> None:
        seen = variables.get(self.name)
        if seen is not None and seen.dims != self.dims:
            raise ShapeError(
                f"block variable {self.name!r} is used with shapes {list(seen.dims)} and "
                f"{list(self.dims)}; one name must have one shape."
            )
        variables.setdefault(self.name, self)

    def _torch(self, ctx: TorchContext) -> Tensor:
        return _read_variable(ctx.model, self)

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        try:
            var = ctx.variables[self.name]
        except KeyError:
            raise ConfigError(
                f"no CVXPY variable named {self.name!r}; pass it in variables= "
                f"(known: {sorted(ctx.variables)})."
            ) from None
        if tuple(var.shape) != self.dims:
            raise ShapeError(
                f"CVXPY variable {self.name!r} has shape {list(var.shape)} but the block "
                f"declares {list(self.dims)}."
            )
        return var

    def label(self) -> str:
        return self.name


class Constant(Expression):
    """Fixed numeric data held in the block (stored as a float64 tensor).

    In torch it follows the dtype and device of the model (converted copies are cached).

    Args:
        value: A number, nested sequence, numpy array or tensor (at most 2-d, finite).
    """

    value: Tensor
    _cache: dict[tuple[torch.dtype, torch.device], Tensor] = PrivateAttr(default_factory=dict)

    def __init__(self, value: object) -> None:
        tensor = to_float64_tensor(value, "Constant")
        if tensor.ndim > _MAX_NDIM:
            raise ShapeError(
                f"Constant: at most {_MAX_NDIM} dimensions; got shape {list(tensor.shape)}."
            )
        super().__init__(value=tensor)

    def _shape_of(self) -> Shape:
        return tuple(self.value.shape)

    def _torch(self, ctx: TorchContext) -> Tensor:
        key = (ctx.dtype, ctx.device)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self.value.to(dtype=ctx.dtype, device=ctx.device)
        return cached

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        array = self.value.numpy()
        return float(array) if array.ndim == 0 else array

    def label(self) -> str:
        if self.value.ndim == 0:
            return f"{float(self.value):g}"
        return f"const{list(self.value.shape)}"


class Data(Expression):
    """Data read from the batch: ``batch[name]`` in torch, ``data[name]`` in CVXPY.

    Use it for data sets that the solver should see in minibatches: the first axis may
    then be shorter in torch (a minibatch of samples), while CVXPY gets the full data.

    Args:
        name: Key in the batch mapping and in the ``data`` mapping given to CVXPY.
        shape: Shape of the full data (the first axis counts samples).
    """

    name: str
    dims: Shape

    def __init__(self, name: str, shape: int | Sequence[int]) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Data name must be a non-empty string; got {name!r}.")
        super().__init__(name=name, dims=_normalise_shape(shape, f"Data {name!r}"))

    def _shape_of(self) -> Shape:
        return self.dims

    def _collect(self, variables: dict[str, Variable], data: dict[str, Data]) -> None:
        seen = data.get(self.name)
        if seen is not None and seen.dims != self.dims:
            raise ShapeError(
                f"data {self.name!r} is used with shapes {list(seen.dims)} and {list(self.dims)}."
            )
        data.setdefault(self.name, self)

    def _torch(self, ctx: TorchContext) -> Tensor:
        if not isinstance(ctx.batch, Mapping) or self.name not in ctx.batch:
            got = sorted(ctx.batch) if isinstance(ctx.batch, Mapping) else describe(ctx.batch)
            raise ConfigError(
                f"block data {self.name!r}: the batch must be a mapping with key {self.name!r}; "
                f"got {got}."
            )
        value = torch.as_tensor(ctx.batch[self.name], dtype=ctx.dtype, device=ctx.device)
        if tuple(value.shape[1:]) != self.dims[1:] or value.ndim != len(self.dims):
            raise ShapeError(
                f"block data {self.name!r} is declared with shape {list(self.dims)} (any "
                f"number of samples on the first axis) but the batch holds shape "
                f"{list(value.shape)}."
            )
        return value

    def _cvxpy(self, ctx: CvxpyContext) -> Any:
        if self.name not in ctx.data:
            raise ConfigError(
                f"block data {self.name!r} is missing: pass the full data set, e.g. "
                f"to_cvxpy(problem, data={{{self.name!r}: ...}}); got keys {sorted(ctx.data)}."
            )
        array = np.asarray(
            ctx.data[self.name].detach().cpu().numpy()
            if isinstance(ctx.data[self.name], Tensor)
            else ctx.data[self.name],
            dtype=np.float64,
        )
        if array.shape != self.dims:
            raise ShapeError(
                f"block data {self.name!r} is declared with shape {list(self.dims)} but the "
                f"full data given to CVXPY has shape {list(array.shape)}."
            )
        return array

    def label(self) -> str:
        return self.name
