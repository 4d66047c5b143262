"""The weighted group sparse envelope function: value and prox against CVXPY (the
perspective form min_theta 1/2 sum d_g ||x_g||^2 / theta_g), the k-level gap, and the
prox's limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from constrain import ConfigError, ShapeError
from constrain.prox import get, group_norms, wgsef, wgsef_gap, wgsef_value

cp = pytest.importorskip("cvxpy")
# Clarabel flags the degenerate perspective terms of zeroed groups as "inaccurate" at these
# tolerances; the tests bound the error explicitly instead.
pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
DTYPE = torch.float64
TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 500}


def _rows(x: np.ndarray) -> list[np.ndarray]:
    return [x[g] for g in range(x.shape[0])]


def cvxpy_value(x: np.ndarray, k: int, d: np.ndarray) -> float:
    """S_{k,d}(x) = min 1/2 sum_g d_g ||x_g||^2 / theta_g, theta in [0,1]^m, sum theta <= k."""
    theta = cp.Variable(x.shape[0])
    terms = [d[g] / 2 * cp.quad_over_lin(row, theta[g]) for g, row in enumerate(_rows(x))]
    problem = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), [theta <= 1, cp.sum(theta) <= k])
    problem.solve(solver=cp.CLARABEL, **TIGHT)
    return float(problem.value)


def prox_objective(
    x: np.ndarray, z: np.ndarray, lam: float, k: int, d: np.ndarray, mode: str
) -> float:
    """1/2||x - z||^2 + lam (S_{k,d}(x) [- Q_d(x)]) with the library's exact value of S."""
    penalty = float(wgsef_value(torch.tensor(x), k, weights=torch.tensor(d)))
    if mode == "gap":
        penalty -= 0.5 * float((d * (x**2).sum(axis=1)).sum())
    return 0.5 * float(((x - z) ** 2).sum()) + lam * penalty


def assert_matches_cvxpy(
    out: np.ndarray, z: np.ndarray, lam: float, k: int, d: np.ndarray, mode: str
) -> None:
    """Close to CVXPY's solution (its conic solver reaches ~1e-6 on these degenerate
    perspective terms) and at least as good in objective (evaluated exactly)."""
    reference = cvxpy_prox(z, lam, k, d, mode)
    np.testing.assert_allclose(out, reference, atol=2e-5)
    ours = prox_objective(out, z, lam, k, d, mode)
    theirs = prox_objective(reference, z, lam, k, d, mode)
    assert ours <= theirs + 1e-12


def cvxpy_prox(z: np.ndarray, lam: float, k: int, d: np.ndarray, mode: str) -> np.ndarray:
    """argmin_x 1/2||x - z||^2 + lam (S_{k,d}(x) [- Q_d(x)]) in the joint (x, theta) form."""
    m, n = z.shape
    x = cp.Variable((m, n))
    theta = cp.Variable(m)
    terms = []
    for g in range(m):
        coeff = 0.5 if mode == "envelope" else 0.5 * (1 - lam * d[g])
        terms.append(coeff * cp.sum_squares(x[g]) - z[g] @ x[g])
        terms.append(lam * d[g] / 2 * cp.quad_over_lin(x[g], theta[g]))
    problem = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), [theta <= 1, cp.sum(theta) <= k])
    problem.solve(solver=cp.CLARABEL, **TIGHT)
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
    return np.asarray(x.value)


CASES = [  # (groups, size, k, lam, weighted)
    (6, 3, 2, 0.5, False),
    (8, 2, 3, 2.0, True),
    (5, 4, 1, 0.1, True),
    (10, 1, 4, 1.0, False),  # one entry per group: half the squared k-support norm
    (4, 3, 4, 0.7, True),  # k = m: no sparsity, S = Q_d
]


@pytest.mark.parametrize(("m", "n", "k", "lam", "weighted"), CASES)
def test_value_and_envelope_prox_match_cvxpy(
    m: int, n: int, k: int, lam: float, weighted: bool
) -> None:
    rng = np.random.default_rng(m * 100 + n)
    z = rng.standard_normal((m, n)) * rng.uniform(0.2, 2.0, (m, 1))
    d = rng.uniform(0.5, 2.0, m) if weighted else np.ones(m)
    weights = torch.tensor(d) if weighted else None
    value = float(wgsef_value(torch.tensor(z), k, weights=weights))
    assert value == pytest.approx(cvxpy_value(z, k, d), rel=1e-7, abs=1e-9)
    out = wgsef(torch.tensor(z), lam, k, weights=weights).numpy()
    assert_matches_cvxpy(out, z, lam, k, d, "envelope")


