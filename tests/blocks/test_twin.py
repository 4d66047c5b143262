"""The CVXPY twin of a block problem: dual values mapped to the library's sign conventions
(checked against closed forms and through the KKT conditions of the library's Lagrangian),
and clear refusals for everything that cannot be checked exactly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import Tensor

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    Regularizer,
    Variables,
    blocks,
    constraint,
    solve,
)
from constrain.exact import kkt_residuals, solve_reference

pytest.importorskip("cvxpy")

FLOATS = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)


def projection(c: np.ndarray, a: np.ndarray, sense: str, r: float) -> ConstrainedProblem:
    """``min 1/2 ||x - c||^2  s.t.  a . x <sense> r``."""
    x = blocks.Variable("x", len(c))
    return ConstrainedProblem(
        objective=0.5 * blocks.sum_squares(x - c),
        constraints=[Constraint("plane", sense, rhs=r, fn=a @ x)],
    )


@settings(max_examples=20, deadline=None)
@given(data=st.data(), n=st.integers(2, 5), sense=st.sampled_from(["<=", ">=", "=="]))
def test_duals_match_the_closed_form_of_a_projection_in_the_library_convention(
    data: st.DataObject, n: int, sense: str
) -> None:
    c = data.draw(arrays(np.float64, n, elements=FLOATS))
    a = data.draw(arrays(np.float64, n, elements=st.floats(0.5, 2.0)))
    r = float(a @ c) + data.draw(st.sampled_from([-1.0, 1.0])) * data.draw(st.floats(0.1, 1.0))
    solution = blocks.to_cvxpy(projection(c, a, sense, r)).solve()
    # Library Lagrangian L = f + lam * s(x), s = a.x - r ('<=', '=='), r - a.x ('>=');
    # stationarity x - c + lam * ds/dx = 0 gives the closed forms below.
    excess = (float(a @ c) - r) / float(a @ a)
    expected = {"<=": max(excess, 0.0), ">=": max(-excess, 0.0), "==": excess}[sense]
    np.testing.assert_allclose(solution.multipliers["plane"], [expected], atol=1e-8)
    if sense != "==":
        assert solution.multipliers["plane"][0] >= -1e-10
    x_expected = c - (expected if sense != ">=" else -expected) * a
    np.testing.assert_allclose(solution.primal["x"], x_expected, atol=1e-8)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(3, 6))
def test_mapped_duals_satisfy_kkt_of_the_library_lagrangian(data: st.DataObject, n: int) -> None:
    """Mixed senses, vector right-hand sides, a norm constraint: at CVXPY's solution the
    mapped multipliers make the library's Lagrangian stationary (autograd)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = blocks.Variable("x", n)
    G, A = rng.standard_normal((3, n)), rng.standard_normal((1, n))
    x0 = rng.standard_normal(n) * 0.2  # feasible point
    problem = ConstrainedProblem(
        objective=0.5 * blocks.sum_squares(x - 2 * rng.standard_normal(n))
        + rng.standard_normal(n) @ x,
        constraints=[
            Constraint("upper", "<=", rhs=tuple(G @ x0 + 0.1), fn=G @ x),
            Constraint("lower", ">=", rhs=float(x0.sum() - 0.1), fn=blocks.sum(x)),
            Constraint("plane", "==", rhs=tuple(A @ x0), fn=A @ x),
            Constraint(
                "ball", "<=", rhs=float(np.linalg.norm(x0)) + 0.5, fn=blocks.squared_norm(x, 2)
            ),
        ],
    )
    twin = blocks.to_cvxpy(problem)
    solution = solve_reference(twin)
    point = {"x": torch.tensor(solution.primal["x"])}
    lam = {k: torch.tensor(v) for k, v in solution.multipliers.items()}
    residuals, objective = kkt_residuals(twin.form, point, lam)
    assert residuals.stationarity_checked
    # The ball is a second-order cone: Clarabel's interior-point answer is accurate to a few
    # 1e-6 on rare draws (3e-6 seen for n = 5); a sign error below breaks stationarity by O(1).
    assert residuals.stationarity < 2e-5
    assert residuals.complementary_slackness < 1e-8
    assert residuals.primal_feasibility < 1e-8 and residuals.dual_feasibility == 0.0
    assert objective == pytest.approx(solution.objective, abs=1e-8)
    # The wrong sign for the equality breaks stationarity whenever its multiplier matters.
    if abs(float(lam["plane"][0])) * np.linalg.norm(A) > 1e-2:
        flipped = {**lam, "plane": -lam["plane"]}
        assert kkt_residuals(twin.form, point, flipped)[0].stationarity > 1e-2


