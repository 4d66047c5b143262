"""Feasibility-driven penalty updaters: one penalty per constraint entry, each grown when
its own violation does not shrink (docs/algorithms.md, 'Penalty updaters').

Every registered updater runs through the same checks, parametrized from the registry:
its options round trip, bad options name the field, and a run of the quadratic penalty and
of the augmented Lagrangian along a prescribed path of violations agrees with an
independent statement of the rule (:func:`reference`). The table must cover exactly the
registered updaters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    Solver,
    UnknownNameError,
)
from constrain.formulations import PENALTY_UPDATERS, build, build_updater

DTYPE = torch.float64
Array = np.ndarray

# name -> (options, increase(c, options), [(bad options, field)])
UPDATER_DB: dict[
    str, tuple[dict[str, Any], Callable[[Array, dict[str, Any]], Array], list[Any]]
] = {
    "multiplicative": (
        {"growth": 3.0},
        lambda c, o: o["growth"] * c,
        [({"growth": 1.0}, "growth"), ({"growth": float("nan")}, "growth")],
    ),
    "additive": (
        {"increment": 0.75},
        lambda c, o: c + o["increment"],
        [({"increment": 0.0}, "increment")],
    ),
}
COMMON_INVALID = [
    ({"shrink": 1.5}, "shrink"),
    ({"tolerance": -1.0}, "tolerance"),
    ({"every": 0}, "every"),
    ({"max_penalty": 0.0}, "max_penalty"),
    ({"measure": "size"}, "measure"),
    ({"growht": 2.0}, "growht"),
]


def test_the_table_covers_exactly_the_registered_updaters() -> None:
    assert set(UPDATER_DB) == set(PENALTY_UPDATERS.names())


@pytest.mark.parametrize("name", PENALTY_UPDATERS.names())
def test_options_round_trip(name: str) -> None:
    updater = build_updater({"name": name, **UPDATER_DB[name][0]})
    dumped = updater.model_dump(mode="json")
    assert dumped["name"] == name
    assert build_updater(dumped) == updater
    formulation = build({"name": "augmented_lagrangian", "updater": dumped})
    assert build(formulation.model_dump(mode="json") | {"name": "augmented_lagrangian"}) == (
        formulation
    )


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [(n, o, f) for n, (_, _, bad) in UPDATER_DB.items() for o, f in [*bad, *COMMON_INVALID]],
)
def test_bad_options_name_the_field(name: str, options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({"name": "quadratic_penalty", "updater": {"name": name, **options}})
    assert field in str(info.value)


def test_unknown_updater_and_conflicting_options() -> None:
    with pytest.raises(ConfigError, match="unknown penalty updater 'multiplicatve'"):
        build({"name": "augmented_lagrangian", "updater": "multiplicatve"})
    with pytest.raises(UnknownNameError):
        build_updater("nope")
    with pytest.raises(ConfigError, match=r"growing schedule .* cannot be combined"):
        build(
            {
                "name": "augmented_lagrangian",
                "updater": "additive",
                "schedule": {"growth": 2.0},
            }
        )
    with pytest.raises(ConfigError, match="quadratic_penalty has no multipliers"):
        build(
            {
                "name": "quadratic_penalty",
                "updater": {"name": "additive", "measure": "complementarity"},
            }
        )
    with pytest.raises(ConfigError, match="penalty: 'b': the penalty must be > 0"):
        build({"name": "quadratic_penalty", "penalty": {"a": 1.0, "b": -2.0}})


# -- a prescribed path of violations ----------------------------------------------------------
PATH = [  # three dense entries: two inequalities (g) and one equality (h)
    [2.0, -1.0, 1.0],
    [1.5, 0.5, -1.0],
    [1.4, 0.1, 0.2],
    [-0.5, 0.3, 0.3],
    [0.4, 0.05, 0.01],
    [0.5, -0.2, 0.02],
    [0.45, 0.6, 0.02],
]
EQUALITY = np.array([False, False, True])


class _Path(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t = 0
        self.x = torch.nn.Parameter(torch.tensor(PATH[0], dtype=DTYPE))

    def advance(self) -> None:
        self.t += 1
        with torch.no_grad():
            self.x.copy_(torch.tensor(PATH[min(self.t, len(PATH) - 1)], dtype=DTYPE))


def _problem() -> ConstrainedProblem:
    return ConstrainedProblem(
        objective=lambda m, b: m.x.sum() * 0.0,
        constraints=[
            Constraint("ineq", "<=", fn=lambda m, b: m.x[0:2]),
            Constraint("eq", "==", fn=lambda m, b: m.x[2:3]),
        ],
    )


def _run(formulation: dict[str, Any], steps: int) -> tuple[list[Array], list[Array], Solver]:
    model = _Path()
    solver = Solver(
        _problem(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"name": "gda", "lr": 1.0},
        formulation=formulation,
    )
    penalties, multipliers = [], []
    for _ in range(steps):
        solver.step()
        penalties.append(solver.duals.formulation_state["penalty"].numpy().copy())
        multipliers.append(solver.duals.multipliers.dense.numpy().copy())  # type: ignore[union-attr]
        model.advance()
    return penalties, multipliers, solver


def reference(
    name: str, options: dict[str, Any], c0: Array, with_multipliers: bool
) -> tuple[list[Array], list[Array]]:
    """The rule of docs/algorithms.md, 'Penalty updaters', with GDA (lr 1) on the
    augmented Lagrangian's signal c g when ``with_multipliers``."""
    increase = UPDATER_DB[name][1]
    shrink = options.get("shrink", 0.5)
    tol = options.get("tolerance", 0.0)
    every = options.get("every", 1)
    cap = options.get("max_penalty", 1e6)
    restart = options.get("restart", False)
    measure = options.get("measure", "violation")
    c, last, lam = c0.copy(), np.full(3, np.inf), np.zeros(3)
    penalties, multipliers = [], []
    for t, row in enumerate(PATH):
        g = np.array(row)
        due = (t + 1) % every == 0
        if measure == "complementarity":
            v = np.where(EQUALITY, np.abs(g), np.abs(np.maximum(g, -lam / c)))
        else:
            v = np.where(EQUALITY, np.abs(g), np.maximum(g, 0.0))
        new_lam = lam + c * g  # the signal uses the penalties before their update
        new_lam = np.where(EQUALITY, new_lam, np.maximum(new_lam, 0.0))
        if due:
            grow = v > tol
            if shrink > 0:
                grow &= v > shrink * last
            c = np.where(grow, np.maximum(c, np.minimum(increase(c, options), cap)), c)
            if restart:
                c = np.where(~EQUALITY & (g <= 0), c0, c)
            last = v
        if with_multipliers:
            lam = new_lam
        penalties.append(c.copy())
        multipliers.append(lam.copy())
    return penalties, multipliers


