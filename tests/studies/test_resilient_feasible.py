"""Resilient (relaxed) Feasible Learning: per-sample slacks of minimal norm, checked against
CVXPY's primal and dual solution on a small infeasible logistic-regression instance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from constrain import ConfigError, Solver
from constrain.studies import FeasibleLearning, SampleSlack

DTYPE = torch.float64


def _instance() -> tuple[np.ndarray, np.ndarray]:
    """12 points, the last 3 duplicating the first 3 with flipped labels: no classifier
    gets all losses below log 2, so epsilon = 0.3 needs slack."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 2))
    y = (x[:, 0] > 0).astype(float)
    x[-3:] = x[:3]
    y[-3:] = 1 - y[:3]
    return x, y


def test_slacks_and_multipliers_match_cvxpy() -> None:
    """min w mean(l) + alpha/2 ||u||^2 s.t. l_i <= eps + u_i: the library's primal-dual run
    reaches CVXPY's (theta, u, lam), and lam = alpha u (the closed form of the slacks)."""
    cp = pytest.importorskip("cvxpy")
    x, y = _instance()
    n, eps, alpha, weight = len(y), 0.3, 2.0, 0.1
    theta, bias, slack = cp.Variable(2), cp.Variable(), cp.Variable(n)
    losses = cp.logistic(-cp.multiply(2 * y - 1, x @ theta + bias))
    constraints = [losses <= eps + slack]
    objective = alpha / 2 * cp.sum_squares(slack) + weight * cp.sum(losses) / n
    cp.Problem(cp.Minimize(objective), constraints).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10
    )
    lam_star = np.asarray(constraints[0].dual_value)
    assert (slack.value > 0.1).sum() >= 3  # the instance really needs slack
    np.testing.assert_allclose(lam_star, alpha * slack.value, atol=1e-6)

    linear = nn.Linear(2, 1).to(DTYPE)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    model = SampleSlack(linear, n)
    problem = FeasibleLearning(
        num_samples=n, epsilon=eps, objective_weight=weight, slack_penalty=alpha
    )
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.3),
        controller={"name": "gda", "lr": 1.0},
        order="dual_primal",
        record_every=500,
    )
    batch = (torch.tensor(x), torch.tensor(y), torch.arange(n))
    solver.fit(None, 500, batch=batch, progress=False)
    lam = solver.multipliers["sample_loss"].numpy()
    np.testing.assert_allclose(lam, lam_star, atol=1e-4)
    np.testing.assert_allclose(model.slack.detach().numpy(), slack.value, atol=1e-4)
    np.testing.assert_allclose(linear.weight.detach().numpy().ravel(), theta.value, atol=1e-4)
    assert solver.history.last is not None
    assert solver.history.last.metrics["mean_slack"] > 0.0


def test_slack_enters_constraint_and_objective_by_hand() -> None:
    model = SampleSlack(nn.Linear(1, 1).to(DTYPE), 4)
    with torch.no_grad():
        model.model.weight.zero_()
        model.model.bias.zero_()  # every loss is log 2
        model.slack.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=DTYPE))
    problem = FeasibleLearning(num_samples=4, epsilon=0.5, slack_penalty=3.0)
    idx = torch.tensor([1, 3])
    batch = (torch.zeros(2, 1, dtype=DTYPE), torch.ones(2, dtype=DTYPE), idx)
    state = problem.evaluate(model, batch)
    value = state.constraints["sample_loss"]
    assert not isinstance(value, torch.Tensor)
    expected = torch.log(torch.tensor(2.0, dtype=DTYPE)) - torch.tensor([0.1, 0.3], dtype=DTYPE)
    torch.testing.assert_close(value.value, expected)
    assert float(state.objective.detach()) == pytest.approx(1.5 * (0.1**2 + 0.3**2))
    assert float(problem.objective(model, batch).detach()) == pytest.approx(
        float(state.objective.detach())
    )
    torch.testing.assert_close(problem.sample_loss(model, batch).value, expected)


def test_slack_needs_a_sample_slack_model() -> None:
    problem = FeasibleLearning(num_samples=5, epsilon=0.2, slack_penalty=1.0)
    batch = (torch.zeros(2, 3), torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match=r"SampleSlack\(model, num_samples\)"):
        problem.evaluate(nn.Linear(3, 1), batch)
    with pytest.raises(ConfigError, match="length 5"):
        problem.evaluate(SampleSlack(nn.Linear(3, 1), 4), batch)
    with pytest.raises(ConfigError, match="num_samples"):
        SampleSlack(nn.Linear(3, 1), 0)
    with pytest.raises(ValueError, match="slack_penalty"):
        FeasibleLearning(num_samples=5, epsilon=0.2, slack_penalty=0.0)
