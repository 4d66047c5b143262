"""The controller table of the generic tests, in the style of torch's ``optim_db``.

:data:`CONTROLLER_DB` holds one :class:`ControllerInfo` row per registered controller: the
hyperparameters the generic tests use, bad hyperparameters and the field their error must
name, and the facts a rule declares about itself (flags, exact reductions).

The generic tests are parametrized from the *registry* at collection time, through
:func:`parametrize` (each test module sets ``pytest_generate_tests = parametrize``), not
from this table: a newly registered controller runs through every generic test with its
default hyperparameters even before it has a row, and
``test_the_table_covers_exactly_the_registered_controllers`` fails until the row is added
(or while a row names a controller that is not registered).

Fixtures provided by :func:`parametrize` (each value is one pytest parameter):

* ``case``: a :class:`Case` per registered controller, plus its per-constraint variant;
* ``scalar_case``: the same without the per-constraint variants, for entry-wise rules;
* ``controller_name``: each registered name;
* ``bad_hyperparameters``: ``(name, params, field)``, the row's bad values plus those that
  are wrong for every controller (``lr`` not positive or not finite, an unknown field);
* ``reduction``: ``(name, params, nupi_params)`` for rows that are a special case of nuPI;
* ``nonnegative_case``: cases of rules that keep their output ``>= 0`` by themselves;
* ``signed_case``: the other cases (their output is projected by the formulation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from constrain import controllers

N = 10
"""Number of multipliers in the generic tests (per-constraint rows give N values)."""


@dataclass(frozen=True)
class ControllerInfo:
    """One controller's row.

    Attributes:
        params: Hyperparameters (without ``name``), chosen so that every term of the rule
            is active.
        per_constraint: Optional variant with per-multiplier coefficients (``N`` values).
        invalid: ``(params, field)`` pairs: building with ``params`` must raise a
            ``ConfigError`` whose message names ``field``.
        supports_equality: Expected value of the class flag.
        extrapolates: Expected value of the class flag.
        nonnegative: The rule keeps its (unprojected) output ``>= 0`` by itself; otherwise
            its output can leave the domain and projection is the formulation's job.
        nupi: Maps ``params`` to the ``NuPI(lr=1, ...)`` hyperparameters that reproduce the
            rule exactly (docs/algorithms.md, 'The nuPI reduction table').
        entrywise: Each multiplier's update depends on its own entries only, so that indexed
            (per-sample) use may gather, update and scatter a subset; ``False`` for rules
            that couple the entries (``group_dro`` normalises over all of them).
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    per_constraint: Mapping[str, Any] | None = None
    invalid: tuple[tuple[Mapping[str, Any], str], ...] = ()
    supports_equality: bool = True
    extrapolates: bool = False
    nonnegative: bool = False
    nupi: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    entrywise: bool = True


@dataclass(frozen=True)
class Case:
    """One parametrization: a registered controller with given hyperparameters."""

    id: str
    name: str
    params: Mapping[str, Any]
    info: ControllerInfo

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    def build(self) -> controllers.Controller:
        return controllers.build(self.spec)


def _momentum(p: Mapping[str, Any]) -> dict[str, Any]:
    lr, beta = p["lr"], p["beta"]
    return {"nu": beta, "ki": lr / (1 - beta), "kp": -lr * beta / (1 - beta) ** 2}


def _nesterov(p: Mapping[str, Any]) -> dict[str, Any]:
    lr, beta = p["lr"], p["beta"]
    return {"nu": beta, "ki": lr / (1 - beta), "kp": -lr * beta**2 / (1 - beta) ** 2}


NAN, INF = float("nan"), float("inf")

