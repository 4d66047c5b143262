"""The solver loop against explicit plain-torch reference loops, and its bookkeeping."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    NonFiniteError,
    ProblemState,
    Regularizer,
    ShapeError,
    Solver,
    UnknownNameError,
    Variables,
    constraint,
    make_optimizer,
    solve,
)
from constrain.controllers import GDA

DTYPE = torch.float64
TARGET = torch.tensor([1.5, -0.5, 2.0], dtype=DTYPE)
FLOOR = torch.tensor([-0.25, -0.25, 0.0], dtype=DTYPE)
EQUALITY = torch.tensor([False, False, False, False, True])
STEPS = 100


# -- a small convex QP and its standard form, written independently of the library -----


def qp_objective(x: Tensor) -> Tensor:
    return 0.5 * (x - TARGET).pow(2).sum() + 0.1 * x[0] * x[1]


def qp_standard_form(x: Tensor) -> Tensor:
    """[sum(x) - 1 (<=), FLOOR - x (>=), x0 - x1 - 0.25 (==)]."""
    return torch.cat([(x.sum() - 1.0).reshape(1), FLOOR - x, (x[0] - x[1] - 0.25).reshape(1)])


class QP(ConstrainedProblem):
    def objective(self, model: Any, batch: Any) -> Tensor:
        return qp_objective(model.x)

    @constraint("<=", rhs=1.0)
    def cap(self, model: Any, batch: Any) -> Tensor:
        return model.x.sum()

    @constraint(">=", rhs=tuple(FLOOR.tolist()))
    def floor(self, model: Any, batch: Any) -> Tensor:
        return model.x

    @constraint("==", rhs=0.25)
    def balance(self, model: Any, batch: Any) -> Tensor:
        return model.x[0] - model.x[1]


Rule = Callable[[Tensor, Tensor, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]


def gda_rule(lr: float) -> Rule:
    def update(
        lam: Tensor, e: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return lam + lr * e, state

    return update


def nupi_rule(lr: float, ki: float, kp: float, nu: float) -> Rule:
    def update(
        lam: Tensor, e: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        xi_prev = state.get("xi", torch.zeros_like(lam))
        xi = nu * xi_prev + (1 - nu) * e
        return lam + lr * (ki * e + kp * (xi - xi_prev)), {"xi": xi}

    return update


def project(lam: Tensor) -> Tensor:
    return torch.where(EQUALITY, lam, lam.clamp_min(0))


CONTROLLERS: dict[str, tuple[dict[str, Any], Rule]] = {
    "gda": ({"name": "gda", "lr": 0.4}, gda_rule(0.4)),
    "nupi": (
        {"name": "nupi", "lr": 1.0, "ki": 0.3, "kp": 0.8, "nu": 0.4},
        nupi_rule(1.0, 0.3, 0.8, 0.4),
    ),
}


def reference_run(order: str, rule: Rule, optimizer: str) -> tuple[Tensor, Tensor]:
    """Plain-torch loop: returns x and lam after every step, shapes (STEPS, 3), (STEPS, 5)."""
    x = nn.Parameter(torch.zeros(3, dtype=DTYPE))
    opt: torch.optim.Optimizer = (
        torch.optim.SGD([x], lr=0.1, momentum=0.3)
        if optimizer == "sgd"
        else torch.optim.Adam([x], lr=0.05)
    )
    lam = torch.zeros(5, dtype=DTYPE)
    state: dict[str, Tensor] = {}
    xs, lams = [], []

    def primal(lam_now: Tensor) -> None:
        opt.zero_grad()
        (qp_objective(x) + lam_now @ qp_standard_form(x)).backward()  # type: ignore[no-untyped-call]

    for _ in range(STEPS):
        if order == "simultaneous":
            primal(lam)
            new, state = rule(lam, qp_standard_form(x).detach(), state)
            lam = project(new)
            opt.step()
        elif order == "dual_primal":
            new, state = rule(lam, qp_standard_form(x).detach(), state)
            lam = project(new)
            primal(lam)
            opt.step()
        else:  # primal_dual
            primal(lam)
            opt.step()
            new, state = rule(lam, qp_standard_form(x).detach(), state)
            lam = project(new)
        xs.append(x.detach().clone())
        lams.append(lam.clone())
    return torch.stack(xs), torch.stack(lams)


def library_run(order: str, controller: Any, optimizer: str) -> tuple[Tensor, Tensor, Solver]:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    opt = make_optimizer(
        optimizer,
        model.parameters(),
        **({"lr": 0.1, "momentum": 0.3} if optimizer == "sgd" else {"lr": 0.05}),
    )
    solver = Solver(QP(), model, opt, controller=controller, order=order)  # type: ignore[arg-type]
    xs: list[Tensor] = []
    solver.fit(steps=STEPS, callback=lambda s, r: xs.append(model.x.detach().clone()))
    return torch.stack(xs), torch.tensor(solver.history.multipliers()), solver


@pytest.mark.parametrize("order", ["simultaneous", "dual_primal", "primal_dual"])
@pytest.mark.parametrize("controller", list(CONTROLLERS))
def test_update_orders_match_the_reference_loop(order: str, controller: str) -> None:
    spec, rule = CONTROLLERS[controller]
    x_ref, lam_ref = reference_run(order, rule, "sgd")
    x, lam, solver = library_run(order, spec, "sgd")
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(lam, lam_ref, rtol=0, atol=1e-12)
    # Non-trivial: multipliers of every sign pattern appeared.
    assert (lam_ref[:, :4] > 0).any() and (lam_ref[:, 4] != 0).any()
    assert solver.layout is not None and solver.layout.labels() == [
        "cap",
        "floor[0]",
        "floor[1]",
        "floor[2]",
        "balance",
    ]


def test_orders_differ_from_each_other() -> None:
    """The three orders are really different algorithms on this problem."""
    runs = {
        order: reference_run(order, gda_rule(0.4), "sgd")[1][-1]
        for order in ("simultaneous", "dual_primal", "primal_dual")
    }
    assert not torch.allclose(runs["simultaneous"], runs["dual_primal"], atol=1e-6)
    assert not torch.allclose(runs["dual_primal"], runs["primal_dual"], atol=1e-6)


def test_adam_primal_optimizer_matches_the_reference_loop() -> None:
    x_ref, lam_ref = reference_run("dual_primal", nupi_rule(1.0, 0.3, 0.8, 0.4), "adam")
    x, lam, _ = library_run("dual_primal", CONTROLLERS["nupi"][0], "adam")
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(lam, lam_ref, rtol=0, atol=1e-12)


def test_nn_module_parameters_with_adam() -> None:
    """A torch.nn.Linear model; its weight norm is constrained and its bias fixed."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(20, 3, generator=gen, dtype=DTYPE)
    y = X @ torch.tensor([2.0, -1.0, 0.5], dtype=DTYPE) + 0.3

    class Regression(ConstrainedProblem):
        def objective(self, model: Any, batch: Any) -> Tensor:
            return (model(batch[0]).squeeze(-1) - batch[1]).pow(2).mean()

        @constraint("<=", rhs=1.0)
        def norm(self, model: Any, batch: Any) -> Tensor:
            return model.weight.pow(2).sum()

        @constraint("==", rhs=0.1)
        def bias(self, model: Any, batch: Any) -> Tensor:
            return model.bias

    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    reference = nn.Linear(3, 1).double()
    reference.load_state_dict(model.state_dict())
    solver = Solver(
        Regression(),
        model,
        torch.optim.Adam(model.parameters(), lr=0.01),
        controller={"name": "gda", "lr": 0.5},
    )
    solver.fit(steps=50, batch=(X, y))
    opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    lam = torch.zeros(2, dtype=DTYPE)
    for _ in range(50):
        g = torch.cat([(reference.weight.pow(2).sum() - 1.0).reshape(1), reference.bias - 0.1])
        loss = (reference(X).squeeze(-1) - y).pow(2).mean() + lam @ g
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        lam = lam + 0.5 * g.detach()
        lam = torch.stack([lam[0].clamp_min(0), lam[1]])
        opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.cat(list(solver.multipliers.values())), lam, rtol=0, atol=1e-12
    )


