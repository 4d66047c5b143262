"""Per-group controllers: a mapping from constraint-name patterns to controllers.

Checked against hand computations of each rule on its own groups, against the single
controller (two blocks of the same rule equal one block, bit for bit), from Python, run
configurations and ``--set``, and for the errors that name patterns and groups.
"""

from __future__ import annotations

import json
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
    RunConfig,
    Solver,
    UnknownNameError,
    Variables,
    controllers,
    solve,
)
from constrain.cli import main
from constrain.config import apply_overrides
from constrain.controllers import ControllerMap, build_controllers

DTYPE = torch.float64
X0 = [1.5, -0.4, 0.9, 0.2]
SAMPLES = 6


def _problem() -> ConstrainedProblem:
    """Groups: budget (<=, 1 entry), parity_a (>=, 2 entries), parity_b (==, 1 entry) and
    a per-sample group whose values are the samples' indices times x[3]."""

    def samples(m: Any, b: Any) -> ConstraintValue:
        idx = torch.tensor([1, 4, 5])
        return ConstraintValue(m.x[3] * idx.to(DTYPE) - 0.5, indices=idx)

    return ConstrainedProblem(
        objective=lambda m, b: m.x.pow(2).sum(),
        constraints=[
            Constraint("budget", "<=", rhs=1.0, fn=lambda m, b: m.x[0:1]),
            Constraint("parity_a", ">=", rhs=0.1, fn=lambda m, b: m.x[1:3]),
            Constraint("parity_b", "==", rhs=0.5, fn=lambda m, b: m.x[2:3]),
            Constraint("samples", size=SAMPLES, per_sample=True, fn=samples),
        ],
    )