def test_the_library_solver_reaches_the_twin_for_all_three_senses() -> None:
    c, a = np.array([1.0, -2.0, 0.5]), np.array([1.0, 1.0, 1.0])
    for sense, r in (("<=", -1.0), (">=", 0.5), ("==", 2.0)):
        problem = projection(c, a, sense, r)
        reference = blocks.to_cvxpy(problem).solve()
        result = solve(
            problem,
            Variables(x=torch.zeros(3, dtype=torch.float64)),
            steps=400,
            lr=0.2,
            controller={"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0},
            order="dual_primal",
        )
        np.testing.assert_allclose(
            result.multipliers["plane"].numpy(),
            reference.multipliers["plane"],
            atol=1e-8,
            err_msg=sense,
        )
        assert reference.multipliers["plane"][0] != 0.0


def test_bounds_and_block_problem_subclasses_build_the_same_twin() -> None:
    class Box(blocks.BlockProblem):
        upper: float = 0.5

        def declare(self) -> tuple[blocks.Expression, list[Constraint]]:
            x = blocks.Variable("x", 3)
            return blocks.sum_squares(x - np.array([1.0, -1.0, 0.2])), blocks.bounds(
                x, lower=-0.25, upper=self.upper, name="box"
            )

    problem = Box(upper=0.4)
    assert [c.name for c in problem.all_constraints] == ["box_lower", "box_upper"]
    assert problem.hyperparameters() == {"upper": 0.4}
    solution = blocks.to_cvxpy(problem).solve()
    np.testing.assert_allclose(solution.primal["x"], [0.4, -0.25, 0.2], atol=1e-8)
    # d/dx (x - c)^2 = 2 (x - c): lam_upper = 2 (1 - 0.4), lam_lower = 2 (-0.25 + 1) ... >= 0
    np.testing.assert_allclose(solution.multipliers["box_upper"], [1.2, 0.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(solution.multipliers["box_lower"], [0.0, 1.5, 0.0], atol=1e-8)
    with pytest.raises(
        ConfigError, match=r"Box declares its blocks in declare\(\); do not pass objective="
    ):
        Box(objective=blocks.sum(blocks.Variable("x", 3)))


@pytest.mark.parametrize("prox", ["l1", "weight_sharing"])
def test_prox_regularizers_become_penalties_of_the_twin(prox: str) -> None:
    c = np.array([1.0, 0.9, -0.3, 0.1])
    w = blocks.Variable("w", 4)
    problem = ConstrainedProblem(
        objective=0.5 * blocks.sum_squares(w - c),
        constraints=[Constraint("budget", "<=", rhs=1.2, fn=blocks.sum(w))],
        regularizers=[Regularizer(prox=prox, strength=0.3, params="w")],
    )
    twin = blocks.to_cvxpy(problem)
    point = np.array([0.3, -0.2, 0.5, 0.0])
    twin.variables["w"].value = point
    penalty = (
        np.abs(point).sum()
        if prox == "l1"
        else sum(abs(point[i] - point[j]) for i in range(4) for j in range(i)) / 3
    )
    assert twin.problem.objective.value == pytest.approx(
        0.5 * np.sum((point - c) ** 2) + 0.3 * penalty
    )
    reference = twin.solve()
    # The solver applies the regularizer as a proximal step: it reaches the kinks exactly.
    result = solve(
        problem,
        Variables(w=torch.zeros(4, dtype=torch.float64)),
        steps=600,
        lr=0.2,
        controller={"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0},
        order="dual_primal",
    )
    np.testing.assert_allclose(result.model.w.detach().numpy(), reference.primal["w"], atol=1e-9)
    np.testing.assert_allclose(
        result.multipliers["budget"].numpy(), reference.multipliers["budget"], atol=1e-9
    )


class Methods(ConstrainedProblem):
    def objective(self, model: Any, batch: Any) -> Tensor:
        return model.x.pow(2).sum()

    @constraint("<=", rhs=1.0)
    def total(self, model: Any, batch: Any) -> Tensor:
        return model.x.sum()


class OverridesEvaluate(ConstrainedProblem):
    def evaluate(self, model: Any, batch: Any) -> Any:
        return super().evaluate(model, batch)


X = blocks.Variable("x", 3)


@pytest.mark.parametrize(
    ("problem", "match"),
    [
        (
            lambda: ConstrainedProblem(objective=lambda m, b: m.x.sum()),
            r"cannot be validated exactly: the objective is <function .*not a block expression",
        ),
        (
            lambda: ConstrainedProblem(
                objective=blocks.sum(X),
                constraints=[Constraint("c", "<=", fn=lambda m, b: m.x.sum())],
            ),
            r"cannot be validated exactly: constraint 'c' is <function",
        ),
        (lambda: Methods(), r"Methods cannot be validated exactly: it overrides objective\(\)"),
        (lambda: OverridesEvaluate(objective=blocks.sum(X)), r"overrides evaluate\(\)"),
        (lambda: ConstrainedProblem(objective=X), r"must be a scalar"),
        (
            lambda: ConstrainedProblem(objective=-blocks.sum_squares(X)),
            r"objective '-sum_squares\(x\)' is not convex .*CONCAVE",
        ),
        (
            lambda: ConstrainedProblem(
                objective=blocks.sum(X),
                constraints=[Constraint("outside", ">=", rhs=1.0, fn=blocks.norm2(X))],
            ),
            r"constraint 'outside' \(norm2\(x\) >= rhs\) is not convex: "
            r"for '>=' the left side must be concave",
        ),
        (
            lambda: ConstrainedProblem(
                objective=blocks.sum_squares(X),
                constraints=[Constraint("eq", "==", rhs=1.0, fn=blocks.norm1(X))],
            ),
            r"for '==' the left side must be affine",
        ),
        (
            lambda: ConstrainedProblem(
                objective=blocks.sum_squares(X),
                constraints=[Constraint("rate", "<=", rhs=0.1, fn=blocks.positive_rate(X))],
            ),
            r"positive_rate\(x\) has no convex CVXPY form",
        ),
        (
            lambda: ConstrainedProblem(
                objective=blocks.sum_squares(X),
                constraints=[Constraint("ps", "<=", rhs=1.0, size=3, per_sample=True, fn=X)],
            ),
            r"constraint 'ps' is per-sample",
        ),
        (
            lambda: ConstrainedProblem(
                objective=blocks.sum_squares(X),
                regularizers=[Regularizer(prox="group_l1", strength=0.1)],
            ),
            r"regularizer 'group_l1' has no block form",
        ),
        (
            lambda: ConstrainedProblem(objective=blocks.sum_squares(X @ blocks.Data("D", (3, 2)))),
            r"reads data \['D'\] from the batch; pass the full data set",
        ),
    ],
)
def test_problems_that_cannot_be_checked_exactly_are_refused_clearly(
    problem: Any, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        blocks.to_cvxpy(problem())


def test_an_infeasible_twin_is_reported_with_cvxpy_status() -> None:
    problem = ConstrainedProblem(
        objective=blocks.sum_squares(X),
        constraints=[Constraint("low", "<=", rhs=-1.0, fn=blocks.norm1(X))],
    )
    with pytest.raises(
        ConfigError, match=r"twin of ConstrainedProblem is 'infeasible'.*cannot all hold"
    ):
        blocks.to_cvxpy(problem).solve()


def test_expressions_are_callables_the_solver_evaluates() -> None:
    problem = projection(np.array([1.0, 2.0]), np.array([1.0, 1.0]), "<=", 1.0)
    state = problem.evaluate(SimpleNamespace(x=torch.tensor([0.5, 0.25])), None)
    assert float(state.objective) == pytest.approx(0.5 * (0.25 + 3.0625))
    assert float(state.constraints["plane"]) == pytest.approx(0.75)
