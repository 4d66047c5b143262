"""Exact validation: compare the library's solution of a block problem with CVXPY's.

:func:`validate` solves the CVXPY twin of a problem built from :mod:`constrain.blocks`
(Clarabel, tolerances ~1e-12), maps CVXPY's dual values onto the library's multipliers
and reports, for the library's point ``x`` and multipliers ``lam``:

* ``primal_error = ||x - x*||_2`` (all block variables, concatenated);
* ``objective_gap = |F(x) - F(x*)|`` with ``F = f + regularizer penalties``;
* ``multiplier_error = ||lam - lam*||_2`` (all constraint groups, concatenated);
* ``max_violation = max(max_i g_i(x), max_k |h_k(x)|, 0)`` in standard form;
* KKT residuals of ``L(x, lam) = F(x) + sum_c lam_c . s_c(x)`` (``s_c``: standard form):
  stationarity ``||grad_x L(x, lam)||_2`` (by autograd; only meaningful, and only checked,
  when every block is smooth), complementary slackness ``max_i |lam_i s_i(x)|`` over
  inequalities, dual feasibility ``max(0, -min_i lam_i)`` over inequalities and primal
  feasibility (= ``max_violation``);
* the same KKT residuals at CVXPY's solution with the mapped duals (``reference_kkt``),
  which certifies the sign conventions of :mod:`constrain.blocks.twin`.

Every error is absolute and passes when it is at most its tolerance in
:class:`Tolerances`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ._components import build_model
from ._errors import ConfigError, describe
from .blocks.twin import (
    EQUALITY_DUAL_SIGN,
    BlockForm,
    CvxpyTwin,
    TwinSolution,
    block_form,
    to_cvxpy,
)
from .problem import ConstrainedProblem

__all__ = [
    "CONVENTIONS",
    "KKTResiduals",
    "Tolerances",
    "ValidationReport",
    "kkt_residuals",
    "solve_reference",
    "to_cvxpy",
    "validate",
    "validate_registered",
]

CONVENTIONS = (
    "standard form: g - rhs <= 0 ('<='), rhs - g <= 0 ('>='), g - rhs == 0 ('=='); "
    "L = F + sum lam . standard_form with lam >= 0 for inequalities; "
    "lam = CVXPY dual_value for '<=' and '>=', "
    f"mu = {EQUALITY_DUAL_SIGN:+g} * CVXPY dual_value for '=='"
)
"""The sign conventions of the multipliers in a report (stated in every report)."""


class Tolerances(BaseModel):
    """Absolute tolerances of the checks (a check passes when its error is ``<=`` these).

    Attributes:
        primal: ``||x - x*||_2``.
        objective: ``|F(x) - F(x*)|``.
        multipliers: ``||lam - lam*||_2``.
        violation: Largest standard-form violation at ``x``.
        stationarity: ``||grad_x L(x, lam)||_2`` (smooth problems only).
        complementary_slackness: ``max |lam_i s_i(x)|`` over inequalities.
        dual_feasibility: ``max(0, -min lam_i)`` over inequalities.
        reference_kkt: Every KKT residual at CVXPY's solution with the mapped duals (a
            sign-convention error shows up far above it; see :func:`solve_reference`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    primal: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    objective: float = Field(default=1e-5, ge=0, allow_inf_nan=False)
    multipliers: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    violation: float = Field(default=1e-6, ge=0, allow_inf_nan=False)
    stationarity: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    complementary_slackness: float = Field(default=1e-6, ge=0, allow_inf_nan=False)
    dual_feasibility: float = Field(default=1e-9, ge=0, allow_inf_nan=False)
    reference_kkt: float = Field(default=1e-6, ge=0, allow_inf_nan=False)


