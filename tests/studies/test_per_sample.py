"""Per-sample losses and Feasible Learning with indexed (O(batch)) multipliers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from constrain import ConfigError, ConstraintValue, ShapeError, Solver
from constrain.studies import FeasibleLearning, per_sample_losses

DTYPE = torch.float64


def test_binary_and_multiclass_losses_by_hand() -> None:
    logits = torch.tensor([2.0, -1.0, 0.0], dtype=DTYPE)
    labels = torch.tensor([1.0, 1.0, 0.0], dtype=DTYPE)
    expected = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(1.0)), math.log(2.0)]
    assert per_sample_losses(logits, labels).tolist() == pytest.approx(expected, abs=1e-14)
    assert per_sample_losses(logits[:, None], labels).tolist() == pytest.approx(expected)

    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=DTYPE)
    labels = torch.tensor([2, 0])
    log_softmax = torch.log_softmax(logits, dim=1)
    expected = [-log_softmax[0, 2].item(), math.log(3.0)]
    assert per_sample_losses(logits, labels).tolist() == pytest.approx(expected, abs=1e-14)


def test_shape_errors() -> None:
    with pytest.raises(ShapeError, match="one 0/1 label per logit"):
        per_sample_losses(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ShapeError, match="one integer label per row"):
        per_sample_losses(torch.zeros(3, 4), torch.zeros(2))
    with pytest.raises(ConfigError, match=r"batches \(x, y, indices\)"):
        FeasibleLearning(num_samples=3, epsilon=0.1).evaluate(nn.Linear(2, 1), torch.zeros(2))


def _data(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g, dtype=DTYPE), (torch.rand(n, generator=g) > 0.5).to(DTYPE)


def test_state_carries_indices_and_a_zero_objective_for_pure_feasibility() -> None:
    x, y = _data()
    idx = torch.tensor([4, 9, 2])
    model = nn.Linear(3, 1).to(DTYPE)
    problem = FeasibleLearning(num_samples=50, epsilon=0.2)
    state = problem.evaluate(model, (x[idx], y[idx], idx))
    value = state.constraints["sample_loss"]
    assert isinstance(value, ConstraintValue)
    assert value.indices is not None and value.indices.tolist() == [4, 9, 2]
    assert state.objective.item() == 0.0
    weighted = FeasibleLearning(num_samples=50, epsilon=0.2, objective_weight=2.0)
    assert weighted.evaluate(model, (x[idx], y[idx], idx)).objective.item() == pytest.approx(
        2.0 * value.value.mean().item()
    )


@pytest.mark.parametrize(
    "controller",
    [{"name": "gda", "lr": 1.0}, {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 2.0, "nu": 0.5}],
)
def test_only_observed_multipliers_and_states_move(controller: dict[str, object]) -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Linear(3, 1).to(DTYPE)
    problem = FeasibleLearning(num_samples=50, epsilon=0.1)
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.0), controller=controller
    )
    first = torch.tensor([3, 7, 11])
    with torch.no_grad():
        losses = per_sample_losses(model(x[first]), y[first])
    solver.step((x[first], y[first], first))
    lam = solver.multipliers["sample_loss"]
    assert lam.shape == (50,)
    others = torch.ones(50, dtype=torch.bool)
    others[first] = False
    assert torch.all(lam[others] == 0)
    if controller["name"] == "gda":  # lam = max(0, 0 + lr * (l_i - epsilon))
        assert torch.allclose(lam[first], (losses - 0.1).clamp_min(0))
    else:  # nuPI from xi = 0: lam = lr * (ki e + kp (1 - nu) e)
        assert torch.allclose(lam[first], ((1.0 + 2.0 * 0.5) * (losses - 0.1)).clamp_min(0))
        state = solver.indexed_state["sample_loss"]["xi"]
        assert torch.all(state[others] == 0)
        assert torch.allclose(state[first], 0.5 * (losses - 0.1))
    before = lam.clone()
    second = torch.tensor([0, 1])
    solver.step((x[second], y[second], second))
    after = solver.multipliers["sample_loss"]
    assert torch.equal(after[first], before[first])
    assert torch.all(after[second] > 0)
