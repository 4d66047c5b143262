"""The contract every registered problem meets: its default configuration round trips, its
recommended controller settings name registered controllers, bad hyperparameters are
refused naming the field (a bool for a number included), ``constrain show`` lists its
hyperparameters, a run resumes exactly from a checkpoint, and the exact check
(``constrain validate``) applies exactly where the table says.

Parametrized from the registry through tests/problems/_problem_db.py.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from _problem_db import PROBLEM_DB, parametrize
from _problem_db import info as row_of
from torch import Tensor

from constrain import (
    ConfigError,
    ConstrainedProblem,
    History,
    RunConfig,
    blocks,
    controllers,
    get_problem,
    problem_names,
)
from constrain._components import bools_for_numbers
from constrain._show import format_problem_info, hyperparameters, problem_info
from constrain.checkpoint import load_checkpoint, save_checkpoint
from constrain.runner import build_solver

pytest.importorskip("sklearn")  # the data of iris-svm and the studies

from constrain_problems._study import study_params

pytest_generate_tests = parametrize


def config(name: str, **problem: Any) -> RunConfig:
    """The default configuration with the row's (and then the given) problem hyperparameters."""
    data = get_problem(name).default_config().model_dump()
    data["problem"] = {**data["problem"], **row_of(name).problem, **problem}
    return RunConfig.parse(data)


def test_the_table_covers_exactly_the_registered_problems() -> None:
    registered, rows = set(problem_names()), set(PROBLEM_DB)
    assert not registered - rows, f"registered problems without a row: {registered - rows}"
    assert not rows - registered, f"rows without a registered problem: {rows - registered}"


def test_default_configuration_round_trips(problem_name: str) -> None:
    spec = get_problem(problem_name)
    assert spec.name == problem_name and spec.description
    default = spec.default_config()
    assert default.problem["name"] == problem_name
    assert RunConfig.parse(default.model_dump()) == default


def test_recommended_controller_settings_build(problem_name: str) -> None:
    """``--controller NAME`` works for every registered controller; the problem's
    recommended settings name registered controllers and are valid for them."""
    spec = get_problem(problem_name)
    assert set(spec.controller_defaults) <= set(controllers.names())
    for name in controllers.names():
        controller = controllers.build(spec.default_config(name).controller)
        assert controller.name == name


def test_bad_hyperparameters_are_refused_naming_the_field(
    bad_problem_hyperparameters: tuple[str, dict[str, Any], str],
) -> None:
    name, params, field = bad_problem_hyperparameters
    with pytest.raises(ConfigError) as info:
        build_solver(get_problem(name), config(name, **params))
    message = str(info.value)
    assert f"\n  {field}:" in message, message
    assert repr(name) in message


def _snapshot(solver: Any) -> dict[str, Any]:
    state = solver.state_dict()
    history = solver.history.to_dict()["records"]
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    keys = ("model", "optimizer", "multipliers", "controller_state", "indexed_state")
    return {**{k: state[k] for k in keys}, "step_count": state["step_count"], "history": records}


def _assert_identical(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a, b), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{k}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def test_a_run_resumes_exactly_from_a_checkpoint(problem_to_build: str, tmp_path: Path) -> None:
    """Three steps, a checkpoint, three more in a fresh solver: bit for bit the six-step run."""
    spec, cfg = get_problem(problem_to_build), config(problem_to_build)
    setup, reference = build_solver(spec, cfg)
    reference.history = History(stream=tmp_path / "reference.jsonl")
    reference.fit(setup.data, 6, batch=setup.batch, progress=False)
    setup, first = build_solver(spec, cfg)
    first.history = History(stream=tmp_path / "run.jsonl")  # a checkpoint keeps its position
    first.fit(setup.data, 3, batch=setup.batch, progress=False)
    path = save_checkpoint(tmp_path / "run.pt", first)
    torch.manual_seed(12345)  # the process state must not matter
    setup, resumed = build_solver(spec, cfg)
    resumed.history = History(stream=tmp_path / "run.jsonl")
    resumed.load_state_dict(load_checkpoint(path)["solver"])
    resumed.fit(setup.data, 3, batch=setup.batch, progress=False)
    _assert_identical(_snapshot(reference), _snapshot(resumed))
    assert all(bool(torch.isfinite(p).all()) for p in resumed.model.parameters())


def _data(setup: Any) -> Any:
    data = setup.extras.get("data")
    return data if isinstance(data, Mapping) else setup.batch


def test_the_spec_declares_what_the_table_says(problem_name: str) -> None:
    """``ProblemSpec.validates`` (shown by ``constrain list`` and ``constrain show``) agrees
    with the table, which the next test checks against CVXPY."""
    assert get_problem(problem_name).validates is row_of(problem_name).validates


def test_validate_applies_where_the_table_says(problem_to_build: str) -> None:
    """Problems marked ``validates`` have a CVXPY twin that solves; the others are refused
    by ``constrain validate`` before any step, with a message saying why."""
    pytest.importorskip("cvxpy")
    from constrain.exact import validate_registered

    spec, cfg = get_problem(problem_to_build), config(problem_to_build)
    if row_of(problem_to_build).validates:
        setup, _ = build_solver(spec, cfg)
        solution = blocks.to_cvxpy(setup.problem, _data(setup)).solve()
        assert solution.status in ("optimal", "optimal_inaccurate")
    else:
        with pytest.raises(ConfigError, match="cannot be validated exactly"):
            validate_registered(spec, cfg.model_copy(update={"steps": 10**9}))


