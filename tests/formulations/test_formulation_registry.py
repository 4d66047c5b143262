"""Formulations by name, mapping or instance, and the contract every registered formulation
meets: options round trip, bad options named, projection onto the multiplier domain, state
save/restore, and its primal loss and error signal against an independent statement.

Parametrized from the registry through tests/formulations/_formulation_db.py.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from _formulation_db import FORMULATION_DB, parametrize
from _formulation_db import info as row_of
from torch import Tensor

from constrain import (
    AugmentedLagrangian,
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintLayout,
    Lagrangian,
    Multipliers,
    ProblemState,
    QuadraticPenalty,
    UnknownNameError,
)
from constrain.formulations import FORMULATIONS, Formulation, build
from constrain.layout import IndexedViolation, StackedConstraints

pytest_generate_tests = parametrize

DTYPE = torch.float64
N_INEQ, N_EQ = 4, 3
GROUPS = {"samples": (False, 6, [5, 0, 3]), "pairs": (True, 5, [1, 4])}  # eq, size, observed


def make(name: str) -> Formulation:
    return build({"name": name, **row_of(name).options})


def layout() -> ConstraintLayout:
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum(), constraints=[Constraint("g", size=N_INEQ + N_EQ)]
    )
    state = ProblemState(
        torch.zeros((), dtype=DTYPE), {"g": torch.zeros(N_INEQ + N_EQ, dtype=DTYPE)}
    )
    return ConstraintLayout(problem, state)


def stacked(seed: int) -> StackedConstraints:
    """Random standard-form values: true values and different proxies, dense and per-sample."""
    gen = torch.Generator().manual_seed(seed)
    n = N_INEQ + N_EQ
    true = torch.randn(n, generator=gen, dtype=DTYPE)
    proxy = true + 0.3 * torch.randn(n, generator=gen, dtype=DTYPE)
    equality = torch.tensor([False] * N_INEQ + [True] * N_EQ)
    per_sample = {}
    for name, (eq, _, observed) in GROUPS.items():
        v = torch.randn(len(observed), generator=gen, dtype=DTYPE)
        p = v + 0.3 * torch.randn(len(observed), generator=gen, dtype=DTYPE)
        per_sample[name] = IndexedViolation(v, p, torch.tensor(observed), eq)
    return StackedConstraints(true, proxy.requires_grad_(), equality, per_sample)


def multipliers(seed: int) -> Multipliers:
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(N_INEQ + N_EQ, generator=gen, dtype=DTYPE)
    dense[:N_INEQ] = dense[:N_INEQ].abs()
    stores = {}
    for name, (eq, size, _) in GROUPS.items():
        values = torch.randn(size, generator=gen, dtype=DTYPE)
        stores[name] = values if eq else values.abs()
    return Multipliers(dense, stores)


# -- the table ------------------------------------------------------------------------------


def test_the_table_covers_exactly_the_registered_formulations() -> None:
    registered, rows = set(FORMULATIONS.names()), set(FORMULATION_DB)
    assert not registered - rows, f"registered formulations without a row: {registered - rows}"
    assert not rows - registered, f"rows without a registered formulation: {rows - registered}"


def test_the_builtin_formulations_are_registered() -> None:
    assert FORMULATIONS.get("lagrangian") is Lagrangian
    assert FORMULATIONS.get("augmented-lagrangian") is AugmentedLagrangian
    assert FORMULATIONS.get("quadratic_penalty") is QuadraticPenalty


# -- generic: every registered formulation ----------------------------------------------------


def test_options_round_trip(formulation_name: str) -> None:
    cls = FORMULATIONS.get(formulation_name)
    assert cls.name == formulation_name
    assert type(build(formulation_name)) is cls
    configured = make(formulation_name)
    assert build({"name": formulation_name, **configured.model_dump()}) == configured
    assert build(configured) is configured


def test_bad_options_raise_config_error_naming_the_field(
    bad_options: tuple[str, dict[str, Any], str],
) -> None:
    name, options, field = bad_options
    with pytest.raises(ConfigError) as info:
        build({"name": name, **options})
    message = str(info.value)
    assert f"\n  {field}:" in message, message
    assert name in message


def test_projection_onto_the_multiplier_domain(formulation_name: str) -> None:
    """Inequality multipliers end ``>= 0``, equality multipliers are untouched, points of
    the domain stay where they are, and projecting twice changes nothing."""
    formulation = make(formulation_name)
    gen = torch.Generator().manual_seed(1)
    lam = 3.0 * torch.randn(40, generator=gen, dtype=DTYPE)
    equality = torch.arange(40) % 3 == 0
    projected = formulation.project(lam, equality)
    assert bool((projected[~equality] >= 0).all())
    assert torch.equal(projected[equality], lam[equality])
    assert torch.equal(formulation.project(projected, equality), projected)
    inside = torch.where(equality, lam, lam.abs())
    assert torch.equal(formulation.project(inside, equality), inside)


def _advance(formulation: Formulation, state: dict[str, Tensor], seeds: range) -> Any:
    for seed in seeds:
        state = formulation.after_dual_step(stacked(seed), state)
    return state


def test_state_save_and_restore_midway(formulation_name: str) -> None:
    """The formulation state (e.g. a penalty grown by its schedule) survives torch.save
    and continues exactly as the uninterrupted run."""
    formulation = make(formulation_name)
    start = formulation.init_state(layout())
    for value in start.values():
        assert value.device.type == "cpu" and not value.requires_grad
    midway = _advance(formulation, start, range(10))
    buffer = io.BytesIO()
    torch.save(midway, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    reference = _advance(formulation, midway, range(10, 20))
    resumed = _advance(formulation, loaded, range(10, 20))
    assert set(reference) == set(resumed) == set(start)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def _flat(s: StackedConstraints, lam: Multipliers, primal: bool) -> tuple[np.ndarray, ...]:
    """Dense and observed per-sample entries stacked: values, multipliers, equality mask."""
    values = [s.primal if primal else s.violation]
    lams, eqs = [lam.dense], [s.equality]
    for name, iv in s.per_sample.items():
        values.append(iv.primal if primal else iv.violation)
        lams.append(lam.per_sample[name][iv.indices])
        eqs.append(torch.full((len(iv.indices),), iv.equality))
    return tuple(torch.cat(t).detach().numpy() for t in (values, lams, eqs))


@pytest.mark.parametrize("seed", range(5))
def test_primal_loss_and_signal_match_the_reference(exact_formulation: str, seed: int) -> None:
    """float64, dense and per-sample groups, proxies different from the true values: the
    loss uses the proxies, the error signal the true values (docs/algorithms.md,
    'Formulations')."""
    formulation = make(exact_formulation)
    row = row_of(exact_formulation)
    assert row.loss is not None
    state = _advance(formulation, formulation.init_state(layout()), range(seed))
    c = float(state["penalty"]) if "penalty" in state else float("nan")
    s, lam = stacked(seed), multipliers(seed)
    f = torch.tensor(1.25, dtype=DTYPE)
    loss = formulation.primal_loss(f, s, lam, state)
    g, lam_flat, eq = _flat(s, lam, primal=True)
    expected = row.loss(1.25, g, lam_flat, eq.astype(bool), c)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    (gradient,) = torch.autograd.grad(loss, s.primal)  # the proxies carry the gradient
    assert bool(torch.isfinite(gradient).all())
    if row.signal_scale is None:
        assert not formulation.uses_multipliers
        return
    assert formulation.uses_multipliers
    scale = row.signal_scale(c)
    torch.testing.assert_close(
        formulation.dual_signal(s, state), scale * s.violation, rtol=1e-15, atol=0.0
    )
    for iv in s.per_sample.values():
        torch.testing.assert_close(
            formulation.indexed_signal(iv.violation, state),
            scale * iv.violation,
            rtol=1e-15,
            atol=0.0,
        )


# -- building ---------------------------------------------------------------------------------


def test_build_from_name_mapping_and_instance() -> None:
    assert isinstance(build("lagrangian"), Lagrangian)
    al = build({"name": "augmented_lagrangian", "penalty": 2.0, "schedule": {"growth": 3.0}})
    assert isinstance(al, AugmentedLagrangian)
    assert al.penalty == 2.0 and al.schedule.growth == 3.0
    instance = QuadraticPenalty(penalty=5.0)
    assert build(instance) is instance
    copy = build(instance, penalty=7.0)
    assert isinstance(copy, QuadraticPenalty) and copy.penalty == 7.0 and instance.penalty == 5.0


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'lagrangian'"):
        build("lagrangain")


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"penalty: .*the penalty must be > 0"):
        build("augmented_lagrangian", penalty=-1.0)
    with pytest.raises(ConfigError, match=r"schedule\.growht: unknown field"):
        build({"name": "quadratic_penalty", "schedule": {"growht": 2.0}})
    with pytest.raises(ConfigError, match="needs a 'name' key"):
        build({"penalty": 1.0})
    with pytest.raises(ConfigError, match="formulation must be a name"):
        build(3)  # type: ignore[arg-type]
