"""The weight-sharing prox facts 1-5 (docs/algorithms.md, 'Weight-sharing facts') as
property tests (float64).

Each fact is checked against an independent statement of it (a plain-Python PAVA, an
event-driven particle simulation, the closed form below the merging threshold, the
optimality of the l1-augmented objective), never against the code under test alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from constrain.prox import count_clusters, weight_sharing, weight_sharing_l1, weight_sharing_penalty

METHODS = ["sort_pava", "parallel_pav", "divide_conquer"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def vectors(draw: st.DrawFn, min_size: int = 1, max_size: int = 40) -> np.ndarray:
    """Float64 vectors: free values, values from a small pool (ties), or small integers."""
    d = draw(st.integers(min_size, max_size))
    mode = draw(st.sampled_from(["free", "pool", "integers"]))
    if mode == "pool":
        pool = draw(st.lists(finite, min_size=1, max_size=4))
        values = draw(st.lists(st.sampled_from(pool), min_size=d, max_size=d))
    elif mode == "integers":
        values = [float(v) for v in draw(st.lists(st.integers(-3, 3), min_size=d, max_size=d))]
    else:
        values = draw(st.lists(finite, min_size=d, max_size=d))
    return np.asarray(values, dtype=np.float64)


strengths = st.one_of(
    st.floats(0.0, 200.0, allow_nan=False, width=64),
    st.sampled_from([0.0, 1e-9, 1e-3, 0.5, 1.0, 10.0, 1e4]),
)


def prox(x: np.ndarray, lam: float, method: str) -> np.ndarray:
    return weight_sharing(torch.from_numpy(x), lam, method).numpy()


def tol(x: np.ndarray, lam: float) -> float:
    return 1e-9 * (1.0 + float(np.abs(x).max(initial=0.0)) + lam)


def python_pava(z: list[float]) -> list[float]:
    """Textbook pool-adjacent-violators: a stack of (sum, count) blocks."""
    blocks: list[list[float]] = []
    for value in z:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out: list[float] = []
    for total, count in blocks:
        out.extend([total / count] * int(count))
    return out


# Fact 1 -------------------------------------------------------------------------------


@SETTINGS
@given(x=vectors(), lam=strengths, method=st.sampled_from(METHODS))
def test_fact1_order_ties_and_mean_are_kept(x: np.ndarray, lam: float, method: str) -> None:
    w = prox(x, lam, method)
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    # order: x_i < x_j implies w_i <= w_j
    assert np.all(np.diff(ws) >= -tol(x, lam))
    # ties stay exactly tied
    tied = np.diff(xs) == 0
    assert np.all(np.diff(ws)[tied] == 0)
    # the mean is preserved
    assert abs(w.mean() - x.mean()) <= tol(x, lam)


# Fact 2 -------------------------------------------------------------------------------


@SETTINGS
@given(x=vectors(), lam=strengths, method=st.sampled_from(METHODS))
def test_fact2_isotonic_regression_of_shifted_sorted_vector(
    x: np.ndarray, lam: float, method: str
) -> None:
    d = x.size
    order = np.argsort(x, kind="stable")
    k = np.arange(d)
    shift = lam * (d - 1 - 2 * k) / (d - 1) if d > 1 else np.zeros(d)
    y = python_pava(list(x[order] + shift))
    expected = np.empty(d)
    expected[order] = y
    np.testing.assert_allclose(prox(x, lam, method), expected, rtol=0, atol=tol(x, lam))


# Fact 3 -------------------------------------------------------------------------------


def sticky_particles(x: np.ndarray, lam: float) -> np.ndarray:
    """Event-driven simulation: particle k (sorted) moves at lam*(d-1-2k)/(d-1) for unit
    time; colliding particles stick and move on with their mass-weighted mean velocity."""
    d = x.size
    order = np.argsort(x, kind="stable")
    # clusters: [mass, position, velocity, members]
    clusters = [
        [1.0, float(x[i]), lam * (d - 1 - 2 * k) / max(d - 1, 1), [int(i)]]
        for k, i in enumerate(order)
    ]
    t = 0.0
    while True:
        hit: tuple[float, int] | None = None
        for i in range(len(clusters) - 1):
            closing = clusters[i][2] - clusters[i + 1][2]
            if closing > 0:
                dt = max(clusters[i + 1][1] - clusters[i][1], 0.0) / closing
                if hit is None or dt < hit[0]:
                    hit = (dt, i)
        step = 1.0 - t if hit is None or t + hit[0] >= 1.0 else hit[0]
        for c in clusters:
            c[1] += c[2] * step
        t += step
        if hit is None or t >= 1.0:
            break
        i = hit[1]
        left, right = clusters[i], clusters[i + 1]
        mass = left[0] + right[0]
        clusters[i : i + 2] = [
            [
                mass,
                (left[0] * left[1] + right[0] * right[1]) / mass,
                (left[0] * left[2] + right[0] * right[2]) / mass,
                left[3] + right[3],
            ]
        ]
    out = np.empty(d)
    for c in clusters:
        out[c[3]] = c[1]
    return out


@SETTINGS
@given(x=vectors(max_size=25), lam=st.floats(0.0, 50.0, width=64), method=st.sampled_from(METHODS))
def test_fact3_sticky_particles(x: np.ndarray, lam: float, method: str) -> None:
    expected = sticky_particles(x, lam)
    np.testing.assert_allclose(
        prox(x, lam, method), expected, rtol=0, atol=1e-7 * (1 + lam + np.abs(x).max())
    )


# Fact 4 -------------------------------------------------------------------------------


@SETTINGS
@given(
    x=st.lists(finite, min_size=2, max_size=40, unique=True).map(np.array),
    fraction=st.floats(0.0, 0.99),
    method=st.sampled_from(METHODS),
)
def test_fact4_nothing_merges_below_threshold(x: np.ndarray, fraction: float, method: str) -> None:
    d = x.size
    gap = np.diff(np.sort(x)).min()
    # a fact of exact arithmetic: shifts below the floating-point resolution of x (and, for
    # the tensor methods, of float64 prefix sums, ~1e-16 * sum |x|) cannot be resolved
    assume(gap > 1e-9 * (1.0 + np.abs(x).max()))
    lam = fraction * (d - 1) / 2 * gap
    w = prox(x, lam, method)
    rank = np.argsort(np.argsort(x))
    expected = x + lam * (d - 1 - 2 * rank) / (d - 1)
    np.testing.assert_allclose(w, expected, rtol=0, atol=tol(x, lam))
    assert count_clusters(torch.from_numpy(w)) == d


def test_fact4_threshold_is_sharp() -> None:
    """Just above (d-1)/2 * gap the closest pair merges."""
    x = np.array([0.0, 1.0, 3.0, 6.0])
    d, gap = 4, 1.0
    for method in METHODS:
        assert count_clusters(torch.from_numpy(prox(x, 0.999 * (d - 1) / 2 * gap, method))) == 4
        assert count_clusters(torch.from_numpy(prox(x, 1.001 * (d - 1) / 2 * gap, method))) == 3


# Fact 5 -------------------------------------------------------------------------------


def directional_derivative(
    x: np.ndarray, w: np.ndarray, lam: float, mu: float, v: np.ndarray
) -> float:
    """F'(w; v) for F(w) = 1/2||w - x||^2 + lam R(w) + mu ||w||_1 (exact ties: |.|')."""

    def dabs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(a != 0, np.sign(a) * b, np.abs(b))

    d = x.size
    smooth = float(np.dot(w - x, v))
    i, j = np.triu_indices(d, 1)
    pairs = float(dabs(w[i] - w[j], v[i] - v[j]).sum()) / max(d - 1, 1)
    return smooth + lam * pairs + mu * float(dabs(w, v).sum())


def critical_directions(x: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """+-e_i, +-(whole tie group), +-(prefixes and suffixes of tie groups in x order), and
    random directions: together they certify optimality of a piecewise quadratic."""
    d = x.size
    dirs = []
    for i in range(d):
        e = np.zeros(d)
        e[i] = 1.0
        dirs += [e, -e]
    order = np.argsort(x, kind="stable")
    ws = w[order]
    start = 0
    for end in range(1, d + 1):
        if end == d or ws[end] != ws[start]:
            group = order[start:end]
            for cut in range(1, len(group) + 1):
                for part in (group[:cut], group[len(group) - cut :]):
                    v = np.zeros(d)
                    v[part] = 1.0
                    dirs += [v, -v]
            start = end
    dirs += list(rng.normal(size=(5, d)))
    return dirs


@SETTINGS
@given(
    x=vectors(max_size=20),
    lam=st.floats(0.0, 20.0, width=64),
    mu=st.floats(0.0, 20.0, width=64),
    method=st.sampled_from(METHODS),
)
def test_fact5_soft_threshold_of_prox_is_prox_of_penalty_plus_l1(
    x: np.ndarray, lam: float, mu: float, method: str
) -> None:
    xt = torch.from_numpy(x)
    w = weight_sharing_l1(xt, lam, mu, method=method).numpy()
    ws = weight_sharing(xt, lam, method).numpy()
    np.testing.assert_array_equal(w, np.sign(ws) * np.maximum(np.abs(ws) - mu, 0.0))
    rng = np.random.default_rng(0)
    scale = 1e-8 * (1 + lam + mu + np.abs(x).max())
    for v in critical_directions(x, w, rng):
        assert directional_derivative(x, w, lam, mu, v) >= -scale * (1 + np.abs(v).sum())


@pytest.mark.parametrize("method", METHODS)
def test_objective_not_above_input_objective(method: str) -> None:
    """Sanity: F(prox(x)) <= F(x) and <= F(mean), with R computed by weight_sharing_penalty."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = torch.from_numpy(rng.normal(size=30))
        lam = float(rng.uniform(0, 5))
        w = weight_sharing(x, lam, method)

        def objective(v: torch.Tensor, x: torch.Tensor = x, lam: float = lam) -> float:
            return float(0.5 * ((v - x) ** 2).sum() + lam * weight_sharing_penalty(v))

        assert objective(w) <= objective(x) + 1e-12
        assert objective(w) <= objective(torch.full_like(x, float(x.mean()))) + 1e-12
