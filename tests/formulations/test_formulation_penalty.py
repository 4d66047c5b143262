"""The quadratic penalty ``f + (c/2)(||max(g, 0)||^2 + ||h||^2)`` and penalty schedules."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from constrain import (
    AugmentedLagrangian,
    ConstrainedProblem,
    Constraint,
    ConstraintLayout,
    ConstraintValue,
    Multipliers,
    ProblemState,
    QuadraticPenalty,
    Solver,
    Variables,
)
from constrain.formulations import PenaltySchedule
from constrain.layout import IndexedViolation, StackedConstraints

DTYPE = torch.float64


def _layout(n: int = 3) -> ConstraintLayout:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(), constraints=[Constraint("g", size=n)]
    )
    state = ProblemState(torch.zeros((), dtype=DTYPE), {"g": torch.zeros(n, dtype=DTYPE)})
    return ConstraintLayout(problem, state)


def test_penalty_value_and_gradient() -> None:
    x = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=DTYPE, requires_grad=True)
    g = torch.stack([x[0] - 1.0, x[1] + 0.5, x[2] - 1.0])  # inequalities: -, -, +
    h = (x[3] - x[0]).reshape(1)  # equality, negative
    per = torch.stack([x[1], x[2] - 3.0])  # per-sample inequality: -, -
    per_eq = torch.stack([x[0] - 1.5, x[2]])  # per-sample equality: -, +
    stacked = StackedConstraints(
        torch.cat([g, h]).detach(),
        torch.cat([g, h]),
        torch.tensor([False] * 3 + [True]),
        {
            "s": IndexedViolation(per.detach(), per, torch.tensor([0, 1])),
            "t": IndexedViolation(per_eq.detach(), per_eq, torch.tensor([1, 0]), equality=True),
        },
    )
    f = 0.5 * x.pow(2).sum()
    c = 3.0
    state = {"penalty": torch.tensor(c, dtype=DTYPE)}
    loss = QuadraticPenalty(penalty=c).primal_loss(f, stacked, Multipliers(torch.zeros(4)), state)
    gp, hp = g.clamp_min(0), h
    expected = f + c / 2 * (
        gp.pow(2).sum() + hp.pow(2).sum() + per.clamp_min(0).pow(2).sum() + per_eq.pow(2).sum()
    )
    torch.testing.assert_close(loss, expected, rtol=1e-15, atol=0)
    (grad,) = torch.autograd.grad(loss, x)
    xd = x.detach()
    by_hand = xd.clone()
    by_hand[2] += c * (xd[2] - 1.0)  # only g[2] is violated
    by_hand[3] += c * (xd[3] - xd[0])
    by_hand[0] -= c * (xd[3] - xd[0])
    by_hand[0] += c * (xd[0] - 1.5)  # per-sample equality, negative side still penalized
    by_hand[2] += c * xd[2]
    torch.testing.assert_close(grad, by_hand, rtol=0, atol=1e-14)


def test_quadratic_penalty_has_no_multipliers() -> None:
    assert QuadraticPenalty.uses_multipliers is False
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - 2).pow(2).sum(),
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x)],
    )
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.005),
        formulation={"name": "quadratic_penalty", "penalty": 100.0},
    )
    solver.fit(steps=300)
    assert solver.history.multipliers().max() == 0.0
    # Penalty solution of min (x-2)^2 + 50 max(x-1,0)^2: x = (2 + 50) / 51 per coordinate.
    torch.testing.assert_close(
        model.x.detach(), torch.full((2,), 52 / 51, dtype=DTYPE), rtol=0, atol=1e-12
    )


def _stacked(violation: list[float], equality: list[bool] | None = None) -> StackedConstraints:
    v = torch.tensor(violation, dtype=DTYPE)
    eq = torch.tensor(equality or [False] * len(violation))
    return StackedConstraints(v, v, eq, {})


def test_schedule_grows_the_penalty_when_the_violation_does_not_shrink() -> None:
    schedule = PenaltySchedule(growth=2.0, shrink=0.5)
    state = schedule.init_state(1.0, _layout())
    penalties = []
    # size 1.0 (first check never grows), 0.4 (shrank enough), 0.3 (> 0.5 * 0.4: grow),
    # 0.1 (< 0.5 * 0.3: keep), 0.1 (grow), then capped growth.
    for v in [[1.0, 0, 0], [0.4, -5, 0], [0.3, 0, 0], [0.1, 0, 0], [0, 0.1, -1]]:
        state = schedule.update(_stacked(v), state)
        penalties.append(float(state["penalty"]))
    assert penalties == [1.0, 1.0, 2.0, 2.0, 4.0]
    assert float(state["last_violation"]) == pytest.approx(0.1)


def test_schedule_counts_negative_equality_violations() -> None:
    schedule = PenaltySchedule(growth=10.0, shrink=0.5)
    state = schedule.init_state(1.0, _layout())
    state = schedule.update(_stacked([0.0, -1.0, 0.0], [False, True, False]), state)
    state = schedule.update(_stacked([0.0, -1.0, 0.0], [False, True, False]), state)
    assert float(state["last_violation"]) == 1.0
    assert float(state["penalty"]) == 10.0


def test_schedule_counts_per_sample_groups() -> None:
    schedule = PenaltySchedule(growth=3.0, shrink=0.9)
    state = schedule.init_state(1.0, _layout())
    for _ in range(2):
        per = {
            "s": IndexedViolation(
                torch.tensor([0.5, -2.0], dtype=DTYPE), torch.zeros(2), torch.tensor([0, 1])
            )
        }
        stacked = StackedConstraints(
            torch.zeros(3, dtype=DTYPE), torch.zeros(3), torch.zeros(3, dtype=torch.bool), per
        )
        state = schedule.update(stacked, state)
    assert float(state["last_violation"]) == 0.5 and float(state["penalty"]) == 3.0


def test_schedule_every_and_cap() -> None:
    schedule = PenaltySchedule(growth=10.0, shrink=0.9, every=2, max_penalty=50.0)
    state = schedule.init_state(1.0, _layout())
    penalties = []
    for _ in range(8):
        state = schedule.update(_stacked([1.0, 0, 0]), state)
        penalties.append(float(state["penalty"]))
    assert penalties == [1.0, 1.0, 1.0, 10.0, 10.0, 50.0, 50.0, 50.0]
    assert int(state["step"]) == 8


def test_constant_schedule_is_a_no_op() -> None:
    schedule = PenaltySchedule()
    state = schedule.init_state(2.0, _layout())
    assert schedule.update(_stacked([5.0, 5.0, 5.0]), state) is state


@pytest.mark.parametrize(
    "options",
    [
        {"growth": 0.5},
        {"shrink": 0.0},
        {"shrink": 1.5},
        {"every": 0},
        {"max_penalty": 0.0},
        {"growth": float("inf")},
        {"grow": 2.0},
    ],
)
def test_schedule_validation(options: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        PenaltySchedule(**options)


@pytest.mark.parametrize("cls", [QuadraticPenalty, AugmentedLagrangian])
def test_penalty_must_be_finite_and_nonnegative(cls: type) -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="penalty"):
            cls(penalty=bad)


def test_solver_records_a_growing_penalty() -> None:
    """A constraint that cannot be met: the violation never shrinks, so c grows each check."""
    model = Variables(x=torch.zeros(1, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum() * 0,
        constraints=[
            Constraint(
                "impossible",
                ">=",
                rhs=1.0,
                fn=lambda m, b: ConstraintValue(m.x.detach() * 0, proxy=m.x * 0),
            )
        ],
    )
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        formulation={
            "name": "quadratic_penalty",
            "penalty": 1.0,
            "schedule": {"growth": 2.0, "every": 2},
        },
    )
    solver.fit(steps=6)
    assert [r.penalty for r in solver.history] == [1.0, 1.0, 1.0, 2.0, 2.0, 4.0]


@pytest.mark.parametrize("cls", [QuadraticPenalty, AugmentedLagrangian])
def test_penalty_defaults_are_stated_and_equal(cls: type) -> None:
    """The coefficient c means the same in both formulations: one default, stated."""
    assert cls().penalty == 1.0
    assert "Default ``1.0``" in (cls.__doc__ or "")


def test_default_quadratic_penalty_converges_where_ten_diverged() -> None:
    """min ||x||^2 s.t. sum(x) = 1 (10 dims), SGD step 0.1: stable with the default c = 1
    (the Hessian 2 I + c 11^T has largest eigenvalue 2 + 10 c < 2 / 0.1)."""
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x**2).sum(),
        constraints=[Constraint("total", "==", rhs=1.0, fn=lambda m, b: m.x.sum())],
    )
    model = Variables(x=torch.zeros(10, dtype=torch.float64))
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.1), formulation="quadratic_penalty"
    )
    solver.fit(None, 300, progress=False)
    # Minimiser of ||x||^2 + (1/2)(sum x - 1)^2: x_i = 1/12, so sum(x) = 10/12.
    assert float(model.x.detach().sum()) == pytest.approx(10 / 12, abs=1e-9)
