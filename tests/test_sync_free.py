"""Steps without host synchronisation: with ``check_every=k`` the steps between checks call
none of the tensor methods that wait for the device (``item``, ``bool``, ``float``,
``int``, ``tolist``, ``cpu``, ``numpy``, ``nonzero``, ``unique``); the default makes at
most one such call per step; non-finite values are still named exactly (constraint and
step) when the check comes later."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    NonFiniteError,
    ProblemState,
    Regularizer,
    ShapeError,
    Solver,
    Variables,
)

DTYPE = torch.float64
N = 8

SYNCHRONISING = {
    Tensor.item,
    Tensor.__bool__,
    Tensor.__float__,
    Tensor.__int__,
    Tensor.__index__,
    Tensor.tolist,
    Tensor.cpu,
    Tensor.numpy,
    Tensor.nonzero,
    torch.nonzero,
    Tensor.unique,
    torch.unique,
}


class CountSyncs(TorchFunctionMode):
    """Counts the calls of tensor methods that synchronise with the device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in SYNCHRONISING:
            self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


class Mixed(ConstrainedProblem):
    """Dense groups (an inequality, an equality), a per-sample group whose batches repeat
    a sample, a metric; a smooth and a prox regularizer."""

    bad_step: int = -1
    calls: int = 0

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        x = model.x
        scale = float("nan") if self.calls == self.bad_step else 1.0
        self.calls += 1
        idx = torch.tensor([1, 3, 3, 6])
        return ProblemState(
            (x - 1).pow(2).sum(),
            {
                "cap": (x[:4] - 0.5) * scale,
                "sum": x.sum().reshape(1),
                "margin": ConstraintValue(0.2 - x[idx], indices=idx),
            },
            metrics={"mean": x.detach().mean()},
        )


def _problem(bad_step: int = -1, cls: type[Mixed] = Mixed) -> Mixed:
    return cls(
        bad_step=bad_step,
        constraints=[
            Constraint("cap", "<=", size=4),
            Constraint("sum", "==", rhs=2.0),
            Constraint("margin", "<=", size=N, per_sample=True),
        ],
        regularizers=[Regularizer(prox="l1", strength=0.01)],
    )


def _solver(problem: ConstrainedProblem, **options: Any) -> Solver:
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Solver(
        problem,
        model,
        optimizer,
        controller={"name": "nupi", "lr": 0.3, "kp": 0.5},
        formulation={
            "name": "augmented_lagrangian",
            "penalty": 0.5,
            "schedule": {"growth": 1.5, "every": 2},
        },
        **options,
    )


def _count(solver: Solver, steps: int) -> list[int]:
    """Synchronising calls of each of ``steps`` steps (after two warm-up steps that build
    the layout)."""
    solver.step()
    solver.step()
    counts = []
    for _ in range(steps):
        with CountSyncs() as mode:
            solver.step()
        counts.append(sum(mode.calls.values()))
    return counts


@pytest.mark.parametrize("order", ["simultaneous", "dual_primal", "primal_dual"])
def test_no_synchronisation_between_checks(order: str) -> None:
    """check_every=4: 0 synchronising calls on the three steps between checks, one (the
    record copy) at the check."""
    counts = _count(_solver(_problem(), check_every=4, order=order), 8)
    # Steps 2..9: the checks come after steps 3 and 7.
    assert counts == [0, 1, 0, 0, 0, 1, 0, 0]


def test_at_most_one_synchronisation_per_step_by_default() -> None:
    solver = _solver(_problem())
    assert _count(solver, 6) == [1] * 6
    own = _solver(_problem())
    own.step()
    with CountSyncs() as mode:
        loss = own.lagrangian()
        loss.backward()
        own.optimizer.step()
        own.optimizer.zero_grad()
        own.prox_step()
        own.dual_step()
    assert sum(mode.calls.values()) == 1, mode.calls


