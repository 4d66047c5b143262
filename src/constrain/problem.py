"""Declaring constrained problems.

A constrained problem is

    minimize f(x)  subject to  g_i(x) <= b_i,  g_j(x) >= b_j,  h_k(x) == b_k,

declared either by subclassing :class:`ConstrainedProblem` (hyperparameters are validated
pydantic fields; the objective and the constraints are methods) or by composition
(``ConstrainedProblem(objective=..., constraints=[Constraint(...)], regularizers=[...])``).

Internally every constraint is brought to the standard form ``violation <= 0`` (or
``== 0``): ``g(x) <= b`` becomes ``g(x) - b``, ``g(x) >= b`` becomes ``b - g(x)`` and
``h(x) == b`` becomes ``h(x) - b``. A *constraint group* (one :class:`Constraint`) may hold
many entries (e.g. one margin constraint per training point); all groups are stacked into
one vector so that the cost of a step does not grow with the number of groups.
"""

from __future__ import annotations

import decimal
import inspect
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    field_validator,
    model_validator,
)
from torch import Tensor

from . import schedules as _schedules
from ._components import bools_for_numbers
from ._errors import ConfigError, ShapeError, describe
from .schedules import RhsSchedule

__all__ = [
    "ConstrainedProblem",
    "Constraint",
    "ConstraintValue",
    "ProblemState",
    "Regularizer",
    "Sense",
    "constraint",
]

Sense: TypeAlias = Literal["<=", ">=", "=="]
_SENSE_ALIASES = {
    "<=": "<=",
    "le": "<=",
    "leq": "<=",
    ">=": ">=",
    "ge": ">=",
    "geq": ">=",
    "==": "==",
    "=": "==",
    "eq": "==",
}

ValueFn: TypeAlias = Callable[[Any, Any], "Tensor | ConstraintValue"]


@dataclass(frozen=True)
class ConstraintValue:
    """The value of one constraint group at the current point.

    Attributes:
        value: The true constraint function ``g(x)`` (left-hand side), 1-d or scalar. It
            drives the multiplier update and may be non-differentiable (e.g. a rate).
        proxy: Optional differentiable surrogate of ``value`` (same shape). When given, the
            primal player's Lagrangian uses it instead of ``value``.
        indices: For per-sample (indexed) constraints: the sample indices the entries of
            ``value`` belong to (1-d integer tensor, same length as ``value``).
        observed: Which entries this batch measured: ``None`` or ``True`` (all), ``False``
            (none: ``value`` is not a measurement of this step, e.g. an exact rate measured
            on a held-out set every few steps; the group's multipliers, their controller
            state and the penalties do not move, and the proxy, if given, still enters the
            primal loss; build one with :meth:`proxy_only`), or a boolean mask of the
            value's shape. An unobserved entry (e.g. the parity gap of a group absent from
            the batch) gets no multiplier update, no primal term and counts as no
            violation. Its value may be anything, NaN included, as long as it carries no
            gradient: a NaN inside the graph would still reach the gradient (compute group
            means with ``counts.clamp_min(1)``, as the fairness helpers do).
        features: For a per-sample group with a :class:`~constrain.MultiplierModel`: the
            features of the batch's entries, shape ``(batch, d)``, in the dtype and on the
            device of the model's parameters; the model maps them to the entries'
            multipliers. Required by such groups, refused by the others.
    """

    value: Tensor
    proxy: Tensor | None = None
    indices: Tensor | None = None
    observed: Tensor | bool | None = None
    features: Tensor | None = None

    @classmethod
    def proxy_only(
        cls, proxy: Tensor, indices: Tensor | None = None, features: Tensor | None = None
    ) -> ConstraintValue:
        """A step that only gives the primal player a differentiable surrogate: the true
        value is not measured (``observed=False``), so the multipliers stay put."""
        return cls(proxy.detach(), proxy, indices, observed=False, features=features)


