"""Competitive gradient descent: the closed form on bilinear games, agreement between the
two CG systems, evaluation counts, and convergence to CVXPY's multipliers on a random QP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from constrain import ConfigError, NonFiniteError, ShapeError
from constrain._cgd import cgd_step, conjugate_gradient

DTYPE = torch.float64


def _bilinear(a: torch.Tensor):  # type: ignore[no-untyped-def]
    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        return xs[0] @ a @ ys[0]

    return lagrangian


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    m=st.integers(1, 6),
    eta=st.floats(0.01, 3.0),
    seed=st.integers(0, 10_000),
    solve_for=st.sampled_from(["auto", "primal", "dual"]),
)
def test_bilinear_step_equals_closed_form(
    n: int, m: int, eta: float, seed: int, solve_for: str
) -> None:
    """x+ = (I + eta^2 A A^T)^{-1}(x - eta A y), y+ = (I + eta^2 A^T A)^{-1}(y + eta A^T x)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, m, generator=g, dtype=DTYPE)
    x = torch.randn(n, generator=g, dtype=DTYPE)
    y = torch.randn(m, generator=g, dtype=DTYPE)
    step = cgd_step([x], [y], _bilinear(a), eta, tol=1e-14, solve_for=solve_for)  # type: ignore[arg-type]
    x_new = torch.linalg.solve(torch.eye(n, dtype=DTYPE) + eta**2 * a @ a.T, x - eta * a @ y)
    y_new = torch.linalg.solve(torch.eye(m, dtype=DTYPE) + eta**2 * a.T @ a, y + eta * a.T @ x)
    torch.testing.assert_close(x + step.primal[0], x_new, rtol=0, atol=1e-10)
    torch.testing.assert_close(y + step.dual[0], y_new, rtol=0, atol=1e-10)
    assert step.converged and step.gradients == 1
    assert step.hvps == 2 * step.cg_iterations + 2
    assert step.evaluations == 1 + step.hvps
    assert step.cg_iterations <= 2 * (m if step.solved_for == "dual" else n) + 10


def test_two_step_sizes_and_several_tensors_per_player() -> None:
    """eta_x != eta_y, players split over several tensors (matrix-shaped too)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 5, generator=g, dtype=DTYPE)
    x = torch.randn(6, generator=g, dtype=DTYPE)
    y = torch.randn(5, generator=g, dtype=DTYPE)
    eta_x, eta_y = 0.3, 1.7

    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        xv = torch.cat([xs[0].reshape(-1), xs[1]])
        yv = torch.cat([ys[0], ys[1].reshape(-1)])
        return xv @ a @ yv

    step = cgd_step(
        [x[:4].reshape(2, 2), x[4:]],
        [y[:2], y[2:].reshape(3, 1)],
        lagrangian,
        eta_x,
        eta_dual=eta_y,
        tol=1e-14,
    )
    dx = torch.cat([step.primal[0].reshape(-1), step.primal[1]])
    dy = torch.cat([step.dual[0], step.dual[1].reshape(-1)])
    assert step.primal[0].shape == (2, 2) and step.dual[1].shape == (3, 1)
    # First-order conditions of the local game: dx = -eta_x (A y + A dy), dy = eta_y (A^T x + A^T dx).
    torch.testing.assert_close(dx, -eta_x * (a @ y + a @ dy), rtol=0, atol=1e-12)
    torch.testing.assert_close(dy, eta_y * (a.T @ x + a.T @ dx), rtol=0, atol=1e-12)


def test_lagrangian_of_a_constrained_problem_matches_dense_formula() -> None:
    """Non-bilinear L = f(x) + y.g(x): the step solves the local game built from the exact
    gradient, Hessian blocks and Jacobian (computed here with torch.autograd.functional)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 4, generator=g, dtype=DTYPE)
    p_mat = q @ q.T + torch.eye(4, dtype=DTYPE)
    c = torch.randn(3, 4, generator=g, dtype=DTYPE)
    x = torch.randn(4, generator=g, dtype=DTYPE)
    y = torch.rand(3, generator=g, dtype=DTYPE)

    def constraints(xv: torch.Tensor) -> torch.Tensor:
        return c @ xv + 0.1 * xv.pow(3).sum() - 1.0

    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        return 0.5 * xs[0] @ p_mat @ xs[0] + ys[0] @ constraints(xs[0])

    eta = 0.4
    step = cgd_step([x], [y], lagrangian, eta, tol=1e-14)
    jac = torch.autograd.functional.jacobian(constraints, x)  # D_yx = J (3 x 4)
    grad_x = p_mat @ x + jac.T @ y
    grad_y = constraints(x)
    n, m = 4, 3
    # Solve the 7x7 linear system of the local game's first-order conditions directly.
    system = torch.zeros(n + m, n + m, dtype=DTYPE)
    system[:n, :n] = torch.eye(n, dtype=DTYPE) / eta
    system[:n, n:] = jac.T
    system[n:, :n] = -jac
    system[n:, n:] = torch.eye(m, dtype=DTYPE) / eta
    rhs = torch.cat([-grad_x, grad_y])
    expected = torch.linalg.solve(system, rhs)
    torch.testing.assert_close(step.primal[0], expected[:n], rtol=0, atol=1e-10)
    torch.testing.assert_close(step.dual[0], expected[n:], rtol=0, atol=1e-10)


