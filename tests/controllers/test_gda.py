"""GDA's fused step: agreement with the two-rounding form, and a step size beyond the
multipliers' dtype."""

from __future__ import annotations

import pytest
import torch

from constrain import ConstrainedProblem, Constraint, NonFiniteError, Solver, Variables
from constrain.controllers import GDA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fused_step_rounds_once(dtype: torch.dtype) -> None:
    """``lam + lr * e`` in one kernel: within one rounding of the two-step form."""
    gen = torch.Generator().manual_seed(0)
    lam = torch.randn(1000, generator=gen, dtype=dtype)
    e = torch.randn(1000, generator=gen, dtype=dtype)
    new, state = GDA(lr=0.37).update(lam, e, {})
    assert state == {}
    assert new.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(new, lam + 0.37 * e, rtol=2 * eps, atol=2 * eps)


def test_a_step_size_beyond_float32_is_reported_as_an_overflow() -> None:
    """An ``lr`` no float32 can hold overflows the multipliers: the named error, not a
    bare RuntimeError from the fused kernel."""
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x**2).sum(),
        constraints=[Constraint("budget", ">=", rhs=1.0, fn=lambda m, b: m.x.sum())],
    )
    model = Variables(x=torch.zeros(3))
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.1), controller=GDA(lr=1e39)
    )
    with pytest.raises(NonFiniteError, match=r"'budget' became non-finite at step 0"):
        solver.step()