CONTROLLER_DB: dict[str, ControllerInfo] = {
    "gda": ControllerInfo(
        params={"lr": 0.3},
        invalid=(({"beta": 0.5}, "beta"),),
        nupi=lambda p: {"ki": p["lr"], "kp": 0.0, "nu": 0.7},  # any nu
    ),
    "momentum": ControllerInfo(
        params={"lr": 0.2, "beta": -0.3},
        invalid=(({"beta": 1.0}, "beta"), ({"beta": -1.0}, "beta")),
        nupi=_momentum,
    ),
    "nesterov": ControllerInfo(
        params={"lr": 0.2, "beta": 0.7},
        invalid=(({"beta": 1.5}, "beta"),),
        nupi=_nesterov,
    ),
    "adam": ControllerInfo(
        params={"lr": 0.1, "betas": (0.8, 0.95), "eps": 1e-6},
        invalid=(
            ({"betas": (0.9, 1.0)}, "betas"),
            ({"betas": (-0.1, 0.9)}, "betas"),
            ({"eps": 0.0}, "eps"),
        ),
    ),
    "nupi": ControllerInfo(
        params={"lr": 0.5, "ki": 0.3, "kp": 2.0, "nu": 0.6},
        per_constraint={
            "lr": 0.5,
            "ki": [0.1 * (j + 1) for j in range(N)],
            "kp": [float(j) - 3 for j in range(N)],
            "nu": -0.4,
        },
        invalid=(
            ({"nu": 1.0}, "nu"),
            ({"nu": -1.0}, "nu"),
            ({"nu": NAN}, "nu"),
            ({"ki": -1.0}, "ki"),
            ({"ki": [0.1, -0.2]}, "ki"),
            ({"ki": INF}, "ki"),
            ({"ki": []}, "ki"),
            ({"kp": NAN}, "kp"),
            ({"kp": [1.0, INF]}, "kp"),
            ({"kii": 0.1}, "kii"),
        ),
        nupi=lambda p: {"ki": p["lr"] * p["ki"], "kp": p["lr"] * p["kp"], "nu": p["nu"]},
    ),
    "pid": ControllerInfo(
        params={"lr": 0.5, "kp": 1.0, "ki": 0.4, "kd": 3.0, "delay": 4},
        per_constraint={
            "kp": [0.5] * N,
            "ki": [0.1 * j for j in range(N)],
            "kd": [1.0] * N,
            "ema_p": 0.5,
            "ema_d": 0.8,
            "delay": 2,
        },
        invalid=(
            ({"delay": 0}, "delay"),
            ({"ema_p": 1.0}, "ema_p"),
            ({"ema_d": -0.5}, "ema_d"),
            ({"kd": -1.0}, "kd"),
            ({"kp": NAN}, "kp"),
        ),
        supports_equality=False,
        nonnegative=True,
    ),
    "optimistic": ControllerInfo(
        params={"lr": 0.4},
        nupi=lambda p: {"ki": p["lr"], "kp": p["lr"], "nu": 0.0},
    ),
    "extragradient": ControllerInfo(params={"lr": 0.4}, extrapolates=True),
    "multiplicative": ControllerInfo(
        params={"lr": 0.1, "initial_value": 0.5},
        invalid=(({"initial_value": 0.0}, "initial_value"),),
        supports_equality=False,
        nonnegative=True,
    ),
    "group_dro": ControllerInfo(
        params={"lr": 0.2},
        supports_equality=False,
        nonnegative=True,
        entrywise=False,
    ),
}

# Wrong for every controller: the step size is a field of the base class.
COMMON_INVALID: tuple[tuple[Mapping[str, Any], str], ...] = (
    ({"lr": 0.0}, "lr"),
    ({"lr": -1.0}, "lr"),
    ({"lr": NAN}, "lr"),
    ({"lr": INF}, "lr"),
    ({"no_such_hyperparameter": 1.0}, "no_such_hyperparameter"),
)


def info(name: str) -> ControllerInfo:
    """The row of ``name``, or an empty row (default hyperparameters) if it has none."""
    return CONTROLLER_DB.get(name, ControllerInfo())


def cases() -> Iterator[Case]:
    for name in controllers.names():
        row = info(name)
        yield Case(name, name, row.params, row)
        if row.per_constraint is not None:
            yield Case(f"{name}-per-constraint", name, row.per_constraint, row)


def _describe(params: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in params.items())


def parametrize(metafunc: pytest.Metafunc) -> None:
    """``pytest_generate_tests`` of the controller test modules (see the module docstring)."""
    names = metafunc.fixturenames
    if "case" in names:
        metafunc.parametrize("case", [pytest.param(c, id=c.id) for c in cases()])
    if "scalar_case" in names:
        scalar = [
            pytest.param(c, id=c.id)
            for c in cases()
            if c.params is c.info.params and c.info.entrywise
        ]
        metafunc.parametrize("scalar_case", scalar)
    if "nonnegative_case" in names:
        chosen = [pytest.param(c, id=c.id) for c in cases() if c.info.nonnegative]
        metafunc.parametrize("nonnegative_case", chosen)
    if "signed_case" in names:
        chosen = [pytest.param(c, id=c.id) for c in cases() if not c.info.nonnegative]
        metafunc.parametrize("signed_case", chosen)
    if "controller_name" in names:
        metafunc.parametrize("controller_name", controllers.names())
    if "bad_hyperparameters" in names:
        bad = [
            pytest.param((name, params, fld), id=f"{name}:{_describe(params)}")
            for name in controllers.names()
            for params, fld in (*info(name).invalid, *COMMON_INVALID)
        ]
        metafunc.parametrize("bad_hyperparameters", bad)
    if "reduction" in names:
        rows = [
            pytest.param((name, row.params, row.nupi(row.params)), id=name)
            for name in controllers.names()
            if (row := info(name)).nupi is not None
        ]
        metafunc.parametrize("reduction", rows)
