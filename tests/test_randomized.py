"""Randomized and best-iterate solutions: the shrinking LP against CVXPY and hand cases,
the best-iterate rule, snapshots during a run and the seeded randomized predictor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from constrain import (
    ConfigError,
    ConstrainedProblem,
    RandomizedPredictor,
    ShapeError,
    Snapshots,
    Solver,
    best_iterate,
    constraint,
    shrinking_distribution,
)
from constrain.randomized import _basic

cp = pytest.importorskip("cvxpy")


def cvxpy_lp(f: np.ndarray, g: np.ndarray, level: float) -> tuple[float, np.ndarray]:
    """The same LP, solved by CVXPY: min f.p s.t. g^T p <= level, p in the simplex."""
    p = cp.Variable(f.size, nonneg=True)
    problem = cp.Problem(cp.Minimize(f @ p), [g.T @ p <= level, cp.sum(p) == 1])
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == cp.OPTIMAL
    return float(problem.value), np.asarray(p.value)


def cvxpy_least_violation(g: np.ndarray) -> float:
    p = cp.Variable(g.shape[0], nonneg=True)
    eps = cp.Variable()
    problem = cp.Problem(cp.Minimize(eps), [g.T @ p <= eps, cp.sum(p) == 1])
    problem.solve(solver=cp.CLARABEL)
    return float(eps.value)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 25),
    m=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    shift=st.floats(-0.5, 0.8),
)
def test_shrinking_lp_agrees_with_cvxpy(n: int, m: int, seed: int, shift: float) -> None:
    rng = np.random.default_rng(seed)
    f = rng.normal(size=n)
    g = rng.normal(size=(n, m)) + shift  # a positive shift makes infeasible cases likely
    dist = shrinking_distribution(f, g)
    p = dist.probabilities
    assert p.shape == (n,) and (p >= 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert dist.support.size <= m + 1
    assert dist.expected_objective == pytest.approx(float(f @ p), abs=1e-12)
    np.testing.assert_allclose(dist.expected_violations, g.T @ p, atol=1e-12)
    if dist.feasible:
        assert dist.level == 0.0 and dist.max_violation <= 1e-9
        value, _ = cvxpy_lp(f, g, 0.0)
    else:
        eps = cvxpy_least_violation(g)
        assert eps > 0
        assert dist.level == pytest.approx(eps, abs=1e-6)
        assert dist.max_violation == pytest.approx(eps, abs=1e-6)
        value, _ = cvxpy_lp(f, g, dist.level)
    assert dist.expected_objective == pytest.approx(value, abs=1e-6)


def test_hand_cases() -> None:
    # A has the better objective but violates; B is feasible: mix them so g averages to 0.
    dist = shrinking_distribution([0.0, 1.0], [[1.0], [-1.0]])
    assert dist.probabilities.tolist() == pytest.approx([0.5, 0.5])
    assert dist.feasible and dist.expected_objective == pytest.approx(0.5)
    # With a tolerance of 0.5 more weight on A: p_A - (1 - p_A) = 0.5.
    loose = shrinking_distribution([0.0, 1.0], [[1.0], [-1.0]], tolerance=0.5)
    assert loose.probabilities.tolist() == pytest.approx([0.75, 0.25])
    # A feasible candidate with the lowest objective: a point mass.
    point = shrinking_distribution([0.3, 0.1, 0.2], [[-1.0], [-0.5], [2.0]])
    assert point.probabilities.tolist() == [0.0, 1.0, 0.0]
    # No constraint: the argmin.
    free = shrinking_distribution([0.3, 0.1, 0.2], np.zeros((3, 0)))
    assert free.probabilities.tolist() == [0.0, 1.0, 0.0] and free.feasible
    # Two constraints that no single candidate meets: three candidates mix (m + 1 = 3).
    f = [0.0, 0.0, 1.0]
    g = [[2.0, -1.0], [-1.0, 2.0], [-1.0, -1.0]]
    mix = shrinking_distribution(f, g)
    assert mix.feasible and mix.expected_objective == pytest.approx(1 / 3)
    assert mix.probabilities.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_infeasible_falls_back_to_the_least_violation_or_raises() -> None:
    f, g = [0.0, 5.0, 1.0], [[2.0], [1.0], [1.0]]
    dist = shrinking_distribution(f, g)
    assert not dist.feasible
    assert dist.level == pytest.approx(1.0, abs=1e-8)
    # among the least-violating distributions (weight on candidates 1 and 2), the lowest f
    assert dist.probabilities.tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-8)
    with pytest.raises(ConfigError, match=r"least achievable largest expected violation is 1"):
        shrinking_distribution(f, g, on_infeasible="raise")


def test_basic_reduces_the_support_to_m_plus_one() -> None:
    rng = np.random.default_rng(3)
    n, m = 12, 2
    f = rng.normal(size=n)
    g = rng.normal(size=(n, m))
    p = np.full(n, 1.0 / n)
    reduced = _basic(p, f, g)
    assert np.count_nonzero(reduced) <= m + 1
    assert reduced.sum() == pytest.approx(1.0, abs=1e-12) and (reduced >= 0).all()
    np.testing.assert_allclose(g.T @ reduced, g.T @ p, atol=1e-10)
    assert f @ reduced <= f @ p + 1e-12


def test_best_iterate_rule() -> None:
    f = [0.1, 0.5, 0.2, 0.05]
    g = [[0.3], [-0.1], [0.0], [0.01]]
    assert best_iterate(f, g) == 2  # feasible: 1 and 2; lower objective: 2
    assert best_iterate(f, g, tolerance=0.02) == 3
    assert best_iterate([0.3, 0.1, 0.2], [[0.5], [0.2], [0.2]]) == 1  # least violation, then f
    assert best_iterate([0.3, 0.1], np.zeros((2, 0))) == 1


def test_bad_inputs() -> None:
    with pytest.raises(ShapeError, match=r"\(n, m\) = \(2, m\)"):
        shrinking_distribution([0.0, 1.0], [[1.0], [2.0], [3.0]])
    with pytest.raises(ShapeError, match="non-empty"):
        shrinking_distribution([], [])
    with pytest.raises(ConfigError, match="finite"):
        shrinking_distribution([0.0, float("nan")], [[0.0], [0.0]])
    with pytest.raises(ConfigError, match="tolerance"):
        shrinking_distribution([0.0], [[0.0]], tolerance=-1.0)
    with pytest.raises(ConfigError, match="on_infeasible"):
        shrinking_distribution([0.0], [[0.0]], on_infeasible="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="every"):
        Snapshots(every=0)
    with pytest.raises(ConfigError, match="max_count"):
        Snapshots(max_count=1)
    with pytest.raises(ConfigError, match="policy"):
        Snapshots(policy="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no snapshot"):
        Snapshots().distribution()


# -- snapshots during a run ------------------------------------------------------------
class Budget(ConstrainedProblem):
    """min (w - 2)^2 s.t. w <= 1 and -w <= 0.5 (two dense groups)."""

    def objective(self, model: Any, batch: Any) -> Tensor:
        return (model.weight - 2.0).pow(2).sum()

    @constraint("<=", rhs=1.0)
    def upper(self, model: Any, batch: Any) -> Tensor:
        return model.weight.reshape(-1)

    @constraint(">=", rhs=-0.5)
    def lower(self, model: Any, batch: Any) -> Tensor:
        return model.weight.reshape(-1)


def _solver() -> Solver:
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.0)
    return Solver(
        Budget(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "gda", "lr": 1.0},
    )


def test_snapshots_thin_to_a_bounded_evenly_spaced_set() -> None:
    solver = _solver()
    snapshots = Snapshots(every=5, max_count=4)
    solver.fit(None, 40, callback=snapshots, progress=False)
    assert snapshots.steps == [10, 20, 30, 40] and snapshots.every == 10
    solver.fit(None, 20, callback=snapshots, progress=False)
    assert snapshots.steps == [20, 40, 60] and snapshots.every == 20
    latest = Snapshots(every=5, max_count=3, policy="latest")
    _solver().fit(None, 40, callback=latest, progress=False)
    assert latest.steps == [30, 35, 40]


def test_snapshots_store_states_and_standard_form_values() -> None:
    solver = _solver()
    snapshots = Snapshots(every=3, max_count=100)
    solver.fit(None, 30, callback=snapshots, progress=False)
    assert len(snapshots) == 10 and snapshots.violations.shape == (10, 2)
    probe = nn.Linear(1, 1, bias=False).double()
    for snap in snapshots.snapshots:
        probe.load_state_dict(snap.state)
        w = probe.weight.item()
        assert snap.objective == pytest.approx((w - 2.0) ** 2, abs=1e-14)
        np.testing.assert_allclose(snap.violations, [w - 1.0, -0.5 - w], atol=1e-14)
    # The states are copies: the model moved on.
    assert not torch.equal(snapshots.snapshots[0].state["weight"], solver.model.weight.detach())
    dist = snapshots.distribution()
    assert dist.support.size <= 3 and dist.max_violation <= 1e-9
    best = snapshots.best()
    assert best.violations.max() <= 0 and best.objective == min(
        s.objective for s in snapshots.snapshots if s.violations.max() <= 0
    )


def test_custom_evaluator_and_randomized_predictor() -> None:
    solver = _solver()

    def evaluate(model: nn.Module) -> tuple[float, Tensor]:
        w = model.weight.detach().reshape(-1)
        return float((w - 2.0).pow(2).sum()), w - 0.8

    snapshots = Snapshots(every=2, max_count=50, evaluate=evaluate)
    solver.fit(None, 30, callback=snapshots, progress=False)
    dist = snapshots.distribution()
    assert dist.feasible and dist.support.size <= 2
    predictor = snapshots.predictor(solver.model, dist, seed=7)
    weights = [float(s.state["weight"]) for s in snapshots.snapshots]
    expected_w = float(np.dot(dist.probabilities, weights))
    got = predictor.expected(lambda model: {"w": model.weight.sum(), "g": model.weight - 0.8})
    assert got["w"] == pytest.approx(expected_w, abs=1e-12)
    g = float(np.asarray(got["g"]).item())
    assert g == pytest.approx(dist.expected_violations[0], abs=1e-12)
    assert g <= 1e-9  # the randomized solution meets w <= 0.8 in expectation

    x = torch.ones(1, 1, dtype=torch.float64)
    with torch.no_grad():
        draws = [predictor(x).item() for _ in range(400)]
        again = snapshots.predictor(solver.model, dist, seed=7)
        assert draws == [again(x).item() for _ in range(400)]  # seeded
    support_weights = sorted({weights[j] for j in dist.support})
    assert sorted(set(draws)) == pytest.approx(support_weights)
    if len(support_weights) == 2:
        share = np.mean([d == pytest.approx(weights[dist.support[0]]) for d in draws])
        assert share == pytest.approx(dist.probabilities[dist.support[0]], abs=0.1)


def test_predictor_validates_its_inputs() -> None:
    model = nn.Linear(1, 1)
    state = model.state_dict()
    with pytest.raises(ShapeError, match="2 probabilities for 1"):
        RandomizedPredictor(model, [state], [0.5, 0.5])
    with pytest.raises(ConfigError, match="sum to 1"):
        RandomizedPredictor(model, [state, state], [0.5, 0.6])
    predictor = RandomizedPredictor(model, [state, state], [0.0, 1.0])
    assert len(predictor) == 1 and predictor.indices.tolist() == [1]
