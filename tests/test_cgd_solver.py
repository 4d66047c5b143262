"""``order="cgd"`` in the solver: the closed form on a bilinear game, agreement with CVXPY on
the iris SVM and random QPs, the evaluation counts it records, bit-exact resume, and every
refusal."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from constrain import (
    ConfigError,
    ConstrainedProblem,
    ConstraintValue,
    NonFiniteError,
    Solver,
    Variables,
    constraint,
    solve,
)
from constrain.config import RunConfig
from constrain.primal import LocalReducer

DTYPE = torch.float64


def _bilinear(a: Tensor) -> ConstrainedProblem:
    """``L(x, mu) = mu . (A^T x) = x^T A mu``: no objective, ``m`` equality constraints."""

    class Bilinear(ConstrainedProblem):
        def objective(self, model: Any, batch: Any) -> Tensor:
            return model.x.sum() * 0.0

        @constraint("==", rhs=0.0, size=a.shape[1])
        def coupling(self, model: Any, batch: Any) -> Tensor:
            return a.T @ model.x

    return Bilinear()


def _sgd(model: torch.nn.Module, lr: float, **options: Any) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, **options)


@pytest.mark.parametrize(("eta_x", "eta_y"), [(0.6, 0.6), (0.7, 0.4)])
def test_bilinear_steps_equal_the_closed_form(eta_x: float, eta_y: float) -> None:
    """x+ = (I + eta_x eta_y A A^T)^{-1}(x - eta_x A y), y+ = (I + eta_x eta_y A^T A)^{-1}
    (y + eta_y A^T x), step after step (the multipliers are equality ones: no projection)."""
    g = torch.Generator().manual_seed(5)
    n, m = 5, 3
    a = torch.randn(n, m, generator=g, dtype=DTYPE)
    x = torch.randn(n, generator=g, dtype=DTYPE)
    model = Variables(x=x.clone())
    solver = Solver(
        _bilinear(a),
        model,
        _sgd(model, eta_x),
        controller={"name": "gda", "lr": eta_y},
        order="cgd",
        cgd_tol=1e-14,
    )
    y = torch.zeros(m, dtype=DTYPE)
    c = eta_x * eta_y
    for _ in range(4):
        x_new = torch.linalg.solve(torch.eye(n, dtype=DTYPE) + c * a @ a.T, x - eta_x * a @ y)
        y_new = torch.linalg.solve(torch.eye(m, dtype=DTYPE) + c * a.T @ a, y + eta_y * a.T @ x)
        record = solver.step()
        assert record is not None
        torch.testing.assert_close(model.x.detach(), x_new, rtol=0, atol=1e-10)
        torch.testing.assert_close(solver.multipliers["coupling"], y_new, rtol=0, atol=1e-10)
        x, y = x_new, y_new
        # CG on the 3 multipliers: one gradient, 2 products per iteration, 2 more.
        iterations = record.metrics["cgd/cg_iterations"]
        assert 1 <= iterations <= 2 * m + 10
        assert record.metrics["cgd/hvp"] == 2 * iterations + 2
        assert record.metrics["cgd/evaluations"] == 1 + record.metrics["cgd/hvp"]
        assert record.metrics["cgd/residual"] <= 1e-14
        assert record.metrics["cgd/frozen"] == 0


def test_iris_svm_reaches_cvxpy_multipliers_and_primal() -> None:
    """The nuPI paper's hard-margin SVM (70 margin constraints) through the solver: eta = 1
    for both players, 400 steps; 13 gradient evaluations per step (CG on the 5 primal
    entries)."""
    pytest.importorskip("cvxpy")
    from constrain import get_problem

    spec = get_problem("iris-svm")
    setup = spec.build(spec.default_config())
    reference = spec.reference(setup)
    assert reference is not None and reference.primal is not None
    model = setup.model.double()
    solver = Solver(
        setup.problem,
        model,
        _sgd(model, 1.0),
        controller={"name": "gda", "lr": 1.0},
        order="cgd",
        cgd_tol=1e-12,
    )
    history = solver.fit(None, 400, batch=setup.batch)
    lam_star = torch.as_tensor(reference.multipliers["margins"], dtype=DTYPE)
    assert float((solver.multipliers["margins"] - lam_star).abs().max()) < 1e-9
    for name, value in model.named_parameters():
        exact = torch.as_tensor(reference.primal[name], dtype=DTYPE)
        assert float((value.detach() - exact).abs().max()) < 1e-9
    evaluations = [r.metrics["cgd/evaluations"] for r in history.records]
    assert max(evaluations) <= 1 + 2 * (2 * 5 + 10) + 2
    assert float(np.mean(evaluations[-100:])) <= 15  # 5 CG iterations: 13 evaluations
    assert history.last.metrics["cgd/frozen"] == 70 - int((lam_star > 1e-8).sum())


def _random_qp(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n, m, k = 6, 4, 1
    root = rng.standard_normal((n, n))
    p_mat = root @ root.T / n + 0.5 * np.eye(n)
    c = rng.standard_normal(n)
    a = rng.standard_normal((m, n))
    b = a @ rng.standard_normal(n) - rng.uniform(0.1, 1.0, m)
    a_eq = rng.standard_normal((k, n))
    b_eq = rng.standard_normal(k)
    return p_mat, c, a, b, a_eq, b_eq


def _qp_problem(p_mat: Tensor, c: Tensor, a: Tensor, b: Tensor, a_eq: Tensor, b_eq: Tensor) -> Any:
    class QP(ConstrainedProblem):
        def objective(self, model: Any, batch: Any) -> Tensor:
            return 0.5 * model.x @ p_mat @ model.x + c @ model.x

        @constraint("<=", rhs=tuple(b.tolist()))
        def rows(self, model: Any, batch: Any) -> Tensor:
            return a @ model.x

        @constraint("==", rhs=tuple(b_eq.tolist()))
        def balance(self, model: Any, batch: Any) -> Tensor:
            return a_eq @ model.x

    return QP()


@pytest.mark.parametrize("seed", [0, 2, 5, 7])
def test_random_qps_reach_cvxpy_primal_and_dual(seed: int) -> None:
    """min 1/2 x'Px + c'x s.t. Ax <= b, A_eq x = b_eq (two active inequalities each):
    solve(order="cgd") with eta = 0.5 for both players reaches CVXPY's solution and both
    multiplier vectors to 1e-8 in 500 steps (they agree to ~1e-12)."""
    cp = pytest.importorskip("cvxpy")
    p_np, c_np, a_np, b_np, aeq_np, beq_np = _random_qp(seed)
    x_var = cp.Variable(p_np.shape[0])
    cons = [a_np @ x_var <= b_np, aeq_np @ x_var == beq_np]
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x_var, p_np) + c_np @ x_var), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    tensors = [torch.as_tensor(v, dtype=DTYPE) for v in (p_np, c_np, a_np, b_np, aeq_np, beq_np)]
    model = Variables(x=torch.zeros(p_np.shape[0], dtype=DTYPE))
    result = solve(
        _qp_problem(*tensors),
        model,
        steps=500,
        lr=0.5,
        controller={"name": "gda", "lr": 0.5},
        order="cgd",
        cgd_tol=1e-12,
    )
    np.testing.assert_allclose(model.x.detach().numpy(), x_var.value, atol=1e-8)
    np.testing.assert_allclose(result.multipliers["rows"].numpy(), cons[0].dual_value, atol=1e-8)
    np.testing.assert_allclose(result.multipliers["balance"].numpy(), cons[1].dual_value, atol=1e-8)
    assert max(r.metrics["cgd/evaluations"] for r in result.history.records) <= 1 + 2 * 20 + 2


def _qp_solver(**options: Any) -> Solver:
    tensors = [torch.as_tensor(v, dtype=DTYPE) for v in _random_qp(7)]
    model = Variables(x=torch.zeros(6, dtype=DTYPE))
    settings: dict[str, Any] = {"controller": {"name": "gda", "lr": 0.5}, "order": "cgd"}
    settings.update(options)
    optimizer = settings.pop("optimizer", lambda m: _sgd(m, 0.5))(model)
    return Solver(_qp_problem(*tensors), model, optimizer, **settings)


class _Noisy(ConstrainedProblem):
    """A stochastic objective: each evaluation draws from torch's random generator."""

    def objective(self, model: Any, batch: Any) -> Tensor:
        noise = 1e-2 * torch.randn(model.x.shape, dtype=DTYPE)
        return 0.5 * (model.x - 1.0).pow(2).sum() + noise @ model.x

    @constraint("<=", rhs=1.0)
    def total(self, model: Any, batch: Any) -> Tensor:
        return model.x.sum()