VARIANTS: list[dict[str, Any]] = [
    {},
    {"shrink": 0.0, "tolerance": 0.25},
    {"shrink": 0.9, "max_penalty": 20.0, "restart": True},
    {"every": 2, "shrink": 0.8},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(v) or "defaults")
@pytest.mark.parametrize("name", PENALTY_UPDATERS.names())
@pytest.mark.parametrize("formulation", ["quadratic_penalty", "augmented_lagrangian"])
def test_penalties_follow_the_rule_along_a_path(
    name: str, variant: dict[str, Any], formulation: str
) -> None:
    options = {**UPDATER_DB[name][0], **variant}
    c0 = np.array([2.0, 2.0, 5.0])  # per group: ineq 2, eq 5
    spec = {
        "name": formulation,
        "penalty": {"ineq": 2.0, "eq": 5.0},
        "updater": {"name": name, **options},
    }
    penalties, multipliers, _ = _run(spec, len(PATH))
    uses = formulation == "augmented_lagrangian"
    expected_c, expected_lam = reference(name, options, c0, with_multipliers=uses)
    for t in range(len(PATH)):
        np.testing.assert_allclose(penalties[t], expected_c[t], rtol=0, atol=1e-12, err_msg=str(t))
        np.testing.assert_allclose(multipliers[t], expected_lam[t], atol=1e-12, err_msg=str(t))


