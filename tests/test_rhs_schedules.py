"""Right-hand-side schedules: every registered schedule against a table of hand-computed
values, bad options and round trips; schedules on constraints, from the solver and from
run configurations, read at every step (docs/algorithms.md, 'Right-hand-side schedules').

The table must cover exactly the registered schedules (a new one fails here until it has
a row).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    RunConfig,
    Solver,
    UnknownNameError,
    Variables,
    constraint,
    schedules,
)
from constrain.config import apply_overrides

DTYPE = torch.float64

# name -> (options, {step: expected b_t}, [(bad options, field)])
TABLE: dict[str, tuple[dict[str, Any], dict[int, float], list[tuple[dict[str, Any], str]]]] = {
    "constant": ({"value": 0.3}, {0: 0.3, 10**6: 0.3}, [({"value": math.inf}, "value")]),
    "linear": (
        {"start": 0.1, "end": 0.02, "steps": 8, "begin": 2},
        {0: 0.1, 2: 0.1, 4: 0.08, 6: 0.06, 10: 0.02, 100: 0.02},
        [({"start": 0.1, "end": 0.0, "steps": 0}, "steps"), ({"start": 1.0}, "end")],
    ),
    "cosine": (
        {"start": 1.0, "end": 0.0, "steps": 4},
        {0: 1.0, 1: 0.5 + 0.5 * math.cos(math.pi / 4), 2: 0.5, 4: 0.0, 9: 0.0},
        [({"start": 1.0, "end": 0.0, "steps": 4, "begin": -1}, "begin")],
    ),
    "exponential": (
        {"start": 0.1, "end": 0.001, "steps": 2},
        {0: 0.1, 1: 0.01, 2: 0.001, 3: 0.001},
        [({"start": 0.1, "end": 0.0, "steps": 2}, "same sign")],
    ),
    "piecewise": (
        {"milestones": [3, 7], "values": [0.2, 0.1, 0.05]},
        {0: 0.2, 2: 0.2, 3: 0.1, 6: 0.1, 7: 0.05, 50: 0.05},
        [
            ({"milestones": [3, 3], "values": [1.0, 2.0, 3.0]}, "increase strictly"),
            ({"milestones": [3], "values": [1.0]}, "one more value than milestones"),
        ],
    ),
}


def test_the_table_covers_exactly_the_registered_schedules() -> None:
    assert set(TABLE) == set(schedules.names())


@pytest.mark.parametrize("name", schedules.names())
def test_values_match_the_hand_computed_table(name: str) -> None:
    options, expected, _ = TABLE[name]
    schedule = schedules.build({"name": name, **options})
    for step, value in expected.items():
        assert schedule.at(step) == pytest.approx(value, abs=1e-15), (name, step)


@pytest.mark.parametrize("name", schedules.names())
def test_dump_builds_back_the_same_schedule(name: str) -> None:
    schedule = schedules.build({"name": name, **TABLE[name][0]})
    dumped = schedule.model_dump(mode="json")
    assert dumped["name"] == name
    assert schedules.build(dumped) == schedule


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [(n, o, f) for n, (_, _, bad) in TABLE.items() for o, f in bad],
)
def test_bad_options_name_the_field(name: str, options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        schedules.build({"name": name, **options})
    assert f"rhs schedule '{name}'" in str(info.value) and field in str(info.value)


def test_unknown_names_and_plain_numbers() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'linear'"):
        schedules.build({"name": "lienar"})
    assert schedules.build(0.25) == schedules.Constant(value=0.25)


# -- read at every step ------------------------------------------------------------------------
def _frozen(problem: ConstrainedProblem, x: list[float], **options: Any) -> Solver:
    model = Variables(x=torch.tensor(x, dtype=DTYPE))
    return Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"name": "gda", "lr": 1.0},
        **options,
    )


LINEAR = {"name": "linear", "start": 1.0, "end": 0.0, "steps": 4}


def test_a_scheduled_rhs_is_read_at_every_step() -> None:
    """g = x = 0.5 <= b_t with b_t = 1 - t / 4: violation -0.5, -0.25, 0, 0.25, 0.5, 0.5;
    a >= constraint flips the sign; per-sample groups use b_t too."""

    def per_sample(m: Any, b: Any) -> ConstraintValue:
        return ConstraintValue(m.x[0:1], indices=torch.tensor([1]))

    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(),
        constraints=[
            Constraint("le", "<=", rhs=LINEAR, fn=lambda m, b: m.x[0:1]),
            Constraint(
                "ge",
                ">=",
                rhs=schedules.Linear(start=1.0, end=0.0, steps=4),
                fn=lambda m, b: m.x[0:1],
            ),
            Constraint("samples", size=2, per_sample=True, rhs=LINEAR, fn=per_sample),
        ],
    )
    solver = _frozen(problem, [0.5])
    for t in range(6):
        record = solver.step()
        assert record is not None
        expected = 0.5 - max(1.0 - t / 4, 0.0)
        assert record.violation == pytest.approx([expected, -expected], abs=1e-15)
        assert record.per_sample["samples"]["max_violation"] == pytest.approx(expected)
    # GDA lr 1 accumulated the <= violations from step 2 on: 0 + 0.25 + 0.5 + 0.5.
    assert solver.multipliers["le"].item() == pytest.approx(1.25)


def test_a_problem_field_may_hold_a_schedule() -> None:
    class Tightened(ConstrainedProblem):
        tolerance: float | schedules.RhsSchedule = 0.1

        def objective(self, model: Any, batch: Any) -> torch.Tensor:
            return model.x.sum()

        @constraint("<=", rhs="tolerance")
        def gap(self, model: Any, batch: Any) -> torch.Tensor:
            return model.x

    problem = Tightened(tolerance=schedules.Linear(start=0.1, end=0.02, steps=2))
    solver = _frozen(problem, [0.0])
    values = [solver.step().violation[0] for _ in range(3)]  # type: ignore[union-attr]
    assert values == pytest.approx([-0.1, -0.06, -0.02])


def test_solver_level_schedules_override_the_declaration_by_pattern() -> None:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(),
        constraints=[
            Constraint("gap_a", "<=", rhs=0.3, fn=lambda m, b: m.x[0:1]),
            Constraint("gap_b", "<=", rhs=0.3, fn=lambda m, b: m.x[0:1]),
            Constraint("other", "<=", rhs=0.3, fn=lambda m, b: m.x[0:1]),
        ],
    )
    solver = _frozen(problem, [0.5], rhs_schedule={"gap*": LINEAR, "other": 0.7})
    first = solver.step()
    second = solver.step()
    assert first is not None and second is not None
    assert first.violation == pytest.approx([-0.5, -0.5, -0.2])
    assert second.violation == pytest.approx([-0.25, -0.25, -0.2])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"gap*": LINEAR}, "rhs_schedule: pattern(s) ['gap*'] match no constraint"),
        ({"g": {"name": "linear", "start": 1.0}}, "rhs_schedule['g']: invalid rhs schedule"),
        ({"g": "linear"}, "rhs_schedule['g']: expected a schedule"),
        ({"g": [1.0, 2.0]}, "rhs_schedule['g']: expected a schedule"),
    ],
)
def test_bad_solver_level_schedules(spec: dict[str, Any], message: str) -> None:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(), constraints=[Constraint("g", fn=lambda m, b: m.x)]
    )
    with pytest.raises(ConfigError) as info:
        _frozen(problem, [0.5], rhs_schedule=spec).step()
    assert message in str(info.value)


def test_constraint_refuses_a_bad_schedule_mapping() -> None:
    with pytest.raises(Exception, match="invalid rhs schedule 'linear'"):
        Constraint("g", rhs={"name": "linear", "start": 0.1})


def test_run_configs_and_set_overrides() -> None:
    base = {"problem": {"name": "random-qp"}}
    data = apply_overrides(
        base,
        [
            "rhs_schedule.inequalities.name=linear",
            "rhs_schedule.inequalities.start=0.5",
            "rhs_schedule.inequalities.end=0.0",
            "rhs_schedule.inequalities.steps=10",
        ],
    )
    config = RunConfig.parse(data)
    assert config.rhs_schedule == {
        "inequalities": {"name": "linear", "start": 0.5, "end": 0.0, "steps": 10}
    }
    from constrain.runner import build_solver, get_problem

    _, solver = build_solver(get_problem("random-qp"), config)
    solver.step()
    assert solver.layout is not None
    sl = solver.layout.slice_of("inequalities")
    assert torch.all(solver.layout.rhs[sl] == 0.5)
