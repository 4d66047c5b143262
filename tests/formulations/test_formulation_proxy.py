"""Proxy constraints: the primal player differentiates the proxy, the multipliers see the
true value (docs/algorithms.md, 'Proxy constraints')."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from constrain import (
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    Solver,
    Variables,
    constraint,
)

DTYPE = torch.float64
X0 = 2.7
LR = 0.1


def objective(model: Any, batch: Any) -> Tensor:
    return 0.5 * (model.x - 3.0).pow(2).sum()


def true_value(model: Any, batch: Any) -> Tensor:
    """A step function: no useful gradient (here: none at all, it is detached)."""
    return model.x.detach().floor()


def proxy(model: Any, batch: Any) -> Tensor:
    """A differentiable surrogate whose value (2 x - 3.2) differs from floor(x)."""
    return 2.0 * model.x - 3.2


def _composed() -> ConstrainedProblem:
    return ConstrainedProblem(
        objective=objective,
        constraints=[Constraint("count", "<=", rhs=1.0, fn=true_value, proxy=proxy)],
    )


class _Returned(ConstrainedProblem):
    """The same constraint, returning a ConstraintValue from a decorated method."""

    def objective(self, model: Any, batch: Any) -> Tensor:
        return objective(model, batch)

    @constraint("<=", rhs=1.0)
    def count(self, model: Any, batch: Any) -> ConstraintValue:
        return ConstraintValue(true_value(model, batch), proxy=proxy(model, batch))


@pytest.mark.parametrize("problem", [_composed(), _Returned()], ids=["composed", "returned"])
def test_lagrangian_primal_uses_proxy_and_dual_uses_true_value(problem: ConstrainedProblem) -> None:
    model = Variables(x=torch.tensor([X0], dtype=DTYPE))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        controller={"name": "gda", "lr": 1.0},
        order="dual_primal",
    )
    record = solver.step()
    assert record is not None
    # Dual: lam_1 = max(0, floor(2.7) - 1) = 1 (the proxy's value would give 2.2 - 1 = 1.2).
    assert record.violation == [1.0]
    assert record.multipliers == [1.0]
    # Primal: gradient (x - 3) + lam_1 * d(proxy)/dx = -0.3 + 2 = 1.7 (true value: -0.3).
    assert model.x.item() == pytest.approx(X0 - LR * ((X0 - 3.0) + 1.0 * 2.0), abs=1e-15)


def test_augmented_lagrangian_with_proxy() -> None:
    c = 0.5
    model = Variables(x=torch.tensor([X0], dtype=DTYPE))
    solver = Solver(
        _composed(),
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        controller={"name": "gda", "lr": 1.0},
        order="dual_primal",
        formulation={"name": "augmented_lagrangian", "penalty": c},
    )
    solver.step()
    lam = solver.multipliers["count"].item()
    assert lam == c * (2.0 - 1.0)  # c times the TRUE violation
    # d/dx of the augmented term = max(0, lam + c * g~) * d g~/dx, with g~ = proxy - rhs.
    g_proxy = 2.0 * X0 - 3.2 - 1.0
    grad = (X0 - 3.0) + max(0.0, lam + c * g_proxy) * 2.0
    assert model.x.item() == pytest.approx(X0 - LR * grad, abs=1e-15)


def test_quadratic_penalty_with_proxy() -> None:
    c = 4.0
    model = Variables(x=torch.tensor([X0], dtype=DTYPE))
    solver = Solver(
        _composed(),
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        formulation={"name": "quadratic_penalty", "penalty": c},
    )
    solver.step()
    g_proxy = 2.0 * X0 - 3.2 - 1.0
    grad = (X0 - 3.0) + c * max(g_proxy, 0.0) * 2.0
    assert model.x.item() == pytest.approx(X0 - LR * grad, abs=1e-15)


def test_multiplier_trajectory_follows_the_true_value_over_many_steps() -> None:
    """Over a run, every multiplier step uses floor(x_t), never the proxy's value."""
    model = Variables(x=torch.tensor([X0], dtype=DTYPE))
    solver = Solver(
        _composed(),
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        controller={"name": "gda", "lr": 0.3},
        order="simultaneous",
    )
    xs = []
    for _ in range(40):
        xs.append(model.x.item())
        solver.step()
    lam = 0.0
    for x, record in zip(xs, solver.history, strict=True):
        lam = max(0.0, lam + 0.3 * (float(torch.tensor(x).floor()) - 1.0))
        assert record.violation == [float(torch.tensor(x).floor()) - 1.0]
        assert record.multipliers[0] == pytest.approx(lam, abs=1e-15)