def _frozen(controller: Any, **options: Any) -> Solver:
    """A solver whose primal point never moves (SGD with lr 0): constant violations."""
    model = Variables(x=torch.tensor(X0, dtype=DTYPE))
    return Solver(
        _problem(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        controller=controller,
        **options,
    )


def _violations() -> dict[str, np.ndarray]:
    x = np.array(X0)
    return {
        "budget": np.array([x[0] - 1.0]),
        "parity_a": 0.1 - x[1:3],
        "parity_b": np.array([x[2] - 0.5]),
        "samples": x[3] * np.array([1.0, 4.0, 5.0]) - 0.5,
    }


def _gda(g: np.ndarray, steps: int, lr: float, equality: bool = False) -> np.ndarray:
    lam = np.zeros_like(g)
    for _ in range(steps):
        lam = lam + lr * g
        if not equality:
            lam = np.maximum(lam, 0.0)
    return lam


def _nupi(
    g: np.ndarray, steps: int, lr: float, ki: float, kp: float, nu: float, equality: bool
) -> tuple[np.ndarray, np.ndarray]:
    lam, xi = np.zeros_like(g), np.zeros_like(g)
    for _ in range(steps):
        new_xi = nu * xi + (1 - nu) * g
        lam = lam + lr * (ki * g + kp * (new_xi - xi))
        xi = new_xi
        if not equality:
            lam = np.maximum(lam, 0.0)
    return lam, xi


def test_each_group_follows_its_own_rule() -> None:
    """budget: GDA; parity_*: nuPI; samples: momentum; against hand computations after
    5 steps (the per-sample group at its observed entries only)."""
    nupi = {"name": "nupi", "lr": 1.0, "ki": 0.5, "kp": 2.0, "nu": 0.3}
    solver = _frozen({"budget": {"name": "gda", "lr": 0.5}, "parity*": nupi, "samples": "momentum"})
    solver.fit(None, 5)
    g = _violations()
    lam = solver.multipliers
    np.testing.assert_allclose(lam["budget"].numpy(), _gda(g["budget"], 5, 0.5), atol=1e-15)
    expected_a, xi_a = _nupi(g["parity_a"], 5, 1.0, 0.5, 2.0, 0.3, equality=False)
    expected_b, xi_b = _nupi(g["parity_b"], 5, 1.0, 0.5, 2.0, 0.3, equality=True)
    np.testing.assert_allclose(lam["parity_a"].numpy(), expected_a, atol=1e-14)
    np.testing.assert_allclose(lam["parity_b"].numpy(), expected_b, atol=1e-14)
    # The parity block's state holds its entries in group order: parity_a then parity_b.
    state = solver.duals.controller_state
    assert isinstance(state, dict) and set(state) == {"budget", "parity*"}
    np.testing.assert_allclose(state["parity*"]["xi"].numpy(), np.r_[xi_a, xi_b], atol=1e-15)
    assert state["budget"] == {}
    # Momentum (lr 0.01, beta 0.9) on the observed samples; the others stay at zero.
    buf, observed = np.zeros(3), np.zeros(3)
    for _ in range(5):
        buf = 0.9 * buf + g["samples"]
        observed = np.maximum(observed + 0.01 * buf, 0.0)
    expected = np.zeros(SAMPLES)
    expected[[1, 4, 5]] = observed
    np.testing.assert_allclose(lam["samples"].numpy(), expected, atol=1e-15)
    assert set(solver.indexed_state["samples"]) == {"buffer"}


@pytest.mark.parametrize(
    "name", ["gda", "nupi", "adam", "momentum", "optimistic", "pid", "nesterov"]
)
def test_two_blocks_of_one_rule_equal_one_controller_bit_for_bit(name: str) -> None:
    """Splitting the groups into blocks (gather, update, scatter) changes no bit: the same
    rule for every pattern gives the run of the single controller (primal point moving)."""
    spec: dict[str, Any] = {"name": name, "lr": 0.05}
    if name == "nupi":
        spec.update(kp=1.0, nu=0.2)
    problem = _problem()
    inequality_only = name == "pid"
    if inequality_only:  # PID only handles inequality constraints
        problem = ConstrainedProblem(
            objective=problem.objective_fn,
            constraints=[c for c in problem.all_constraints if not c.is_equality],
        )

    def run(controller: Any) -> tuple[dict[str, Tensor], Tensor]:
        model = Variables(x=torch.tensor(X0, dtype=DTYPE))
        solver = Solver(
            problem, model, torch.optim.SGD(model.parameters(), lr=0.1), controller=controller
        )
        solver.fit(None, 12)
        return solver.multipliers, model.x.detach().clone()

    single = run(spec)
    patterns = {"budget": spec, "parity*": spec, "samples": spec}
    if inequality_only:
        patterns = {"budget": spec, "parity_a": spec, "samples": spec}
    split = run(patterns)
    for key in single[0]:
        assert torch.equal(single[0][key], split[0][key]), key
    assert torch.equal(single[1], split[1])


def test_per_multiplier_coefficients_follow_the_block_order() -> None:
    """A ``ki`` sequence of a block has one value per entry, in the order of its groups."""
    ki = (1.0, 2.0, 3.0)  # parity_a[0], parity_a[1], parity_b
    solver = _frozen(
        {"budget": "gda", "parity*": {"name": "nupi", "lr": 1.0, "ki": ki}, "samples": "gda"}
    )
    solver.fit(None, 1)
    g = _violations()
    np.testing.assert_allclose(
        solver.multipliers["parity_a"].numpy(), np.maximum(np.array(ki[:2]) * g["parity_a"], 0)
    )
    np.testing.assert_allclose(solver.multipliers["parity_b"].numpy(), ki[2] * g["parity_b"])


def test_a_plain_name_or_instance_still_means_every_group() -> None:
    a, b = _frozen("nupi"), _frozen(controllers.NuPI())
    c = _frozen({"name": "nupi"})
    for solver in (a, b, c):
        solver.fit(None, 3)
        assert not isinstance(solver.controller, ControllerMap)
        assert set(solver.duals.controller_state) == {"xi"}
    for key in a.multipliers:
        assert torch.equal(a.multipliers[key], b.multipliers[key])
        assert torch.equal(a.multipliers[key], c.multipliers[key])


def test_solve_accepts_per_group_controllers() -> None:
    model = Variables(x=torch.tensor(X0, dtype=DTYPE))
    result = solve(
        _problem(),
        model,
        steps=3,
        lr=0.0,
        controller={"b*": {"name": "gda", "lr": 0.5}, "p*": "gda", "samples": "gda"},
    )
    g = _violations()
    np.testing.assert_allclose(result.multipliers["budget"].numpy(), _gda(g["budget"], 3, 0.5))
    assert result.solver.controller.name == "{b*: gda, p*: gda, samples: gda}"


@pytest.mark.parametrize(
    ("mapping", "parts"),
    [
        (
            {"budget": "gda", "parity*": "nupi"},
            ["matched by no pattern", "'samples'", "patterns: ['budget', 'parity*']"],
        ),
        (
            {"*": "gda", "parity*": "nupi"},
            ["'parity_a' is matched by several patterns ['*', 'parity*']", "disjoint"],
        ),
        (
            {"budget": "gda", "parity*": "nupi", "samples": "gda", "typo*": "gda"},
            ["['typo*'] match no constraint", "'budget', 'parity_a', 'parity_b', 'samples'"],
        ),
        (
            {"budget": "gda", "parity*": "multiplicative", "samples": "gda"},
            ["'multiplicative' (pattern 'parity*')", "equality constraint(s) ['parity_b']"],
        ),
    ],
)
def test_mappings_that_do_not_match_the_groups_one_to_one_are_refused(
    mapping: dict[str, Any], parts: list[str]
) -> None:
    solver = _frozen(mapping)
    with pytest.raises(ConfigError) as info:
        solver.step()
    for part in parts:
        assert part in str(info.value)


def test_bad_mappings_fail_when_the_solver_is_built() -> None:
    with pytest.raises(ConfigError, match=r"'lr' maps to 0\.1"):
        build_controllers({"lr": 0.1})
    with pytest.raises(ConfigError, match="controller for 'parity\\*': invalid controller"):
        build_controllers({"parity*": {"name": "nupi", "kq": 1.0}})
    with pytest.raises(UnknownNameError, match="unknown controller 'nupy'"):
        build_controllers({"parity*": "nupy"})
    with pytest.raises(ConfigError, match="extrapolate"):
        build_controllers({"budget": "extragradient", "parity*": "gda"})
    with pytest.raises(ConfigError, match="at least one pattern"):
        ControllerMap({})


def test_extrapolating_controllers_per_group() -> None:
    """Extragradient for every group through a mapping equals the single controller."""
    spec = {"name": "extragradient", "lr": 0.2}

    def run(controller: Any) -> dict[str, Tensor]:
        model = Variables(x=torch.tensor(X0, dtype=DTYPE))
        solver = Solver(
            _problem(), model, torch.optim.SGD(model.parameters(), lr=0.1), controller=controller
        )
        solver.fit(None, 6)
        return solver.multipliers

    single, split = run(spec), run({"b*": spec, "p*": spec, "s*": spec})
    for key in single:
        assert torch.equal(single[key], split[key]), key


def test_spec_round_trips_through_the_builder() -> None:
    built = build_controllers({"budget": "gda", "parity*": {"name": "nupi", "kp": 5, "ki": 0.5}})
    assert isinstance(built, ControllerMap)
    assert build_controllers(built.spec()) == built
    assert build_controllers(built.model_dump(mode="json")) == built
    assert built.model_dump(mode="json")["parity*"] == {
        "name": "nupi",
        "lr": 0.01,
        "ki": 0.5,
        "kp": 5.0,
        "nu": 0.0,
    }


# -- configuration files and the command line ----------------------------------------------
def test_run_config_accepts_pattern_mappings_and_set_overrides() -> None:
    data = {
        "problem": "random-qp",
        "controller": {"equalities": "gda", "inequalities": {"name": "nupi", "kp": 5}},
    }
    config = RunConfig.parse(data)
    assert config.controller == {
        "equalities": {"name": "gda"},
        "inequalities": {"name": "nupi", "kp": 5},
    }
    assert config.controller_label == "{equalities: gda, inequalities: nupi}"
    changed = RunConfig.parse(
        apply_overrides(
            config.model_dump(),
            ["controller.inequalities.kp=2", "controller.equalities.name=momentum"],
        )
    )
    assert changed.controller == {
        "equalities": {"name": "momentum"},
        "inequalities": {"name": "nupi", "kp": 2},
    }
    # YAML round trip.
    assert RunConfig.parse(__import__("yaml").safe_load(changed.to_yaml())) == changed


def test_run_config_refuses_a_single_controller_mixed_with_patterns() -> None:
    data = apply_overrides(
        {"problem": {"name": "random-qp"}, "controller": {"name": "gda"}},
        ["controller.inequalities.kp=5"],
    )
    with pytest.raises(ConfigError, match=r"mixes one controller .* patterns \['inequalities'\]"):
        RunConfig.parse(data)
    with pytest.raises(ConfigError, match="'budget' maps to 3"):
        RunConfig.parse({"problem": "p", "controller": {"budget": 3}})


def test_command_line_runs_per_group_controllers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "run",
        "random-qp",
        "--steps",
        "40",
        "--json",
        "--no-progress",
        "--set",
        "controller={equalities: gda, inequalities: {name: nupi, lr: 1.0, kp: 1.0}}",
        "--set",
        "controller.equalities.lr=1.0",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["controller"] == "{equalities: gda, inequalities: nupi}"
    assert summary["controller_config"]["inequalities"]["kp"] == 1.0
    assert summary["controller_config"]["equalities"] == {"name": "gda", "lr": 1.0}


def test_command_line_names_a_group_matched_by_no_pattern(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["run", "random-qp", "--steps", "2", "--no-progress"]
    argv += ["--set", "controller={equalities: gda}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "['inequalities'] are matched by no pattern" in err