class KKTResiduals(BaseModel):
    """KKT residuals of one primal-dual pair (see the module docstring).

    Attributes:
        stationarity: ``||grad_x L(x, lam)||_2`` by autograd.
        stationarity_checked: False when a block is not smooth: autograd then returns one
            subgradient, so a non-zero value does not mean a non-stationary point.
        complementary_slackness: ``max_i |lam_i s_i(x)|`` over inequalities.
        dual_feasibility: ``max(0, -min_i lam_i)`` over inequalities.
        primal_feasibility: ``max(max_i s_i(x), max_k |h_k(x)|, 0)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stationarity: float
    stationarity_checked: bool
    complementary_slackness: float
    dual_feasibility: float
    primal_feasibility: float


class ValidationReport(BaseModel):
    """The outcome of :func:`validate` (JSON-serialisable with :meth:`to_dict`).

    Attributes:
        problem: Problem name.
        passed: True if every check passed.
        failures: One sentence per failed check.
        checks: Each check's outcome by name.
        tolerances: The tolerances used.
        conventions: The multiplier sign conventions.
        reference_status: CVXPY's status.
        objective: ``F(x)`` at the library's point.
        reference_objective: ``F(x*)``.
        objective_gap: ``|F(x) - F(x*)|``.
        primal_error: ``||x - x*||_2``.
        primal_errors: Per variable.
        multiplier_error: ``||lam - lam*||_2`` (``None`` if no multipliers were given).
        multiplier_errors: Per constraint group.
        max_violation: Largest standard-form violation at ``x``.
        multipliers: The library's multipliers by constraint name.
        reference_multipliers: CVXPY's, mapped to the library's conventions.
        kkt: KKT residuals at ``(x, lam)``.
        reference_kkt: KKT residuals at ``(x*, lam*)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    problem: str
    passed: bool
    failures: list[str]
    checks: dict[str, bool]
    tolerances: Tolerances
    conventions: str = CONVENTIONS
    reference_status: str
    objective: float
    reference_objective: float
    objective_gap: float
    primal_error: float
    primal_errors: dict[str, float]
    multiplier_error: float | None
    multiplier_errors: dict[str, float]
    max_violation: float
    multipliers: dict[str, list[float]] | None
    reference_multipliers: dict[str, list[float]]
    kkt: KKTResiduals
    reference_kkt: KKTResiduals

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        return self.model_dump(mode="json")

    def __str__(self) -> str:
        mult = "-" if self.multiplier_error is None else f"{self.multiplier_error:.3g}"
        rows = [
            ("problem", self.problem),
            ("passed", str(self.passed)),
            ("objective / reference", f"{self.objective:.10g} / {self.reference_objective:.10g}"),
            ("objective gap", f"{self.objective_gap:.3g}"),
            ("primal error", f"{self.primal_error:.3g}"),
            ("multiplier error", mult),
            ("max violation", f"{self.max_violation:.3g}"),
            (
                "stationarity",
                f"{self.kkt.stationarity:.3g}"
                + ("" if self.kkt.stationarity_checked else " (non-smooth: not checked)"),
            ),
            ("complementary slackness", f"{self.kkt.complementary_slackness:.3g}"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
        lines += [f"  FAILED: {text}" for text in self.failures]
        return "\n".join(lines)


def _as_float64(value: object, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected a tensor or array; got {describe(value)}.") from None


def kkt_residuals(
    form: BlockForm,
    point: Mapping[str, Tensor],
    multipliers: Mapping[str, Tensor] | None,
    data: Mapping[str, Any] | None = None,
) -> tuple[KKTResiduals, float]:
    """KKT residuals of ``(point, multipliers)`` and the objective ``F(point)``, in float64.

    Args:
        form: The problem's blocks.
        point: Variable values by name.
        multipliers: Multipliers by constraint name (library convention); ``None`` treats
            them as zero (only feasibility is then meaningful).
        data: Full data for :class:`~constrain.blocks.Data` blocks.
    """
    params = {n: point[n].detach().to(torch.float64).clone().requires_grad_(True) for n in point}
    model = SimpleNamespace(**params)
    objective = form.full_objective().torch(model, data)
    lagrangian = objective
    slackness = dual = violation = 0.0
    for c, expr in form.constraints:
        s = c.violation(expr.torch(model, data).reshape(-1))
        lam = torch.zeros_like(s) if multipliers is None else multipliers[c.name].reshape(-1)
        lagrangian = lagrangian + lam @ s
        detached = s.detach()
        if detached.numel() == 0:  # an empty group: no condition (max over no entries)
            continue
        if c.is_equality:
            violation = max(violation, float(detached.abs().max()))
        else:
            violation = max(violation, float(detached.max()))
            slackness = max(slackness, float((lam * detached).abs().max()))
            dual = max(dual, float((-lam).max()))
    grads = torch.autograd.grad(lagrangian, list(params.values()), allow_unused=True)
    flat = [g.reshape(-1) for g in grads if g is not None]
    stationarity = float(torch.linalg.vector_norm(torch.cat(flat))) if flat else 0.0
    residuals = KKTResiduals(
        stationarity=stationarity,
        stationarity_checked=form.is_smooth(),
        complementary_slackness=slackness,
        dual_feasibility=max(dual, 0.0),
        primal_feasibility=max(violation, 0.0),
    )
    return residuals, float(objective.detach())


_FALLBACK_SETTINGS: tuple[dict[str, Any], ...] = (
    # Shorter interior-point steps keep Clarabel off the cone boundary, where it stalls.
    {"max_step_fraction": 0.8, "equilibrate_enable": False},
    {"max_step_fraction": 0.9},
    {"equilibrate_enable": False},
)


def _reference_residual(twin: CvxpyTwin, solution: TwinSolution, data: Any) -> float:
    point = {n: torch.as_tensor(v) for n, v in solution.primal.items()}
    lam = {n: torch.as_tensor(v) for n, v in solution.multipliers.items()}
    kkt, _ = kkt_residuals(twin.form, point, lam, data)
    return max(
        kkt.stationarity if kkt.stationarity_checked else 0.0,
        kkt.complementary_slackness,
        kkt.primal_feasibility,
        kkt.dual_feasibility,
    )


def solve_reference(twin: CvxpyTwin, data: Mapping[str, Any] | None = None) -> TwinSolution:
    """Solve the twin at tight Clarabel settings; if CVXPY reports ``optimal_inaccurate``
    (Clarabel stalled short of the tight tolerances, common on cones), re-solve with a few
    alternative settings and keep the solution whose KKT residuals (in the library's
    convention) are smallest."""
    best = twin.solve()
    if best.status == "optimal":
        return best
    best_residual = _reference_residual(twin, best, data)
    for settings in _FALLBACK_SETTINGS:
        try:
            candidate = twin.solve(**settings)
        except ConfigError:
            continue
        residual = _reference_residual(twin, candidate, data)
        if residual < best_residual:
            best, best_residual = candidate, residual
    return best


def _solution_parts(
    solution: object, multipliers: Mapping[str, object] | None
) -> tuple[Any, Mapping[str, object] | None]:
    """(model-like object, multipliers) from a Solver, SolveResult, module or mapping."""
    from .solver import Solver, SolveResult

    if isinstance(solution, Solver):
        return solution.model, multipliers if multipliers is not None else solution.multipliers
    if isinstance(solution, SolveResult):
        return solution.model, multipliers if multipliers is not None else solution.multipliers
    if isinstance(solution, nn.Module):
        return solution, multipliers
    if isinstance(solution, Mapping):
        return SimpleNamespace(**dict(solution)), multipliers
    raise ConfigError(
        "solution must be a constrain.Solver, a SolveResult, the model (nn.Module) or a "
        f"mapping of variable values; got {describe(solution)}."
    )


def _read_point(model: Any, form: BlockForm) -> dict[str, Tensor]:
    point: dict[str, Tensor] = {}
    for name, var in form.variables().items():
        value = getattr(model, name, None)
        if value is None:
            raise ConfigError(
                f"the solution has no value for block variable {name!r} (shape {list(var.dims)})."
            )
        tensor = _as_float64(value, f"variable {name!r}")
        if tuple(tensor.shape) != var.dims:
            raise ConfigError(
                f"the solution's {name!r} has shape {list(tensor.shape)}; the blocks declare "
                f"{list(var.dims)}."
            )
        point[name] = tensor
    return point


def _read_multipliers(form: BlockForm, multipliers: Mapping[str, object]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for c, expr in form.constraints:
        if c.name not in multipliers:
            raise ConfigError(
                f"no multiplier for constraint {c.name!r}; got multipliers for "
                f"{sorted(multipliers)}."
            )
        lam = _as_float64(multipliers[c.name], f"multiplier {c.name!r}").reshape(-1)
        if lam.numel() != expr.size:
            raise ConfigError(
                f"constraint {c.name!r} has {expr.size} entries but {lam.numel()} multipliers "
                "were given."
            )
        out[c.name] = lam
    return out


def _norm(parts: list[np.ndarray]) -> float:
    return float(np.linalg.norm(np.concatenate(parts))) if parts else 0.0


def validate(
    problem: ConstrainedProblem,
    solution: object,
    *,
    multipliers: Mapping[str, object] | None = None,
    data: Mapping[str, Any] | None = None,
    tolerances: Tolerances | Mapping[str, float] | None = None,
    twin: CvxpyTwin | None = None,
    reference: TwinSolution | None = None,
    name: str | None = None,
) -> ValidationReport:
    """Check a solution of a block problem against the exact CVXPY solution.

    Args:
        problem: A problem built only from :mod:`constrain.blocks`.
        solution: A :class:`~constrain.Solver` or :class:`~constrain.SolveResult` (point
            and multipliers), the model (``nn.Module``), or a mapping of variable values.
        multipliers: Multipliers by constraint name (library convention), overriding
            those of ``solution``; without any, multiplier checks are skipped.
        data: Full data set for :class:`~constrain.blocks.Data` blocks.
        tolerances: :class:`Tolerances` or a mapping of overrides.
        twin: A prebuilt :func:`to_cvxpy` twin (built here if ``None``).
        reference: A solved twin (skips the CVXPY solve, see :func:`solve_reference`).
        name: Problem name in the report (default: the class name).

    Returns:
        The :class:`ValidationReport`; ``report.passed`` is the verdict.

    Raises:
        ConfigError: If the problem is not built from blocks, is not convex, CVXPY is
            missing, or the solution lacks a variable or multiplier.

    Example:
        >>> result = constrain.solve(problem, model, controller="nupi")  # doctest: +SKIP
        >>> print(constrain.validate(problem, result))  # doctest: +SKIP
    """
    if tolerances is None:
        tol = Tolerances()
    elif isinstance(tolerances, Tolerances):
        tol = tolerances
    else:
        tol = build_model(Tolerances, tolerances, "validation tolerances")
    if reference is None:
        twin = twin if twin is not None else to_cvxpy(problem, data)
        reference = solve_reference(twin, data)
    form = twin.form if twin is not None else block_form(problem)
    model, raw_multipliers = _solution_parts(solution, multipliers)
    point = _read_point(model, form)
    lam = None if raw_multipliers is None else _read_multipliers(form, raw_multipliers)
    kkt, objective = kkt_residuals(form, point, lam, data)
    exact_point = {n: torch.as_tensor(v) for n, v in reference.primal.items()}
    exact_lam = {n: torch.as_tensor(v) for n, v in reference.multipliers.items()}
    reference_kkt, _ = kkt_residuals(form, exact_point, exact_lam, data)

    primal_errors = {
        n: float(np.linalg.norm(point[n].numpy().reshape(-1) - reference.primal[n].reshape(-1)))
        for n in point
    }
    primal_error = _norm(
        [point[n].numpy().reshape(-1) - reference.primal[n].reshape(-1) for n in point]
    )
    multiplier_errors: dict[str, float] = {}
    multiplier_error: float | None = None
    if lam is not None:
        diffs = {n: lam[n].numpy() - reference.multipliers[n] for n in lam}
        multiplier_errors = {n: float(np.linalg.norm(d)) for n, d in diffs.items()}
        multiplier_error = _norm(list(diffs.values()))
    gap = abs(objective - reference.objective)

    checks: dict[str, bool] = {
        "reference_solved": reference.status in ("optimal", "optimal_inaccurate"),
        "primal": primal_error <= tol.primal,
        "objective": gap <= tol.objective,
        "violation": kkt.primal_feasibility <= tol.violation,
        "complementary_slackness": kkt.complementary_slackness <= tol.complementary_slackness,
        "dual_feasibility": kkt.dual_feasibility <= tol.dual_feasibility,
        "reference_kkt": max(
            reference_kkt.stationarity if reference_kkt.stationarity_checked else 0.0,
            reference_kkt.complementary_slackness,
            reference_kkt.dual_feasibility,
            reference_kkt.primal_feasibility,
        )
        <= tol.reference_kkt,
    }
    if multiplier_error is not None:
        checks["multipliers"] = multiplier_error <= tol.multipliers
    if kkt.stationarity_checked:
        checks["stationarity"] = kkt.stationarity <= tol.stationarity
    failures = _failures(
        checks, tol, reference, primal_error, gap, multiplier_error, kkt, reference_kkt
    )
    return ValidationReport(
        problem=name or form.name,
        passed=all(checks.values()),
        failures=failures,
        checks=checks,
        tolerances=tol,
        reference_status=reference.status,
        objective=objective,
        reference_objective=reference.objective,
        objective_gap=gap,
        primal_error=primal_error,
        primal_errors=primal_errors,
        multiplier_error=multiplier_error,
        multiplier_errors=multiplier_errors,
        max_violation=kkt.primal_feasibility,
        multipliers=None if lam is None else {n: v.tolist() for n, v in lam.items()},
        reference_multipliers={n: np.asarray(v).tolist() for n, v in reference.multipliers.items()},
        kkt=kkt,
        reference_kkt=reference_kkt,
    )


def _failures(
    checks: Mapping[str, bool],
    tol: Tolerances,
    reference: TwinSolution,
    primal: float,
    gap: float,
    multipliers: float | None,
    kkt: KKTResiduals,
    reference_kkt: KKTResiduals,
) -> list[str]:
    text = {
        "reference_solved": f"CVXPY's status is {reference.status!r}",
        "primal": f"primal error {primal:.3g} > {tol.primal:g}",
        "objective": f"objective gap {gap:.3g} > {tol.objective:g}",
        "multipliers": f"multiplier error {multipliers or 0.0:.3g} > {tol.multipliers:g}",
        "violation": f"max violation {kkt.primal_feasibility:.3g} > {tol.violation:g}",
        "stationarity": f"stationarity residual {kkt.stationarity:.3g} > {tol.stationarity:g}",
        "complementary_slackness": (
            f"complementary slackness {kkt.complementary_slackness:.3g} > "
            f"{tol.complementary_slackness:g}"
        ),
        "dual_feasibility": f"negative inequality multiplier ({-kkt.dual_feasibility:.3g})",
        "reference_kkt": (
            "CVXPY's solution with the mapped duals violates KKT (stationarity "
            f"{reference_kkt.stationarity:.3g}, slackness "
            f"{reference_kkt.complementary_slackness:.3g}, "
            f"feasibility {reference_kkt.primal_feasibility:.3g}) beyond {tol.reference_kkt:g}: "
            "a sign-convention or reference problem"
        ),
    }
    return [text[name] for name, ok in checks.items() if not ok]


def _full_data(setup: Any) -> Mapping[str, Any] | None:
    data = setup.extras.get("data")
    if isinstance(data, Mapping):
        return data
    return setup.batch if isinstance(setup.batch, Mapping) else None


def validate_registered(spec: Any, config: Any, progress: bool | None = None) -> dict[str, Any]:
    """Run a registered problem with the library's solver and validate it (the CLI's
    ``constrain validate``).

    The twin is built (and so convexity checked) before any step is taken. Per-problem
    tolerances come from the spec's optional ``validation_tolerances`` mapping.

    Args:
        spec: A :class:`~constrain.ProblemSpec`.
        config: Its :class:`~constrain.RunConfig`.
        progress: Progress bar.

    Returns:
        The report as a dict, with ``problem``, ``controller``, ``formulation``, ``steps``
        and ``seconds`` (solver time) added.

    Raises:
        ConfigError: If the problem cannot be validated exactly (the message says why).
    """
    from .runner import build_solver

    setup, solver = build_solver(spec, config)
    data = _full_data(setup)
    try:
        twin = to_cvxpy(setup.problem, data)
    except ConfigError as exc:
        raise ConfigError(f"problem {spec.name!r}: {exc}") from None
    reference = solve_reference(twin, data)
    start = time.perf_counter()
    solver.fit(setup.data, config.steps, batch=setup.batch, progress=progress)
    if solver.step_count == 0:  # --steps 0: validate the initial point (initial multipliers)
        solver.initialise(setup.batch, setup.data)
    seconds = time.perf_counter() - start
    report = validate(
        setup.problem,
        solver,
        data=data,
        twin=twin,
        reference=reference,
        tolerances=getattr(spec, "validation_tolerances", None),
        name=spec.name,
    )
    return {
        "problem": spec.name,
        "controller": config.controller_label,
        "formulation": config.formulation["name"],
        "steps": solver.step_count,
        "seconds": seconds,
        **{k: v for k, v in report.to_dict().items() if k != "problem"},
    }
