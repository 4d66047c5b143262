"""One step in pieces (``lagrangian`` -> the user's backward and optimizer step ->
``prox_step`` -> ``dual_step``) equals :meth:`Solver.step`, in every order; clipping,
closure optimizers, several optimizers and low-precision losses work."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    NonFiniteError,
    Regularizer,
    Solver,
    Variables,
)

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


def test_saving_in_the_middle_of_a_step_is_refused() -> None:
    solver = _solver("simultaneous")
    solver.lagrangian().backward()
    solver.optimizer.step()
    with pytest.raises(ConfigError, match=r"in the middle of step 0 .*Save between steps"):
        solver.state_dict()
    solver.dual_step()
    assert solver.state_dict()["step_count"] == 1


def test_extragradient_needs_the_automatic_step() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(
        _problem(), model, torch.optim.SGD(model.parameters(), lr=0.05),
        controller={"name": "extragradient", "lr": 0.2},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"run it with Solver\.step\(\) or Solver\.fit\(\)"):
        solver.lagrangian()
    solver.fit(steps=3)  # the automatic step does the look-ahead
    assert solver.step_count == 3


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
            constraints=[Constraint("pin", "==", fn=lambda m, b: m.x.clone() if clone else m.x)],
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


# -- gradient accumulation and mixed precision -----------------------------------------------
def _mean_problem(samples: int) -> ConstrainedProblem:
    """Objective and dense constraints are means over the batch's rows (so the mean over
    equal micro-batches is the full batch's value); one per-sample group over all rows."""
    from constrain import ConstraintValue, ProblemState

    class Rows(ConstrainedProblem):
        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            A, idx = batch
            r = A @ model.x
            return ProblemState(
                (r - 1).pow(2).mean() + 0.1 * model.x.pow(2).sum(),
                {
                    "mean": r.mean().reshape(1),
                    "spread": (r.pow(2).mean() - 2.0).reshape(1),
                    "rows": ConstraintValue(r - 0.5, indices=idx),
                },
            )

    return Rows(
        constraints=[
            Constraint("mean", "<=", rhs=0.3),
            Constraint("spread", ">=", rhs=-1.5),
            Constraint("rows", "<=", size=samples, per_sample=True),
        ]
    )


def _rows_solver(order: str, lr: float) -> Solver:
    model = Variables(x=torch.full((3,), 0.1, dtype=DTYPE))
    return Solver(
        _mean_problem(16), model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5),
        controller={"name": "nupi", "lr": 0.3, "kp": 0.5}, order=order,
    )  # fmt: skip


def _accumulated_step(solver: Solver, batches: list[Any]) -> None:
    solver.optimizer.zero_grad()
    for k, batch in enumerate(batches):
        loss = solver.lagrangian(batch, accumulate=k > 0) / len(batches)
        loss.backward()
    solver.optimizer.step()
    solver.dual_step()


@pytest.mark.parametrize("order", ["simultaneous", "primal_dual"])
def test_accumulation_averages_the_constraint_signal(order: str) -> None:
    """4 micro-batches, each loss scaled by 1/4, against one step on the whole batch.

    With the primal step off (lr 0) every multiplier, dense and per-sample, equals the
    whole batch's (dense violations averaged, per-sample entries merged: sample 5 is in
    two micro-batches and counts once with its mean, as it does in the whole batch)."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(16, 3, generator=gen, dtype=DTYPE)
    idx = torch.arange(16)
    idx[8] = 5  # the whole batch holds sample 5 twice, too
    whole, parts = _rows_solver(order, 0.0), _rows_solver(order, 0.0)
    for _ in range(20):
        whole.step((A, idx))
        _accumulated_step(parts, [(A[4 * k : 4 * k + 4], idx[4 * k : 4 * k + 4]) for k in range(4)])
    for name, lam in whole.multipliers.items():
        torch.testing.assert_close(parts.multipliers[name], lam, rtol=0, atol=1e-12)
    assert parts.history.objective().tolist() == pytest.approx(whole.history.objective().tolist())


def test_accumulation_gives_the_whole_batch_gradient() -> None:
    """Dense constraints that are means: the accumulated step is the whole batch's step
    (gradient and signal), to 1e-12 over 40 steps. (Per-sample terms are sums over the
    batch's samples: scaling each micro-batch's loss by 1/k scales them by 1/k too.)"""

    class Dense(ConstrainedProblem):
        def evaluate(self, model: Any, batch: Any) -> Any:
            state = _mean_problem(16).evaluate(model, batch)
            del state.constraints["rows"]
            return state

    problem = Dense(
        constraints=[Constraint("mean", "<=", rhs=0.3), Constraint("spread", ">=", rhs=-1.5)]
    )

    def solver() -> Solver:
        model = Variables(x=torch.full((3,), 0.1, dtype=DTYPE))
        return Solver(
            problem, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
            controller={"name": "nupi", "lr": 0.3, "kp": 0.5},
        )  # fmt: skip

    gen = torch.Generator().manual_seed(1)
    A = torch.randn(16, 3, generator=gen, dtype=DTYPE)
    idx = torch.arange(16)
    whole, parts = solver(), solver()
    for _ in range(40):
        whole.step((A, idx))
        _accumulated_step(parts, [(A[4 * k : 4 * k + 4], idx[4 * k : 4 * k + 4]) for k in range(4)])
    torch.testing.assert_close(parts.model.x, whole.model.x, rtol=0, atol=1e-12)
    for name, lam in whole.multipliers.items():
        torch.testing.assert_close(parts.multipliers[name], lam, rtol=0, atol=1e-12)


def test_accumulation_is_refused_where_it_cannot_average() -> None:
    solver = _solver("dual_primal")
    solver.lagrangian()
    with pytest.raises(ConfigError, match="'dual_primal' order updates the multipliers"):
        solver.lagrangian(accumulate=True)
    other = _solver("simultaneous")
    other.lagrangian()
    other.prox_step()
    with pytest.raises(ConfigError, match="prox or multiplier step already ran"):
        other.lagrangian(accumulate=True)


def test_autocast_bf16_with_a_grad_scaler() -> None:
    """CPU autocast in bf16 with GradScaler semantics (scale, unscale, clip, step, update)
    in the own loop reaches the float32 solution's multiplier: lam* = 4 for
    min (x - 3)^2 s.t. x <= 1."""
    model = Variables(x=torch.zeros(1))
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x * torch.ones(1, 1)).sum().sub(3).pow(2),
        constraints=[
            Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: (m.x * torch.ones(1, 1)).sum())
        ],
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    solver = Solver(problem, model, optimizer, controller={"name": "nupi", "lr": 0.1, "kp": 1.0})
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    solver.register_state("scaler", scaler)
    for _ in range(800):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = solver.lagrangian()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        solver.dual_step()
    assert solver.multiplier_store is not None
    assert solver.multiplier_store.dense.dtype == torch.float32
    assert solver.multipliers["cap"].item() == pytest.approx(4.0, abs=0.05)
    assert model.x.item() == pytest.approx(1.0, abs=0.02)


def test_a_non_finite_gradient_of_the_own_loop_is_named_at_its_step() -> None:
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.abs().sqrt().sum(),  # infinite slope at 0
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
    )
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    solver.lagrangian().backward()
    solver.optimizer.step()
    with pytest.raises(NonFiniteError, match=r"gradient of parameter\(s\) \['x'\] .* step 0"):
        solver.dual_step()
