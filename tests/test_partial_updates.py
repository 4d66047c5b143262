"""Infrequent and partial dual updates: ``dual_every``, intermittent constraints and
proxy-only steps move the multipliers only on the steps that observe them
(docs/algorithms.md, 'Infrequent and partial dual updates')."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    ShapeError,
    Solver,
    Variables,
    constraint,
)

DTYPE = torch.float64


def _frozen(problem: ConstrainedProblem, x: list[float], **options: Any) -> Solver:
    model = Variables(x=torch.tensor(x, dtype=DTYPE))
    options.setdefault("controller", {"name": "gda", "lr": 1.0})
    return Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.0), **options)


def _two_groups() -> ConstrainedProblem:
    return ConstrainedProblem(
        objective=lambda m, b: m.x.sum(),
        constraints=[
            Constraint("fast", "<=", fn=lambda m, b: m.x[0:1]),
            Constraint("slow", "==", fn=lambda m, b: m.x[1:3]),
        ],
    )


def test_dual_every_k_updates_on_multiples_of_k_only() -> None:
    """GDA lr 1 with g = (2, 1, -3): the multipliers change at steps 0, 3, 6 only."""
    solver = _frozen(_two_groups(), [2.0, 1.0, -3.0], dual_every=3)
    seen = []
    for _ in range(7):
        solver.step()
        seen.append(solver.multipliers["fast"].item())
    assert seen == [2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 6.0]


def test_dual_every_per_group_keeps_the_controller_state_of_skipped_groups() -> None:
    """nuPI's EMA of a skipped group does not move either."""
    nupi = {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.5}
    solver = _frozen(_two_groups(), [2.0, 1.0, -3.0], controller=nupi, dual_every={"slow": 2})
    xi = []
    for _ in range(4):
        solver.step()
        xi.append(solver.duals.controller_state["xi"].tolist())  # type: ignore[index]
    e = np.array([2.0, 1.0, -3.0])
    # fast: every step; slow: steps 0 and 2.
    expected_fast = [0.5 * 2, 0.75 * 2, 0.875 * 2, 0.9375 * 2]
    expected_slow = [0.5, 0.5, 0.75, 0.75]
    for t in range(4):
        np.testing.assert_allclose(xi[t], [expected_fast[t], *(expected_slow[t] * e[1:])])


def _intermittent(measured: set[int], proxy: bool = False) -> ConstrainedProblem:
    """'rate' is measured only on the steps in ``measured`` (counted by the problem)."""

    class Held(ConstrainedProblem):
        calls: int = 0

        def objective(self, model: Any, batch: Any) -> torch.Tensor:
            return model.x.pow(2).sum()

        @constraint("<=", rhs=1.0)
        def always(self, model: Any, batch: Any) -> torch.Tensor:
            return model.x[0:1]

        @constraint("<=", rhs=0.5, size=1, intermittent=True)
        def rate(self, model: Any, batch: Any) -> ConstraintValue | torch.Tensor | None:
            step = self.calls
            object.__setattr__(self, "calls", step + 1)
            if step in measured:
                return model.x[1:2] * 0.0 + 2.0  # exact value: 2 (violation 1.5)
            if proxy:
                return ConstraintValue.proxy_only(model.x[1:2] * 3.0)
            return None

    return Held()


def test_intermittent_constraint_moves_its_multiplier_only_when_measured() -> None:
    solver = _frozen(_intermittent({0, 3}), [3.0, 1.0])
    rate, always, penalty_terms = [], [], []
    for _ in range(5):
        record = solver.step()
        assert record is not None
        rate.append(solver.multipliers["rate"].item())
        always.append(solver.multipliers["always"].item())
        penalty_terms.append(record.violation[1])
    assert rate == [1.5, 1.5, 1.5, 3.0, 3.0]
    assert always == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert penalty_terms == [1.5, 0.0, 0.0, 1.5, 0.0]  # unmeasured entries read 0