def test_reduces_to_gradient_steps_without_coupling() -> None:
    """No mixed term: each player takes its plain gradient step; CG needs no iteration."""
    x = torch.tensor([1.0, -2.0], dtype=DTYPE)
    y = torch.tensor([0.5], dtype=DTYPE)

    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        return (xs[0] ** 2).sum() - (ys[0] ** 2).sum()

    step = cgd_step([x], [y], lagrangian, 0.1)
    torch.testing.assert_close(step.primal[0], -0.1 * 2 * x)
    torch.testing.assert_close(step.dual[0], 0.1 * (-2 * y))


def test_parameters_are_used_in_place_and_left_untouched() -> None:
    """nn.Parameters read by the closure from a module: no .grad written, values unchanged."""
    layer = torch.nn.Linear(3, 1, bias=False).to(DTYPE)
    before = layer.weight.detach().clone()
    y = torch.tensor([0.7], dtype=DTYPE)
    data = torch.ones(3, dtype=DTYPE)

    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        return layer(data).sum() * ys[0].sum() + (layer.weight**2).sum()

    step = cgd_step([layer.weight], [y], lagrangian, 0.5)
    assert layer.weight.grad is None and torch.equal(layer.weight, before)
    assert step.primal[0].shape == layer.weight.shape and not step.primal[0].requires_grad


def test_bad_inputs() -> None:
    x, y = torch.zeros(2, dtype=DTYPE), torch.zeros(1, dtype=DTYPE)
    lag = _bilinear(torch.ones(2, 1, dtype=DTYPE))
    with pytest.raises(ConfigError, match="eta must be finite and > 0"):
        cgd_step([x], [y], lag, 0.0)
    with pytest.raises(ConfigError, match="eta_dual"):
        cgd_step([x], [y], lag, 0.1, eta_dual=float("nan"))
    with pytest.raises(ConfigError, match="sequence"):
        cgd_step(x, [y], lag, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty"):
        cgd_step([x], [], lag, 0.1)
    with pytest.raises(ConfigError, match="tol"):
        cgd_step([x], [y], lag, 0.1, tol=0.0)
    with pytest.raises(ConfigError, match="solve_for"):
        cgd_step([x], [y], lag, 0.1, solve_for="both")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="floating-point"):
        cgd_step([torch.zeros(2, dtype=torch.long)], [y], lag, 0.1)
    with pytest.raises(ShapeError, match="scalar"):
        cgd_step([x], [y], lambda xs, ys: xs[0] * ys[0].sum(), 0.1)
    with pytest.raises(NonFiniteError, match="Lagrangian"):
        cgd_step([x], [y], lambda xs, ys: xs[0].sum() / 0.0 + ys[0].sum(), 0.1)


def test_conjugate_gradient_on_spd_system() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(8, 8, generator=g, dtype=DTYPE)
    m = q @ q.T + 0.5 * torch.eye(8, dtype=DTYPE)
    b = torch.randn(8, generator=g, dtype=DTYPE)
    v, iterations, residual, converged = conjugate_gradient(lambda u: m @ u, b, tol=1e-13)
    torch.testing.assert_close(v, torch.linalg.solve(m, b), rtol=0, atol=1e-9)
    assert converged and iterations <= 2 * 8 + 10 and residual <= 1e-13
    zero, its, res, ok = conjugate_gradient(lambda u: m @ u, torch.zeros(8, dtype=DTYPE))
    assert its == 0 and res == 0.0 and ok and not zero.any()
    with pytest.raises(NonFiniteError, match="positive definite"):
        conjugate_gradient(lambda u: -u, b)


def _random_qp(seed: int, n: int = 6, m: int = 4):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n))
    p_mat = q @ q.T + np.eye(n)
    c = rng.standard_normal(n)
    a = rng.standard_normal((m, n))
    b = a @ rng.standard_normal(n) - rng.uniform(0.1, 1.0, m)  # some constraints active
    return p_mat, c, a, b


