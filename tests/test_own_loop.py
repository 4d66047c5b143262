"""One step in pieces (``lagrangian`` -> the user's backward and optimizer step ->
``prox_step`` -> ``dual_step``) equals :meth:`Solver.step`, in every order; clipping,
closure optimizers, several optimizers and low-precision losses work."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from constrain import ConfigError, ConstrainedProblem, Constraint, Regularizer, Solver, Variables

DTYPE = torch.float64
TARGET = torch.tensor([2.0, -1.0, 0.5], dtype=DTYPE)


def _problem() -> ConstrainedProblem:
    """min ||x - t||^2 s.t. sum(x) <= 1, x_0 - x_1 == 2, with an l1 prox on x."""
    return ConstrainedProblem(
        objective=lambda m, b: (m.x - TARGET).pow(2).sum(),
        constraints=[
            Constraint("budget", "<=", rhs=1.0, fn=lambda m, b: m.x.sum()),
            Constraint("gap", "==", rhs=2.0, fn=lambda m, b: m.x[0] - m.x[1]),
        ],
        regularizers=[Regularizer(prox="l1", strength=0.01)],
    )


def _solver(order: str) -> Solver:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    return Solver(
        _problem(), model, optimizer, controller={"name": "nupi", "lr": 0.2, "kp": 0.5},
        order=order,
    )  # fmt: skip


@pytest.mark.parametrize("order", ["simultaneous", "dual_primal", "primal_dual"])
def test_own_loop_equals_step(order: str) -> None:
    auto, own = _solver(order), _solver(order)
    for _ in range(100):
        auto.step()
        loss = own.lagrangian()
        own.optimizer.zero_grad()
        loss.backward()
        own.optimizer.step()
        own.prox_step()
        own.dual_step()
    torch.testing.assert_close(own.model.x, auto.model.x, rtol=0, atol=1e-12)
    for name, lam in auto.multipliers.items():
        torch.testing.assert_close(own.multipliers[name], lam, rtol=0, atol=1e-12)
    assert own.step_count == auto.step_count == 100
    assert own.history.objective().tolist() == pytest.approx(auto.history.objective().tolist())


def test_calls_out_of_order_name_the_expected_order() -> None:
    solver = _solver("simultaneous")
    with pytest.raises(ConfigError, match=r"dual_step\(\) was called before lagrangian\(\)"):
        solver.dual_step()
    solver.lagrangian()
    with pytest.raises(ConfigError, match=r"lagrangian\(\) -> backward\(\)"):
        solver.lagrangian()
    solver.prox_step()
    with pytest.raises(ConfigError, match=r"prox_step\(\) was called twice"):
        solver.prox_step()
    solver.dual_step()
    with pytest.raises(ConfigError, match="before lagrangian"):
        solver.prox_step()


def test_gradient_clipping_in_the_own_loop() -> None:
    """A clipped step moves x by at most lr * max_norm."""
    solver = _solver("simultaneous")
    before = solver.model.x.detach().clone()
    loss = solver.lagrangian()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(solver.model.parameters(), max_norm=0.1)
    solver.optimizer.step()
    solver.dual_step()
    assert float((solver.model.x.detach() - before).norm()) <= 0.05 * 0.1 + 0.01 * 3**0.5 + 1e-12


def test_closure_optimizer_lbfgs_solves_the_problem() -> None:
    """The automatic step hands LBFGS a closure (a raw TypeError before)."""
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - TARGET).pow(2).sum(),
        constraints=[Constraint("budget", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
    )
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    solver = Solver(problem, model, optimizer, controller={"name": "gda", "lr": 0.5})
    solver.fit(steps=200)
    # KKT: x = t - lam/2, sum(x) = 1  ->  lam = 2 (sum(t) - 1) / 3
    lam = 2 * (float(TARGET.sum()) - 1) / 3
    assert solver.multipliers["budget"].item() == pytest.approx(lam, abs=1e-4)


def test_several_optimizers() -> None:
    """SGD for one parameter and Adam for another, both stepped, both checkpointed."""
    model = Variables(x=torch.zeros(2, dtype=DTYPE), y=torch.zeros(2, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - 1).pow(2).sum() + (m.y + 1).pow(2).sum(),
        constraints=[Constraint("c", "<=", rhs=0.5, fn=lambda m, b: m.x.sum())],
    )
    sgd = torch.optim.SGD([model.x], lr=0.1)
    adam = torch.optim.Adam([model.y], lr=0.1)
    solver = Solver(problem, model, [sgd, adam], controller="gda")
    solver.fit(steps=5)
    assert bool((model.x != 0).all()) and bool((model.y != 0).all())
    state = solver.state_dict()
    assert isinstance(state["optimizer"], list) and len(state["optimizer"]) == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_losses_reach_the_exact_multiplier(dtype: torch.dtype) -> None:
    """min (x - 3)^2 s.t. x <= 1 in bf16/fp16: lam* = 4, x* = 1. Multipliers are float32
    (a bf16 multiplier stalls at 3.19: its increments round away)."""
    model = Variables(x=torch.zeros(1, dtype=torch.float32))
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x.to(dtype) - 3).pow(2).sum(),
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.to(dtype).sum())],
    )
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.05),
        controller={"name": "nupi", "lr": 0.05, "ki": 1.0, "kp": 1.0},
    )  # fmt: skip
    solver.fit(steps=3000)
    assert solver.multiplier_store is not None
    assert solver.multiplier_store.dense.dtype == torch.float32
    assert solver.multipliers["cap"].item() == pytest.approx(4.0, abs=0.05)
    assert model.x.item() == pytest.approx(1.0, abs=0.02)


def test_a_constraint_is_compared_in_its_own_dtype() -> None:
    """A float32 violation 1000.2 <= 1000 is violated even with an fp16 objective."""
    model = Variables(x=torch.full((1,), 1000.2))
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.half().sum() * 0,
        constraints=[Constraint("cap", "<=", rhs=1000.0, fn=lambda m, b: m.x.sum())],
    )
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.0))
    record = solver.step()
    assert record is not None and record.max_violation == pytest.approx(0.2, abs=1e-3)


def test_signal_never_aliases_a_parameter() -> None:
    """A constraint returning the parameter itself: the stored signal is a copy, so the
    optimistic controller matches the same constraint returning a clone."""

    def run(clone: bool) -> list[float]:
        model = Variables(x=torch.ones(1, dtype=DTYPE))
        problem = ConstrainedProblem(
            objective=lambda m, b: m.x.sum() * 0,
            constraints=[
                Constraint("pin", "==", fn=lambda m, b: m.x.clone() if clone else m.x)
            ],
        )
        solver = Solver(
            problem, model, torch.optim.SGD(model.parameters(), lr=0.1),
            controller={"name": "optimistic", "lr": 0.1},
        )  # fmt: skip
        solver.fit(steps=3)
        return [*solver.history.violation()[:, 0].tolist(), solver.multipliers["pin"].item()]

    assert run(clone=False) == run(clone=True)


def test_changed_rhs_is_read_at_the_next_step() -> None:
    class Budget(ConstrainedProblem):
        budget: float = 1.0

        def objective(self, model: Variables, batch: object) -> Tensor:
            return (model.x - 2).pow(2).sum()

        from constrain import constraint as _c

        @_c("<=", rhs="budget")
        def total(self, model: Variables, batch: object) -> Tensor:
            return model.x.sum()

    problem = Budget()
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.05),
        controller={"name": "nupi", "lr": 0.5, "kp": 1.0},
    )  # fmt: skip
    solver.fit(steps=1500)
    assert float(model.x.detach().sum()) == pytest.approx(1.0, abs=1e-3)
    problem.budget = 0.5
    solver.fit(steps=1500)
    assert float(model.x.detach().sum()) == pytest.approx(0.5, abs=1e-3)
