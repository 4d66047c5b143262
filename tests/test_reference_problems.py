"""The reference problems: exact references checked independently, the library converging
to them, and the nuPI paper's iris-svm table (see docs/algorithms.md,
'The iris hard-margin SVM')."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from constrain import RunConfig, get_problem, run

cp = pytest.importorskip("cvxpy")

from constrain_problems.iris_svm import load_iris_binary  # noqa: E402
from constrain_problems.random_qp import qp_data  # noqa: E402
from constrain_problems.simplex import project_simplex  # noqa: E402

TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10}


def _config(name: str, **changes: Any) -> RunConfig:
    """The problem's default configuration with a controller (a name: the problem's
    recommended settings for it; a mapping: exactly that) and other fields replaced."""
    controller = changes.pop("controller", None)
    spec = get_problem(name)
    data = spec.default_config(controller if isinstance(controller, str) else None).model_dump()
    if isinstance(controller, dict):
        data["controller"] = controller
    data.update(changes)
    return RunConfig.parse(data)


# -- simplex ------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(c=arrays(np.float64, st.integers(2, 12), elements=st.floats(-5, 5)))
def test_simplex_closed_form_matches_cvxpy(c: np.ndarray) -> None:
    x, tau = project_simplex(c)
    assert x.min() >= 0 and x.sum() == pytest.approx(1.0, abs=1e-12)
    v = cp.Variable(len(c))
    total = cp.sum(v) == 1
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(v - c)), [total, v >= 0])
    problem.solve(solver=cp.CLARABEL, **TIGHT)
    # The objective is 1-strongly convex, so for CVXPY's feasible point v:
    # f(v) - f(x*) >= 1/2 ||v - x*||^2. The closed form must be at least as good as
    # CVXPY's answer and v within the distance this bound allows (an interior-point
    # solution of a degenerate instance, e.g. c = [0, 1], is only ~1e-7 accurate).
    # CVXPY's point may violate the constraints by ~1e-12, which can lower its objective
    # by up to |grad f| times that violation: the comparisons allow for it.
    f = lambda z: 0.5 * float(np.sum((z - c) ** 2))  # noqa: E731
    violation = max(0.0, -float(v.value.min())) * len(c) + abs(float(v.value.sum()) - 1.0)
    slack = 1e-12 + float(np.abs(v.value - c).max()) * violation
    assert f(x) <= f(v.value) + slack
    assert 0.5 * float(np.sum((x - v.value) ** 2)) <= f(v.value) - f(x) + slack
    # KKT of the closed form: x - c + tau 1 - lam = 0, lam = max(tau - c, 0), lam . x = 0.
    lam = np.maximum(tau - c, 0.0)
    np.testing.assert_allclose(x - c + tau - lam, 0.0, atol=1e-12)
    assert float(lam @ x) == pytest.approx(0.0, abs=1e-12)


def test_simplex_run_reaches_the_closed_form() -> None:
    result = run(_config("simplex", steps=1000), figures=False)
    setup = result.setup
    c = setup.problem.target().numpy()  # type: ignore[attr-defined]
    x, tau = project_simplex(c)
    np.testing.assert_allclose(result.solver.model.x.detach().numpy(), x, atol=1e-10)
    lam = result.solver.multipliers
    assert lam["total"].item() == pytest.approx(tau, abs=1e-10)
    np.testing.assert_allclose(lam["nonnegative"].numpy(), np.maximum(tau - c, 0), atol=1e-10)
    assert result.summary["reference"]["multiplier_error"] < 1e-9
    assert result.summary["max_violation"] < 1e-12


# -- random QP ------------------------------------------------------------------------------


def _cvxpy_qp(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    x = cp.Variable(d["P"].shape[0])
    ineq = d["G"] @ x <= d["h"]
    eq = d["A"] @ x == d["b"]
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(d["P"])) + d["q"] @ x
    problem = cp.Problem(cp.Minimize(objective), [ineq, eq])
    problem.solve(solver=cp.CLARABEL, **TIGHT)
    return x.value, ineq.dual_value, eq.dual_value, float(problem.value)


def test_random_qp_reference_satisfies_kkt_in_the_library_convention() -> None:
    setup = get_problem("random-qp").build(_config("random-qp"))
    reference = get_problem("random-qp").reference(setup)
    assert reference is not None and reference.primal is not None
    d = qp_data(12, 6, 5, 0)
    x, lam, mu, value = _cvxpy_qp(d)
    np.testing.assert_allclose(reference.primal["x"], x, atol=1e-8)
    np.testing.assert_allclose(reference.multipliers["inequalities"], lam, atol=1e-8)
    np.testing.assert_allclose(reference.multipliers["equalities"], mu, atol=1e-8)
    assert reference.objective == pytest.approx(value, abs=1e-9)
    # Stationarity of L = f + lam.(Gx - h) + mu.(Ax - b); lam >= 0; complementarity.
    grad = d["P"] @ x + d["q"] + d["G"].T @ lam + d["A"].T @ mu
    np.testing.assert_allclose(grad, 0.0, atol=1e-8)
    assert lam.min() >= -1e-10 and (lam > 1e-6).any()  # some inequality binds
    np.testing.assert_allclose(lam * (d["G"] @ x - d["h"]), 0.0, atol=1e-8)


@pytest.mark.parametrize("controller", ["gda", "nupi"])
def test_random_qp_run_reaches_the_cvxpy_solution(controller: str) -> None:
    result = run(_config("random-qp", controller=controller, steps=1000), figures=False)
    x, lam, mu, value = _cvxpy_qp(qp_data(12, 6, 5, 0))
    np.testing.assert_allclose(result.solver.model.x.detach().numpy(), x, atol=1e-7)
    ours = result.solver.multipliers
    np.testing.assert_allclose(ours["inequalities"].numpy(), lam, atol=1e-7)
    np.testing.assert_allclose(ours["equalities"].numpy(), mu, atol=1e-7)
    assert result.summary["objective"] == pytest.approx(value, abs=1e-8)


# -- iris SVM -------------------------------------------------------------------------------


def test_iris_svm_data_and_reference_kkt() -> None:
    X, y = load_iris_binary()
    assert X.shape == (70, 4) and set(y.tolist()) == {-1.0, 1.0}
    assert int((y > 0).sum()) == 35  # stratified split
    # Standardized over all 100 setosa/versicolor points before the split (the nuPI setup).
    from sklearn.datasets import load_iris

    raw = load_iris().data[load_iris().target < 2]
    full = (raw - raw.mean(0)) / raw.std(0)
    distances = np.abs(X.numpy()[:, None, :] - full[None, :, :]).max(axis=2).min(axis=1)
    assert distances.max() < 1e-12
    spec = get_problem("iris-svm")
    setup = spec.build(_config("iris-svm"))
    reference = spec.reference(setup)
    assert reference is not None and reference.primal is not None
    lam = reference.multipliers["margins"]
    w, b = reference.primal["w"], float(reference.primal["b"])
    Xn, yn = X.numpy(), y.numpy()
    # Hard-margin SVM KKT: w = sum lam_i y_i x_i, sum lam_i y_i = 0, lam_i (1 - y_i f_i) = 0.
    np.testing.assert_allclose(w, (lam * yn) @ Xn, atol=1e-7)
    assert float(lam @ yn) == pytest.approx(0.0, abs=1e-7)
    margins = yn * (Xn @ w + b)
    assert margins.min() >= 1 - 1e-7
    np.testing.assert_allclose(lam * (1 - margins), 0.0, atol=1e-7)
    assert reference.objective == pytest.approx(0.5 * w @ w, abs=1e-9)
    assert 2 <= int((lam > 1e-6).sum()) <= 6  # a few support vectors


# -- the nuPI paper's table (docs/algorithms.md, 'The iris hard-margin SVM') ------------------

TABLE: list[tuple[str, dict[str, Any], str]] = [
    ("GDA lr 0.1", {"name": "gda", "lr": 0.1}, "above"),
    ("GDA lr 1", {"name": "gda", "lr": 1.0}, "above"),
    ("Polyak lr 0.1 beta 0.3", {"name": "momentum", "lr": 0.1, "beta": 0.3}, "above"),
    ("Nesterov lr 0.1 beta -0.3", {"name": "nesterov", "lr": 0.1, "beta": -0.3}, "above"),
    ("Adam lr 1e-2", {"name": "adam", "lr": 1e-2}, "above"),
    (
        "nuPI ki 0.1 kp 1 nu 0",
        {"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0},
        "below",
    ),
    (
        "nuPI ki 1 kp 50 nu 0",
        {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 50.0, "nu": 0.0},
        "below",
    ),
]


def iris_table_row(controller: dict[str, Any]) -> dict[str, float]:
    """One row: ||lam - lam*|| at steps 1000 and 5000 and max g_i at 5000, through the
    library (5000 full-batch steps, dual_primal, SGD lr 1e-3 momentum 0.9, zero start)."""
    config = _config(
        "iris-svm",
        controller=controller,
        steps=5000,
        order="dual_primal",
        optimizer={"name": "sgd", "lr": 1e-3, "momentum": 0.9},
    )
    assert config.optimizer == {"name": "sgd", "lr": 1e-3, "momentum": 0.9}
    result = run(config, figures=False)
    exact = np.asarray(result.summary["reference"]["multipliers"])
    error = np.linalg.norm(result.solver.history.multipliers() - exact, axis=1)
    return {
        "at_1000": float(error[999]),
        "at_5000": float(error[4999]),
        "max_g": float(result.solver.history.last.max_violation),
        "reported": float(result.summary["reference"]["multiplier_error"]),
    }


@pytest.mark.slow
@pytest.mark.parametrize(("label", "controller", "side"), TABLE, ids=[row[0] for row in TABLE])
def test_iris_svm_nupi_paper_table(label: str, controller: dict[str, Any], side: str) -> None:
    row = iris_table_row(controller)
    print(f"{label:<28} {row['at_1000']:8.4f} {row['at_5000']:8.4f} {row['max_g']:8.4f}")
    assert row["reported"] == pytest.approx(row["at_5000"], abs=1e-12)
    if side == "below":
        assert row["at_5000"] < 1e-3
        assert row["max_g"] < 1e-4
    else:
        assert row["at_5000"] > 0.3
