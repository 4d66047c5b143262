"""Multiplier safeguards: an upper bound per group and dual restarts, against hand
computations (docs/algorithms.md, 'Multiplier bounds and restarts')."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    Solver,
    Variables,
    constraint,
)

DTYPE = torch.float64


def _solver(
    constraints: list[Constraint], x: list[float], controller: Any = None, **options: Any
) -> Solver:
    """Primal point frozen (SGD with lr 0), so the violations are constants."""
    model = Variables(x=torch.tensor(x, dtype=DTYPE))
    problem = ConstrainedProblem(objective=lambda m, b: m.x.sum(), constraints=constraints)
    return Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller=controller or {"name": "gda", "lr": 1.0},
        **options,
    )


def _groups() -> list[Constraint]:
    return [
        Constraint("ineq", "<=", rhs=0.0, fn=lambda m, b: m.x[0:2]),
        Constraint("eq", "==", rhs=0.0, fn=lambda m, b: m.x[2:3]),
    ]


# -- bounds ----------------------------------------------------------------------------------
def test_bound_keeps_inequalities_in_0_m_and_equalities_in_minus_m_m() -> None:
    """GDA with lr 1 from zero: lam = t * g before the bound; ineq g = (3, -1), eq h = -7."""
    solver = _solver(_groups(), [3.0, -1.0, -7.0], max_multiplier=5.0)
    solver.fit(None, 1)
    assert solver.multipliers["ineq"].tolist() == [3.0, 0.0]
    assert solver.multipliers["eq"].tolist() == [-5.0]
    solver.fit(None, 1)
    assert solver.multipliers["ineq"].tolist() == [5.0, 0.0]  # 6 clamped to 5
    assert solver.multipliers["eq"].tolist() == [-5.0]  # -12 clamped


def test_bound_per_group_and_declared_on_the_constraint() -> None:
    declared = [
        Constraint("ineq", "<=", fn=lambda m, b: m.x[0:2], max_multiplier=2.0),
        Constraint("eq", "==", fn=lambda m, b: m.x[2:3]),
    ]
    solver = _solver(declared, [3.0, 1.0, -7.0])
    solver.fit(None, 1)
    assert solver.multipliers["ineq"].tolist() == [2.0, 1.0]
    assert solver.multipliers["eq"].tolist() == [-7.0]  # unbounded
    # A solver-level mapping overrides the declaration of the groups it matches.
    solver = _solver(declared, [3.0, 1.0, -7.0], max_multiplier={"ineq": 0.5, "e*": 4.0})
    solver.fit(None, 1)
    assert solver.multipliers["ineq"].tolist() == [0.5, 0.5]
    assert solver.multipliers["eq"].tolist() == [-4.0]


def test_bound_leaves_the_controller_state_alone() -> None:
    """nuPI state (the EMA xi) is never clipped by the bound (like the projection)."""
    nupi = {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 2.0, "nu": 0.5}
    solver = _solver(_groups(), [3.0, 1.0, 2.0], controller=nupi, max_multiplier=1.0)
    solver.fit(None, 2)
    # xi after two steps of a constant signal e: 0.75 e.
    xi = solver.duals.controller_state["xi"]  # type: ignore[index]
    np.testing.assert_allclose(xi.numpy(), 0.75 * np.array([3.0, 1.0, 2.0]))
    assert solver.multipliers["ineq"].tolist() == [1.0, 1.0]


def test_bound_on_per_sample_groups_and_the_lookahead() -> None:
    def per_sample(m: Any, b: Any) -> ConstraintValue:
        return ConstraintValue(m.x * 10.0, indices=torch.tensor([0, 2, 3]))

    groups = [Constraint("samples", size=4, per_sample=True, fn=per_sample)]
    solver = _solver(groups, [1.0, -2.0, 0.3], max_multiplier={"samples": 4.0})
    solver.fit(None, 1)
    assert solver.multipliers["samples"].tolist() == [4.0, 0.0, 0.0, 3.0]
    eg = _solver(
        groups, [1.0, -2.0, 0.3], controller={"name": "extragradient", "lr": 1.0}, max_multiplier=4
    )
    eg.fit(None, 1)
    assert eg.multipliers["samples"].tolist() == [4.0, 0.0, 0.0, 3.0]


def test_bound_from_the_decorator() -> None:
    class Bounded(ConstrainedProblem):
        def objective(self, model: Any, batch: Any) -> torch.Tensor:
            return model.x.sum()

        @constraint("<=", rhs=0.0, max_multiplier=0.25)
        def g(self, model: Any, batch: Any) -> torch.Tensor:
            return model.x

    model = Variables(x=torch.tensor([1.0, 2.0], dtype=DTYPE))
    solver = Solver(Bounded(), model, torch.optim.SGD(model.parameters(), lr=0.0))
    solver.fit(None, 100)
    assert solver.multipliers["g"].tolist() == [0.25, 0.25]


# -- restarts --------------------------------------------------------------------------------
class _Switch(torch.nn.Module):
    """x follows a prescribed path: the constraint x <= 0 is violated, then satisfied."""

    def __init__(self, path: list[list[float]]) -> None:
        super().__init__()
        self.path = path
        self.t = 0
        self.x = torch.nn.Parameter(torch.tensor(path[0], dtype=DTYPE))

    def advance(self) -> None:
        self.t += 1
        with torch.no_grad():
            self.x.copy_(torch.tensor(self.path[min(self.t, len(self.path) - 1)], dtype=DTYPE))


def _path_solver(path: list[list[float]], controller: Any, **options: Any) -> Solver:
    model = _Switch(path)
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum() * 0.0,
        constraints=[
            Constraint("ineq", "<=", fn=lambda m, b: m.x[0:2]),
            Constraint("eq", "==", fn=lambda m, b: m.x[2:3]),
        ],
    )
    return Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller=controller,
        **options,
    )


def _fit_path(solver: Solver, steps: int) -> list[dict[str, list[float]]]:
    out = []
    for _ in range(steps):
        solver.step()
        out.append({k: v.tolist() for k, v in solver.multipliers.items()})
        solver.model.advance()  # type: ignore[operator]
    return out


NUPI = {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.5}


def _nupi_steps(signals: list[float], restart: bool) -> list[float]:
    """Hand computation of nuPI (lr 1, ki 1, kp 1, nu 0.5) on one inequality."""
    lam, xi, out = 0.0, 0.0, []
    for e in signals:
        new_xi = 0.5 * xi + 0.5 * e
        lam = max(lam + e + (new_xi - xi), 0.0)
        xi = new_xi
        if restart and e < 0:
            lam, xi = 0.0, 0.0
        out.append(lam)
    return out


def test_restart_resets_the_multiplier_and_the_controller_state() -> None:
    """ineq[0]: violated by 2 for two steps, then satisfied (-0.5), then violated by 1.
    With restarts the multiplier is 0 at the satisfied step and the next step starts from
    a fresh nuPI state; without, it decays at nuPI's pace. The equality entry is never
    reset (its signal is negative at the same step)."""
    path = [[2.0, -1.0, 1.0], [2.0, -1.0, 1.0], [-0.5, -1.0, -1.0], [1.0, -1.0, 1.0]]
    signals = [p[0] for p in path]
    with_restart = _fit_path(_path_solver(path, NUPI, restart=True), 4)
    without = _fit_path(_path_solver(path, NUPI), 4)
    np.testing.assert_allclose(
        [m["ineq"][0] for m in with_restart], _nupi_steps(signals, True), atol=1e-15
    )
    np.testing.assert_allclose(
        [m["ineq"][0] for m in without], _nupi_steps(signals, False), atol=1e-15
    )
    assert with_restart[2]["ineq"][0] == 0.0 and without[2]["ineq"][0] > 0.0
    assert with_restart[3]["ineq"][0] == pytest.approx(1.5)  # a fresh nuPI: e + kp (e/2)
    # Equality multipliers: identical with and without restarts.
    assert [m["eq"] for m in with_restart] == [m["eq"] for m in without]
    # ineq[1] (always satisfied) stays at zero either way.
    assert all(m["ineq"][1] == 0.0 for m in with_restart)


def test_restart_state_is_the_fresh_state_of_each_rule() -> None:
    """PID (positional: the multiplier is its output) restarts consistently: after the
    reset the next output equals a fresh PID's first output."""
    pid = {"name": "pid", "kp": 0.5, "ki": 1.0, "kd": 0.0, "ema_p": 0.0}
    path = [[3.0, 1.0], [3.0, 1.0], [-1.0, 1.0], [2.0, 1.0]]
    model = _Switch(path)
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum() * 0.0,
        constraints=[Constraint("g", "<=", fn=lambda m, b: m.x)],
    )
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.0), controller=pid, restart=True
    )
    history = _fit_path(solver, 4)
    assert history[2]["g"] == [0.0, pytest.approx(3.0 * 1.0 + 0.5 * 1.0)]
    # A fresh PID fed e = 2: I = 2, P = (1 - ema_p) e = 2 (ema_p = 0) -> 2 + 0.5 * 2.
    assert history[3]["g"][0] == pytest.approx(3.0)
    state = solver.duals.controller_state
    assert state["integral"][0].item() == pytest.approx(2.0)  # type: ignore[index]