# -- extragradient ------------------------------------------------------------------------


def test_extragradient_matches_a_hand_written_loop() -> None:
    """lam_half = P(lam + eta e(x)), x_half = x - a grad_x L(x, lam);
    x <- x - a grad_x L(x_half, lam_half), lam <- P(lam + eta e(x_half))."""
    eta, alpha = 0.3, 0.1
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(
        QP(),
        model,
        torch.optim.SGD(model.parameters(), lr=alpha),
        controller={"name": "extragradient", "lr": eta},
        order="dual_primal",
    )
    xs: list[Tensor] = []
    solver.fit(steps=STEPS, callback=lambda s, r: xs.append(model.x.detach().clone()))

    def grad(x: Tensor, lam: Tensor) -> Tensor:
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(qp_objective(x) + lam @ qp_standard_form(x), x)
        return g

    x = torch.zeros(3, dtype=DTYPE)
    lam = torch.zeros(5, dtype=DTYPE)
    x_ref, lam_ref = [], []
    for _ in range(STEPS):
        lam_half = project(lam + eta * qp_standard_form(x))
        x_half = x - alpha * grad(x, lam)
        x = x - alpha * grad(x_half, lam_half)
        lam = project(lam + eta * qp_standard_form(x_half))
        x_ref.append(x)
        lam_ref.append(lam)
    torch.testing.assert_close(torch.stack(xs), torch.stack(x_ref), rtol=0, atol=1e-12)
    lam_lib = torch.tensor(solver.history.multipliers())
    torch.testing.assert_close(lam_lib, torch.stack(lam_ref), rtol=0, atol=1e-12)


