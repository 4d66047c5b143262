"""The CVXPY twin of a problem built from blocks, and the mapping of its dual values.

Sign and scale conventions (the library's, see docs/algorithms.md, 'Standard form and signs').
A constraint group ``g(x) <sense> rhs`` has the standard form

* ``'<='``: ``g(x) - rhs <= 0``,  multiplier ``lam >= 0``;
* ``'>='``: ``rhs - g(x) <= 0``,  multiplier ``lam >= 0``;
* ``'=='``: ``g(x) - rhs == 0``,  multiplier ``mu`` of any sign;

and the Lagrangian is ``L(x, lam) = f(x) + sum_c lam_c . standard_form_c(x)``. The twin
states each group literally as ``g <= rhs``, ``g >= rhs`` or ``g == rhs``. CVXPY writes
``g >= rhs`` as ``rhs <= g`` and gives every inequality a non-negative dual value ``y``
whose Lagrangian term is ``y . (left - right)``: that is the library's standard form, so
``lam = y`` for both inequality senses. For ``g == rhs`` CVXPY's Lagrangian term is
``y . (g - rhs)``, so ``mu = EQUALITY_DUAL_SIGN * y`` with ``EQUALITY_DUAL_SIGN = +1``.
No scaling is involved: the twin keeps every constraint exactly as declared (the tests
check all of this through the KKT conditions at CVXPY's solution).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import ConfigError, describe
from ..problem import ConstrainedProblem, Constraint
from ..reference import Reference
from ._expr import Data, Expression, Variable, import_cvxpy
from .norms import Norm
from .weight_sharing import WeightSharing

__all__ = [
    "CLARABEL_TIGHT",
    "EQUALITY_DUAL_SIGN",
    "BlockForm",
    "CvxpyTwin",
    "TwinSolution",
    "block_form",
    "to_cvxpy",
]

EQUALITY_DUAL_SIGN = 1.0
"""Library multiplier of ``g == rhs`` = ``EQUALITY_DUAL_SIGN * CVXPY dual_value``."""

CLARABEL_TIGHT: dict[str, float] = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
}
"""Clarabel settings of the exact reference solve."""

_PROX_BLOCKS = {"l1": "norm1", "weight_sharing": "weight_sharing"}
_IGNORED_PROX_OPTIONS = {"method"}


@dataclass(frozen=True)
class BlockForm:
    """The blocks of a problem: what both torch and CVXPY evaluate.

    Attributes:
        objective: The objective block ``f`` (a scalar).
        constraints: Each constraint group with its left-hand-side block ``g``.
        penalties: Regularizers with a block form, as ``(label, strength * R(w))`` terms of
            the objective (the solver applies them as proximal steps).
        name: The problem's class name (for messages).
    """

    objective: Expression
    constraints: tuple[tuple[Constraint, Expression], ...] = ()
    penalties: tuple[tuple[str, Expression], ...] = ()
    name: str = "problem"

    def expressions(self) -> list[Expression]:
        """Objective, constraint and penalty blocks."""
        return [self.objective, *(e for _, e in self.constraints), *(e for _, e in self.penalties)]

    def variables(self) -> dict[str, Variable]:
        """All :class:`Variable` leaves by name (one shape per name)."""
        found: dict[str, Variable] = {}
        data: dict[str, Data] = {}
        for expr in self.expressions():
            expr._collect(found, data)
        return found

    def data_leaves(self) -> dict[str, Data]:
        """All :class:`Data` leaves by name."""
        found: dict[str, Variable] = {}
        data: dict[str, Data] = {}
        for expr in self.expressions():
            expr._collect(found, data)
        return data

    def is_smooth(self) -> bool:
        """True if every block is differentiable everywhere (so stationarity is a gradient)."""
        return all(expr.is_smooth() for expr in self.expressions())

    def full_objective(self) -> Expression:
        """``f + sum of penalties`` (what the twin minimises)."""
        out = self.objective
        for _, term in self.penalties:
            out = out + term
        return out


def _not_a_block(problem: ConstrainedProblem, part: str, value: object) -> ConfigError:
    return ConfigError(
        f"{type(problem).__name__} cannot be validated exactly: {part} is "
        f"{describe(value)}, not a block expression. Build it from constrain.blocks (pass "
        "objective=<block> and Constraint(..., fn=<block>), or subclass "
        "constrain.blocks.BlockProblem) so that it has an exact CVXPY form."
    )


def block_form(problem: ConstrainedProblem) -> BlockForm:
    """Extract the blocks of a problem built only from blocks.

    Raises:
        ConfigError: If the objective or a constraint is a Python callable or method, the
            problem overrides ``objective``/``evaluate``, a constraint is per-sample, or a
            regularizer has no block form (each message names the part).
    """
    if not isinstance(problem, ConstrainedProblem):
        raise ConfigError(f"expected a constrain.ConstrainedProblem; got {describe(problem)}.")
    cls = type(problem)
    for method in ("objective", "evaluate"):
        if getattr(cls, method) is not getattr(ConstrainedProblem, method):
            raise ConfigError(
                f"{cls.__name__} cannot be validated exactly: it overrides {method}(), so the "
                "solver evaluates Python code that has no CVXPY form. Build the objective and "
                "constraints from constrain.blocks instead (objective=<block>, "
                "Constraint(..., fn=<block>), or subclass constrain.blocks.BlockProblem and "
                f"implement declare()) without overriding {method}()."
            )
    objective = problem.objective_fn
    if not isinstance(objective, Expression):
        raise _not_a_block(problem, "the objective", objective)
    if objective.size != 1:
        raise ConfigError(
            f"{cls.__name__}: the objective block {objective.label()!r} has shape "
            f"{list(objective.shape)}; it must be a scalar (reduce it with blocks.sum/mean)."
        )
    constraints: list[tuple[Constraint, Expression]] = []
    for c in problem.all_constraints:
        if not isinstance(c.fn, Expression):
            raise _not_a_block(problem, f"constraint {c.name!r}", c.fn)
        if c.per_sample:
            raise ConfigError(
                f"{cls.__name__} cannot be validated exactly: constraint {c.name!r} is "
                "per-sample (its multipliers are indexed by minibatch samples); declare it "
                "as a dense constraint group to validate it."
            )
        if c.size is not None and c.size != c.fn.size:
            raise ConfigError(
                f"constraint {c.name!r} is declared with size {c.size} but its block "
                f"{c.fn.label()!r} has {c.fn.size} entries."
            )
        if isinstance(c.rhs, tuple) and len(c.rhs) != c.fn.size:
            raise ConfigError(
                f"constraint {c.name!r} has {len(c.rhs)} right-hand sides for {c.fn.size} "
                f"entries of {c.fn.label()!r}."
            )
        constraints.append((c, c.fn))
    form = BlockForm(objective, tuple(constraints), name=cls.__name__)
    penalties = _regularizer_blocks(problem, form.variables())
    return BlockForm(objective, tuple(constraints), tuple(penalties), name=cls.__name__)


def _regularizer_blocks(
    problem: ConstrainedProblem, variables: Mapping[str, Variable]
) -> list[tuple[str, Expression]]:
    out: list[tuple[str, Expression]] = []
    for reg in problem.regularizers:
        prox = reg.prox if isinstance(reg.prox, str) else None
        if prox not in _PROX_BLOCKS:
            raise ConfigError(
                f"{type(problem).__name__} cannot be validated exactly: regularizer "
                f"{reg.label!r} has no block form (only prox 'l1' and 'weight_sharing' "
                "have one); put the penalty into the objective as a block instead."
            )
        extra = set(reg.options) - _IGNORED_PROX_OPTIONS
        if extra:
            raise ConfigError(
                f"regularizer {reg.label!r}: options {sorted(extra)} have no block form; "
                f"only {sorted(_IGNORED_PROX_OPTIONS)} may be set for an exact check."
            )
        names = (
            list(variables)
            if reg.params is None
            else [n for n in variables if any(fnmatch.fnmatchcase(n, p) for p in reg.params)]
        )
        if not names:
            raise ConfigError(
                f"regularizer {reg.label!r}: params {reg.params} match no block variable "
                f"(variables: {sorted(variables)})."
            )
        for n in names:
            var = variables[n]
            block: Expression = Norm(var, 1) if prox == "l1" else WeightSharing(var)
            out.append((f"{reg.label}({n})", reg.strength * block))
    return out


@dataclass
class TwinSolution:
    """CVXPY's solution of the twin, in the library's conventions.

    Attributes:
        objective: Optimal value (including regularizer penalties).
        primal: Optimal variables by name.
        multipliers: Multipliers by constraint name, flattened (library convention).
        status: CVXPY's status (``"optimal"`` or ``"optimal_inaccurate"``; at these tight
            tolerances the latter is common for cone problems and usually still accurate to
            ~1e-6: :func:`constrain.validate` certifies the solution through its KKT
            residuals rather than through the label).
        solver: The solver used.
    """

    objective: float
    primal: dict[str, np.ndarray]
    multipliers: dict[str, np.ndarray]
    status: str
    solver: str = "CLARABEL"

    def reference(self) -> Reference:
        """This solution as a :class:`constrain.Reference` (for problem specs)."""
        return Reference(
            objective=self.objective,
            multipliers=dict(self.multipliers),
            primal=dict(self.primal),
            source=f"cvxpy/{self.solver.lower()} (blocks twin)",
        )


@dataclass
class CvxpyTwin:
    """The CVXPY problem equivalent to a block problem.

    Attributes:
        problem: The ``cvxpy.Problem``.
        variables: CVXPY variables by block variable name.
        constraints: One CVXPY constraint per library constraint group, by name.
        form: The blocks it was built from.
    """

    problem: Any
    variables: dict[str, Any]
    constraints: dict[str, Any]
    form: BlockForm
    senses: dict[str, str] = field(default_factory=dict)

    def solve(self, **settings: Any) -> TwinSolution:
        """Solve with Clarabel at tight tolerances (:data:`CLARABEL_TIGHT`, overridable).

        Raises:
            ConfigError: If Clarabel is missing, or the twin is infeasible, unbounded or
                cannot be solved (naming CVXPY's status).
        """
        cp = import_cvxpy()
        if "CLARABEL" not in cp.installed_solvers():
            raise ConfigError(
                "the Clarabel solver is not installed; install it with "
                "`pip install constrain[reference]`."
            )
        try:
            with warnings.catch_warnings():  # the status says it: "optimal_inaccurate"
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                self.problem.solve(solver=cp.CLARABEL, **{**CLARABEL_TIGHT, **settings})
        except cp.error.SolverError as exc:
            raise ConfigError(
                f"CVXPY could not solve the twin of {self.form.name}: {exc}"
            ) from None
        status = str(self.problem.status)
        if status not in ("optimal", "optimal_inaccurate"):
            hint = {
                "infeasible": "the constraints cannot all hold",
                "unbounded": "the objective is unbounded below on the feasible set",
            }.get(status.replace("_inaccurate", ""), "")
            raise ConfigError(
                f"the CVXPY twin of {self.form.name} is {status!r}"
                + (f" ({hint})" if hint else "")
                + "; there is no exact solution to compare with."
            )
        multipliers = {}
        for name, con in self.constraints.items():
            dual = np.asarray(con.dual_value, dtype=np.float64).reshape(-1)
            multipliers[name] = EQUALITY_DUAL_SIGN * dual if self.senses[name] == "==" else dual
        primal = {n: np.asarray(v.value, dtype=np.float64) for n, v in self.variables.items()}
        return TwinSolution(float(self.problem.value), primal, multipliers, status)


def to_cvxpy(problem: ConstrainedProblem, data: Mapping[str, Any] | None = None) -> CvxpyTwin:
    """Build the CVXPY twin of a problem whose objective and constraints are blocks.

    Args:
        problem: A problem built only from blocks (composition or
            :class:`~constrain.blocks.BlockProblem`); ``l1`` and ``weight_sharing`` prox
            regularizers become ``strength * R(w)`` terms of the objective.
        data: The full data set for :class:`~constrain.blocks.Data` blocks.

    Raises:
        ConfigError: If CVXPY is missing, a part is not a block, a block has no convex
            CVXPY form, or the objective or a constraint is not convex (each named).
    """
    cp = import_cvxpy()
    form = block_form(problem)
    missing = sorted(set(form.data_leaves()) - set(data or {}))
    if missing:
        raise ConfigError(
            f"{form.name} reads data {missing} from the batch; pass the full data set as "
            f"data={{name: array}} (got keys {sorted(data or {})})."
        )
    variables = {n: cp.Variable(v.dims, name=n) for n, v in form.variables().items()}
    objective = cp.Expression.cast_to_const(form.full_objective().cvxpy(variables, data))
    if not objective.is_convex():
        raise ConfigError(
            f"{form.name} cannot be validated exactly: the objective "
            f"{form.full_objective().label()!r} is not convex as written (CVXPY curvature: "
            f"{objective.curvature}); minimise a convex expression."
        )
    constraints: dict[str, Any] = {}
    senses: dict[str, str] = {}
    for c, expr in form.constraints:
        g = cp.Expression.cast_to_const(expr.cvxpy(variables, data))
        rhs: Any = c.rhs if isinstance(c.rhs, float) else np.asarray(c.rhs).reshape(expr.shape)
        con = g <= rhs if c.sense == "<=" else (g >= rhs if c.sense == ">=" else g == rhs)
        if not con.is_dcp():
            need = {"<=": "convex", ">=": "concave", "==": "affine"}[c.sense]
            raise ConfigError(
                f"{form.name} cannot be validated exactly: constraint {c.name!r} "
                f"({expr.label()} {c.sense} rhs) is not convex: for {c.sense!r} the left side "
                f"must be {need}, but CVXPY finds it {g.curvature}."
            )
        constraints[c.name] = con
        senses[c.name] = c.sense
    twin = cp.Problem(cp.Minimize(objective), list(constraints.values()))
    return CvxpyTwin(twin, variables, constraints, form, senses)
