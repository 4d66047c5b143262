"""Declaring whole problems from blocks: :class:`BlockProblem` and :func:`bounds`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from .._errors import ConfigError, describe
from ..problem import ConstrainedProblem, Constraint
from ._expr import Expression

__all__ = ["BlockProblem", "bounds"]


class BlockProblem(ConstrainedProblem):
    """A :class:`~constrain.ConstrainedProblem` subclass declared from blocks.

    Hyperparameters are pydantic fields as usual; :meth:`declare` builds the objective and
    the constraints from them. The result behaves exactly like the composition
    ``ConstrainedProblem(objective=expr, constraints=[Constraint(..., fn=expr)])``, so the
    solver evaluates the blocks in torch and :func:`constrain.validate` can build the
    CVXPY twin.

    Example:
        >>> from constrain import blocks
        >>> class Ball(BlockProblem):
        ...     radius: float = 1.0
        ...     def declare(self):
        ...         x = blocks.Variable("x", 3)
        ...         objective = blocks.sum_squares(x - 2.0)
        ...         return objective, [Constraint("ball", "<=", rhs=self.radius,
        ...                                       fn=blocks.norm(x, 2))]
    """

    is_convex: ClassVar[bool] = True

    def declare(self) -> tuple[Expression, Sequence[Constraint]]:
        """Return ``(objective, constraints)`` built from blocks (override this)."""
        raise NotImplementedError(f"{type(self).__name__} must implement declare()")

    def __init__(self, **data: Any) -> None:
        given = sorted({"objective", "objective_fn", "constraints"} & set(data))
        if given:
            raise ConfigError(
                f"{type(self).__name__} declares its blocks in declare(); do not pass "
                f"{'= or '.join(given)}= as well."
            )
        super().__init__(**data)

    def model_post_init(self, context: Any, /) -> None:
        declared = self.declare()
        if not (isinstance(declared, tuple) and len(declared) == 2):
            raise ConfigError(
                f"{type(self).__name__}.declare() must return (objective, constraints); got "
                f"{describe(declared)}."
            )
        objective, constraints = declared
        if not isinstance(objective, Expression):
            raise ConfigError(
                f"{type(self).__name__}.declare(): the objective must be a block expression; "
                f"got {describe(objective)}."
            )
        # Plain attribute writes: assignment validation would run model_post_init again.
        object.__setattr__(self, "objective_fn", objective)
        object.__setattr__(self, "constraints", list(constraints))
        super().model_post_init(context)


def bounds(
    arg: Expression,
    *,
    lower: float | Sequence[float] | None = None,
    upper: float | Sequence[float] | None = None,
    name: str = "bounds",
) -> list[Constraint]:
    """Elementwise bounds ``lower <= arg <= upper`` as constraint groups.

    One bound gives one group called ``name`` (``arg >= lower`` or ``arg <= upper``); both
    give ``name + "_lower"`` and ``name + "_upper"``. Bounds are scalars (for every entry)
    or one value per entry.

    Raises:
        ConfigError: If neither bound is given, or ``lower > upper`` somewhere.
    """
    if lower is None and upper is None:
        raise ConfigError(f"bounds {name!r}: give lower=, upper= or both.")
    if lower is not None and upper is not None:
        lo = [lower] * arg.size if isinstance(lower, (int, float)) else list(lower)
        hi = [upper] * arg.size if isinstance(upper, (int, float)) else list(upper)
        bad = [i for i, (a, b) in enumerate(zip(lo, hi, strict=False)) if a > b]
        if bad:
            raise ConfigError(
                f"bounds {name!r}: lower > upper at entries {bad[:5]}; the set is empty."
            )
    size = arg.size
    out: list[Constraint] = []
    for sense, value, suffix in ((">=", lower, "_lower"), ("<=", upper, "_upper")):
        if value is None:
            continue
        label = name + suffix if lower is not None and upper is not None else name
        rhs = float(value) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
        out.append(
            Constraint(
                label, sense, rhs=rhs, size=size, fn=arg, description=f"{arg.label()} {sense} bound"
            )
        )
    return out
