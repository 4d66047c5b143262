"""Group DRO: the controller against an independent numpy replica, the problem helper, and
the worst-group loss against empirical risk minimisation on a toy problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from constrain import ConfigError, ConstrainedProblem, Constraint, ShapeError, Solver, Variables
from constrain.controllers import GroupDRO, build
from constrain.studies import GroupDROProblem

DTYPE = torch.float64


def replica(q: np.ndarray, losses: np.ndarray, eta: float) -> np.ndarray:
    """Sagawa et al., Algorithm 1: q_g <- q_g exp(eta * loss_g), then normalise."""
    q = q * np.exp(eta * losses)
    return q / q.sum()


def test_update_equals_the_exponentiated_gradient_replica() -> None:
    rng = np.random.default_rng(0)
    controller = build("group_dro", lr=0.3)
    assert isinstance(controller, GroupDRO)
    like = torch.zeros(5, dtype=DTYPE)
    q = controller.initial_multipliers(like)
    assert torch.equal(q, torch.full((5,), 0.2, dtype=DTYPE))
    expected = np.full(5, 0.2)
    state = controller.init(q)
    for _ in range(50):
        losses = rng.uniform(0.0, 3.0, size=5)
        q, state = controller.update(q, torch.as_tensor(losses), state)
        expected = replica(expected, losses, 0.3)
        np.testing.assert_allclose(q.numpy(), expected, rtol=1e-12, atol=0)
        assert q.sum().item() == pytest.approx(1.0, abs=1e-14)
    assert state == {}


def test_large_steps_do_not_overflow() -> None:
    controller = GroupDRO(lr=100.0)
    q = torch.full((3,), 1 / 3, dtype=torch.float32)
    q, _ = controller.update(q, torch.tensor([50.0, 0.0, 49.0]), {})
    assert torch.isfinite(q).all()
    assert q.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


def test_rejects_equality_constraints() -> None:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(),
        constraints=[Constraint("eq", "==", fn=lambda m, b: m.x)],
    )
    model = Variables(x=torch.zeros(2))
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.1), controller="group_dro"
    )
    with pytest.raises(ConfigError, match="inequality"):
        solver.step()


def _toy(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Two groups with different decision rules; the minority (10%) is ignored by ERM."""
    gen = torch.Generator().manual_seed(seed)
    n = 1000
    g = (torch.rand(n, generator=gen) < 0.1).long()
    x = torch.randn(n, 2, generator=gen, dtype=DTYPE)
    # majority: y = 1[x0 > 0]; minority: y = 1[x1 > 0]
    y = torch.where(g == 0, x[:, 0] > 0, x[:, 1] > 0).to(DTYPE)
    return x, y, g


def _losses(model: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
    x, y, g = batch
    return F.binary_cross_entropy_with_logits(model(x)[:, 0], y, reduction="none"), g


def _group_losses(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    with torch.no_grad():
        losses, g = _losses(model, batch)
    return torch.stack([losses[g == k].mean() for k in range(2)])


def test_group_dro_lowers_the_worst_group_loss_compared_with_erm() -> None:
    batch = _toy()
    steps = 400

    torch.manual_seed(0)
    erm_model = nn.Linear(2, 1).double()
    erm = ConstrainedProblem(objective=lambda m, b: _losses(m, b)[0].mean())
    Solver(erm, erm_model, torch.optim.Adam(erm_model.parameters(), lr=0.05)).fit(
        None, steps, batch=batch, progress=False
    )

    torch.manual_seed(0)
    dro_model = nn.Linear(2, 1).double()
    problem = GroupDROProblem(losses=_losses, num_groups=2)
    solver = Solver(
        problem,
        dro_model,
        torch.optim.Adam(dro_model.parameters(), lr=0.05),
        controller={"name": "group_dro", "lr": 0.1},
        order="dual_primal",
    )
    solver.fit(None, steps, batch=batch, progress=False)
    q = solver.multipliers["group_loss"]
    assert q.sum().item() == pytest.approx(1.0, abs=1e-12) and (q > 0).all()

    erm_worst = _group_losses(erm_model, batch).max().item()
    dro_worst = _group_losses(dro_model, batch).max().item()
    assert dro_worst < erm_worst - 0.5, (dro_worst, erm_worst)
    record = solver.history.last
    assert record.objective == 0.0
    assert {"worst_group_loss", "average_loss", "group_loss_0", "group_loss_1"} <= set(
        record.metrics
    )


def test_problem_declares_the_adjusted_group_losses() -> None:
    batch = _toy()
    model = nn.Linear(2, 1).double()
    problem = GroupDROProblem(
        losses=_losses, num_groups=2, adjustment=2.0, group_sizes=(900.0, 100.0)
    )
    (constraint,) = problem.all_constraints
    assert (constraint.name, constraint.sense, constraint.rhs, constraint.size) == (
        "group_loss",
        "<=",
        0.0,
        2,
    )
    state = problem.evaluate(model, batch)
    value = state.constraints["group_loss"]
    assert isinstance(value, Tensor)
    expected = _group_losses(model, batch) + 2.0 / torch.tensor([900.0, 100.0]).sqrt()
    assert torch.allclose(value.detach(), expected, atol=1e-14)
    membership = torch.stack([batch[2] == 0, batch[2] == 1], 1).to(DTYPE)
    same = GroupDROProblem(
        losses=lambda m, b: (_losses(m, b)[0], membership), num_groups=2
    ).evaluate(model, batch)
    plain = GroupDROProblem(losses=_losses, num_groups=2).evaluate(model, batch)
    assert torch.equal(same.constraints["group_loss"], plain.constraints["group_loss"])  # type: ignore[arg-type]


def test_bad_declarations() -> None:
    with pytest.raises(ValidationError, match="group_sizes"):
        GroupDROProblem(losses=_losses, num_groups=2, adjustment=1.0)
    with pytest.raises(ValidationError, match="3 group sizes"):
        GroupDROProblem(losses=_losses, num_groups=2, group_sizes=(1.0, 2.0, 3.0))
    with pytest.raises(ValidationError, match="callable"):
        GroupDROProblem(losses="bce", num_groups=2)
    problem = GroupDROProblem(losses=lambda m, b: (torch.zeros(3, 1), b), num_groups=2)
    with pytest.raises(ShapeError, match="1-d"):
        problem.evaluate(None, torch.zeros(3, dtype=torch.long))
    problem = GroupDROProblem(losses=lambda m, b: (torch.zeros(3), b), num_groups=2)
    with pytest.raises(ShapeError, match=r"\(n, 2\)"):
        problem.evaluate(None, torch.zeros(3, 3))