def _noisy_solver() -> Solver:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    return Solver(
        _Noisy(), model, _sgd(model, 0.3), controller={"name": "gda", "lr": 0.3}, order="cgd"
    )


@pytest.mark.parametrize("build", [_qp_solver, _noisy_solver], ids=["qp", "stochastic"])
def test_checkpoint_resume_is_bit_exact(build: Any) -> None:
    import io

    torch.manual_seed(0)
    straight = build()
    straight.fit(None, 10)
    torch.manual_seed(0)
    first = build()
    first.fit(None, 4)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # the checkpoint's random state replaces this one
    resumed = build()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.fit(None, 6)
    assert torch.equal(resumed.model.x, straight.model.x)
    for name, value in straight.multipliers.items():
        assert torch.equal(resumed.multipliers[name], value)
    tail = straight.history.records[4:]
    assert [r.multipliers for r in resumed.history.records] == [r.multipliers for r in tail]
    assert [r.metrics for r in resumed.history.records] == [r.metrics for r in tail]


def test_restarts_and_bounds_apply_to_the_cgd_multipliers() -> None:
    """The dual side keeps its projection, its bounds and its restarts."""
    solver = _qp_solver(max_multiplier=0.3)
    solver.fit(None, 50)
    rows = solver.multipliers["rows"]
    assert float(rows.max()) <= 0.3 and float(rows.min()) >= 0.0
    assert float(solver.multipliers["balance"].abs().max()) <= 0.3