# -- structure: cost does not grow with the number of constraint groups ---------------------


class CountingGDA(GDA):
    """GDA that records the size of every multiplier vector it updates."""

    calls: ClassVar[list[int]] = []

    def update(
        self, multipliers: Tensor, signal: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        CountingGDA.calls.append(multipliers.numel())
        return super().update(multipliers, signal, state)


@pytest.mark.parametrize("groups", [1, 10, 60])
def test_one_stacked_multiplier_update_per_step_whatever_the_number_of_groups(groups: int) -> None:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.pow(2).sum(),
        constraints=[
            Constraint(
                f"c{k}",
                "<=" if k % 2 else ">=",
                rhs=0.1 * k,
                fn=lambda m, b, k=k: m.x[k % 3] * (k + 1),
            )
            for k in range(groups)
        ],
    )
    model = Variables(x=torch.ones(3, dtype=DTYPE))
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.01), controller=CountingGDA(lr=0.1)
    )
    CountingGDA.calls.clear()
    solver.fit(steps=5)
    assert CountingGDA.calls == [groups] * 5  # one call per step, on one stacked vector
    store = solver.multiplier_store
    assert store is not None and store.dense.shape == (groups,) and store.per_sample == {}
    assert list(solver.multipliers) == [f"c{k}" for k in range(groups)]


# -- public state ---------------------------------------------------------------------------


