"""The Lagrangian: primal loss ``f + lam . g`` and dual signal ``g`` (float64, exact)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from constrain import (
    ConstrainedProblem,
    Constraint,
    ConstraintLayout,
    ConstraintValue,
    Lagrangian,
    Multipliers,
    Variables,
)

DTYPE = torch.float64
GEN = torch.Generator().manual_seed(0)
C = torch.randn(4, generator=GEN, dtype=DTYPE)
G = torch.randn(3, 4, generator=GEN, dtype=DTYPE)
H = torch.randn(3, generator=GEN, dtype=DTYPE)
A = torch.randn(2, 4, generator=GEN, dtype=DTYPE)
B = torch.randn(2, generator=GEN, dtype=DTYPE)
S = torch.randn(6, 4, generator=GEN, dtype=DTYPE)  # one row per sample
OBSERVED = torch.tensor([5, 0, 3])


def objective(model: Any, batch: Any) -> Tensor:
    return 0.5 * (model.x - C).pow(2).sum()


PROBLEM = ConstrainedProblem(
    objective=objective,
    constraints=[
        Constraint("ineq", "<=", rhs=tuple(H.tolist()), fn=lambda m, b: G @ m.x),
        Constraint("eq", "==", rhs=tuple(B.tolist()), fn=lambda m, b: A @ m.x),
        Constraint(
            "samples",
            "<=",
            rhs=0.25,
            per_sample=True,
            size=6,
            fn=lambda m, b: ConstraintValue(S[OBSERVED] @ m.x, indices=OBSERVED),
        ),
    ],
)


def setup() -> tuple[Variables, Any, Any, Multipliers]:
    model = Variables(x=torch.randn(4, generator=GEN, dtype=DTYPE))
    state = PROBLEM.evaluate(model, None)
    layout = ConstraintLayout(PROBLEM, state)
    stacked = layout.stack(state)
    lam = Multipliers(
        torch.tensor([0.3, 0.0, 1.7, -0.4, 2.5], dtype=DTYPE),
        {"samples": torch.arange(6, dtype=DTYPE) / 4},
    )
    return model, state, stacked, lam


def test_primal_loss_is_f_plus_lambda_dot_g_exactly() -> None:
    model, state, stacked, lam = setup()
    loss = Lagrangian().primal_loss(state.objective, stacked, lam, {})
    x = model.x
    g = torch.cat([G @ x - H, A @ x - B])
    samples = S[OBSERVED] @ x - 0.25
    expected = (
        objective(model, None) + lam.dense @ g + lam.per_sample["samples"][OBSERVED] @ samples
    )
    assert loss.item() == expected.item()


def test_primal_gradient_matches_the_hand_computed_one() -> None:
    model, state, stacked, lam = setup()
    Lagrangian().primal_loss(state.objective, stacked, lam, {}).backward()
    x = model.x.detach()
    grad = (
        (x - C)
        + G.T @ lam.dense[:3]
        + A.T @ lam.dense[3:]
        + S[OBSERVED].T @ lam.per_sample["samples"][OBSERVED]
    )
    torch.testing.assert_close(model.x.grad, grad, rtol=0, atol=1e-14)


def test_multipliers_receive_no_gradient() -> None:
    _, state, stacked, lam = setup()
    lam.dense.requires_grad_(True)
    Lagrangian().primal_loss(state.objective, stacked, lam, {}).backward()
    assert lam.dense.grad is None


def test_dual_signal_is_the_violation() -> None:
    model, _, stacked, _ = setup()
    x = model.x.detach()
    signal = Lagrangian().dual_signal(stacked, {})
    torch.testing.assert_close(signal, torch.cat([G @ x - H, A @ x - B]), rtol=0, atol=1e-15)
    assert Lagrangian().indexed_signal(stacked.per_sample["samples"].violation, {}) is (
        stacked.per_sample["samples"].violation
    )


def test_projection_clamps_only_inequalities() -> None:
    lam = torch.tensor([-1.0, 2.0, -3.0, 0.0], dtype=DTYPE)
    equality = torch.tensor([False, False, True, True])
    assert Lagrangian().project(lam, equality).tolist() == [0.0, 2.0, -3.0, 0.0]


def test_no_constraints_gives_the_objective() -> None:
    problem = ConstrainedProblem(objective=objective)
    model = Variables(x=torch.ones(4, dtype=DTYPE))
    state = problem.evaluate(model, None)
    layout = ConstraintLayout(problem, state)
    loss = Lagrangian().primal_loss(
        state.objective, layout.stack(state), layout.init_multipliers(), {}
    )
    assert loss.item() == state.objective.item()


class _Counting(Lagrangian):
    """A Lagrangian that keeps a step count in its state and reports it: the solver must
    call the hooks a subclass overrides (the base class's no-op hooks are skipped)."""

    def init_state(self, layout: ConstraintLayout) -> dict[str, Tensor]:
        return {"count": torch.zeros((), dtype=layout.dtype)}

    def after_dual_step(self, stacked: Any, state: Any, multipliers: Any = None) -> Any:
        return {"count": state["count"] + 1}

    def diagnostics(self, state: Any) -> dict[str, Tensor]:
        return {"penalty": state["count"]}


def test_a_subclass_hooks_run_at_every_step_and_reach_the_record() -> None:
    from constrain import Solver

    model = Variables(x=torch.zeros(4, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=objective,
        constraints=[Constraint("ineq", "<=", rhs=tuple(H.tolist()), fn=lambda m, b: G @ m.x)],
    )
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.1), formulation=_Counting()
    )
    history = solver.fit(steps=3)
    # the penalty column shows the count after each step's update
    assert [r.penalty for r in history] == [1.0, 2.0, 3.0]
    assert float(solver.duals.formulation_state["count"]) == 3.0


def test_the_one_group_multiplier_norm_is_the_2_norm() -> None:
    """The record's multiplier norm of a single dense group (a dot product, root on the
    host) equals ``torch.linalg.vector_norm`` of the multipliers to float precision."""
    from constrain import Solver

    model = Variables(x=torch.zeros(4, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=objective,
        constraints=[
            Constraint("ineq", "<=", rhs=tuple((H - 2).tolist()), fn=lambda m, b: G @ m.x)
        ],
    )
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(5):
        record = solver.step()
        assert record is not None and solver.duals.multipliers is not None
        expected = float(torch.linalg.vector_norm(solver.duals.multipliers.dense))
        assert expected > 0
        assert record.group_multiplier_norm == [pytest.approx(expected, rel=1e-14)]
