"""The Lagrangian: primal loss ``f + lam . g`` and dual signal ``g`` (float64, exact)."""

from __future__ import annotations

from typing import Any

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