def test_multipliers_property_names_shapes_and_copies() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(QP(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert solver.multipliers == {} and solver.multiplier_store is None
    solver.fit(steps=3)
    lam = solver.multipliers
    assert list(lam) == ["cap", "floor", "balance"]
    assert [tuple(v.shape) for v in lam.values()] == [(1,), (3,), (1,)]
    lam["floor"] += 100.0
    assert float(solver.multipliers["floor"].max()) < 100.0


def test_controller_without_equality_support_is_rejected() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(
        QP(), model, torch.optim.SGD(model.parameters(), lr=0.1), controller="multiplicative"
    )
    with pytest.raises(ConfigError, match="only handles inequality constraints"):
        solver.step()


def test_optimizer_must_own_the_model_parameters() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    other = Variables(y=torch.zeros(3, dtype=DTYPE))
    with pytest.raises(ConfigError, match="does not own any parameter"):
        Solver(QP(), model, torch.optim.SGD(other.parameters(), lr=0.1))


# -- non-finite values ------------------------------------------------------------------------


def _flaky(bad_batch: int = 1, what: str = "constraint") -> ConstrainedProblem:
    def value(model: Any, batch: Any) -> Tensor:
        v = model.x.sum()
        return v * float("nan") if batch == bad_batch and what == "constraint" else v

    def objective(model: Any, batch: Any) -> Tensor:
        f = (model.x - 1).pow(2).sum()
        return f * float("inf") if batch == bad_batch and what == "objective" else f

    return ConstrainedProblem(
        objective=objective, constraints=[Constraint("total", "<=", rhs=0.5, fn=value)]
    )


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("constraint", "constraint 'total' is not finite at step 1"),
        ("objective", "the objective is inf at step 1"),
    ],
)
def test_nonfinite_raise_names_the_part_and_step(what: str, message: str) -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(_flaky(what=what), model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(NonFiniteError, match=message):
        solver.fit([0, 1, 0], steps=3)
    assert solver.step_count == 1


def test_nonfinite_skip_leaves_the_state_untouched(caplog: pytest.LogCaptureFixture) -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(
        _flaky(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "gda", "lr": 1.0},
        on_nonfinite="skip",
    )
    xs: list[Tensor] = []
    with caplog.at_level(logging.WARNING, logger="constrain"):
        solver.fit([0, 1, 0, 0], steps=4, callback=lambda s, r: xs.append(model.x.detach().clone()))
    assert "step 1 skipped" in caplog.text
    assert [r.skipped for r in solver.history] == [False, True, False, False]
    assert torch.equal(xs[0], xs[1])
    lam = solver.history.multipliers()
    assert lam[0] == lam[1] and lam[2] != lam[1]
    assert solver.step_count == 4


def test_nonfinite_after_the_primal_step_in_primal_dual_order() -> None:
    """The second evaluation (at x_{t+1}) of ``primal_dual`` is non-finite."""
    calls = {"n": 0}

    def value(model: Any, batch: Any) -> Tensor:
        calls["n"] += 1
        return model.x.sum() * (float("nan") if calls["n"] == 2 else 1.0)

    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - 1).pow(2).sum(),
        constraints=[Constraint("total", rhs=0.5, fn=value)],
    )
    for mode in ("raise", "skip"):
        calls["n"] = 0
        model = Variables(x=torch.zeros(3, dtype=DTYPE))
        solver = Solver(
            problem,
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            order="primal_dual",
            on_nonfinite=mode,
        )  # type: ignore[arg-type]
        if mode == "raise":
            with pytest.raises(NonFiniteError, match="constraint 'total' is not finite at step 0"):
                solver.step()
        else:
            record = solver.step()
            assert record is not None and record.multipliers == [0.0]
            assert not torch.equal(model.x.detach(), torch.zeros(3, dtype=DTYPE))
            solver.step()
            assert solver.history.last.multipliers[0] > 0


# -- recording and loops -----------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "expected"), [(10, [0, 3, 6, 9]), (11, [0, 3, 6, 9, 10])])
def test_record_every(steps: int, expected: list[int]) -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(QP(), model, torch.optim.SGD(model.parameters(), lr=0.1), record_every=3)
    solver.fit(steps=steps)
    assert solver.history.steps().tolist() == expected
    solver.fit(steps=2)  # a second call continues the count and records its own last step
    assert solver.history.steps().tolist()[-1] == steps + 1


def test_record_contents() -> None:
    model = Variables(x=torch.tensor([2.0, -1.0, 0.0], dtype=DTYPE))
    solver = Solver(
        QP(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "gda", "lr": 1.0},
        order="dual_primal",
    )
    record = solver.step()
    assert record is not None and record.step == 0
    g = qp_standard_form(torch.tensor([2.0, -1.0, 0.0], dtype=DTYPE))
    assert record.violation == pytest.approx(g.tolist(), abs=1e-15)
    assert record.max_violation == pytest.approx(max(g[:4].max().item(), abs(g[4].item())))
    assert record.multipliers == pytest.approx(project(g).tolist(), abs=1e-15)
    assert record.objective == pytest.approx(
        qp_objective(torch.tensor([2.0, -1.0, 0.0], dtype=DTYPE)).item()
    )
    assert record.penalty is None and not record.skipped and record.seconds > 0


