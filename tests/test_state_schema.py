"""The solver-state schema: every real state passes; each crafted change is refused naming
its field path, what was expected and what was received; a checkpoint holding one is
refused by the loader and the previous checkpoint is used."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from constrain import (
    CheckpointError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    Solver,
    StepRecord,
    Variables,
)
from constrain._state_schema import HISTORY_RECORD, check_checkpoint_meta, check_solver_state
from constrain.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)


def _problem() -> ConstrainedProblem:
    return ConstrainedProblem(
        objective=lambda m, b: (m.x - 2.0).pow(2).sum(),
        constraints=[
            Constraint("budget", "<=", rhs=1.0, fn=lambda m, b: m.x.sum()),
            Constraint(
                "rows",
                "<=",
                size=4,
                per_sample=True,
                fn=lambda m, b: ConstraintValue(m.x[:2], indices=torch.tensor([0, 1])),
            ),
        ],
    )


def _solver(**options: Any) -> Solver:
    model = Variables(x=torch.ones(3, dtype=torch.float64))
    return Solver(
        _problem(),
        model,
        torch.optim.Adam(model.parameters(), lr=0.1),
        controller="nupi",
        formulation="augmented_lagrangian",
        **options,
    )


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    solver = _solver()
    solver.fit(None, 3)
    return solver.state_dict()


@pytest.fixture(scope="module")
def old_state() -> dict[str, Any]:
    """A version-2 state: the history's records embedded instead of its position."""
    solver = _solver()
    solver.fit(None, 3)
    state = solver.state_dict()
    old = {k: v for k, v in state.items() if k not in ("history_position", "schedules")}
    return {**old, "version": 2, "history": solver.history.to_dict()}


def test_record_checks_cover_exactly_the_step_record_fields() -> None:
    assert set(HISTORY_RECORD) == {f.name for f in dataclasses.fields(StepRecord)}


def test_real_states_pass(state: dict[str, Any]) -> None:
    check_solver_state(state)
    check_solver_state(_solver().state_dict())  # before any step: no layout, no multipliers
    data = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, shuffle=True)
    model = Variables(x=torch.ones(3, dtype=torch.float64))
    problem = ConstrainedProblem(objective=lambda m, b: m.x.pow(2).sum() * b[0].sum())
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        order="primal_dual",
    )
    solver.fit(data, 5)
    check_solver_state(solver.state_dict())  # data position and momentum buffers


def test_states_with_several_optimizers_and_registered_objects_pass() -> None:
    model = Variables(x=torch.ones(3, dtype=torch.float64), y=torch.ones(2, dtype=torch.float64))
    first = torch.optim.SGD([model.x], lr=0.1)
    second = torch.optim.Adam([model.y], lr=0.01)
    problem = ConstrainedProblem(objective=lambda m, b: m.x.pow(2).sum() + m.y.pow(2).sum())
    solver = Solver(problem, model, [first, second])
    solver.register_state("schedule", torch.optim.lr_scheduler.StepLR(first, step_size=2))
    solver.fit(None, 3)
    state = solver.state_dict()
    assert isinstance(state["optimizer"], list) and state["extra"]
    check_solver_state(state)
    state["optimizer_type"] = state["optimizer_type"][0]
    with pytest.raises(CheckpointError, match="'optimizer_type': expected one optimizer type"):
        check_solver_state(state)


def test_version_one_states_have_no_extra(old_state: dict[str, Any]) -> None:
    old = {k: v for k, v in old_state.items() if k != "extra"}
    check_solver_state(old_state)
    check_solver_state({**old, "version": 1})
    with pytest.raises(CheckpointError, match="lacks the entry 'extra'"):
        check_solver_state(old)


