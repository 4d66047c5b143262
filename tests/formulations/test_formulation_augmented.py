"""The augmented Lagrangian against the textbook formula; c = 0; the multiplier step."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from constrain import (
    AugmentedLagrangian,
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    Lagrangian,
    Multipliers,
    Solver,
    Variables,
)
from constrain.formulations.augmented import augmented_terms
from constrain.layout import IndexedViolation, StackedConstraints

DTYPE = torch.float64
N_INEQ, N_EQ = 4, 3

finite = st.floats(-50.0, 50.0, allow_nan=False)
vectors = st.lists(finite, min_size=N_INEQ + N_EQ, max_size=N_INEQ + N_EQ)
nonneg = st.lists(st.floats(0.0, 50.0), min_size=N_INEQ, max_size=N_INEQ)
signed = st.lists(finite, min_size=N_EQ, max_size=N_EQ)


def textbook(lam: np.ndarray, mu: np.ndarray, g: np.ndarray, h: np.ndarray, c: float) -> float:
    """(1/(2c)) sum(max(0, lam + c g)^2 - lam^2) + mu.h + (c/2)||h||^2."""
    ineq = (np.maximum(0.0, lam + c * g) ** 2 - lam**2).sum() / (2 * c)
    return float(ineq + mu @ h + c / 2 * (h @ h))


def _stacked(values: list[float]) -> tuple[Tensor, StackedConstraints]:
    g = torch.tensor(values, dtype=DTYPE, requires_grad=True)
    equality = torch.tensor([False] * N_INEQ + [True] * N_EQ)
    return g, StackedConstraints(g.detach(), g, equality, {})


@settings(max_examples=200, deadline=None)
@given(values=vectors, lam=nonneg, mu=signed, c=st.floats(1e-3, 1e3))
def test_value_matches_the_textbook_formula(
    values: list[float], lam: list[float], mu: list[float], c: float
) -> None:
    _, stacked = _stacked(values)
    multipliers = Multipliers(torch.tensor(lam + mu, dtype=DTYPE))
    f = torch.tensor(1.25, dtype=DTYPE)
    state = {"penalty": torch.tensor(c, dtype=DTYPE)}
    loss = AugmentedLagrangian(penalty=c).primal_loss(f, stacked, multipliers, state)
    v = np.array(values)
    expected = 1.25 + textbook(np.array(lam), np.array(mu), v[:N_INEQ], v[N_INEQ:], c)
    # The textbook form cancels (lam + c g)^2 - lam^2; allow for its rounding error.
    scale = (
        1.0 + sum(x * x for x in lam) / c + c * float(v @ v) + sum(abs(x) for x in lam + mu) * 50
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12 * scale)


@settings(max_examples=200, deadline=None)
@given(values=vectors, lam=nonneg, mu=signed, c=st.floats(1e-3, 1e3))
def test_gradient_is_the_multiplier_step(
    values: list[float], lam: list[float], mu: list[float], c: float
) -> None:
    """d/dg = max(0, lam + c g) for inequalities, mu + c h for equalities."""
    g, stacked = _stacked(values)
    multipliers = Multipliers(torch.tensor(lam + mu, dtype=DTYPE))
    state = {"penalty": torch.tensor(c, dtype=DTYPE)}
    loss = AugmentedLagrangian(penalty=c).primal_loss(
        torch.zeros((), dtype=DTYPE), stacked, multipliers, state
    )
    (grad,) = torch.autograd.grad(loss, g)
    v = torch.tensor(values, dtype=DTYPE)
    lam_t, mu_t = torch.tensor(lam, dtype=DTYPE), torch.tensor(mu, dtype=DTYPE)
    expected = torch.cat([(lam_t + c * v[:N_INEQ]).clamp_min(0), mu_t + c * v[N_INEQ:]])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(values=vectors, lam=nonneg, mu=signed)
def test_zero_penalty_is_the_lagrangian_without_nan(
    values: list[float], lam: list[float], mu: list[float]
) -> None:
    g, stacked = _stacked(values)
    multipliers = Multipliers(torch.tensor(lam + mu, dtype=DTYPE))
    f = torch.tensor(0.5, dtype=DTYPE)
    state = {"penalty": torch.tensor(0.0, dtype=DTYPE)}
    loss = AugmentedLagrangian(penalty=1.0).primal_loss(f, stacked, multipliers, state)
    (grad,) = torch.autograd.grad(loss, g)
    assert math.isfinite(loss.item()) and bool(torch.isfinite(grad).all())
    reference = Lagrangian().primal_loss(f, stacked, multipliers, {})
    assert loss.item() == pytest.approx(reference.item(), rel=1e-14, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor(lam + mu, dtype=DTYPE), rtol=0, atol=0)


def test_zero_penalty_with_zero_multipliers_and_negative_g_has_no_nan() -> None:
    """The case 0/0 of a naive implementation: lam = 0, c = 0, g < 0."""
    lam = torch.zeros(3, dtype=DTYPE)
    g = torch.tensor([-1.0, 0.0, 2.0], dtype=DTYPE, requires_grad=True)
    c = torch.tensor(0.0, dtype=DTYPE)
    value = augmented_terms(lam, g, torch.zeros(3, dtype=torch.bool), c)
    (grad,) = torch.autograd.grad(value, g)
    assert value.item() == 0.0
    assert grad.tolist() == [0.0, 0.0, 0.0]


def test_dual_signal_is_c_times_the_violation() -> None:
    _, stacked = _stacked([1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 2.0])
    state = {"penalty": torch.tensor(4.0, dtype=DTYPE)}
    formulation = AugmentedLagrangian(penalty=4.0)
    assert formulation.dual_signal(stacked, state).tolist() == [
        4.0,
        -8.0,
        2.0,
        0.0,
        12.0,
        -4.0,
        8.0,
    ]
    assert formulation.indexed_signal(torch.tensor([0.5]), state).tolist() == [2.0]


def test_per_sample_equality_groups_use_the_equality_terms() -> None:
    lam = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
    v = torch.tensor([-3.0, 0.5, -1.0], dtype=DTYPE, requires_grad=True)
    c = 2.0
    for equality in (False, True):
        stacked = StackedConstraints(
            torch.zeros(0, dtype=DTYPE),
            torch.zeros(0, dtype=DTYPE),
            torch.zeros(0, dtype=torch.bool),
            {"s": IndexedViolation(v.detach(), v, torch.tensor([2, 0, 1]), equality=equality)},
        )
        multipliers = Multipliers(torch.zeros(0, dtype=DTYPE), {"s": lam})
        state = {"penalty": torch.tensor(c, dtype=DTYPE)}
        loss = AugmentedLagrangian(penalty=c).primal_loss(
            torch.zeros((), dtype=DTYPE), stacked, multipliers, state
        )
        observed = lam[[2, 0, 1]]
        vd = v.detach()
        if equality:
            expected = float(observed @ vd + c / 2 * vd @ vd)
        else:
            expected = textbook(observed.numpy(), np.zeros(0), vd.numpy(), np.zeros(0), c)
        assert loss.item() == pytest.approx(expected, rel=1e-14)


# -- the multiplier step through the solver ------------------------------------------------


def _qp() -> ConstrainedProblem:
    target = torch.tensor([2.0, -1.0, 0.5], dtype=DTYPE)

    def objective(model: Any, batch: Any) -> Tensor:
        return 0.5 * (model.x - target).pow(2).sum()

    return ConstrainedProblem(
        objective=objective,
        constraints=[
            Constraint("cap", "<=", rhs=0.5, fn=lambda m, b: m.x),
            Constraint("sum", "==", rhs=1.0, fn=lambda m, b: m.x.sum()),
        ],
    )


@pytest.mark.parametrize("order", ["dual_primal", "simultaneous"])
def test_gda_lr1_is_the_method_of_multipliers(order: str) -> None:
    """lam <- max(0, lam + c g(x_t)), mu <- mu + c h(x_t) with ``gda``, ``lr = 1``."""
    c = 3.0
    model = Variables(x=torch.tensor([1.0, 0.0, 2.0], dtype=DTYPE))
    solver = Solver(
        _qp(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        controller={"name": "gda", "lr": 1.0},
        formulation={"name": "augmented_lagrangian", "penalty": c},
        order=order,
    )
    lam = torch.zeros(4, dtype=DTYPE)
    for _ in range(30):
        record = solver.step()
        assert record is not None
        g = torch.tensor(record.violation, dtype=DTYPE)
        lam = torch.cat([(lam[:3] + c * g[:3]).clamp_min(0), lam[3:] + c * g[3:]])
        torch.testing.assert_close(
            torch.tensor(record.multipliers, dtype=DTYPE), lam, rtol=0, atol=1e-15
        )
    assert (lam[:3] > 0).any() and lam[3] != 0


def test_augmented_lagrangian_solves_the_qp() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(
        _qp(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.2),
        controller={"name": "gda", "lr": 1.0},
        formulation={"name": "augmented_lagrangian", "penalty": 1.0},
        order="dual_primal",
    )
    solver.fit(steps=400)
    # KKT by hand: x = t - lam - mu 1; x0 and x2 capped at 0.5, sum(x) = 1 gives mu = -1,
    # x = (0.5, 0, 0.5), lam = (2 - 0.5 + 1, 0, 0.5 - 0.5 + 1) = (2.5, 0, 1).
    expected_x = torch.tensor([0.5, 0.0, 0.5], dtype=DTYPE)
    torch.testing.assert_close(model.x.detach(), expected_x, rtol=0, atol=1e-10)
    expected_lam = torch.tensor([2.5, 0.0, 1.0, -1.0], dtype=DTYPE)
    lam = torch.tensor(solver.history.last.multipliers, dtype=DTYPE)
    torch.testing.assert_close(lam, expected_lam, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["augmented_lagrangian", "quadratic_penalty"])
@pytest.mark.parametrize("penalty", [0.0, 0])
def test_zero_penalty_is_refused(name: str, penalty: float) -> None:
    """Penalty 0 would ignore the constraints silently (min (x-3)^2 s.t. x <= 1 ended at
    x = 3): it is refused, naming the field and why."""
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    with pytest.raises(ConfigError, match=r"penalty: .*must be > 0.*constraints would be ignored"):
        Solver(
            _qp(),
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            controller="gda",
            formulation={"name": name, "penalty": penalty},
        )


def test_per_sample_proxy_and_signal_with_augmented_lagrangian() -> None:
    c = 2.0
    idx = torch.tensor([1, 0])
    problem = ConstrainedProblem(
        objective=lambda m, b: 0.5 * m.x.pow(2).sum(),
        constraints=[
            Constraint(
                "s",
                ">=",
                rhs=1.0,
                per_sample=True,
                size=2,
                fn=lambda m, b: ConstraintValue(
                    m.x[idx].detach().floor(), proxy=m.x[idx], indices=idx
                ),
            )
        ],
    )
    model = Variables(x=torch.tensor([0.5, 1.5], dtype=DTYPE))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "gda", "lr": 1.0},
        formulation={"name": "augmented_lagrangian", "penalty": c},
        order="dual_primal",
    )
    solver.step()
    # True values floor(x[idx]) = (1, 0): violations 1 - (1, 0) = (0, 1) -> lam[idx] = c * (0, 1).
    lam = solver.multipliers["s"]
    assert lam.tolist() == [2.0, 0.0]
    # Primal gradient through the proxy: d/dx of augmented term for sample i is
    # -max(0, lam_i + c (1 - x_i)); x0: -(2 + 2 * 0.5) = -3; x1: -max(0, 0 - 1) = 0.
    torch.testing.assert_close(
        model.x.detach(), torch.tensor([0.5 - 0.1 * (0.5 - 3.0), 1.5 - 0.15], dtype=DTYPE)
    )
