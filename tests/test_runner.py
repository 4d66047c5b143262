"""Running registered problems from a RunConfig: setup, summary, reference, report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from constrain import (
    ConfigError,
    ProblemSpec,
    Reference,
    RunConfig,
    UnknownNameError,
    get_problem,
    problem_names,
    run,
)
from constrain.runner import build_solver, compare_with_reference, register_problem

SUMMARY_KEYS = {
    "problem",
    "controller",
    "controller_config",
    "formulation",
    "order",
    "steps",
    "objective",
    "max_violation",
    "multipliers",
    "multiplier_names",
    "seconds",
    "seconds_per_step",
}


def test_builtin_problems_are_registered() -> None:
    assert {"iris-svm", "simplex", "random-qp"} <= set(problem_names())
    spec = get_problem("simplex")
    assert isinstance(spec, ProblemSpec) and spec.name == "simplex" and spec.description


def test_unknown_problem_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'simplex'"):
        get_problem("simplx")


def test_default_config_and_controller_switch() -> None:
    spec = get_problem("iris-svm")
    config = spec.default_config()
    assert config.problem == {"name": "iris-svm"}
    assert config.controller == {"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0}
    assert (config.order, config.steps, config.dtype) == ("dual_primal", 5000, "float64")
    assert spec.default_config("gda").controller == {"name": "gda", "lr": 0.1}
    assert spec.default_config("nupi").controller == config.controller
    assert spec.default_config("optimistic").controller == {"name": "optimistic", "lr": 0.1}
    assert get_problem("simplex").default_config().problem == {
        "name": "simplex",
        "dimension": 10,
        "seed": 0,
    }


def _config(**changes: object) -> RunConfig:
    data = get_problem("simplex").default_config().model_dump()
    data.update(changes)
    return RunConfig.parse(data)


def test_run_summary_fields() -> None:
    result = run(_config(steps=40), figures=False)
    summary = result.summary
    assert set(summary) >= SUMMARY_KEYS
    assert summary["problem"] == "simplex" and summary["controller"] == "nupi"
    assert summary["steps"] == 40 and result.solver.step_count == 40
    expected_names = {"total"} | {f"nonnegative[{i}]" for i in range(10)}
    assert summary["multiplier_names"] == result.solver.history.labels
    assert set(summary["multiplier_names"]) == expected_names
    assert len(summary["multipliers"]) == 11
    reference = summary["reference"]
    assert set(reference) >= {
        "objective",
        "multipliers",
        "multiplier_error",
        "source",
        "primal_error",
    }
    ours = np.array(summary["multipliers"])
    assert reference["multiplier_error"] == pytest.approx(
        np.linalg.norm(ours - reference["multipliers"])
    )
    json.dumps(summary)
    assert result.solver.model.x.dtype == torch.float64  # dtype from the config


def test_run_is_reproducible() -> None:
    a = run(_config(steps=30), figures=False).summary
    b = run(_config(steps=30), figures=False).summary
    assert a["multipliers"] == b["multipliers"] and a["objective"] == b["objective"]


def test_run_writes_a_report(tmp_path: Path) -> None:
    result = run(_config(steps=20), out=tmp_path / "report")
    out = tmp_path / "report"
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "config.yaml", "history.csv", "history.json"} <= names
    assert {"overview.png", "objective.png", "constraints.png", "multipliers.png"} <= names
    assert not any(name.endswith(".tmp") for name in names)
    assert json.loads((out / "summary.json").read_text())["steps"] == 20
    assert RunConfig.parse(yaml.safe_load((out / "config.yaml").read_text())) == result.config
    assert len((out / "history.csv").read_text().splitlines()) == 21
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_invalid_problem_hyperparameters_are_config_errors() -> None:
    spec = get_problem("simplex")
    with pytest.raises(ConfigError, match=r"invalid problem 'simplex':\n  dimensio: unknown field"):
        build_solver(spec, _config(problem={"name": "simplex", "dimensio": 3}))
    with pytest.raises(ConfigError, match="dimension: Input should be greater than or equal to 2"):
        build_solver(spec, _config(problem={"name": "simplex", "dimension": 1}))


def test_invalid_optimizer_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid options for optimizer 'sgd'"):
        build_solver(
            get_problem("simplex"), _config(optimizer={"name": "sgd", "lr": 0.1, "betas": 1})
        )


def test_compare_with_reference() -> None:
    result = run(_config(steps=5), figures=False)
    lam = result.solver.multipliers
    exact = {"total": lam["total"].numpy() + 3.0, "nonnegative": lam["nonnegative"].numpy() + 4.0}
    x = result.solver.model.x.detach().numpy()
    reference = Reference(
        objective=1.0, multipliers=exact, primal={"x": x + 1.0, "absent": x}, source="test"
    )
    out = compare_with_reference(reference, result.solver)
    assert out["multiplier_error"] == pytest.approx(np.sqrt(9 + 10 * 16))
    assert out["primal_error"] == pytest.approx(np.sqrt(10))
    assert out["objective"] == 1.0 and out["source"] == "test"
    # Listed in the solver's (= the history's) column order, whatever the reference's order.
    layout_order = np.concatenate([exact[name] for name in lam])
    assert out["multipliers"] == layout_order.tolist()
    reversed_reference = Reference(1.0, dict(reversed(list(exact.items()))))
    assert compare_with_reference(reversed_reference, result.solver)["multipliers"] == (
        layout_order.tolist()
    )
    with pytest.raises(
        ConfigError, match=r"multipliers for \['bogus'\], which are not constraints"
    ):
        compare_with_reference(Reference(1.0, {"bogus": np.zeros(1)}), result.solver)


def test_register_problem_needs_a_name() -> None:
    class Nameless(ProblemSpec):
        pass

    with pytest.raises(ConfigError, match="needs a non-empty class attribute 'name'"):
        register_problem(Nameless)


def test_base_spec_defaults() -> None:
    class Minimal(ProblemSpec):
        name = "minimal"

    spec = Minimal()
    with pytest.raises(NotImplementedError):
        spec.build(RunConfig.parse({"problem": "minimal"}))
    assert spec.default_config().problem == {"name": "minimal"}
    assert spec.default_config().controller == {"name": "gda"}


def test_summary_has_the_late_window() -> None:
    summary = run(_config(steps=40), figures=False).summary
    assert summary["late_window"]["first_step"] == 36 and summary["late_window"]["records"] == 4
    assert summary["late_max_violation"] >= summary["late_mean_violation"] >= 0
    assert summary["late_max_violation"] >= summary["max_violation"]
    assert {"late_max_multiplier_error", "late_mean_multiplier_error"} <= set(summary)


def test_quadratic_penalty_with_a_controller_warns_and_reports_no_multipliers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(steps=5).model_copy(
        update={"formulation": {"name": "quadratic_penalty"}, "controller": {"name": "nupi"}}
    )
    with caplog.at_level("WARNING", logger="constrain"):
        summary = run(config, figures=False).summary
    assert "has no multipliers: controller 'nupi' is not used" in caplog.text
    assert summary["multipliers"] == [] and summary["controller_config"] is None