@pytest.mark.slow  # full runs (seconds each); tests/test_validation.py runs some by default
def test_validate_passes_with_the_defaults(validated_problem: str) -> None:
    pytest.importorskip("cvxpy")
    from constrain.exact import validate_registered

    report = validate_registered(get_problem(validated_problem), config(validated_problem))
    assert report["passed"], report["failures"]
    assert report["multiplier_error"] < 1e-3 and report["primal_error"] < 1e-3


def _settable(spec: Any) -> dict[str, Any]:
    """The annotations of ``spec.params``'s settable fields (``--set problem.NAME=...``)."""
    hidden = set(spec.derived_params)
    if issubclass(spec.params, ConstrainedProblem):
        hidden |= set(ConstrainedProblem.model_fields)
    return {n: f.annotation for n, f in spec.params.model_fields.items() if n not in hidden}


def _alternatives(annotation: Any) -> set[Any]:
    """``int | None`` -> ``{int, NoneType}``; ``Annotated[float, ...]`` -> ``{float}``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return {a for arg in typing.get_args(annotation) for a in _alternatives(arg)}
    return {annotation}


def _takes_numbers(annotation: Any) -> bool:
    """An ``int`` or ``float`` field (optionally nullable): a bool is not a value of it."""
    parts = _alternatives(annotation) - {type(None)}
    return bool(parts) and parts <= {int, float}


def _takes_number_lists(annotation: Any) -> bool:
    parts = _alternatives(annotation) - {type(None)}
    return bool(parts) and all(
        typing.get_origin(p) in (list, tuple)
        and {a for a in typing.get_args(p) if a is not Ellipsis} <= {int, float}
        for p in parts
    )


def test_every_problem_declares_its_hyperparameters(problem_name: str) -> None:
    """``constrain show`` lists every option of the default configuration, with its type
    and meaning (a spec without a ``params`` model shows "none declared")."""
    spec = get_problem(problem_name)
    assert spec.params is not None, f"{problem_name} declares no params model"
    rows = {row["name"]: row for row in hyperparameters(spec)}
    assert rows, f"constrain show {problem_name} lists no hyperparameter"
    options = set(spec.default_config().problem) - {"name"}
    assert options <= set(rows), f"not listed by show: {options - set(rows)}"
    for name, row in rows.items():
        assert row["type"] and row["description"], f"{problem_name}.{name}: {row}"
        if name in options:
            assert row["default"] == spec.default_config().problem[name]
    text = format_problem_info(problem_info(spec), spec.default_config().to_yaml())
    assert "none declared" not in text
    assert all(f"\n  {name} " in text for name in rows)


def test_a_bool_for_a_number_is_refused_naming_the_field(problem_name: str) -> None:
    """``--set problem.NAME=true`` for an int or float hyperparameter (or a list of them)
    is refused, naming the field: true and false are not 1 and 0."""
    spec = get_problem(problem_name)
    fields = _settable(spec)
    numeric = {n: True for n, a in fields.items() if _takes_numbers(a)}
    numeric |= {n: [True] for n, a in fields.items() if _takes_number_lists(a)}
    for field, value in numeric.items():
        with pytest.raises(ConfigError) as info:
            build_solver(spec, config(problem_name, **{field: value}))
        message = str(info.value)
        assert f"\n  {field}:" in message and "true/false is not 1/0" in message, message
        assert repr(problem_name) in message
    bools = [n for n, a in fields.items() if _alternatives(a) == {bool}]
    for field in bools:  # a bool field still takes a bool
        assert not bools_for_numbers(spec.params, {field: True})


def test_study_parameters_refuse_bools_when_built_directly(problem_name: str) -> None:
    """The studies' own parameter models (not ConstrainedProblem subclasses, which refuse
    bools themselves) go through ``study_params``, which is just as strict."""
    spec = get_problem(problem_name)
    if issubclass(spec.params, ConstrainedProblem):
        pytest.skip("a ConstrainedProblem refuses bools for numbers itself")
    numeric = [n for n, a in _settable(spec).items() if _takes_numbers(a)]
    assert numeric
    for field in numeric:
        with pytest.raises(ConfigError, match=rf"\n  {field}: .*not a bool"):
            study_params(spec.params, config(problem_name, **{field: False}))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_refused_naming_the_field(problem_name: str, value: float) -> None:
    """``--set problem.NAME=.nan`` (or inf) for a float hyperparameter is refused naming
    that field, not a constraint or a layer it later flows into."""
    spec = get_problem(problem_name)
    floats = [n for n, a in _settable(spec).items() if float in _alternatives(a)]
    for field in floats:
        with pytest.raises(ConfigError) as info:
            build_solver(spec, config(problem_name, **{field: value}))
        message = str(info.value)
        assert f"\n  {field}:" in message and "finite number" in message, message