def test_metrics_are_recorded() -> None:
    class WithMetrics(QP):
        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            state = super().evaluate(model, batch)
            state.metrics["norm"] = model.x.detach().norm()
            return state

    model = Variables(x=torch.ones(3, dtype=DTYPE))
    solver = Solver(WithMetrics(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    solver.fit(steps=2)
    assert solver.history.metric("norm")[0] == pytest.approx(3**0.5)


class BatchLog(ConstrainedProblem):
    """Records every batch it is evaluated on."""

    seen: ClassVar[list[list[float]]] = []

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        (values,) = batch if isinstance(batch, (list, tuple)) else (batch,)
        BatchLog.seen.append(values.tolist())
        return ProblemState((model.x * values.mean()).sum(), {"bound": model.x.sum().reshape(1)})

    @constraint("<=", rhs=1.0)
    def bound(self, model: Any, batch: Any) -> Tensor:  # declared; evaluate() computes it
        raise NotImplementedError


def test_fit_re_iterates_a_data_loader_across_epochs() -> None:
    data = DataLoader(TensorDataset(torch.arange(10, dtype=DTYPE)), batch_size=4)
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    solver = Solver(BatchLog(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    BatchLog.seen.clear()
    solver.fit(data, steps=7)
    epoch = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
    assert BatchLog.seen == epoch + epoch + epoch[:1]
    assert len(solver.history) == 7


def test_fit_with_a_fixed_batch() -> None:
    batch = torch.tensor([1.0, 2.0], dtype=DTYPE)
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    solver = Solver(BatchLog(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    BatchLog.seen.clear()
    solver.fit(steps=3, batch=batch)
    assert BatchLog.seen == [[1.0, 2.0]] * 3


def test_fit_rejects_empty_data_and_bad_steps() -> None:
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    solver = Solver(BatchLog(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="yielded no batch"):
        solver.fit([], steps=1)
    with pytest.raises(ConfigError, match="steps must be a non-negative integer"):
        solver.fit(steps=-1)
    assert len(solver.fit(steps=0)) == 0


def test_callback_sees_every_step() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(QP(), model, torch.optim.SGD(model.parameters(), lr=0.1), record_every=2)
    seen: list[tuple[int, bool]] = []
    solver.fit(steps=4, callback=lambda s, r: seen.append((s.step_count, r is None)))
    assert seen == [(1, False), (2, True), (3, False), (4, False)]


# -- solve() --------------------------------------------------------------------------------------


def test_solve_convenience_converges_on_the_qp() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    result = solve(
        QP(),
        model,
        steps=2000,
        lr=0.1,
        optimizer="sgd",
        momentum=0.5,
        controller={"name": "nupi", "lr": 1.0, "ki": 0.3, "kp": 0.8},
        order="dual_primal",
    )
    assert result.model is model
    assert list(result.multipliers) == ["cap", "floor", "balance"]
    assert len(result.history) == 2000 and result.solver.step_count == 2000
    assert result.max_violation < 1e-9
    assert result.objective == result.history.last.objective
    # KKT at the solution: grad f + lam . grad g = 0.
    x = model.x.detach().clone().requires_grad_(True)
    lam = torch.cat(list(result.multipliers.values()))
    (grad,) = torch.autograd.grad(qp_objective(x) + lam @ qp_standard_form(x), x)
    assert float(grad.abs().max()) < 1e-9


def test_solve_passes_the_nonfinite_policy() -> None:
    """solve(on_nonfinite="skip") skips a step with a NaN constraint instead of raising;
    an unknown policy is refused by name."""
    calls = {"n": 0}

    def flaky(model: Any, batch: Any) -> Tensor:
        calls["n"] += 1
        return model.x.sum() - 1 + (math.nan if calls["n"] == 2 else 0.0)

    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x**2).sum(), constraints=[Constraint("c", "==", fn=flaky)]
    )
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    result = solve(problem, model, steps=5, lr=0.1, on_nonfinite="skip")
    assert [r.skipped for r in result.history] == [False, True, False, False, False]
    with pytest.raises(ConfigError, match="on_nonfinite"):
        solve(problem, model, steps=1, on_nonfinite="ignore")  # type: ignore[arg-type]


def test_make_optimizer() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer("adam", params, lr=0.1), torch.optim.Adam)
    sgd = torch.optim.SGD(params, lr=0.1)
    assert make_optimizer(sgd, params) is sgd
    with pytest.raises(UnknownNameError, match="Did you mean 'adam'"):
        make_optimizer("adma", params)
    with pytest.raises(ConfigError, match="invalid options for optimizer 'sgd'"):
        make_optimizer("sgd", params, lr=0.1, momentun=0.9)


# -- per-sample (indexed) multipliers ------------------------------------------------------------

N = 8
SAMPLE_TARGET = torch.linspace(-1.0, 2.0, N, dtype=DTYPE)


class Margins(ConstrainedProblem):
    """min 1/2 ||x - t||^2 s.t. x_i >= 1 for every sample i, observed in minibatches."""

    def objective(self, model: Any, batch: Any) -> Tensor:
        return 0.5 * (model.x - SAMPLE_TARGET).pow(2).sum()

    @constraint(">=", rhs=1.0, per_sample=True, size=N)
    def margin(self, model: Any, batch: Any) -> ConstraintValue:
        return ConstraintValue(model.x[batch % N], indices=batch)  # % N: see the bad-index test


NUPI = {"name": "nupi", "lr": 1.0, "ki": 0.4, "kp": 0.7, "nu": 0.5}


def test_only_observed_multipliers_and_states_change() -> None:
    gen = torch.Generator().manual_seed(0)
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    solver = Solver(Margins(), model, torch.optim.SGD(model.parameters(), lr=0.1), controller=NUPI)
    for _ in range(30):
        batch = torch.randperm(N, generator=gen)[:3]
        before = solver.multipliers.get("margin", torch.zeros(N, dtype=DTYPE))
        xi_before = solver.indexed_state.get("margin", {"xi": torch.zeros(N, dtype=DTYPE)})[
            "xi"
        ].clone()
        solver.step(batch)
        after = solver.multipliers["margin"]
        xi_after = solver.indexed_state["margin"]["xi"]
        unobserved = torch.ones(N, dtype=torch.bool)
        unobserved[batch] = False
        assert torch.equal(after[unobserved], before[unobserved])
        assert torch.equal(xi_after[unobserved], xi_before[unobserved])
        assert not torch.equal(xi_after[batch], xi_before[batch])
    assert solver.multiplier_store is not None and solver.multiplier_store.dense.numel() == 0


@pytest.mark.parametrize("subset", [[1, 4, 6], list(range(N))], ids=["subset", "full"])
def test_indexed_run_equals_dense_run_on_observed_entries(subset: list[int]) -> None:
    idx = torch.tensor(subset)
    dense_problem = ConstrainedProblem(
        objective=Margins().objective,
        constraints=[Constraint("margin", ">=", rhs=1.0, fn=lambda m, b: m.x[idx])],
    )
    runs = []
    for problem in (Margins(), dense_problem):
        model = Variables(x=torch.zeros(N, dtype=DTYPE))
        solver = Solver(
            problem,
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            controller=NUPI,
            order="dual_primal",
        )
        solver.fit(steps=40, batch=idx)
        runs.append((model.x.detach(), solver.multipliers["margin"]))
    (x_indexed, lam_indexed), (x_dense, lam_dense) = runs
    torch.testing.assert_close(x_indexed, x_dense, rtol=0, atol=1e-15)
    torch.testing.assert_close(lam_indexed[idx], lam_dense, rtol=0, atol=1e-15)
    rest = torch.ones(N, dtype=torch.bool)
    rest[idx] = False
    assert (lam_indexed[rest] == 0).all()
    assert (lam_dense > 0).any()


def test_indexed_minibatches_match_a_hand_written_loop() -> None:
    lr_x, (eta, ki, kp, nu) = 0.1, (1.0, 0.4, 0.7, 0.5)
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randperm(N, generator=gen)[:3] for _ in range(60)]
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    solver = Solver(Margins(), model, torch.optim.SGD(model.parameters(), lr=lr_x), controller=NUPI)
    solver.fit(batches, steps=60)

    x = torch.zeros(N, dtype=DTYPE)
    lam = torch.zeros(N, dtype=DTYPE)
    xi = torch.zeros(N, dtype=DTYPE)
    for b in batches:
        grad = x - SAMPLE_TARGET
        grad[b] -= lam[b]  # d/dx of lam_i (1 - x_i)
        e = 1.0 - x[b]
        xi_new = nu * xi[b] + (1 - nu) * e
        lam[b] = (lam[b] + eta * (ki * e + kp * (xi_new - xi[b]))).clamp_min(0)
        xi[b] = xi_new
        x = x - lr_x * grad
    torch.testing.assert_close(model.x.detach(), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(solver.multipliers["margin"], lam, rtol=0, atol=1e-12)
    torch.testing.assert_close(solver.indexed_state["margin"]["xi"], xi, rtol=0, atol=1e-12)


def test_indexed_records_summarise_the_observed_entries() -> None:
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    solver = Solver(
        Margins(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "gda", "lr": 1.0},
        order="dual_primal",
    )
    record = solver.step(torch.tensor([0, 5]))
    assert record is not None
    assert record.per_sample["margin"] == {
        "max_violation": 1.0,
        "feasible_fraction": 0.0,
        "mean_multiplier": 1.0,
        "max_multiplier": 1.0,
    }
    assert record.max_violation == 1.0 and record.multipliers == []


def test_indexed_equality_multipliers_are_signed() -> None:
    problem = ConstrainedProblem(
        objective=lambda m, b: 0.5 * (m.x - SAMPLE_TARGET).pow(2).sum(),
        constraints=[
            Constraint(
                "pin",
                "==",
                rhs=0.5,
                per_sample=True,
                size=N,
                fn=lambda m, b: ConstraintValue(m.x[b], indices=b),
            )
        ],
    )
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "gda", "lr": 1.0},
        order="dual_primal",
    )
    record = solver.step(torch.tensor([0, 7]))
    assert record is not None
    # x = 0: violations 0 - 0.5 = -0.5 on both; |h| = 0.5 is the violation.
    assert record.per_sample["pin"]["max_violation"] == 0.5
    assert solver.multipliers["pin"][[0, 7]].tolist() == [-0.5, -0.5]


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.tensor([0, N]), rf"indices must lie in \[0, {N}\)"),
        (torch.tensor([-1, 2]), rf"indices must lie in \[0, {N}\)"),
    ],
)
def test_bad_indices_are_shape_errors(batch: Tensor, message: str) -> None:
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    solver = Solver(Margins(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ShapeError, match=message):
        solver.step(batch)


def test_duplicate_indices_count_once_with_their_mean() -> None:
    """A sample drawn twice (sampling with replacement) gets one multiplier update, from
    the mean of its values: the same as drawing it once when the values agree."""
    once, twice = (Variables(x=torch.zeros(N, dtype=DTYPE)) for _ in range(2))
    a = Solver(Margins(), once, torch.optim.SGD(once.parameters(), lr=0.1))
    b = Solver(Margins(), twice, torch.optim.SGD(twice.parameters(), lr=0.1))
    a.step(torch.tensor([2, 5]))
    b.step(torch.tensor([2, 2, 5]))
    torch.testing.assert_close(a.multipliers["margin"], b.multipliers["margin"], rtol=0, atol=0)


def test_indexed_with_a_data_loader() -> None:
    data = DataLoader(
        TensorDataset(torch.arange(N)),
        batch_size=3,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )

    class FromLoader(Margins):
        """Objective and constraints both on the minibatch's samples."""

        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            (indices,) = batch
            x = model.x[indices]
            return ProblemState(
                0.5 * (x - SAMPLE_TARGET[indices]).pow(2).sum(),
                {"margin": ConstraintValue(x, indices=indices)},
            )

    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    solver = Solver(
        FromLoader(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.2),
        controller={"name": "nupi", "lr": 1.0, "ki": 0.5, "kp": 1.0},
    )
    solver.fit(data, steps=600)
    # Solution: x_i = max(t_i, 1), lam_i = max(1 - t_i, 0).
    torch.testing.assert_close(model.x.detach(), SAMPLE_TARGET.clamp_min(1.0), rtol=0, atol=1e-8)
    torch.testing.assert_close(
        solver.multipliers["margin"], (1.0 - SAMPLE_TARGET).clamp_min(0), rtol=0, atol=1e-8
    )


# -- regularizers ----------------------------------------------------------------------------


def soft_threshold(x: Tensor, strength: float, shift: float = 0.0) -> Tensor:
    return torch.sign(x - shift) * (x.abs() - strength).clamp_min(0) + shift


def test_prox_regularizer_runs_after_each_primal_step_with_strength_times_lr() -> None:
    """x <- prox_{s lr}(x - lr grad), on the selected parameters only; clusters recorded."""
    problem = ConstrainedProblem(
        objective=lambda m, b: (
            0.5 * (m.w - TARGET).pow(2).sum() + 0.5 * (m.v - TARGET).pow(2).sum()
        ),
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.w.sum())],
        regularizers=[
            Regularizer(
                prox=soft_threshold,
                strength=0.5,
                params="w",
                options={"shift": 0.0},
                track_clusters=True,
            )
        ],
    )
    model = Variables(w=torch.zeros(3, dtype=DTYPE), v=torch.zeros(3, dtype=DTYPE))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "gda", "lr": 0.5},
        order="dual_primal",
    )
    solver.fit(steps=30)
    w = torch.zeros(3, dtype=DTYPE)
    v = torch.zeros(3, dtype=DTYPE)
    lam = 0.0
    for _ in range(30):
        lam = max(0.0, lam + 0.5 * float(w.sum() - 1.0))
        w = soft_threshold(w - 0.1 * (w - TARGET + lam), 0.5 * 0.1)
        v = v - 0.1 * (v - TARGET)
    torch.testing.assert_close(model.w.detach(), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.v.detach(), v, rtol=0, atol=1e-12)
    assert solver.history.last.clusters == {"w": int(torch.unique(w).numel())}


