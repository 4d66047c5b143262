"""The ProxSparse 2:4 regularizer and its exact prox: global optimality against multi-start
local minimization, the first-order conditions, and 2:4 output under strong regularization
(equal to the best of the 6 two-entry supports)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from constrain import ConfigError, NonFiniteError, ShapeError
from constrain.prox import (
    get,
    is_two_four,
    proxsparse,
    proxsparse_penalty,
    two_four_fraction,
    two_four_mask,
)

DTYPE = torch.float64
STRONG = (1 + math.sqrt(2)) / 2
"""Above ``strength * max|x_block| = (1 + sqrt 2)/2`` every block comes out 2:4 (the worst
case is a block of four equal magnitudes)."""


def objective(u: np.ndarray, x: np.ndarray, lam: float) -> float:
    a = np.abs(u)
    e3 = sum(a[i] * a[j] * a[k] for i, j, k in itertools.combinations(range(4), 3))
    return float(0.5 * np.sum((u - x) ** 2) + lam * e3)


def best_local_minimum(x: np.ndarray, lam: float) -> float:
    """Smallest objective over L-BFGS-B runs from the 3^4 points of a grid on the box
    between 0 and x (a minimizer keeps the signs of x and shrinks magnitudes)."""
    from scipy.optimize import minimize

    z = np.abs(x)
    best = math.inf
    for corner in itertools.product((0.0, 0.5, 1.0), repeat=4):
        start = np.asarray(corner) * z
        result = minimize(
            lambda u: objective(u, z, lam),
            start,
            bounds=[(0.0, zi) for zi in z],
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 500},
        )
        best = min(best, float(result.fun))
    return best


blocks = st.lists(st.floats(-3, 3, allow_nan=False, allow_infinity=False), min_size=4, max_size=4)


def _check_global_minimizer(block: list[float], log_lam: float) -> None:
    x = np.asarray(block)
    lam = 10.0**log_lam
    out = proxsparse(torch.tensor(x, dtype=DTYPE), lam).numpy()
    assert np.all(np.sign(out) * np.sign(x) >= 0) and np.all(np.abs(out) <= np.abs(x) + 1e-15)
    assert objective(out, x, lam) <= best_local_minimum(x, lam) + 1e-12


@settings(max_examples=6, deadline=None)
@given(block=blocks, log_lam=st.floats(-2.0, 1.0))
def test_prox_is_the_global_minimizer(block: list[float], log_lam: float) -> None:
    """Against 81 local minimizations per block (a few blocks here; many in the slow run)."""
    _check_global_minimizer(block, log_lam)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(block=blocks, log_lam=st.floats(-2.0, 1.0))
def test_prox_is_the_global_minimizer_on_many_blocks(block: list[float], log_lam: float) -> None:
    _check_global_minimizer(block, log_lam)


@settings(max_examples=40, deadline=None)
@given(block=blocks, log_lam=st.floats(-2.0, 1.0))
@example(block=[0.0, 0.5, 2.0**-24, 2.0**-24], log_lam=0.0)  # tiny entries still decide
def test_first_order_conditions(block: list[float], log_lam: float) -> None:
    """Non-zero entries: u_i - x_i + lam sign(u_i) e_2(|u_-i|) = 0; zero entries:
    |x_i| <= lam e_2(|u_-i|) (the subdifferential of lam |u_i| e_2 at 0)."""
    x = np.asarray(block)
    lam = 10.0**log_lam
    u = proxsparse(torch.tensor(x, dtype=DTYPE), lam).numpy()
    a = np.abs(u)
    for i in range(4):
        others = [a[j] for j in range(4) if j != i]
        e2 = others[0] * others[1] + others[0] * others[2] + others[1] * others[2]
        if u[i] != 0:
            assert u[i] - x[i] + lam * np.sign(u[i]) * e2 == pytest.approx(0.0, abs=1e-9)
        else:
            assert abs(x[i]) <= lam * e2 + 1e-9


@settings(max_examples=60, deadline=None)
@given(block=blocks, log_lam=st.floats(-20.0, -2.0), log_scale=st.floats(-20.0, 0.0))
@example(block=[1.0, 2.0, 3.0, 4.0], log_lam=-15.0, log_scale=0.0)
@example(block=[1.0, 2.0, 3.0, 4.0], log_lam=0.0, log_scale=-19.0)
def test_weak_regularization_shrinks_a_little(
    block: list[float], log_lam: float, log_scale: float
) -> None:
    """Small strengths (or tiny weights: prox(c x, lam) = c prox(x, c lam)) move every
    entry by at most lam e_2 of the others: never away from 0, never past it, and the prox
    objective is at most its value at x (first-order conditions to 1e-9 relative)."""
    x = np.asarray(block) * 10.0**log_scale
    lam = 10.0**log_lam
    u = proxsparse(torch.tensor(x, dtype=DTYPE), lam).numpy()
    assert np.all(np.sign(u) * np.sign(x) >= 0)
    assert np.all(np.abs(u) <= np.abs(x) * (1 + 1e-15))  # rescaling rounds by an ulp
    size = float(np.abs(x).max()) + 1e-300
    assert objective(u, x, lam) <= objective(x, x, lam) * (1 + 1e-12) + 1e-30 * size**2
    a = np.abs(u)
    for i in range(4):
        others = [a[j] for j in range(4) if j != i]
        e2 = others[0] * others[1] + others[0] * others[2] + others[1] * others[2]
        if u[i] != 0:
            residual = u[i] - x[i] + lam * np.sign(u[i]) * e2
            assert abs(residual) <= 1e-9 * size
        else:
            assert abs(x[i]) <= lam * e2 + 1e-9 * size


def test_the_two_stationary_point_methods_agree_where_they_meet() -> None:
    """The closed forms (stronger) and the fixed-point iteration (weaker than 1/60) give
    the same stationary points at a strength where both are accurate."""
    from constrain.prox import _semistructured as impl

    g = torch.Generator().manual_seed(1)
    z = torch.rand(500, 4, generator=g, dtype=DTYPE).sort(dim=1, descending=True).values
    z = z / z[:, :1]
    lam = torch.full((500,), 1 / 80, dtype=DTYPE)
    for size, closed in ((3, impl._three_support), (4, impl._four_support)):
        u_closed, v_closed = closed(z, lam)
        u_fixed, v_fixed = impl._fixed_point(z, lam, size)
        both = torch.isfinite(v_closed) & torch.isfinite(v_fixed)
        assert torch.equal(torch.isfinite(v_closed), torch.isfinite(v_fixed))
        torch.testing.assert_close(u_closed[both], u_fixed[both], rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(block=blocks, factor=st.floats(1.0, 20.0))
def test_strong_regularization_keeps_the_best_of_the_six_two_entry_supports(
    block: list[float], factor: float
) -> None:
    x = np.asarray(block)
    scale = float(np.abs(x).max())
    if scale < 1e-100:  # the strength would overflow
        return
    lam = factor * 1.001 * STRONG / scale
    out = proxsparse(torch.tensor(x, dtype=DTYPE), lam).numpy()
    assert np.count_nonzero(out) <= 2
    # Enumerate the 6 supports of size 2: the best keeps x there (R = 0) and zeroes the rest.
    costs = [
        0.5 * sum(x[k] ** 2 for k in range(4) if k not in s)
        for s in itertools.combinations(range(4), 2)
    ]
    assert objective(out, x, lam) == pytest.approx(min(costs), abs=1e-12)


def test_strong_regularization_on_a_layer_gives_a_two_four_tensor() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=g, dtype=DTYPE)
    blocks_max = w.reshape(-1, 4).abs().max(dim=1).values
    lam = 1.001 * STRONG / float(blocks_max.min())
    out = proxsparse(w, lam)
    assert is_two_four(out) and two_four_fraction(out) == 1.0
    # ... and the kept entries are the two largest of each block, unchanged (magnitude 2:4).
    torch.testing.assert_close(out, w * two_four_mask(w), rtol=1e-15, atol=0)
    assert float(proxsparse_penalty(out)) == 0.0


def test_the_threshold_is_attained_by_equal_magnitudes() -> None:
    """Four equal entries stay dense just below (1 + sqrt 2)/2 and become 2:4 above."""
    x = torch.ones(4, dtype=DTYPE)
    assert torch.count_nonzero(proxsparse(x, 0.999 * STRONG)) > 2
    assert torch.count_nonzero(proxsparse(x, 1.001 * STRONG)) == 2


def test_hand_computations() -> None:
    x = torch.tensor([[3.0, -1.0, 0.0, 0.0], [0.5, 0.0, -0.25, 0.0]], dtype=DTYPE)
    torch.testing.assert_close(proxsparse(x, 2.0), x)  # R = 0 already: the prox is identity
    y = torch.randn(3, 8, dtype=DTYPE)
    torch.testing.assert_close(proxsparse(y, 0.0), y)
    # Penalty by hand: |1*2*3| + |1*2*4| + |1*3*4| + |2*3*4| = 6 + 8 + 12 + 24 = 50.
    assert float(proxsparse_penalty(torch.tensor([1.0, -2.0, 3.0, 4.0]))) == 50.0
    mask = two_four_mask(torch.tensor([[0.1, -5.0, 2.0, 0.3, 1.0, 1.5, -9.0, 0.0]]))
    assert mask.tolist() == [[False, True, True, False, False, True, True, False]]


def test_contract_and_errors() -> None:
    assert get("proxsparse") is proxsparse
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(5, 8, dtype=dtype)
        before = x.clone()
        out = proxsparse(x, 0.3)
        assert out.shape == x.shape and out.dtype == dtype and torch.equal(x, before)
    with pytest.raises(ShapeError, match="multiple of 4"):
        proxsparse(torch.zeros(3, 6), 0.1)
    with pytest.raises(ShapeError, match="float32 or float64"):
        proxsparse(torch.zeros(4, dtype=torch.int64), 0.1)
    with pytest.raises(ConfigError, match="strength"):
        proxsparse(torch.zeros(4), -1.0)
    with pytest.raises(NonFiniteError, match="NaN"):
        proxsparse(torch.tensor([1.0, float("nan"), 0.0, 0.0]), 0.1)
    assert proxsparse(torch.zeros(0, 4), 1.0).shape == (0, 4)


@pytest.mark.parametrize("strength", [1e-300, 1e-100, 1e-10, 1e-2, 1.0, 1e10, 1e100, 1e300])
@pytest.mark.parametrize(
    "block",
    [[1e-300, 1e-300, 5e-301, 1e-301], [1.0, 1e-200, 1e-250, 1e-290], [3.0, 2.0, 1.0, 0.5]],
)
def test_extreme_scales_give_finite_shrunk_blocks(strength: float, block: list[float]) -> None:
    """Strengths and magnitudes across the float64 range: the closed forms (and LAPACK's
    eigenvalue routine) only see well-scaled rows, and the result never grows."""
    x = torch.tensor(block, dtype=DTYPE)
    out = proxsparse(x, strength)
    assert torch.isfinite(out).all()
    assert bool((out.abs() <= x.abs() * (1 + 1e-15)).all())