@dataclass
class ProblemState:
    """Everything a formulation needs from one evaluation of the problem.

    Attributes:
        objective: Scalar objective ``f(x)`` (differentiable).
        constraints: Constraint values by constraint name (tensors or
            :class:`ConstraintValue`).
        metrics: Extra scalars to record in the history (accuracy, density, ...).
    """

    objective: Tensor
    constraints: dict[str, Tensor | ConstraintValue] = field(default_factory=dict)
    metrics: dict[str, float | Tensor] = field(default_factory=dict)


def declared(problem: ConstrainedProblem) -> list[Constraint]:
    """The constraints ``problem`` declares now (the list itself: it is rebuilt, never
    changed in place, when a field changes). Read from pydantic's private storage
    directly, as the step reads it every step."""
    private = problem.__pydantic_private__
    assert private is not None
    result: list[Constraint] = private["_declared"]
    return result


def _check_finite_number(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite; got {value!r}")
    return value


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _suggest_name(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "_", value).strip("_") or "constraint"
    return cleaned if cleaned[0].isalpha() or cleaned[0] == "_" else "c_" + cleaned


def _real(value: object, what: str) -> float:
    """``value`` as a finite float: a real number (Python, numpy, ``Decimal``,
    ``Fraction``, a one-element tensor or array); never a bool, a string or a complex."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"{what} must be a number, not a bool (true/false is not 1/0 here); got {value!r}"
        )
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"{what} must be a number, not a string; got {describe(value)}. To take the rhs "
            "from a problem field, use @constraint(rhs='field_name') on a subclass."
        )
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        try:
            number = float(value)
        except (ValueError, OverflowError, decimal.InvalidOperation):
            raise ValueError(f"{what} must be a finite number; got {describe(value)}") from None
        return _check_finite_number(number, what)
    raise ValueError(f"{what} must be a real number; got {describe(value)}")


def _real_rhs(value: object) -> float | tuple[float, ...]:
    """Normalise an rhs to a finite float or a tuple of finite floats (see
    :func:`_real`); tensors and arrays of any shape are flattened."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"rhs must hold real numbers; got {describe(value)}")
        value = value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ValueError(f"rhs must hold real numbers; got an array of dtype {value.dtype}")
        flat = value.astype(np.float64).reshape(-1)
        value = flat[0].item() if flat.size == 1 else flat.tolist()
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        values = tuple(_real(v, f"rhs entry {k}") for k, v in enumerate(value))
        if not values:
            raise ValueError("rhs sequence is empty")
        return values
    return _real(value, "rhs")


class Constraint(BaseModel):
    """Declaration of one constraint group ``g(x) <sense> rhs``.

    Args:
        name: Unique name (used for multipliers, history columns and plots).
        sense: ``"<="``, ``">="`` or ``"=="``.
        rhs: Right-hand side: a scalar, one value per entry of the group, or a schedule
            ``b_t`` read at every step (a :class:`constrain.schedules.RhsSchedule` or a
            mapping ``{"name": "linear", "start": ..., "end": ..., "steps": ...}``).
        size: Number of entries in the group; ``None`` infers it at the first evaluation.
            For per-sample constraints this is the number of samples.
        fn: For composition: ``fn(model, batch)`` returning the left-hand side (a tensor or
            a :class:`ConstraintValue`). Subclasses use :func:`constraint` methods instead.
        proxy: Optional ``proxy(model, batch)`` returning a differentiable surrogate of
            ``fn``'s value; the primal player uses it, the multipliers the true value.
        per_sample: If true the group is indexed: each evaluation returns the values of a
            minibatch of samples with their ``indices`` and only those multipliers move.
        description: Free text shown in reports.
        max_multiplier: Upper bound ``M >= 0`` on the group's multipliers: ``lam`` is kept
            in ``[0, M]`` (inequalities) or ``|mu| <= M`` (equalities) after every update.
            ``None``: unbounded. A solver-level ``max_multiplier`` overrides it.
        intermittent: The group is measured on some steps only: ``evaluate()`` may leave it
            out (a ``fn`` may return ``None``); on those steps its multipliers, controller
            state and penalties stay put and it adds nothing to the primal loss.
        multiplier_model: For a per-sample group: a :class:`~constrain.MultiplierModel`
            giving the multipliers as ``link(module(features))`` instead of one stored
            multiplier per entry (see docs/algorithms.md, 'Multiplier models'); the value
            function then returns ``ConstraintValue(..., features=F)``. ``None``: a table.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    sense: Sense = "<="
    rhs: float | tuple[float, ...] | SerializeAsAny[RhsSchedule] = 0.0
    size: int | None = Field(default=None, ge=1)
    fn: Any = None
    proxy: Any = None
    per_sample: bool = False
    description: str = ""
    max_multiplier: float | None = Field(default=None, ge=0)
    intermittent: bool = False
    multiplier_model: Any = None

    def __init__(self, name: str | None = None, sense: str | None = None, /, **data: Any):
        if name is not None:
            data["name"] = name
        if sense is not None:
            data["sense"] = sense
        super().__init__(**data)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "a constraint name is a letter or '_' followed by letters, digits, '_', '-' "
                f"or '.' (it names history columns, config keys and figure labels); got "
                f"{value!r}. For example {_suggest_name(value)!r}"
            )
        return value

    @field_validator("sense", mode="before")
    @classmethod
    def _normalise_sense(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in _SENSE_ALIASES:
            return _SENSE_ALIASES[value.strip().lower()]
        raise ValueError(
            f"sense must be one of '<=', '>=', '=='; got {value!r}. Strict inequalities are "
            "not supported: use '<=' or '>=' (optionally with a small margin in rhs)."
        )

    @field_validator("rhs", mode="before")
    @classmethod
    def _finite_rhs(cls, value: object) -> object:
        if isinstance(value, RhsSchedule):
            return value
        if isinstance(value, Mapping):
            try:
                return _schedules.build(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return _real_rhs(value)

    @field_validator("size", mode="before")
    @classmethod
    def _integer_size(cls, value: object) -> object:
        if value is None:
            return value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise ValueError(
                f"size must be an integer (the number of entries of the group); got "
                f"{describe(value)}"
                + (" (true/false is not 1/0 here)" if isinstance(value, (bool, np.bool_)) else "")
            )
        return int(value)

    @field_validator("fn", "proxy")
    @classmethod
    def _callable(cls, value: object) -> object:
        if value is not None and not callable(value):
            raise ValueError(f"expected a callable fn(model, batch) or None; got {describe(value)}")
        if value is not None and not _takes_two_arguments(value):
            raise ValueError(
                f"expected a callable of two arguments fn(model, batch); got {describe(value)} "
                "(write lambda m, b: ... even when the batch is not used)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Constraint:
        if isinstance(self.rhs, tuple) and self.size is not None and len(self.rhs) != self.size:
            raise ValueError(
                f"constraint {self.name!r}: rhs has {len(self.rhs)} entries but size is {self.size}"
            )
        if self.per_sample and self.size is None:
            raise ValueError(
                f"per-sample constraint {self.name!r} needs size= (the number of samples) so "
                "that its multipliers can be allocated"
            )
        if self.per_sample and isinstance(self.rhs, tuple):
            raise ValueError(f"per-sample constraint {self.name!r} takes a scalar rhs")
        return self

    @property
    def is_equality(self) -> bool:
        """True for ``==`` constraints (multipliers of any sign)."""
        return self.sense == "=="

    @property
    def sign(self) -> float:
        """+1 for ``<=`` and ``==``, -1 for ``>=`` (the standard-form factor)."""
        return -1.0 if self.sense == ">=" else 1.0

    def rhs_at(self, step: int = 0) -> float | tuple[float, ...]:
        """The right-hand side at solver step ``step`` (a schedule's value there)."""
        if isinstance(self.rhs, RhsSchedule):
            return float(self.rhs.at(step))
        return self.rhs

    def violation(self, value: Tensor, step: int = 0) -> Tensor:
        """Standard form of ``value``: ``sign * (value - rhs)`` (``<= 0`` / ``== 0`` when met),
        with the right-hand side of step ``step``."""
        bound = self.rhs_at(step)
        rhs: float | Tensor = (
            bound
            if isinstance(bound, float)
            else torch.as_tensor(bound, dtype=value.dtype, device=value.device)
        )
        return self.sign * (value - rhs)


class Regularizer(BaseModel):
    """A regularizer acting on some parameters of the model.

    Either non-smooth with a proximal operator (``prox`` names an entry of
    :mod:`constrain.prox`), applied after each primal step with strength
    ``strength * lr`` (lr: the parameter's current learning rate), or smooth with a
    differentiable ``penalty(tensor) -> scalar`` added to the objective.

    Args:
        prox: Registered prox name (``"weight_sharing"``, ``"l1"``, ...) or a callable
            ``prox(x, strength, **options)``.
        penalty: Smooth alternative: callable returning a scalar penalty of a parameter.
        strength: Regularization strength ``lam >= 0``.
        params: Which parameters: names or ``fnmatch`` patterns of
            ``model.named_parameters()``; ``None`` means all.
        options: Extra keyword arguments for the prox (e.g. ``{"method": "sort_pava"}``).
        name: Label in the history (defaults to the prox or penalty name).
        track_clusters: Record the number of distinct values of each parameter after the
            prox (the weight-sharing diagnostic; it costs a sort of the parameter). ``None``
            (the default): only for the weight-sharing proxes. Counted only on the steps
            whose full record is kept, never on the others.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    prox: Any = None
    penalty: Any = None
    strength: float = Field(ge=0, allow_inf_nan=False)
    params: tuple[str, ...] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    track_clusters: bool | None = None

    @field_validator("params", mode="before")
    @classmethod
    def _params_tuple(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Regularizer:
        if (self.prox is None) == (self.penalty is None):
            raise ValueError(
                "a Regularizer needs exactly one of prox= (a name or callable) or penalty="
            )
        if self.prox is not None and not (isinstance(self.prox, str) or callable(self.prox)):
            raise ValueError(
                f"prox must be a registered name or a callable; got {describe(self.prox)}"
            )
        if self.penalty is not None and not callable(self.penalty):
            raise ValueError(f"penalty must be a callable; got {describe(self.penalty)}")
        return self

    @property
    def counts_clusters(self) -> bool:
        """Whether the history records this regularizer's cluster counts."""
        if self.track_clusters is not None:
            return self.track_clusters
        return isinstance(self.prox, str) and self.prox.startswith("weight_sharing")

    @property
    def label(self) -> str:
        """Name used in the history."""
        if self.name:
            return self.name
        target = self.prox if self.prox is not None else self.penalty
        return target if isinstance(target, str) else getattr(target, "__name__", "regularizer")


_CONSTRAINT_ATTR = "__constrain_constraint__"


def constraint(
    sense: str = "<=",
    *,
    rhs: float | Sequence[float] | str | RhsSchedule | Mapping[str, Any] = 0.0,
    size: int | str | None = None,
    per_sample: bool = False,
    name: str | None = None,
    description: str = "",
    max_multiplier: float | None = None,
    intermittent: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method of a :class:`ConstrainedProblem` subclass as a constraint.

    The method takes ``(self, model, batch)`` and returns the left-hand side (a tensor, or
    a :class:`ConstraintValue` with a proxy and/or sample indices). The constraint's name
    is the method's name unless ``name`` is given.

    Args:
        sense: ``"<="``, ``">="`` or ``"=="``.
        rhs: Right-hand side (a number, a sequence, a schedule), or the *name of a field*
            of the problem holding it (so that a hyperparameter such as a tolerance is
            validated and configurable).
        size: Number of entries (``None``: inferred at the first evaluation), or the name
            of an integer field of the problem holding it.
        per_sample: Indexed per-sample constraint (``size`` = number of samples).
        name: Constraint name (defaults to the method name).
        description: Free text shown in reports.
        max_multiplier: Upper bound on the group's multipliers (see :class:`Constraint`).
        intermittent: The method may return ``None`` on steps where the group is not
            measured (see :class:`Constraint`).

    Example:
        >>> class Budget(ConstrainedProblem):
        ...     budget: float = 1.0
        ...     def objective(self, model, batch):
        ...         return (model.weight - 1).pow(2).sum()
        ...     @constraint("<=", rhs="budget")
        ...     def l1_norm(self, model, batch):
        ...         return model.weight.abs().sum()
    """

    def decorator(method: Callable[..., Any]) -> Callable[..., Any]:
        setattr(
            method,
            _CONSTRAINT_ATTR,
            {
                "sense": sense,
                "rhs": rhs,
                "size": size,
                "per_sample": per_sample,
                "name": name or method.__name__,
                "description": description,
                "max_multiplier": max_multiplier,
                "intermittent": intermittent,
            },
        )
        return method

    return decorator


class ConstrainedProblem(BaseModel):
    """A constrained optimization problem: objective, constraints and regularizers.

    Two first-class ways to declare one:

    * **Subclass** it. Hyperparameters are pydantic fields (validated, configurable from
      the CLI with ``--set problem.NAME=VALUE``); define ``objective(self, model, batch)``
      and decorate constraint methods with :func:`constraint`. For a shared forward pass
      override :meth:`evaluate` instead.
    * **Compose** it: ``ConstrainedProblem(objective=f, constraints=[Constraint(...)],
      regularizers=[Regularizer(...)])`` where ``f(model, batch)`` and each constraint's
      ``fn(model, batch)`` are callables.

    Here ``model`` is the ``torch.nn.Module`` holding the primal variables (for plain
    tensors use :class:`constrain.Variables`) and ``batch`` is whatever the data loader
    yields (``None`` for problems without data).

    Raises:
        pydantic.ValidationError: Unknown fields (typos), invalid hyperparameters, invalid
            constraint declarations, duplicate constraint names, an ``rhs``/``size`` naming
            no field (pydantic wraps the :class:`ConfigError` raised during declaration).
        ConfigError: At evaluation, a constraint without a value function.
    """

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        populate_by_name=True,
        validate_assignment=True,
        # a NaN/Inf hyperparameter is refused by name (a field that may be infinite says
        # so with Field(allow_inf_nan=True))
        allow_inf_nan=False,
    )

    objective_fn: Any = Field(default=None, alias="objective", exclude=True)
    constraints: list[Constraint] = Field(default_factory=list, exclude=True)
    regularizers: list[Regularizer] = Field(default_factory=list, exclude=True)

    _declared: list[Constraint] = PrivateAttr(default_factory=list)

    is_convex: ClassVar[bool] = False
    """Set by problems built from convex blocks (they can be checked against CVXPY)."""

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            lines = bools_for_numbers(cls, data)
            if lines:
                raise ValueError("; ".join(line.strip() for line in lines))
        return data

    @field_validator("objective_fn")
    @classmethod
    def _objective_callable(cls, value: object) -> object:
        if value is not None and not callable(value):
            raise ValueError(f"objective must be a callable f(model, batch); got {describe(value)}")
        if value is not None and not _takes_two_arguments(value):
            raise ValueError(
                f"objective must take two arguments f(model, batch); got {describe(value)} "
                "(write lambda m, b: ... even when the batch is not used)"
            )
        return value

    def model_post_init(self, context: Any, /) -> None:
        declared = list(self.constraints)
        members: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):  # definition order, subclasses last
            for attr_name, member in vars(klass).items():
                if not attr_name.startswith("__"):
                    members[attr_name] = member
        for attr_name, member in members.items():
            meta = getattr(member, _CONSTRAINT_ATTR, None)
            if meta is None:
                continue
            rhs = meta["rhs"]
            if isinstance(rhs, str):
                if rhs not in type(self).model_fields:
                    raise ConfigError(
                        f"@constraint on {attr_name!r} gives rhs={rhs!r}, which is not a field "
                        f"of {type(self).__name__}; fields: {sorted(type(self).model_fields)}."
                    )
                rhs = getattr(self, rhs)
            size = meta["size"]
            if isinstance(size, str):
                if size not in type(self).model_fields:
                    raise ConfigError(
                        f"@constraint on {attr_name!r} gives size={size!r}, which is not a field "
                        f"of {type(self).__name__}; fields: {sorted(type(self).model_fields)}."
                    )
                size = getattr(self, size)
            declared.append(
                Constraint(
                    name=meta["name"],
                    sense=meta["sense"],
                    rhs=rhs,
                    size=size,
                    fn=getattr(self, attr_name),
                    per_sample=meta["per_sample"],
                    description=meta["description"],
                    max_multiplier=meta.get("max_multiplier"),
                    intermittent=meta.get("intermittent", False),
                )
            )
        seen: set[str] = set()
        for c in declared:
            if c.name in seen:
                raise ConfigError(
                    f"duplicate constraint name {c.name!r} in {type(self).__name__}; "
                    "every constraint needs a unique name."
                )
            seen.add(c.name)
        self._declared = declared

    def __setattr__(self, name: str, value: Any) -> None:
        """Assign (and validate) a field, then re-declare the constraints.

        A constraint's ``rhs`` or ``size`` may name a field, so changing a hyperparameter
        after construction must not leave a stale right-hand side behind.
        """
        super().__setattr__(name, value)
        if name in type(self).model_fields:
            self.model_post_init(None)

    # -- declaration --------------------------------------------------------------------
    @property
    def all_constraints(self) -> list[Constraint]:
        """Every constraint group: those passed to ``constraints=`` and decorated methods."""
        return list(self._declared)

    def constraint_named(self, name: str) -> Constraint:
        """The constraint called ``name``.

        Raises:
            ConfigError: If there is none (lists the known names).
        """
        for c in self._declared:
            if c.name == name:
                return c
        raise ConfigError(
            f"{type(self).__name__} has no constraint named {name!r}; known: "
            f"{[c.name for c in self._declared]}."
        )

    def hyperparameters(self) -> dict[str, Any]:
        """The validated hyperparameter fields (JSON-serialisable)."""
        return self.model_dump(mode="json")

    # -- evaluation ---------------------------------------------------------------------
    def objective(self, model: Any, batch: Any) -> Tensor:
        """The objective ``f(x)`` as a differentiable scalar.

        Override in subclasses, or pass ``objective=`` when composing.
        """
        if self.objective_fn is None:
            raise ConfigError(
                f"{type(self).__name__} has no objective: define "
                "`def objective(self, model, batch)` in the subclass or pass objective=..."
            )
        result: Tensor = self.objective_fn(model, batch)
        return result

    def constraint_values(self, model: Any, batch: Any = None) -> dict[str, Tensor]:
        """The constraints' left-hand sides at ``model`` (true values, not proxies, not
        standard form), evaluated without gradient."""
        with torch.no_grad():
            state = self.evaluate(model, batch)
        return {
            n: as_constraint_value(n, raw).value.detach() for n, raw in state.constraints.items()
        }

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        """Evaluate objective, constraints and smooth regularizer penalties.

        Override this for a shared forward pass; return every declared constraint.
        """
        values: dict[str, Tensor | ConstraintValue] = {}
        for c in declared(self):
            if c.fn is None:
                raise ConfigError(
                    f"constraint {c.name!r} has no value function: pass fn=... to Constraint, "
                    f"decorate a method with @constraint, or override evaluate() in "
                    f"{type(self).__name__}."
                )
            value = c.fn(model, batch)
            if value is None and c.intermittent:
                continue  # not measured at this step
            if c.proxy is not None:
                base = value.value if isinstance(value, ConstraintValue) else value
                indices = value.indices if isinstance(value, ConstraintValue) else None
                observed = value.observed if isinstance(value, ConstraintValue) else None
                value = ConstraintValue(base, c.proxy(model, batch), indices, observed)
            values[c.name] = value
        return ProblemState(objective=self.objective(model, batch), constraints=values)

    def describe(self) -> str:
        """One line per constraint, for reports and ``constrain list``."""
        lines = [f"{type(self).__name__}"]
        for c in self._declared:
            kind = "per-sample " if c.per_sample else ""
            size = "?" if c.size is None else str(c.size)
            lines.append(f"  {kind}{c.name}[{size}]: g {c.sense} {c.rhs}")
        return "\n".join(lines)


def as_constraint_value(name: str, raw: object) -> ConstraintValue:
    """Normalise what ``evaluate`` returned for constraint ``name``.

    Raises:
        ShapeError: If the value is not a floating tensor or the proxy/indices do not match.
    """
    value = raw if isinstance(raw, ConstraintValue) else ConstraintValue(raw)  # type: ignore[arg-type]
    if not isinstance(value.value, Tensor):
        raise ShapeError(
            f"constraint {name!r}: expected a tensor (or ConstraintValue); got "
            f"{describe(value.value)}. Return torch.as_tensor(...) of the value."
        )
    if not is_dense(value.value):
        nested = value.value.is_nested
        kind = "nested" if nested else str(value.value.layout).removeprefix("torch.")
        fix = "torch.cat(value.unbind()), one flat tensor" if nested else "value.to_dense()"
        raise ShapeError(
            f"constraint {name!r}: expected a dense (strided) tensor; got a {kind} tensor. "
            f"Return {fix}."
        )
    if not value.value.is_floating_point():
        raise ShapeError(
            f"constraint {name!r}: expected a floating-point tensor (real, not complex); got "
            f"{describe(value.value)}. Cast counts or booleans with .float()."
        )
    device = value.value.device
    if value.proxy is not None:
        if not isinstance(value.proxy, Tensor) or not value.proxy.is_floating_point():
            raise ShapeError(
                f"constraint {name!r}: the proxy must be a real floating-point tensor (with a "
                f"gradient); got {describe(value.proxy)}."
            )
        if value.proxy.shape != value.value.shape:
            raise ShapeError(
                f"constraint {name!r}: proxy has shape {tuple(value.proxy.shape)} but the "
                f"value has shape {tuple(value.value.shape)}; they must match."
            )
        if value.proxy.device != device:
            raise ShapeError(
                f"constraint {name!r}: the proxy is on {value.proxy.device} but the value is "
                f"on {device}; put both on the model's device."
            )
    if value.indices is not None:
        if not isinstance(value.indices, Tensor) or value.indices.dtype not in (
            torch.int64,
            torch.int32,
        ):
            raise ShapeError(
                f"constraint {name!r}: indices must be an integer tensor; got "
                f"{describe(value.indices)}. Pass torch.as_tensor(indices)."
            )
        if value.indices.reshape(-1).shape != value.value.reshape(-1).shape:
            raise ShapeError(
                f"constraint {name!r}: {value.indices.numel()} indices for "
                f"{value.value.numel()} values; give one sample index per value."
            )
        if value.indices.device != device:
            raise ShapeError(
                f"constraint {name!r}: the indices are on {value.indices.device} but the "
                f"value is on {device}; put both on the model's device."
            )
    if (
        value.observed is not None
        and not isinstance(value.observed, bool)
        and (
            not isinstance(value.observed, Tensor)
            or value.observed.dtype != torch.bool
            or value.observed.shape != value.value.shape
            or value.observed.device != device
        )
    ):
        raise ShapeError(
            f"constraint {name!r}: observed must be True, False or a boolean tensor of the "
            f"value's shape {tuple(value.value.shape)} on {device}; got "
            f"{describe(value.observed)}."
        )
    return value


def is_dense(value: Tensor) -> bool:
    """Whether ``value`` is a dense tensor: strided layout, not nested (not sparse, mkldnn
    or nested, which the stacking of constraint values refuses)."""
    return value.layout is torch.strided and not value.is_nested


def check_objective(problem: ConstrainedProblem, objective: object) -> None:
    """Check that an evaluation's objective is a real floating-point tensor with one
    element (checked at every evaluation: an objective that changes type later in a run
    is refused at the step it does so).

    Raises:
        ShapeError: For anything but a tensor, a tensor with more or fewer than one
            element, or an integer, boolean or complex tensor.
    """
    if not isinstance(objective, Tensor):
        raise ShapeError(
            f"{type(problem).__name__}: the objective must be a scalar tensor; got "
            f"{describe(objective)}."
        )
    if objective.numel() != 1:
        raise ShapeError(
            f"{type(problem).__name__}: the objective must be a scalar; got a tensor of "
            f"shape {tuple(objective.shape)}. Reduce it with .mean() or .sum()."
        )
    if not objective.is_floating_point():
        raise ShapeError(
            f"{type(problem).__name__}: the objective must be a real floating-point scalar; "
            f"got {describe(objective)}. An integer or complex objective cannot be trained."
        )


def check_trainable(problem: ConstrainedProblem, state: ProblemState) -> None:
    """Check, once, that the primal player can see what it must minimise (call with
    gradients enabled and a model that has trainable parameters).

    The objective itself is checked at every evaluation (:func:`check_objective`).

    Raises:
        ConfigError: If a constraint's primal value (its proxy, else its value) carries no
            gradient (detached, integer, computed under ``no_grad``, or a count without a
            proxy), or if neither the objective nor any constraint depends on the model.
    """
    objective = state.objective
    blind = []
    for name, raw in state.constraints.items():
        value = as_constraint_value(name, raw)
        primal = value.proxy if value.proxy is not None else value.value
        if not primal.requires_grad:
            blind.append(name)
    if blind:
        raise ConfigError(
            f"constraint(s) {blind} carry no gradient to the model: the primal player cannot "
            "see them (a detached or integer value, a count or rate without a proxy, or a "
            "value computed under torch.no_grad()). Return "
            "ConstraintValue(exact_value, proxy=differentiable_surrogate)."
        )
    if isinstance(objective, Tensor) and not objective.requires_grad and not state.constraints:
        raise ConfigError(
            f"{type(problem).__name__}: the objective does not depend on the model (no "
            "gradient: computed under torch.no_grad(), detached or constant) and there are no "
            "constraints; nothing can be trained."
        )


def check_names(problem: ConstrainedProblem, state: ProblemState) -> None:
    """Check that ``state`` has exactly the declared constraints.

    Raises:
        ConfigError: Naming missing and unexpected constraints.
    """
    declared = {c.name for c in problem.all_constraints}
    got = set(state.constraints)
    optional = {c.name for c in problem.all_constraints if c.intermittent}
    if not (declared - optional) <= got or not got <= declared:
        missing = sorted(declared - optional - got)
        extra = sorted(got - declared)
        raise ConfigError(
            f"{type(problem).__name__}.evaluate() returned constraints {sorted(got)} but "
            f"{sorted(declared)} are declared (missing: {missing}, undeclared: {extra})."
        )


def _takes_two_arguments(fn: object) -> bool:
    """Whether ``fn(model, batch)`` binds (True when the signature cannot be read)."""
    try:
        inspect.signature(fn).bind(None, None)  # type: ignore[arg-type]
    except TypeError:
        return False
    except ValueError:  # builtins without a signature
        return True
    return True