@pytest.mark.parametrize(("m", "n", "k", "lam", "weighted"), CASES)
def test_gap_prox_matches_cvxpy(m: int, n: int, k: int, lam: float, weighted: bool) -> None:
    rng = np.random.default_rng(m * 7 + n)
    z = rng.standard_normal((m, n))
    d = rng.uniform(0.5, 1.0, m) if weighted else np.ones(m)
    lam = min(lam, 0.9) / float(d.max())  # the gap prox needs lam * max(d) < 1
    weights = torch.tensor(d) if weighted else None
    out = wgsef(torch.tensor(z), lam, k, weights=weights, mode="gap").numpy()
    assert_matches_cvxpy(out, z, lam, k, d, "gap")


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    m=st.integers(1, 12),
    k=st.integers(0, 12),
    lam=st.floats(1e-3, 5.0),
)
def test_envelope_prox_is_optimal(seed: int, m: int, k: int, lam: float) -> None:
    """Moreau: x - prox(x) = lam * (a subgradient of S at prox(x)); checked through the
    prox objective being below that of random perturbations."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, 3, generator=g, dtype=DTYPE)
    u = wgsef(z, lam, k)

    def objective(v: torch.Tensor) -> float:
        return float(0.5 * ((v - z) ** 2).sum() + lam * wgsef_value(v, k))

    best = objective(u)
    for _ in range(20):
        v = u + 1e-3 * torch.randn(m, 3, generator=g, dtype=DTYPE)
        assert objective(v) >= best - 1e-12


def test_gap_is_zero_exactly_on_k_group_sparse_points() -> None:
    x = torch.randn(6, 4, dtype=DTYPE)
    assert float(wgsef_gap(x, 6)) == pytest.approx(0.0, abs=1e-12)
    assert float(wgsef_gap(x, 3)) > 0.1
    x[3:] = 0.0
    assert float(wgsef_gap(x, 3)) == pytest.approx(0.0, abs=1e-12)
    assert float(wgsef_gap(x, 2)) > 0.0
    # The envelope lies above Q_d and, with one entry per group and d = 1, is half the
    # squared k-support norm: for k = 1 that is 1/2 ||x||_1^2.
    v = torch.tensor([[3.0], [-1.0], [0.5]], dtype=DTYPE)  # one entry per group (rows)
    assert float(wgsef_value(v, 1)) == pytest.approx(0.5 * 4.5**2)


def test_gap_prox_near_its_limit_keeps_the_k_largest_groups() -> None:
    """strength * d -> 1: only the k groups of largest sqrt(d)||x_g|| survive, unchanged up
    to O(1 - strength)."""
    z = torch.tensor([[3.0, 0.0], [0.1, 0.2], [0.0, -2.0], [1.0, 1.0]], dtype=DTYPE)
    out = wgsef(z, 0.999999, 2, mode="gap")
    kept = out.abs().sum(dim=1) > 0
    assert kept.tolist() == [True, False, True, False]
    torch.testing.assert_close(out[kept], z[kept], rtol=0, atol=1e-4)


def test_channel_groups_of_a_conv_weight_and_the_limits() -> None:
    w = torch.randn(8, 3, 3, 3, dtype=DTYPE)
    out = wgsef(w, 0.5, 3, mode="gap")
    norms = group_norms(out)
    assert norms.shape == (8,) and int((norms > 0).sum()) <= 8
    torch.testing.assert_close(wgsef(w, 0.0, 3), w)
    assert not wgsef(w, 10.0, 0).any()  # k = 0: the envelope is the indicator of 0
    # k >= number of groups: S = Q_d and the prox is the ridge shrinkage x / (1 + lam d).
    torch.testing.assert_close(wgsef(w, 0.5, 8), w / 1.5)
    assert get("wgsef") is wgsef


def test_errors() -> None:
    x = torch.randn(4, 2)
    with pytest.raises(ConfigError, match="k"):
        wgsef(x, 0.1, -1)
    with pytest.raises(ConfigError, match="mode"):
        wgsef(x, 0.1, 1, mode="hard")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"strength \* max\(weight\) < 1"):
        wgsef(x, 1.0, 1, mode="gap")
    with pytest.raises(ShapeError, match="one weight per group"):
        wgsef(x, 0.1, 1, weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="finite and > 0"):
        wgsef(x, 0.1, 1, weights=[1.0, 2.0, 0.0, 1.0])
    with pytest.raises(ShapeError, match="0-d"):
        wgsef(torch.tensor(1.0), 0.1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["envelope", "gap"])
def test_registered_prox_contract(dtype: torch.dtype, mode: str) -> None:
    """Same shape, dtype and device; the input untouched; strength 0 is the identity."""
    x = torch.randn(6, 4, dtype=dtype)
    before = x.clone()
    out = get("wgsef")(x, 0.3, k=2, mode=mode)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    torch.testing.assert_close(wgsef(x, 0.0, 2, mode=mode), x)
