"""Agreement with CVXPY + Clarabel (epigraph form, tight tolerances) for d up to 60."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from constrain.prox import weight_sharing, weight_sharing_l1
from constrain.prox._inputs import make_input

cp = pytest.importorskip("cvxpy")
pytestmark = pytest.mark.reference

METHODS = ["sort_pava", "parallel_pav", "divide_conquer"]
TIGHT = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 500,
}


def cvxpy_prox(x: np.ndarray, lam: float, mu: float = 0.0) -> np.ndarray:
    """argmin 1/2||w - x||^2 + lam/(d-1) sum t_ij + mu ||w||_1, -t_ij <= w_i - w_j <= t_ij."""
    d = x.size
    w = cp.Variable(d)
    i, j = np.triu_indices(d, 1)
    t = cp.Variable(i.size)
    diff = w[j] - w[i]
    objective = 0.5 * cp.sum_squares(w - x) + lam / (d - 1) * cp.sum(t)
    if mu:
        objective = objective + mu * cp.norm1(w)
    problem = cp.Problem(cp.Minimize(objective), [diff <= t, -t <= diff])
    problem.solve(solver=cp.CLARABEL, **TIGHT)
    assert problem.status == cp.OPTIMAL, problem.status
    return np.asarray(w.value)


CASES = [
    ("random", 5, 1.0),
    ("random", 20, 0.3),
    ("random", 60, 1.0),
    ("random", 60, 10.0),
    ("tied", 30, 1.0),
    ("clustered", 40, 0.04),
    ("worst", 25, None),
    ("worst", 60, None),
]


@pytest.mark.parametrize(("kind", "d", "lam"), CASES)
def test_matches_cvxpy_epigraph(kind: str, d: int, lam: float | None) -> None:
    x, default = make_input(kind, d, dtype=torch.float64, seed=d)
    lam = default if lam is None else lam
    expected = cvxpy_prox(x.numpy(), lam)
    for method in METHODS:
        out = weight_sharing(x, lam, method).numpy()
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-8 * (1 + lam), err_msg=method)


@pytest.mark.parametrize(("d", "lam", "mu"), [(10, 1.0, 0.2), (40, 2.0, 0.5), (60, 0.5, 1.5)])
def test_weight_sharing_l1_matches_cvxpy(d: int, lam: float, mu: float) -> None:
    x, _ = make_input("random", d, dtype=torch.float64, seed=d + 1)
    expected = cvxpy_prox(x.numpy(), lam, mu)
    for method in METHODS:
        out = weight_sharing_l1(x, lam, mu, method=method).numpy()
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-8 * (1 + lam + mu))