def test_restart_multiplicative_weights_goes_back_to_the_initial_value() -> None:
    mw = {"name": "multiplicative", "lr": 0.5, "initial_value": 2.0}
    path = [[1.0, 1.0], [-1.0, 1.0]]
    model = _Switch(path)
    problem = ConstrainedProblem(
        objective=lambda m, b: m.x.sum() * 0.0,
        constraints=[Constraint("g", "<=", fn=lambda m, b: m.x)],
    )
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.0), controller=mw, restart=True
    )
    history = _fit_path(solver, 2)
    assert history[0]["g"] == pytest.approx([2.0 * np.exp(0.5)] * 2)
    assert history[1]["g"] == pytest.approx([2.0, 2.0 * np.exp(1.0)])


def test_restart_per_pattern_and_per_sample_groups() -> None:
    """Per-sample restarts act on the observed entries with g < 0 only; a pattern selects
    the groups that restart."""

    def per_sample(m: Any, b: Any) -> ConstraintValue:
        return ConstraintValue(m.x[0:2], indices=torch.tensor([1, 3]))

    groups = [
        Constraint("samples", size=4, per_sample=True, fn=per_sample),
        Constraint("other", "<=", fn=lambda m, b: m.x[0:1]),
    ]
    path = [[1.0, 1.0], [1.0, 1.0], [-1.0, 2.0]]
    model = _Switch(path)
    problem = ConstrainedProblem(objective=lambda m, b: m.x.sum() * 0.0, constraints=groups)
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller={"name": "gda", "lr": 1.0},
        restart={"samples": True},
    )
    history = _fit_path(solver, 3)
    assert history[1]["samples"] == [0.0, 2.0, 0.0, 2.0]
    assert history[2]["samples"] == [0.0, 0.0, 0.0, 4.0]  # sample 1 restarted
    assert history[2]["other"] == [1.0]  # 2 - 1: no restart for 'other'


