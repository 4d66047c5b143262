"""Exact validation: every reference problem passes with its defaults, wrong solutions fail,
the sign conventions hold for '<=', '>=' and '==', and problems that cannot be checked are
refused with a clear message (also on the command line)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ProblemSpec,
    RunConfig,
    Setup,
    ValidationReport,
    Variables,
    blocks,
    get_problem,
    solve,
    validate,
)
from constrain.cli import main
from constrain.exact import CONVENTIONS, Tolerances, validate_registered

pytest.importorskip("cvxpy")


def _validate(name: str, **changes: Any) -> dict[str, Any]:
    spec = get_problem(name)
    data = spec.default_config().model_dump()
    data.update(changes)
    return validate_registered(spec, RunConfig.parse(data))


@pytest.mark.parametrize("name", ["simplex", "neyman-pearson", "lasso"])
def test_reference_problems_pass_with_their_defaults(name: str) -> None:
    report = _validate(name)
    assert report["passed"], report["failures"]
    assert report["multiplier_error"] < 1e-6
    assert report["primal_error"] < 1e-6
    assert report["reference_status"] in ("optimal", "optimal_inaccurate")
    assert all(report["checks"].values())


@pytest.mark.slow
def test_random_qp_passes_against_cvxpy_duals() -> None:
    report = _validate("random-qp")
    assert report["passed"] and report["multiplier_error"] < 1e-4
    assert set(report["multipliers"]) == {"equalities", "inequalities"}
    assert (
        len(report["multipliers"]["equalities"]) >= 5
        and len(report["multipliers"]["inequalities"]) >= 5
    )
    assert report["checks"]["stationarity"] and report["kkt"]["stationarity_checked"]


@pytest.mark.slow
def test_iris_svm_passes_for_the_svm_multipliers() -> None:
    report = _validate("iris-svm")
    assert report["passed"] and report["multiplier_error"] < 1e-3
    assert len(report["reference_multipliers"]["margins"]) == 70
    lam = np.asarray(report["reference_multipliers"]["margins"])
    assert lam.min() >= -1e-9 and (lam > 1e-3).sum() >= 2  # a few support vectors


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "validate_custom_problem.py"


def _example() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLE))


def _solve_portfolio(problem: ConstrainedProblem, steps: int = 3000) -> Any:
    """The example's settings."""
    return solve(
        problem,
        Variables(x=torch.full((5,), 0.2, dtype=torch.float64)),
        steps=steps,
        lr=0.1,
        controller={"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0},
        order="dual_primal",
    )


@pytest.fixture(scope="module")
def portfolio() -> tuple[ConstrainedProblem, Any, Any]:
    problem = _example()["portfolio_problem"]()  # the docs example's problem: all 3 senses
    result = _solve_portfolio(problem)
    reference = blocks.to_cvxpy(problem).solve()
    return problem, result, reference


def test_a_user_problem_with_all_three_senses_validates(portfolio: Any) -> None:
    problem, result, reference = portfolio
    report = validate(problem, result, reference=reference)
    assert isinstance(report, ValidationReport) and report.passed, report.failures
    # The '>=' and '==' multipliers are non-trivial, and in the library convention.
    assert reference.multipliers["target_return"][0] > 1e-3
    assert abs(reference.multipliers["budget"][0]) > 1e-3
    assert (
        report.multiplier_errors["target_return"] < 1e-6
        and report.multiplier_errors["budget"] < 1e-6
    )
    assert report.reference_kkt.stationarity < 1e-7
    text = json.dumps(report.to_dict())
    assert json.loads(text)["conventions"] == CONVENTIONS
    assert "multiplier error" in str(report)


def test_a_wrong_solution_fails(portfolio: Any) -> None:
    problem, result, reference = portfolio
    x = result.model.x.detach().clone()
    shifted = {"x": x + torch.tensor([0.01, -0.01, 0.0, 0.0, 0.0], dtype=torch.float64)}
    report = validate(problem, shifted, multipliers=result.multipliers, reference=reference)
    assert not report.passed
    assert {"primal", "objective", "stationarity"} <= {
        k for k, ok in report.checks.items() if not ok
    }
    assert any(text.startswith("primal error") for text in report.failures)
    # Right point, wrong sign for the equality multiplier.
    flipped = {**result.multipliers, "budget": -result.multipliers["budget"]}
    report = validate(problem, result.model, multipliers=flipped, reference=reference)
    assert (
        not report.passed and not report.checks["multipliers"] and not report.checks["stationarity"]
    )
    # A point outside the feasible set.
    report = validate(problem, {"x": torch.zeros(5, dtype=torch.float64)}, reference=reference)
    assert not report.passed and report.max_violation == pytest.approx(1.0)
    assert report.multiplier_error is None and "multipliers" not in report.checks


def test_an_unconverged_run_fails_and_tolerances_decide(portfolio: Any) -> None:
    problem, _, reference = portfolio
    early = _solve_portfolio(problem, steps=20)
    report = validate(problem, early, reference=reference)
    assert not report.passed and report.failures
    loose = {k: 10.0 for k in Tolerances.model_fields}
    assert validate(problem, early, reference=reference, tolerances=loose).passed
    with pytest.raises(
        ConfigError, match=r"invalid validation tolerances:\n  primal: .*greater than or equal to 0"
    ):
        validate(problem, early, reference=reference, tolerances={"primal": -1.0})


def test_solution_inputs_are_checked(portfolio: Any) -> None:
    problem, result, reference = portfolio
    with pytest.raises(ConfigError, match=r"no value for block variable 'x'"):
        validate(problem, {"y": torch.zeros(5)}, reference=reference)
    with pytest.raises(ConfigError, match=r"'x' has shape \[4\]; the blocks declare \[5\]"):
        validate(problem, {"x": torch.zeros(4)}, reference=reference)
    with pytest.raises(ConfigError, match=r"no multiplier for constraint 'budget'"):
        validate(problem, result.model, multipliers={"target_return": [0.0]}, reference=reference)
    with pytest.raises(ConfigError, match=r"solution must be a constrain.Solver"):
        validate(problem, 3.0, reference=reference)


def test_callable_problems_cannot_be_validated() -> None:
    problem = ConstrainedProblem(objective=lambda model, batch: model.x.sum())
    with pytest.raises(
        ConfigError,
        match=r"cannot be validated exactly: the objective is .*Build it from constrain.blocks",
    ):
        validate(problem, {"x": torch.zeros(2)})


class _CallableSpec(ProblemSpec):
    name = "callable-toy"
    defaults: ClassVar[dict[str, Any]] = {"steps": 5}

    def build(self, config: RunConfig) -> Setup:
        problem = ConstrainedProblem(
            objective=lambda model, batch: model.x.pow(2).sum(),
            constraints=[Constraint("c", "<=", rhs=1.0, fn=lambda model, batch: model.x.sum())],
        )
        return Setup(problem, Variables(x=torch.zeros(2)))


def test_validate_registered_refuses_callable_problems_before_running() -> None:
    spec = _CallableSpec()
    with pytest.raises(
        ConfigError, match=r"problem 'callable-toy': ConstrainedProblem cannot be validated exactly"
    ):
        validate_registered(spec, spec.default_config())


def test_cli_validate_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "simplex", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problem"] == "simplex" and report["passed"] is True
    for key in (
        "tolerances",
        "primal_error",
        "objective",
        "reference_objective",
        "objective_gap",
        "multiplier_error",
        "max_violation",
        "kkt",
        "reference_multipliers",
        "multipliers",
        "multiplier_errors",
        "conventions",
        "steps",
        "controller",
    ):
        assert key in report
    assert set(report["kkt"]) >= {
        "stationarity",
        "complementary_slackness",
        "dual_feasibility",
        "primal_feasibility",
    }
    # Too few steps: the report fails and the exit status says so.
    assert main(["validate", "simplex", "--steps", "3", "--json", "--no-progress"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


@pytest.mark.slow
def test_the_docs_example_validates_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert _example()["main"]() == 0
    out = capsys.readouterr().out
    assert "passed                   True" in out and "multiplier target_return" in out


@pytest.mark.slow
def test_cli_validate_random_qp_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "random-qp", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["multiplier_error"] < 1e-4
    assert report["problem"] == "random-qp"
