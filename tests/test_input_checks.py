"""Inputs that once passed silently or ended in a raw Python error: each now gives a library
error naming what, where, expected and got (or the right value)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    History,
    Regularizer,
    Solver,
    Variables,
    controllers,
    solve,
)
from constrain.config import read_config_file

DTYPE = torch.float64


def _problem(**extra: object) -> ConstrainedProblem:
    return ConstrainedProblem(
        objective=lambda m, b: (m.x - 1).pow(2).sum(),
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
        **extra,  # type: ignore[arg-type]
    )


def test_a_quoted_number_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match=r"lr: expected a number, not a string \(write 0.1"):
        controllers.build({"name": "gda", "lr": "0.1"})


def test_a_key_given_twice_in_a_configuration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("steps: 5\nsteps: 7\n")
    with pytest.raises(ConfigError, match="the key 'steps' is given twice"):
        read_config_file(tmp_path / "run.yaml")
    (tmp_path / "run.json").write_text('{"steps": 5, "steps": 7}')
    with pytest.raises(ConfigError, match=r"\['steps'\] are given twice"):
        read_config_file(tmp_path / "run.json")


def test_show_refuses_an_unknown_controller(capsys: pytest.CaptureFixture[str]) -> None:
    from constrain.cli import main

    assert main(["show", "iris-svm", "--controller", "nupy"]) == 2
    assert "Did you mean 'nupi'" in capsys.readouterr().err


def test_a_prox_option_without_default_is_required_when_the_solver_is_built() -> None:
    model = Variables(x=torch.ones(8, dtype=DTYPE))
    problem = _problem(regularizers=[Regularizer(prox="wgsef", strength=0.1)])
    with pytest.raises(ConfigError, match=r"its prox needs the option\(s\) \['k'\]"):
        Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_loggers_and_history_streams_are_checked_up_front(tmp_path: Path) -> None:
    model = Variables(x=torch.ones(2, dtype=DTYPE))
    with pytest.raises(ConfigError, match=r"loggers\[0\] must have log\(record, history\)"):
        Solver(_problem(), model, torch.optim.SGD(model.parameters(), lr=0.1), loggers=[3])
    with pytest.raises(ConfigError, match="is a folder; expected the path of a JSON Lines"):
        History(stream=tmp_path)


def test_two_optimizers_owning_one_parameter_are_named() -> None:
    model = Variables(x=torch.ones(2, dtype=DTYPE))
    first = torch.optim.SGD(model.parameters(), lr=0.1)
    second = torch.optim.Adam(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"both own the parameter 'x' of shape \(2,\)"):
        Solver(_problem(), model, [first, second])


def test_a_problem_whose_only_constraint_group_is_empty_runs() -> None:
    model = Variables(x=torch.ones(3, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.pow(2).sum(),
        constraints=[Constraint("none", "<=", rhs=0.0, fn=lambda m, b: m.x[:0])],
    )
    result = solve(problem, model, steps=5, lr=0.1)
    assert result.history.max_violation().tolist() == [0.0] * 5
    torch.testing.assert_close(model.x.detach(), torch.full((3,), 0.8**5, dtype=DTYPE))


def test_value_functions_take_model_and_batch() -> None:
    with pytest.raises(ValueError, match=r"callable of two arguments fn\(model, batch\)"):
        Constraint("c", "<=", rhs=1.0, fn=lambda m: m.x.sum())
    with pytest.raises(ValueError, match=r"objective must take two arguments"):
        ConstrainedProblem(objective=lambda m: m.x.sum())


def test_a_penalty_must_be_a_scalar_and_solve_needs_a_module() -> None:
    problem = _problem(regularizers=[Regularizer(penalty=lambda p: p.abs(), strength=0.1)])
    with pytest.raises(ConfigError, match=r"its penalty returned a tensor of shape \(2,\)"):
        solve(problem, Variables(x=torch.ones(2, dtype=DTYPE)), steps=1)
    with pytest.raises(ConfigError, match=r"model must be a torch\.nn\.Module"):
        solve(_problem(), lambda: 0, steps=1)  # type: ignore[arg-type]