def test_a_late_check_names_the_constraint_and_the_step() -> None:
    """A NaN constraint at step 5 with check_every=4: the check after step 7 names
    'cap' and step 5; the history keeps the steps before it."""
    solver = _solver(_problem(bad_step=5), check_every=4)
    with pytest.raises(NonFiniteError, match=r"constraint 'cap' is not finite at step 5"):
        solver.fit(steps=10)
    assert solver.history.steps().tolist() == [0, 1, 2, 3, 4]
    assert all(torch.isfinite(t).all() for t in solver.multipliers.values())


def test_a_check_at_the_step_names_the_entries() -> None:
    solver = _solver(_problem(bad_step=2))
    with pytest.raises(
        NonFiniteError, match=r"constraint 'cap' is not finite at step 2 \(entries \[0, 1, 2, 3\]"
    ):
        solver.fit(steps=4)
    assert solver.step_count == 2


def test_bad_indices_are_reported_at_the_check() -> None:
    class Bad(Mixed):
        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            state = super().evaluate(model, batch)
            state.constraints["margin"] = ConstraintValue(
                model.x[:2], indices=torch.tensor([2, N + 3])
            )
            return state

    solver = _solver(_problem(cls=Bad), check_every=3)
    with pytest.raises(
        ShapeError, match=rf"indices must lie in \[0, {N}\); got \[2, {N + 3}\] at step 0"
    ):
        solver.fit(steps=5)


def test_skip_needs_a_check_at_every_step() -> None:
    with pytest.raises(ConfigError, match=r"on_nonfinite='skip'.*check_every=1"):
        _solver(_problem(), on_nonfinite="skip", check_every=2)


def test_records_arrive_at_the_checks() -> None:
    solver = _solver(_problem(), check_every=3)
    returned = [solver.step() for _ in range(6)]
    assert [r is not None for r in returned] == [False, False, True, False, False, True]
    assert solver.history.steps().tolist() == list(range(6))
    solver.step()
    assert len(solver.history) == 7  # reading the history flushes


def _per_group_solver(problem: ConstrainedProblem, **options: Any) -> Solver:
    """Per-group controllers (a block each), a bound, restarts, a slower group, a
    scheduled right-hand side and per-entry penalties grown by an updater."""
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Solver(
        problem,
        model,
        optimizer,
        controller={
            "cap": {"name": "nupi", "lr": 0.3, "kp": 0.5},
            "sum": "gda",
            "margin": {"name": "momentum", "lr": 0.2, "beta": 0.5},
        },
        formulation={
            "name": "augmented_lagrangian",
            "penalty": {"cap": 0.5, "sum": 1.0, "margin": 0.5},
            "updater": {"name": "multiplicative", "growth": 1.5, "every": 2, "restart": True},
        },
        max_multiplier={"cap": 0.4},
        restart={"cap": True, "margin": True},
        dual_every={"sum": 3},
        rhs_schedule={"sum": {"name": "linear", "start": 2.0, "end": 1.0, "steps": 6}},
        **options,
    )


def test_per_group_dual_settings_add_no_synchronisation() -> None:
    """The same counts as the plain run: per-group blocks, bounds, restarts, dual_every,
    an rhs schedule and a penalty updater are decided on the device or from host facts."""
    counts = _count(_per_group_solver(_problem(), check_every=4), 8)
    assert counts == [0, 1, 0, 0, 0, 1, 0, 0]


def test_per_group_late_check_names_the_constraint_and_keeps_the_state() -> None:
    """A NaN at step 5 with per-group controllers: named at the check, and no block's
    multipliers or controller state took a non-finite value."""
    solver = _per_group_solver(_problem(bad_step=5), check_every=4)
    with pytest.raises(NonFiniteError, match=r"constraint 'cap' is not finite at step 5"):
        solver.fit(steps=10)
    assert all(torch.isfinite(t).all() for t in solver.multipliers.values())
    state = solver.duals.controller_state
    assert isinstance(state, dict) and set(state) == {"cap", "sum"}
    for block in state.values():
        assert all(torch.isfinite(v).all() for v in block.values())