def test_restart_is_refused_for_patterns_of_equalities_only() -> None:
    solver = _solver(_groups(), [1.0, 1.0, 1.0], restart={"eq": True})
    with pytest.raises(ConfigError, match="restart: pattern 'eq' selects only equality"):
        solver.step()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_multiplier": -1.0}, "max_multiplier must be a number >= 0"),
        ({"max_multiplier": {"ineq": float("nan")}}, "max_multiplier['ineq'] must be"),
        ({"restart": "yes"}, "restart must be True or False"),
        ({"dual_every": 0}, "dual_every must be a positive integer"),
        ({"dual_every": {"eq": 2.5}}, "dual_every['eq'] must be a positive integer"),
    ],
)
def test_bad_safeguard_values_fail_when_the_solver_is_built(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _solver(_groups(), [1.0, 1.0, 1.0], **options)
    assert message in str(info.value)


def test_safeguards_need_multipliers() -> None:
    solver = _solver(
        _groups(), [1.0, 1.0, 1.0], formulation="quadratic_penalty", max_multiplier=1.0
    )
    with pytest.raises(ConfigError, match="'quadratic_penalty' has no multipliers"):
        solver.step()


def test_unknown_pattern_is_refused() -> None:
    solver = _solver(_groups(), [1.0, 1.0, 1.0], max_multiplier={"ineqq": 1.0})
    with pytest.raises(ConfigError, match="max_multiplier: pattern\\(s\\) \\['ineqq'\\]"):
        solver.step()
