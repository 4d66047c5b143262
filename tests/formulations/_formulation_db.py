"""The formulation table of the generic tests, in the style of torch's ``optim_db``.

:data:`FORMULATION_DB` holds one :class:`FormulationInfo` row per registered formulation:
options that exercise it (a growing penalty schedule where it has one), bad options and
the field their error must name, and an independent statement of its primal loss and
error signal (docs/algorithms.md, 'Formulations') that the exact check compares with.

The generic tests are parametrized from the *registry* at collection time through
:func:`parametrize` (``pytest_generate_tests = parametrize``): a newly registered
formulation runs through them with its default options even before it has a row, and
``test_the_table_covers_exactly_the_registered_formulations`` fails until it has one.

Fixtures: ``formulation_name`` (each registered name), ``bad_options``
(``(name, options, field)``) and ``exact_formulation`` (names whose row has a reference).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from constrain.formulations import FORMULATIONS

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FormulationInfo:
    """One formulation's row.

    Attributes:
        options: Options (without ``name``) used by the generic tests.
        invalid: ``(options, field)`` pairs: building must raise a ``ConfigError`` whose
            message names ``field`` (dotted for nested options).
        loss: ``loss(f, g, lam, equality, c)``: the primal loss from the objective ``f``,
            the standard-form values ``g`` the primal player sees (proxies), the
            multipliers and the equality mask, all stacked (dense and per-sample alike);
            ``c`` is the current penalty (NaN for formulations without one).
        signal_scale: ``signal_scale(c)``: the error signal is this multiple of the true
            violation; ``None`` for formulations without multipliers.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    invalid: tuple[tuple[Mapping[str, Any], str], ...] = ()
    loss: Callable[[float, Array, Array, Array, float], float] | None = None
    signal_scale: Callable[[float], float] | None = None


def _lagrangian(f: float, g: Array, lam: Array, equality: Array, c: float) -> float:
    return f + float(lam @ g)


def _quadratic_penalty(f: float, g: Array, lam: Array, equality: Array, c: float) -> float:
    violated = np.where(equality, g, np.maximum(g, 0.0))
    return f + 0.5 * c * float(violated @ violated)


def _augmented(f: float, g: Array, lam: Array, equality: Array, c: float) -> float:
    """The textbook form (Rockafellar's inequality terms), valid for c > 0."""
    ineq = ~equality
    shifted = np.maximum(0.0, lam[ineq] + c * g[ineq])
    terms = (shifted @ shifted - lam[ineq] @ lam[ineq]) / (2 * c)
    return f + float(terms + lam[equality] @ g[equality] + c / 2 * g[equality] @ g[equality])


SCHEDULE = {"growth": 2.0, "shrink": 0.5, "every": 2, "max_penalty": 40.0}
BAD_SCHEDULES: tuple[tuple[Mapping[str, Any], str], ...] = (
    ({"penalty": -1.0}, "penalty"),
    ({"penalty": float("nan")}, "penalty"),
    ({"schedule": {"growth": 0.5}}, "schedule.growth"),
    ({"schedule": {"shrink": 0.0}}, "schedule.shrink"),
    ({"schedule": {"every": 0}}, "schedule.every"),
    ({"schedule": {"growht": 2.0}}, "schedule.growht"),
)

FORMULATION_DB: dict[str, FormulationInfo] = {
    "lagrangian": FormulationInfo(
        invalid=(({"penalty": 1.0}, "penalty"),),
        loss=_lagrangian,
        signal_scale=lambda c: 1.0,
    ),
    "augmented_lagrangian": FormulationInfo(
        options={"penalty": 2.5, "schedule": SCHEDULE},
        invalid=BAD_SCHEDULES,
        loss=_augmented,
        signal_scale=lambda c: c,
    ),
    "quadratic_penalty": FormulationInfo(
        options={"penalty": 3.0, "schedule": SCHEDULE},
        invalid=BAD_SCHEDULES,
        loss=_quadratic_penalty,
    ),
}

COMMON_INVALID: tuple[tuple[Mapping[str, Any], str], ...] = (
    ({"no_such_option": 1.0}, "no_such_option"),
)


def info(name: str) -> FormulationInfo:
    """The row of ``name``, or an empty row (default options) if it has none."""
    return FORMULATION_DB.get(name, FormulationInfo())


def parametrize(metafunc: pytest.Metafunc) -> None:
    """``pytest_generate_tests`` of the formulation test modules."""
    names = metafunc.fixturenames
    registered = FORMULATIONS.names()
    if "formulation_name" in names:
        metafunc.parametrize("formulation_name", registered)
    if "bad_options" in names:
        bad = [
            pytest.param((name, options, fld), id=f"{name}:{options!r}")
            for name in registered
            for options, fld in (*info(name).invalid, *COMMON_INVALID)
        ]
        metafunc.parametrize("bad_options", bad)
    if "exact_formulation" in names:
        chosen = [name for name in registered if info(name).loss is not None]
        metafunc.parametrize("exact_formulation", chosen)
