"""The proximal-operator table of the generic tests, in the style of torch's ``optim_db``.

:data:`PROX_DB` holds one :class:`ProxInfo` row per registered prox: the options the generic
tests call it with, bad options and what their error must say, and an independent
statement of the penalty it is the prox of (docs/algorithms.md, 'Sparsity proxes' and
'The weight-sharing proximal operator'), against which the exact check verifies
optimality.

The generic tests are parametrized from the *registry* at collection time through
:func:`parametrize` (``pytest_generate_tests = parametrize``): a newly registered prox runs
through them with no options even before it has a row, and
``test_the_table_covers_exactly_the_registered_proxes`` fails until it has one.

Fixtures: ``prox_name`` (each registered name), ``bad_prox_options``
(``(name, options, error, text)``) and ``exact_prox`` (names whose row has a penalty).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from constrain import ConfigError, ShapeError, UnknownNameError
from constrain.prox import PROX

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ProxInfo:
    """One proximal operator's row.

    Attributes:
        options: Keyword options of every call in the generic tests. They must scale with
            ``strength`` (so that strength 0 is the identity).
        invalid: ``(options, error, text)``: calling with ``options`` raises ``error``
            whose message contains ``text``.
        penalty: ``penalty(x, strength, options)``: the function ``phi`` whose prox the
            operator computes, written independently of the library (float64).
        convex: The penalty is convex, so the prox is non-expansive (non-convex ones, such
            as the 2:4 regularizer, are tested for global optimality in their own files).
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    invalid: tuple[tuple[Mapping[str, Any], type[Exception], str], ...] = ()
    penalty: Callable[[Array, float, Mapping[str, Any]], float] | None = None
    convex: bool = True


def _l1(x: Array, strength: float, options: Mapping[str, Any]) -> float:
    return strength * float(np.abs(x).sum())


def _group_l1(x: Array, strength: float, options: Mapping[str, Any]) -> float:
    rows = x.reshape(x.shape[0], -1)  # default groups: everything sharing the first index
    return strength * float(np.sqrt((rows * rows).sum(axis=1)).sum())


def _weight_sharing(x: Array, strength: float, options: Mapping[str, Any]) -> float:
    w = x.reshape(-1)
    d = w.size
    if d <= 1:
        return 0.0
    pairwise = np.abs(w[:, None] - w[None, :]).sum() / 2  # each pair i > j once
    return strength * float(pairwise) / (d - 1)


def _weight_sharing_l1(x: Array, strength: float, options: Mapping[str, Any]) -> float:
    l1 = options["l1_ratio"] * strength * float(np.abs(x).sum())
    return _weight_sharing(x, strength, options) + l1


def _wgsef(x: Array, strength: float, options: Mapping[str, Any]) -> float:
    """strength * S_k(x) with one group per first index, unit weights: half the squared
    k-support norm of the group norms (Argyriou, Foygel & Srebro, 2012)."""
    k = int(options["k"])
    a = np.sort(np.sqrt((x.reshape(x.shape[0], -1) ** 2).sum(axis=1)))[::-1]
    if np.count_nonzero(a) <= k:
        return strength * 0.5 * float((a**2).sum())
    for r in range(k):  # the top k - r - 1 entries stay, the rest share r + 1 units
        rest = float(a[k - r - 1 :].sum())
        above = k - r - 2 < 0 or a[k - r - 2] > rest / (r + 1)
        if above and rest / (r + 1) >= a[k - r - 1]:
            return strength * 0.5 * float((a[: k - r - 1] ** 2).sum() + rest**2 / (r + 1))
    raise AssertionError("no consistent r")


PROX_DB: dict[str, ProxInfo] = {
    "l1": ProxInfo(penalty=_l1),
    "group_l1": ProxInfo(
        invalid=(({"dim": 5}, ShapeError, "dim"), ({"dim": (1, 1)}, ShapeError, "repeated")),
        penalty=_group_l1,
    ),
    "weight_sharing": ProxInfo(
        invalid=(
            ({"method": "bogus"}, UnknownNameError, "unknown method 'bogus'"),
            ({"method": "sort_pava", "probe_budget": 4}, ConfigError, "probe_budget"),
            ({"method": "divide_conquer", "probe_budget": 0}, ConfigError, "probe_budget"),
        ),
        penalty=_weight_sharing,
    ),
    "weight_sharing_l1": ProxInfo(
        options={"l1_ratio": 0.5},
        invalid=(
            ({}, ConfigError, "exactly one of l1_strength"),
            ({"l1_ratio": -1.0}, ConfigError, "l1_ratio"),
            ({"l1_strength": float("nan")}, ConfigError, "l1_strength"),
        ),
        penalty=_weight_sharing_l1,
    ),
    "proxsparse": ProxInfo(convex=False),
    "wgsef": ProxInfo(
        options={"k": 2},
        invalid=(
            ({"k": -1}, ConfigError, "k (the number of groups kept)"),
            ({"k": 2, "mode": "hard"}, ConfigError, "mode must be"),
            ({"k": 2, "weights": [1.0, 2.0]}, ShapeError, "one weight per group"),
        ),
        penalty=_wgsef,
    ),
}


def info(name: str) -> ProxInfo:
    """The row of ``name``, or an empty row (no options) if it has none."""
    return PROX_DB.get(name, ProxInfo())


def parametrize(metafunc: pytest.Metafunc) -> None:
    """``pytest_generate_tests`` of the prox test modules."""
    names = metafunc.fixturenames
    registered = PROX.names()
    if "prox_name" in names:
        metafunc.parametrize("prox_name", registered)
    if "bad_prox_options" in names:
        bad = [
            pytest.param((name, options, error, text), id=f"{name}:{options!r}")
            for name in registered
            for options, error, text in info(name).invalid
        ]
        metafunc.parametrize("bad_prox_options", bad)
    if "exact_prox" in names:
        chosen = [name for name in registered if info(name).penalty is not None]
        metafunc.parametrize("exact_prox", chosen)
