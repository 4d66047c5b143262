"""The reference-problem table of the generic tests, in the style of torch's ``optim_db``.

:data:`PROBLEM_DB` holds one :class:`ProblemInfo` row per registered problem: problem
hyperparameters that keep the generic runs small, bad hyperparameters and the field their
error must name, and whether the exact check (``constrain validate``) applies.

The generic tests are parametrized from the *registry* at collection time through
:func:`parametrize` (``pytest_generate_tests = parametrize``): a newly registered problem
runs through them with its defaults even before it has a row, and
``test_the_table_covers_exactly_the_registered_problems`` fails until it has one.

Fixtures: ``problem_name`` (each registered name), ``problem_to_build`` (the same, marked
slow where building takes seconds), ``bad_problem_hyperparameters``
(``(name, hyperparameters, field)``) and ``validated_problem`` (names whose row says
``constrain validate`` applies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from constrain import problem_names


@dataclass(frozen=True)
class ProblemInfo:
    """One problem's row.

    Attributes:
        problem: Problem hyperparameters (the ``problem`` section of a run configuration,
            without ``name``) for the generic runs; small data where the default is large.
        invalid: ``(hyperparameters, field)``: a run configuration with these problem
            hyperparameters is refused with a ``ConfigError`` naming ``field``.
        validates: ``constrain validate`` applies (a convex problem declared from
            ``constrain.blocks``, checked exactly against CVXPY).
        slow_build: Building the problem takes seconds (loading a data set): the tests
            that build it run with the slow tests.
    """

    problem: Mapping[str, Any] = field(default_factory=dict)
    invalid: tuple[tuple[Mapping[str, Any], str], ...] = ()
    validates: bool = False
    slow_build: bool = False


PROBLEM_DB: dict[str, ProblemInfo] = {
    "iris-svm": ProblemInfo(
        invalid=(({"margin": "wide"}, "margin"),),
        validates=True,
    ),
    "simplex": ProblemInfo(
        problem={"dimension": 6, "seed": 1},
        invalid=(({"dimension": 0}, "dimension"),),
        validates=True,
    ),
    "random-qp": ProblemInfo(
        invalid=(({"num_equalities": -1}, "num_equalities"),),
        validates=True,
    ),
    "lasso": ProblemInfo(
        invalid=(({"noise": -1.0}, "noise"),),
        validates=True,
    ),
    "neyman-pearson": ProblemInfo(
        invalid=(({"bound": 0.0}, "bound"), ({"num_features": 31}, "num_features")),
        validates=True,
    ),
    "fairness-adult": ProblemInfo(
        problem={"max_train_samples": 2000},
        slow_build=True,
        invalid=(
            ({"tolerance": 2.0}, "tolerance"),
            ({"max_train_samples": 10}, "max_train_samples"),
        ),
    ),
    "fairness-adult-rates": ProblemInfo(
        problem={"max_train_samples": 2000},
        slow_build=True,
        invalid=(
            ({"tolerance": 2.0}, "tolerance"),
            ({"fpr_bound": 0.0}, "fpr_bound"),
            ({"proxy": "relu"}, "proxy"),
        ),
    ),
    "feasible-learning": ProblemInfo(
        problem={"num_samples": 2000, "num_test": 500},
        invalid=(({"epsilon": -0.1}, "epsilon"), ({"slack_penalty": 0.0}, "slack_penalty")),
    ),
    "sparsity-digits": ProblemInfo(
        invalid=(({"density": 1.5}, "density"),),
    ),
    "weight-sharing-digits": ProblemInfo(
        invalid=(({"strength": -1.0}, "strength"),),
    ),
    "weight-sharing-torus": ProblemInfo(
        problem={"seeds": 1, "test_shifts": False},
        invalid=(({"rho": 1.0}, "rho"), ({"alpha1": 0}, "alpha1")),
    ),
    "proxsparse-digits": ProblemInfo(
        problem={"seeds": 1, "pretrain_steps": 20},
        invalid=(({"hidden": 30}, "hidden"), ({"strength": -1.0}, "strength")),
    ),
}

COMMON_INVALID: tuple[tuple[Mapping[str, Any], str], ...] = (
    ({"no_such_hyperparameter": 1}, "no_such_hyperparameter"),
)


def info(name: str) -> ProblemInfo:
    """The row of ``name``, or an empty row (default hyperparameters) if it has none."""
    return PROBLEM_DB.get(name, ProblemInfo())


def parametrize(metafunc: pytest.Metafunc) -> None:
    """``pytest_generate_tests`` of the problem test modules."""
    names = metafunc.fixturenames
    registered = problem_names()
    if "problem_name" in names:
        metafunc.parametrize("problem_name", registered)
    if "problem_to_build" in names:
        marked = [
            pytest.param(name, marks=[pytest.mark.slow] if info(name).slow_build else [])
            for name in registered
        ]
        metafunc.parametrize("problem_to_build", marked)
    if "bad_problem_hyperparameters" in names:
        bad = [
            pytest.param((name, params, fld), id=f"{name}:{params!r}")
            for name in registered
            for params, fld in (*info(name).invalid, *COMMON_INVALID)
        ]
        metafunc.parametrize("bad_problem_hyperparameters", bad)
    if "validated_problem" in names:
        chosen = [name for name in registered if info(name).validates]
        metafunc.parametrize("validated_problem", chosen)