def test_config_accepts_the_order() -> None:
    config = RunConfig.model_validate({"problem": {"name": "iris-svm"}, "order": "cgd"})
    assert config.order == "cgd"


class _PerSample(ConstrainedProblem):
    def objective(self, model: Any, batch: Any) -> Tensor:
        return 0.5 * model.x.pow(2).sum()

    @constraint(">=", rhs=1.0, per_sample=True, size=3)
    def margin(self, model: Any, batch: Any) -> ConstraintValue:
        return ConstraintValue(model.x[batch], indices=batch)


def test_refusals() -> None:
    expected = [
        ({"formulation": "augmented_lagrangian"}, "'lagrangian' formulation"),
        ({"formulation": "quadratic_penalty"}, "'lagrangian' formulation"),
        ({"controller": "nupi"}, "one 'gda' controller"),
        ({"controller": {"rows": "gda", "balance": "gda"}}, "one 'gda' controller"),
        ({"optimizer": lambda m: torch.optim.Adam(m.parameters(), lr=0.1)}, "got optimizer"),
        ({"optimizer": lambda m: _sgd(m, 0.1, momentum=0.9)}, "momentum=0.9"),
        ({"optimizer": lambda m: _sgd(m, 0.1, weight_decay=1e-3)}, "weight_decay=0.001"),
        ({"optimizer": lambda m: _sgd(m, 0.1, maximize=True)}, "maximize=True"),
        ({"dual_every": 2}, "dual_every=2"),
        ({"reducer": type("Combine", (LocalReducer,), {})()}, "single process"),
        ({"cgd_tol": 0.0}, "cgd_tol"),
        ({"cgd_tol": float("nan")}, "cgd_tol"),
        ({"cgd_tol": "1e-8"}, "cgd_tol"),
        ({"cgd_max_iter": 0}, "cgd_max_iter"),
        ({"cgd_max_iter": 2.5}, "cgd_max_iter"),
        ({"order": "simultaneous", "cgd_tol": 1e-6}, "order='cgd'"),
        ({"order": "dual_primal", "cgd_max_iter": 5}, "order='cgd'"),
    ]
    for options, message in expected:
        with pytest.raises(ConfigError, match=message):
            _qp_solver(**options)
    y, z = torch.zeros(2, dtype=DTYPE), torch.zeros(2, dtype=DTYPE)
    two = Variables(y=y, z=z)
    groups = torch.optim.SGD([{"params": [two.y], "lr": 0.1}, {"params": [two.z], "lr": 0.2}])
    a = torch.ones(4, 1, dtype=DTYPE)

    class Split(ConstrainedProblem):
        def objective(self, model: Any, batch: Any) -> Tensor:
            return model.y.sum() * 0.0

        @constraint("==", rhs=0.0)
        def coupling(self, model: Any, batch: Any) -> Tensor:
            return a.T @ torch.cat([model.y, model.z])

    with pytest.raises(ConfigError, match="learning rates"):
        Solver(Split(), two, groups, order="cgd")
    pair = [torch.optim.SGD([two.y], lr=0.1), torch.optim.SGD([two.z], lr=0.1)]
    with pytest.raises(ConfigError, match="got optimizer"):
        Solver(Split(), two, pair, order="cgd")
    solver = _qp_solver()
    with pytest.raises(ConfigError, match=r"Solver\.step\(\)"):
        solver.lagrangian()
    per_sample = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(_PerSample(), per_sample, _sgd(per_sample, 0.1), order="cgd")
    with pytest.raises(ConfigError, match="per-sample"):
        solver.step(torch.tensor([0, 1]))


class _Sqrt(ConstrainedProblem):
    """sqrt(x) turns NaN once x < 0."""

    def objective(self, model: Any, batch: Any) -> Tensor:
        return -model.x.sum()

    @constraint("<=", rhs=1.0)
    def root(self, model: Any, batch: Any) -> Tensor:
        return model.x.sqrt()


def test_nonfinite_steps_raise_or_are_skipped() -> None:
    model = Variables(x=torch.tensor([-1.0], dtype=DTYPE))
    solver = Solver(_Sqrt(), model, _sgd(model, 0.1), order="cgd")
    with pytest.raises(NonFiniteError, match=r"root.*step 0|step 0.*root"):
        solver.step()
    model = Variables(x=torch.tensor([-1.0], dtype=DTYPE))
    solver = Solver(_Sqrt(), model, _sgd(model, 0.1), order="cgd", on_nonfinite="skip")
    record = solver.step()
    assert record is not None and record.skipped
    assert float(model.x.detach()) == -1.0 and solver.step_count == 1


def test_cgd_refuses_proximal_regularizers() -> None:
    """The multiplier step anticipates the gradient step that a prox would change."""
    from constrain import Constraint, Regularizer, Variables

    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - 1).pow(2).sum(),
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
        regularizers=[Regularizer(prox="l1", strength=0.3)],
    )
    model = Variables(x=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"order='cgd' cannot run proximal regularizers"):
        Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1), order="cgd")