def test_regularizer_params_must_match_a_parameter() -> None:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.w.sum(),
        regularizers=[Regularizer(prox=soft_threshold, strength=0.5, params="layer*.weight")],
    )
    model = Variables(w=torch.zeros(3, dtype=DTYPE))
    with pytest.raises(ConfigError, match=r"params \['layer\*\.weight'\] match no parameter"):
        Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_reducer_derived_from_the_local_one_is_called() -> None:
    """A reducer subclassing ``LocalReducer`` may combine something: the solver calls its
    ``reduce_state`` and ``reduce_gradients`` (only the plain local reducer is skipped)."""
    from constrain.primal import LocalReducer

    class Halving(LocalReducer):
        states = gradients = 0

        def reduce_state(self, problem: Any, state: ProblemState) -> ProblemState:
            self.states += 1
            return ProblemState(state.objective * 0.5, state.constraints, metrics=state.metrics)

        def reduce_gradients(self, model: nn.Module) -> None:
            self.gradients += 1

    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - TARGET).pow(2).sum(),
        constraints=[Constraint("budget", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
    )
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    reducer = Halving()
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1), reducer=reducer)
    record = solver.step()
    assert reducer.states == 1 and reducer.gradients == 1
    # the objective of the record is the reduced one: half of ||0 - t||^2
    assert record is not None
    assert record.objective == pytest.approx(0.5 * float(TARGET.pow(2).sum()), rel=1e-15)