def test_a_non_finite_block_proposal_is_dropped_on_the_device() -> None:
    """Duals.step with a NaN signal in one block: the report says so (a device tensor),
    and every block keeps its multipliers and controller state."""
    solver = _per_group_solver(_problem())
    solver.fit(steps=3)
    duals = solver.duals
    assert duals.layout is not None and duals.multipliers is not None
    before = duals.multipliers.dense.clone()
    states = {k: {n: v.clone() for n, v in s.items()} for k, s in duals._states.items()}
    _, stacked, _ = solver.runner.evaluate(None)
    stacked.violation = stacked.violation.clone()
    stacked.violation[0] = float("nan")  # an entry of 'cap'
    report = duals.step(stacked, 6)
    assert isinstance(report.health, Tensor) and bool(report.health.isnan())
    assert torch.equal(duals.multipliers.dense, before)
    for key, state in states.items():
        for name, value in state.items():
            assert torch.equal(duals._states[key][name], value), (key, name)


def _overflowing(check_every: int, on_nonfinite: str) -> Solver:
    """Momentum-weighted multiplicative weights whose third update overflows to inf."""
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x**2).sum(),
        constraints=[Constraint("c", ">=", rhs=1.0, size=2, fn=lambda m, b: m.x)],
    )
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    return Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"name": "multiplicative", "lr": 300.0},
        check_every=check_every,
        on_nonfinite=on_nonfinite,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("check_every", [1, 2])
def test_an_overflowing_update_leaves_the_multipliers_as_they_were(check_every: int) -> None:
    """Whether the step is flushed at once (its update checked on the host, then undone)
    or later (dropped on the device), the multipliers and the controller state after the
    error are those before the overflowing update, and finite."""
    solver = _overflowing(check_every, "raise")
    snapshots = []
    with pytest.raises(NonFiniteError, match="multipliers of constraint 'c'"):
        for _ in range(10):
            assert solver.duals.multipliers is None or bool(
                torch.isfinite(solver.duals.multipliers.dense).all()
            )
            if solver.duals.multipliers is not None:
                snapshots.append(solver.duals.multipliers.dense.clone())
            solver.step()
    assert solver.duals.multipliers is not None
    final = solver.duals.multipliers.dense
    assert bool(torch.isfinite(final).all())
    assert any(torch.equal(final, s) for s in snapshots)
    for state in solver.duals._states.values():
        for value in state.values():
            assert bool(torch.isfinite(value).all())