def test_projected_cgd_converges_to_cvxpy_multipliers_on_a_random_qp() -> None:
    """min 1/2 x'Px + c'x s.t. Ax <= b: a plain loop of CGD steps with lam <- max(lam, 0)
    reaches CVXPY's primal and dual solution."""
    cp = pytest.importorskip("cvxpy")
    p_np, c_np, a_np, b_np = _random_qp(7)
    x_var = cp.Variable(p_np.shape[0])
    cons = [a_np @ x_var <= b_np]
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x_var, p_np) + c_np @ x_var), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    lam_star = np.asarray(cons[0].dual_value)
    assert (lam_star > 1e-6).any(), "the instance must have an active constraint"

    p_mat, c, a, b = (torch.as_tensor(v, dtype=DTYPE) for v in (p_np, c_np, a_np, b_np))

    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        xv = xs[0]
        return 0.5 * xv @ p_mat @ xv + c @ xv + ys[0] @ (a @ xv - b)

    x = torch.zeros(p_np.shape[0], dtype=DTYPE)
    lam = torch.zeros(a_np.shape[0], dtype=DTYPE)
    evaluations = []
    for _ in range(800):
        step = cgd_step([x], [lam], lagrangian, 0.1, tol=1e-12, nonnegative=True)
        x = x + step.primal[0]
        lam = (lam + step.dual[0]).clamp_min(0.0)
        evaluations.append(step.evaluations)
    np.testing.assert_allclose(lam.numpy(), lam_star, atol=1e-6)
    np.testing.assert_allclose(x.numpy(), np.asarray(x_var.value), atol=1e-6)
    # One gradient plus 2 * (CG iterations) + 2 products; CG needs at most m = 4 iterations.
    assert max(evaluations) <= 1 + 2 * (2 * 4 + 10) + 2


def test_without_freezing_inactive_multipliers_projected_cgd_is_biased() -> None:
    """Why ``nonnegative`` exists: if the primal player anticipates dual moves that the
    projection cancels, the loop settles away from the KKT point."""
    p_np, c_np, a_np, b_np = _random_qp(7)
    p_mat, c, a, b = (torch.as_tensor(v, dtype=DTYPE) for v in (p_np, c_np, a_np, b_np))

    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        return 0.5 * xs[0] @ p_mat @ xs[0] + c @ xs[0] + ys[0] @ (a @ xs[0] - b)

    finals = {}
    for frozen in (False, True):
        x = torch.zeros(6, dtype=DTYPE)
        lam = torch.zeros(4, dtype=DTYPE)
        for _ in range(400):
            step = cgd_step([x], [lam], lagrangian, 0.1, nonnegative=frozen)
            x, lam = x + step.primal[0], (lam + step.dual[0]).clamp_min(0.0)
        stationarity = p_mat @ x + c + a.T @ lam  # zero at a KKT point
        finals[frozen] = float(stationarity.norm())
    assert finals[True] < 1e-4 < 1e-2 < finals[False]


def test_nonnegative_masks_per_tensor() -> None:
    """Only entries marked as inequality multipliers can be frozen; equality ones move."""
    x = torch.zeros(2, dtype=DTYPE)
    ys = [torch.zeros(2, dtype=DTYPE), torch.zeros(1, dtype=DTYPE)]

    def lagrangian(xs: list[torch.Tensor], dual: list[torch.Tensor]) -> torch.Tensor:
        g = torch.stack([xs[0][0] - 1.0, xs[0][1] - 1.0])  # both inactive at x = 0
        return (xs[0] ** 2).sum() + dual[0] @ g + dual[1].sum() * (xs[0].sum() - 2.0)

    step = cgd_step([x], ys, lagrangian, 0.1, nonnegative=[torch.tensor([True, False]), False])
    assert step.frozen == 1
    assert step.dual[0][0] == 0.0 and step.dual[0][1] < 0.0 and step.dual[1][0] < 0.0
    with pytest.raises(ConfigError, match="nonnegative"):
        cgd_step([x], ys, lagrangian, 0.1, nonnegative=[True])
    with pytest.raises(ConfigError, match=r"nonnegative\[0\]"):
        cgd_step([x], ys, lagrangian, 0.1, nonnegative=[torch.ones(3, dtype=torch.bool), True])


def test_iris_svm_reaches_cvxpy_multipliers() -> None:
    """The nuPI paper's hard-margin SVM (70 margin constraints): projected CGD with eta = 1
    reaches the exact multipliers, where GDA stays ~1 away after 5000 steps
    (docs/algorithms.md, 'The iris hard-margin SVM')."""
    pytest.importorskip("cvxpy")
    from constrain import get_problem

    spec = get_problem("iris-svm")
    setup = spec.build(spec.default_config())
    reference = spec.reference(setup)
    assert reference is not None
    lam_star = torch.as_tensor(reference.multipliers["margins"], dtype=DTYPE)
    features = setup.extras["X"].to(DTYPE)
    labels = setup.extras["y"].to(DTYPE)

    def lagrangian(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        w, b = xs
        return 0.5 * w @ w + ys[0] @ (1.0 - labels * (features @ w + b))

    w, b = torch.zeros(4, dtype=DTYPE), torch.zeros((), dtype=DTYPE)
    lam = torch.zeros(70, dtype=DTYPE)
    for _ in range(400):
        step = cgd_step([w, b], [lam], lagrangian, 1.0, tol=1e-12, nonnegative=True)
        w, b = w + step.primal[0], b + step.primal[1]
        lam = (lam + step.dual[0]).clamp_min(0.0)
    assert float((lam - lam_star).norm()) < 1e-6
    # CG ran on the 5 primal entries: at most 1 + 2 * (2 * 5 + 10) + 2 evaluations per step.
    assert step.solved_for == "primal" and step.evaluations <= 1 + 2 * 20 + 2