def test_version_three_states_hold_a_position_not_records(
    state: dict[str, Any], old_state: dict[str, Any]
) -> None:
    assert "history" not in state and set(state["history_position"]) == {"records", "bytes"}
    with pytest.raises(CheckpointError, match="unexpected entry 'history'"):
        check_solver_state({**state, "history": old_state["history"]})
    with pytest.raises(CheckpointError, match="lacks the entry 'history_position'"):
        check_solver_state({k: v for k, v in state.items() if k != "history_position"})


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change of the state: set the entry at a dotted path (``[k]`` indexes lists)."""

    def change(state: dict[str, Any]) -> None:
        keys: list[Any] = []
        for part in path.split("."):
            name, _, index = part.partition("[")
            keys.append(name)
            if index:
                keys.append(int(index.rstrip("]")))
        node: Any = state
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def _extra_record_key(state: dict[str, Any]) -> None:
    state["history"]["records"][0]["extra"] = 1.0


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def change(state: dict[str, Any]) -> None:
        del state[key]

    return change


def _swap_records(state: dict[str, Any]) -> None:
    records = state["history"]["records"]
    records[0], records[1] = records[1], records[0]


CRAFTED_HISTORY = [
    ("extra-record-key", _extra_record_key, "history.records[0]", "unexpected entry 'extra'"),
    ("history-string", _set("history", "x"), "'history'", "expected a mapping; got 'x' (str)"),
    ("record-step-string", _set("history.records[1].step", "1"), "records[1].step", "got '1'"),
    ("records-out-of-order", _swap_records, "records[1].step", "after the previous record"),
    (
        "record-beyond-step-count",
        _set("step_count", 2),
        "history.records[2].step",
        "below step_count (2)",
    ),
    ("violation-width", _set("history.records[0].violation", [1.0, 2.0]), "violation", "1 values"),
    ("skipped-not-bool", _set("history.records[0].skipped", 0), "skipped", "a bool"),
]
"""Changes of the records embedded in version-1 and -2 states."""

CRAFTED = [
    # the examples
    ("step-count-string", _set("step_count", "abc"), "'step_count'", "got 'abc' (str)"),
    (
        "position-negative",
        _set("history_position.bytes", -1),
        "'history_position.bytes'",
        "an integer >= 0; got -1",
    ),
    ("schedules-string", _set("schedules", "x"), "'schedules'", "expected a mapping"),
    ("negative-step-count", _set("step_count", -5), "'step_count'", "an integer >= 0; got -5"),
    (
        "negative-optimizer-lr",
        _set("optimizer.param_groups[0].lr", -1.0),
        "'optimizer.param_groups[0].lr'",
        "a finite number >= 0.0; got -1.0",
    ),
    # more of the same kind
    ("missing-entry", _drop("rng"), "'rng'", "lacks the entry 'rng'"),
    ("extra-entry", _set("surprise", 1), "its top level", "unexpected entry 'surprise'"),
    ("bool-step-count", _set("step_count", True), "'step_count'", "got True (bool)"),
    ("nan-lr", _set("optimizer.param_groups[0].lr", float("nan")), "param_groups[0].lr", "nan"),
    ("beta-one", _set("optimizer.param_groups[0].betas", (0.9, 1.0)), "betas[1]", "< 1.0"),
    ("order", _set("order", "random"), "'order'", "one of ['simultaneous'"),
    ("record-every-zero", _set("record_every", 0), "'record_every'", "an integer >= 1; got 0"),
    ("nan-multiplier", _set("multipliers.dense", torch.tensor([float("nan")])), "dense", "finite"),
    (
        "integer-multipliers",
        _set("multipliers.per_sample.rows", torch.zeros(4, dtype=torch.int64)),
        "multipliers.per_sample.rows",
        "floating-point",
    ),
    ("model-not-tensor", _set("model.x", [1.0, 1.0, 1.0]), "'model.x'", "a tensor"),
    ("rng-dtype", _set("rng.torch", torch.zeros(3)), "'rng.torch'", "dtype torch.uint8"),
    ("numpy-pos", _set("rng.numpy.pos", 700), "'rng.numpy.pos'", "in [0, 624]"),
    (
        "data-position",
        _set(
            "data",
            {
                "epoch": 0,
                "position": -1,
                "epoch_rng": None,
                "epoch_generator": None,
                "generator": None,
            },
        ),
        "'data.position'",
        ">= 0",
    ),
    (
        "controller-no-name",
        _set("controller", {"lr": 1.0}),
        "'controller.name'",
        "lacks the entry 'name'",
    ),
    ("layout-tensor", _set("layout", torch.zeros(2)), "'layout'", "plain data"),
    ("state-tensor-list", _set("controller_state.xi", [1.0]), "controller_state.xi", "mapping"),
    ("optimizer-state-key", _set("optimizer.state", {"0": {}}), "optimizer.state key", "integer"),
    ("param-index", _set("optimizer.param_groups[0].params", [-1]), "params[0]", ">= 0"),
]


@pytest.mark.parametrize(
    ("change", "where", "detail"), [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED]
)
def test_crafted_states_are_refused_naming_the_field(
    state: dict[str, Any], change: Callable[[dict[str, Any]], None], where: str, detail: str
) -> None:
    crafted = copy.deepcopy(state)
    change(crafted)
    with pytest.raises(CheckpointError) as info:
        check_solver_state(crafted)
    message = str(info.value)
    assert where in message and detail in message, message
    assert "resume from an earlier checkpoint" in message


@pytest.mark.parametrize(
    ("change", "where", "detail"),
    [c[1:] for c in CRAFTED_HISTORY],
    ids=[c[0] for c in CRAFTED_HISTORY],
)
def test_crafted_records_of_old_states_are_refused(
    old_state: dict[str, Any], change: Callable[[dict[str, Any]], None], where: str, detail: str
) -> None:
    test_crafted_states_are_refused_naming_the_field(old_state, change, where, detail)


def test_meta_is_checked() -> None:
    check_checkpoint_meta({"step": 3, "every": 2, "note": "mine"}, 3)
    with pytest.raises(CheckpointError, match=r"'meta.every': expected an integer >= 1; got 0"):
        check_checkpoint_meta({"step": 3, "every": 0})
    with pytest.raises(CheckpointError, match=r"'meta.step': expected the solver state's step"):
        check_checkpoint_meta({"step": 4}, 3)
    with pytest.raises(CheckpointError, match=r"'meta.note': expected plain data"):
        check_checkpoint_meta({"step": 3, "note": torch.zeros(1)})


def test_a_crafted_checkpoint_is_refused_and_the_previous_one_loads(
    tmp_path: Path, state: dict[str, Any]
) -> None:
    solver = _solver()
    solver.fit(None, 2)
    good = save_checkpoint(checkpoint_path(tmp_path, 2), solver)
    payload = load_checkpoint(good)
    payload["solver"]["step_count"] = "abc"  # still loadable with weights_only=True
    crafted = checkpoint_path(tmp_path, 3)
    torch.save(payload, crafted)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(crafted)
    assert str(crafted) in str(info.value) and "'step_count'" in str(info.value)
    path, loaded = load_latest(tmp_path)
    assert path == good and loaded["solver"]["step_count"] == 2