def test_absent_constraint_adds_nothing_to_the_primal_loss() -> None:
    solver = _frozen(_intermittent({0}), [3.0, 1.0])
    solver.step()  # rate measured: lam_rate = 1.5, lam_always = 2
    loss = solver.lagrangian()  # rate absent now
    expected = 3.0**2 + 1.0**2 + 2.0 * (3.0 - 1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    solver.dual_step()


def test_proxy_only_steps_train_with_the_proxy_and_freeze_the_multiplier() -> None:
    solver = _frozen(_intermittent({0}, proxy=True), [3.0, 1.0])
    solver.step()  # measured: lam_rate = 1.5
    loss = solver.lagrangian()
    # The proxy 3 x_1 = 3 enters the primal loss in standard form (3 - 0.5) with lam 1.5.
    expected = 3.0**2 + 1.0**2 + 2.0 * (3.0 - 1.0) + 1.5 * (3.0 - 0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    solver.optimizer.zero_grad()
    loss.backward()
    grad = solver.model.x.grad  # type: ignore[union-attr]
    np.testing.assert_allclose(grad.numpy(), [2 * 3.0 + 2.0, 2 * 1.0 + 1.5 * 3.0])
    solver.dual_step()
    assert solver.multipliers["rate"].item() == 1.5  # not measured: frozen


def test_intermittent_group_missing_at_the_first_evaluation_needs_a_size() -> None:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(),
        constraints=[Constraint("late", fn=lambda m, b: None, intermittent=True)],
    )
    with pytest.raises(ShapeError, match=r"intermittent constraint 'late' .* declare it"):
        _frozen(problem, [1.0]).step()


def test_a_missing_constraint_that_is_not_intermittent_is_an_error() -> None:
    class Forgetful(ConstrainedProblem):
        def evaluate(self, model: Any, batch: Any) -> Any:
            state = super().evaluate(model, batch)
            if getattr(self, "_seen", False):
                state.constraints.pop("g")
            object.__setattr__(self, "_seen", True)
            return state

    problem = Forgetful(
        objective=lambda m, b: m.x.sum(), constraints=[Constraint("g", fn=lambda m, b: m.x)]
    )
    solver = _frozen(problem, [1.0])
    solver.step()
    with pytest.raises(ConfigError, match=r"did not return constraint 'g'.*intermittent=True"):
        solver.step()


def test_per_sample_groups_absent_or_proxy_only() -> None:
    calls = {"n": 0}

    def samples(m: Any, b: Any) -> ConstraintValue | None:
        calls["n"] += 1
        idx = torch.tensor([0, 2])
        if calls["n"] == 1:
            return ConstraintValue(m.x * 0.0 + 1.0, indices=idx)
        if calls["n"] == 2:
            return None
        return ConstraintValue.proxy_only(m.x * 5.0, indices=idx)

    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(),
        constraints=[Constraint("samples", size=3, per_sample=True, intermittent=True, fn=samples)],
    )
    solver = _frozen(problem, [1.0, 2.0])
    for _ in range(3):
        solver.step()
    assert solver.multipliers["samples"].tolist() == [1.0, 0.0, 1.0]


def test_penalty_schedule_ignores_unobserved_groups() -> None:
    """The global penalty schedule measures the violation of the observed groups: an
    intermittent group that stops being measured counts as 0, not as its stale value."""
    solver = _frozen(
        _intermittent({0}),
        [0.0, 1.0],
        formulation={
            "name": "augmented_lagrangian",
            "penalty": 1.0,
            "schedule": {"growth": 2.0, "shrink": 0.5},
        },
    )
    for _ in range(3):
        solver.step()
    # Step 0: v = 1.5 (first check, no growth); step 1: v = 0 < 0.75: no growth; step 2:
    # v = 0, not > 0: no growth.
    assert solver.history.last.penalty == 1.0


def test_distributed_runs_refuse_unmeasured_constraints(tmp_path: Any) -> None:
    """Every rank reduces every constraint at every step: an unmeasured one is named."""
    import torch.distributed as dist

    from constrain.distributed import DistributedReducer

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        reducer = DistributedReducer()
        problem = _intermittent(set())
        model = Variables(x=torch.tensor([3.0, 1.0], dtype=DTYPE))
        state = problem.evaluate(model, None)
        with pytest.raises(ConfigError, match="constraint 'rate' is not measured at this step"):
            reducer.reduce_state(problem, state)
        proxy = _intermittent(set(), proxy=True)
        with pytest.raises(ConfigError, match="'rate' is not measured"):
            reducer.reduce_state(proxy, proxy.evaluate(model, None))
    finally:
        dist.destroy_process_group()


def test_an_undeclared_constraint_next_to_a_left_out_intermittent_one_is_named() -> None:
    """Leaving an intermittent group out does not make room for an undeclared one."""
    from constrain import ProblemState

    class Swaps(ConstrainedProblem):
        calls: int = 0

        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            self.calls += 1
            x = model.x
            if self.calls == 1:
                return ProblemState(x.sum(), {"always": x[0:1], "rare": x[1:2]})
            return ProblemState(x.sum(), {"always": x[0:1], "typo": x[1:2]})

    problem = Swaps(
        constraints=[
            Constraint("always", "<="),
            Constraint("rare", "<=", size=1, intermittent=True),
        ]
    )
    solver = _frozen(problem, [1.0, 2.0])
    solver.step()
    with pytest.raises(ConfigError, match=r"constraint\(s\) \['typo'\] that the problem does"):
        solver.step()