def test_complementarity_measure_of_birgin_and_martinez() -> None:
    options = {"growth": 10.0, "shrink": 0.5, "measure": "complementarity"}
    updater = {"name": "multiplicative", **options}
    spec = {"name": "augmented_lagrangian", "penalty": 1.0, "updater": updater}
    penalties, multipliers, _ = _run(spec, len(PATH))
    expected_c, expected_lam = reference("multiplicative", options, np.ones(3), True)
    for t in range(len(PATH)):
        np.testing.assert_allclose(penalties[t], expected_c[t], atol=1e-12)
        np.testing.assert_allclose(multipliers[t], expected_lam[t], atol=1e-12)
    # The measure differs from the plain violation on this path (a satisfied constraint
    # with a positive multiplier), so the two rules disagree somewhere.
    plain, _ = reference("multiplicative", {**options, "measure": "violation"}, np.ones(3), True)
    assert any(not np.array_equal(a, b) for a, b in zip(plain, expected_c, strict=True))


def test_primal_loss_uses_each_entrys_penalty() -> None:
    """Augmented Lagrangian with c = (2, 2, 5), lam = 0: loss = sum_i (c_i/2) max(g_i, 0)^2
    + (c_eq/2) h^2 at the first point; quadratic penalty likewise."""
    for name in ("augmented_lagrangian", "quadratic_penalty"):
        model = _Path()
        solver = Solver(
            _problem(),
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            formulation={"name": name, "penalty": {"ineq": 2.0, "eq": 5.0}},
        )
        loss = solver.lagrangian()
        expected = 0.5 * 2.0 * 2.0**2 + 0.5 * 5.0 * 1.0**2
        assert loss.item() == pytest.approx(expected, abs=1e-12)
        solver.dual_step()
        assert solver.history.last.penalty == 5.0  # the largest penalty


def _per_sample_problem() -> ConstrainedProblem:
    def samples(m: Any, b: Any) -> ConstraintValue:
        return ConstraintValue(m.x, indices=b)

    return ConstrainedProblem(
        objective=lambda m, b: m.x.sum() * 0.0,
        constraints=[Constraint("samples", size=5, per_sample=True, fn=samples)],
    )


def test_per_sample_penalties_change_at_the_observed_samples_only() -> None:
    class Point(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=DTYPE))

    model = Point()
    solver = Solver(
        _per_sample_problem(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"name": "gda", "lr": 1.0},
        formulation={
            "name": "augmented_lagrangian",
            "penalty": 1.0,
            "updater": {"name": "additive", "increment": 1.0, "shrink": 0.0},
        },
    )
    solver.step(torch.tensor([0, 3]))
    state = solver.duals.formulation_state
    # Sample 0 violated (1 > 0): 1 + 1; sample 3 satisfied: unchanged; others unobserved.
    assert state["penalty/samples"].tolist() == [2.0, 1.0, 1.0, 1.0, 1.0]
    # The signal used the penalty before the update: lam_0 = max(0, 0 + 1 * 1).
    assert solver.multipliers["samples"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    solver.step(torch.tensor([0, 4]))
    state = solver.duals.formulation_state
    assert state["penalty/samples"].tolist() == [3.0, 1.0, 1.0, 1.0, 1.0]
    assert solver.multipliers["samples"].tolist() == [3.0, 0.0, 0.0, 0.0, 0.0]
    assert state["last_violation/samples"].tolist()[0] == 1.0
    assert np.isinf(state["last_violation/samples"].tolist()[1])


def test_penalty_mapping_must_match_every_group() -> None:
    model = _Path()
    solver = Solver(
        _problem(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        formulation={"name": "quadratic_penalty", "penalty": {"ineq": 1.0}},
    )
    with pytest.raises(
        ConfigError, match="penalty: constraint\\(s\\) \\['eq'\\] are matched by no"
    ):
        solver.step()


def test_diagnostics_of_per_entry_penalties() -> None:
    _, _, solver = _run({"name": "quadratic_penalty", "updater": "multiplicative"}, 3)
    state = solver.duals.formulation_state
    top = max(float(v.max()) for k, v in state.items() if k == "penalty")
    assert solver.history.last.penalty == top
    assert isinstance(solver.duals.diagnostics()["penalty"], Tensor)