def test_a_skipped_overflowing_update_is_undone_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_nonfinite="skip" (every step flushed): the overflowing update is undone with a
    warning, the multipliers stay at their last finite value and later steps run."""
    solver = _overflowing(1, "skip")
    history = solver.fit(steps=8)
    assert "Multiplier update skipped" in caplog.text
    assert solver.duals.multipliers is not None
    assert bool(torch.isfinite(solver.duals.multipliers.dense).all())
    assert any(r.skipped for r in history)
    assert len(history) == 8


@pytest.mark.parametrize("check_every", [1, 3])
def test_the_overflowing_group_is_named_whenever_it_is_checked(check_every: int) -> None:
    """Three dense groups, only the middle one's multipliers overflow: the error names it,
    whether the step is checked at once (its proposal at hand) or later (per-group flags
    kept on the device)."""
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x**2).sum(),
        constraints=[
            Constraint("a", ">=", rhs=1.0, size=2, fn=lambda m, b: m.x[:2]),
            Constraint("b", ">=", rhs=1.0, size=2, fn=lambda m, b: m.x[2:4]),
            Constraint("c", ">=", rhs=1.0, size=2, fn=lambda m, b: m.x[4:]),
        ],
    )
    model = Variables(x=torch.zeros(6, dtype=DTYPE))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"a": "gda", "b": {"name": "multiplicative", "lr": 300.0}, "c": "gda"},
        check_every=check_every,
    )
    with pytest.raises(NonFiniteError, match="multipliers of constraint 'b'"):
        solver.fit(steps=9)


def _overflowing_per_sample(on_nonfinite: str) -> Solver:
    """A dense group under gda (its multipliers grow by 1 a step) and a per-sample group
    whose multiplicative update overflows from the third step on."""
    idx = torch.tensor([0, 1])
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x**2).sum(),
        constraints=[
            Constraint("c", ">=", rhs=1.0, size=2, fn=lambda m, b: m.x[:2]),
            Constraint(
                "ps",
                ">=",
                rhs=1.0,
                size=4,
                per_sample=True,
                fn=lambda m, b: ConstraintValue(m.x[2:][idx], indices=idx),
            ),
        ],
    )
    model = Variables(x=torch.zeros(6, dtype=DTYPE))
    return Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"c": {"name": "gda", "lr": 1.0}, "ps": {"name": "multiplicative", "lr": 300.0}},
        on_nonfinite=on_nonfinite,  # type: ignore[arg-type]
        vectors_every=1,
    )


def test_a_skipped_per_sample_update_leaves_the_dense_update_in_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the per-sample group's proposal overflows: its update is dropped, but the
    dense multipliers take every update (1, 2, ..., 6), as on a step checked later."""
    solver = _overflowing_per_sample("skip")
    history = solver.fit(steps=6)
    assert "constraint 'ps' became non-finite" in caplog.text
    assert [r.multipliers for r in history] == [[k + 1.0, k + 1.0] for k in range(6)]
    assert solver.duals.multipliers is not None
    assert solver.duals.multipliers.dense.tolist() == [6.0, 6.0]


def test_a_per_sample_overflow_error_keeps_the_dense_update() -> None:
    """on_nonfinite="raise": the error names the per-sample group, and the dense
    multipliers hold the (finite) dense update of the failing step."""
    solver = _overflowing_per_sample("raise")
    with pytest.raises(NonFiniteError, match="constraint 'ps'"):
        solver.fit(steps=6)
    assert solver.duals.multipliers is not None
    assert solver.duals.multipliers.dense.tolist() == [3.0, 3.0]


def test_an_undone_update_is_recorded_with_the_multipliers_in_place() -> None:
    """on_nonfinite="skip": the record of a step whose dense update was undone shows the
    multipliers the run goes on with, not the overflowed proposal."""
    solver = _overflowing(1, "skip")
    solver.step_log.vectors_every = 1
    history = solver.fit(steps=4)
    assert history[-1].skipped
    assert solver.duals.multipliers is not None
    dense = solver.duals.multipliers.dense
    assert history[-1].multipliers == dense.tolist()
    assert history[-1].group_multiplier_norm == [float(torch.linalg.vector_norm(dense))]


def test_an_error_before_the_flush_still_undoes_an_overflowing_update() -> None:
    """A bad metric (a vector) fails the step's record before the flush reads it; the
    overflowing multiplier update of that step is undone all the same."""

    class BadMetric(ConstrainedProblem):
        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            state = super().evaluate(model, batch)
            state.metrics["m"] = torch.zeros(3)
            return state

    problem = BadMetric(
        objective=lambda m, b: (m.x**2).sum(),
        constraints=[Constraint("c", ">=", rhs=1.0, size=2, fn=lambda m, b: m.x)],
    )
    model = Variables(x=torch.zeros(2, dtype=DTYPE))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"name": "multiplicative", "lr": 1e6},
    )
    with pytest.raises(ShapeError, match="metric 'm'"):
        solver.step()
    assert solver.duals.multipliers is not None
    assert bool(torch.isfinite(solver.duals.multipliers.dense).all())
