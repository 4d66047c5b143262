"""The bad-input table: every row is a bad input to the public API, a configuration, a
checkpoint or the command line. Each must fail with a library error (never a bare error
from deep inside torch, never silently) whose message names what is wrong, what was
expected and what was received.

``python tests/test_bad_input.py`` prints the table with the actual messages (the source of
``docs/bad_inputs.md``).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from constrain import (
    CheckpointError,
    ConfigError,
    ConstrainedProblem,
    ConstrainError,
    Constraint,
    ConstraintValue,
    NonFiniteError,
    Regularizer,
    RunConfig,
    ShapeError,
    Solver,
    UnknownNameError,
    Variables,
    controllers,
    formulations,
    load_config,
    make_optimizer,
)
from constrain.checkpoint import load_checkpoint, run_with_checkpoints

DTYPE = torch.float64


@dataclass(frozen=True)
class Row:
    """One bad input.

    Attributes:
        id: Short name.
        what: The bad input in words (for the docs).
        trigger: ``trigger(tmp)`` performs the bad call; for CLI rows it returns the argv.
        error: Expected exception type (CLI rows: the error the message comes from).
        contains: Substrings the message must contain: the offending name, the expected
            and the received value (case-sensitive); a compiled pattern checks the shape of
            a part whose content changes as components are registered (lists of names).
        cli: True if ``trigger`` returns command-line arguments for ``constrain.cli.main``.
    """

    id: str
    what: str
    trigger: Callable[[Path], Any]
    error: type[BaseException]
    contains: tuple[str | re.Pattern[str], ...]
    cli: bool = False


# -- helpers -------------------------------------------------------------------------------------
def _objective(model: Any, batch: Any) -> torch.Tensor:
    return model.x.pow(2).sum()


def _problem(*constraints: Constraint, objective: Any = _objective) -> ConstrainedProblem:
    return ConstrainedProblem(objective=objective, constraints=list(constraints))


def _solver(problem: ConstrainedProblem, **options: Any) -> Solver:
    model = Variables(x=torch.full((3,), 0.5, dtype=DTYPE))
    return Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1), **options)


def _step(problem: ConstrainedProblem, steps: int = 1, **options: Any) -> None:
    _solver(problem, **options).fit(None, steps)


def _iris_run(tmp: Path) -> Path:
    """A finished 10-step iris-svm run with checkpoints at 5 and 10 (built once per tmp)."""
    pytest.importorskip("sklearn")
    folder = tmp / "iris-run"
    if not (folder / "checkpoints").is_dir():
        from constrain.runner import get_problem

        data = get_problem("iris-svm").default_config("nupi").model_dump()
        data["steps"] = 10
        run_with_checkpoints(RunConfig.parse(data), out=folder, every=5, figures=False)
    return folder


def _newest(tmp: Path) -> Path:
    return _iris_run(tmp) / "checkpoints" / "step-000000010.pt"


def _damaged(tmp: Path, how: str) -> Path:
    data = bytearray(_newest(tmp).read_bytes())
    target = tmp / f"{how}.pt"
    if how == "truncated":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    return target


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("echo this must never run",))


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _saved(tmp: Path, name: str, payload: Any) -> Path:
    path = tmp / name
    torch.save(payload, path)
    return path


def _float32_resume(tmp: Path) -> None:
    from constrain.runner import build_solver, get_problem

    payload = load_checkpoint(_newest(tmp))
    data = get_problem("iris-svm").default_config("nupi").model_dump()
    data["dtype"] = "float32"
    _, solver = build_solver(get_problem("iris-svm"), RunConfig.parse(data))
    solver.load_state_dict(payload["solver"])


NAN = float("nan")
# The list of known names, checked by its shape: registering a controller must not break it.
KNOWN_CONTROLLERS = re.compile(r"Known controllers: ([a-z0-9_-]+, )*[a-z0-9_-]+\.")
SIZE3 = Constraint("budget", "<=", size=3, fn=lambda m, b: m.x.sum().reshape(1))
GROWING = Constraint(
    "grows", "<=", fn=lambda m, b: m.x[: 2 + int(b or 0)]
)  # the batch decides the size


def _resize(tmp: Path) -> None:
    solver = _solver(_problem(GROWING))
    solver.step(0)
    solver.step(1)


ROWS: list[Row] = [
    # -- controllers, formulations, optimizers ------------------------------------------------
    Row(
        "unknown-controller",
        "controller name with a typo",
        lambda t: controllers.build("nupy"),
        UnknownNameError,
        ("'nupy'", "Did you mean 'nupi'", KNOWN_CONTROLLERS),
    ),
    Row(
        "nu-outside-interval",
        "nuPI EMA coefficient nu = 1.5 (must lie in (-1, 1))",
        lambda t: controllers.build("nupi", nu=1.5),
        ConfigError,
        ("controller 'nupi'", "nu:", "less than 1", "received 1.5"),
    ),
    Row(
        "nu-minus-one",
        "nu = -1 (open interval)",
        lambda t: controllers.build("nupi", nu=-1.0),
        ConfigError,
        ("nu:", "greater than -1", "received -1.0"),
    ),
    Row(
        "negative-lr",
        "negative controller step size",
        lambda t: controllers.build("gda", lr=-0.1),
        ConfigError,
        ("controller 'gda'", "lr:", "greater than 0", "received -0.1"),
    ),
    Row(
        "negative-ki",
        "negative integral gain",
        lambda t: controllers.build("nupi", ki=-1.0),
        ConfigError,
        ("ki:", ">= 0", "received -1.0"),
    ),
    Row(
        "nan-kp",
        "non-finite proportional gain",
        lambda t: controllers.build("nupi", kp=NAN),
        ConfigError,
        ("kp:", "must be finite", "received nan"),
    ),
    Row(
        "unknown-controller-field",
        "misspelled controller hyperparameter",
        lambda t: controllers.build("nupi", kii=1.0),
        ConfigError,
        ("kii:", "unknown field", "received 1.0"),
    ),
    Row(
        "per-constraint-gain-length",
        "per-constraint ki with 2 values for 3 multipliers",
        lambda t: controllers.build("nupi", ki=(1.0, 2.0)).update(
            torch.zeros(3), torch.zeros(3), {"xi": torch.zeros(3)}
        ),
        ShapeError,
        ("'ki'", "2 per-constraint values", "3 multipliers"),
    ),
    Row(
        "signal-shape",
        "error signal with the wrong shape",
        lambda t: controllers.build("gda").update(torch.zeros(3), torch.zeros(4), {}),
        ShapeError,
        ("controller 'gda'", "shape (4,)", "shape (3,)"),
    ),
    Row(
        "device-mix",
        "error signal on another device than the multipliers",
        lambda t: controllers.build("gda").update(
            torch.zeros(3), torch.zeros(3, device="meta"), {}
        ),
        ShapeError,
        ("controller 'gda'", "on meta", "on cpu"),
    ),
    Row(
        "equality-with-pid",
        "PID (non-negative multipliers only) on an equality constraint",
        lambda t: _step(
            _problem(Constraint("total", "==", fn=lambda m, b: m.x.sum())), controller="pid"
        ),
        ConfigError,
        ("controller 'pid'", "inequality", "equality constraints"),
    ),
    Row(
        "unknown-formulation",
        "formulation name with a typo",
        lambda t: formulations.build("lagrangean"),
        UnknownNameError,
        ("'lagrangean'", "Did you mean 'lagrangian'", "Known formulations"),
    ),
    Row(
        "negative-penalty",
        "negative augmented-Lagrangian penalty",
        lambda t: formulations.build("augmented_lagrangian", penalty=-1.0),
        ConfigError,
        ("penalty:", "must be > 0", "received -1.0"),
    ),
    Row(
        "negative-primal-lr",
        "negative primal learning rate",
        lambda t: make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=-1.0),
        ConfigError,
        ("optimizer 'sgd'", "'lr': -1.0", "Invalid learning rate"),
    ),
    Row(
        "unknown-optimizer",
        "primal optimizer name with a typo",
        lambda t: make_optimizer("sgdd", []),
        UnknownNameError,
        ("'sgdd'", "Did you mean 'sgd'", "Known optimizers"),
    ),
    Row(
        "optimizer-without-params",
        "optimizer that owns none of the model's parameters",
        lambda t: Solver(
            _problem(),
            Variables(x=torch.zeros(3)),
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
        ),
        ConfigError,
        ("optimizer does not own", "model.parameters()"),
    ),
    Row(
        "bad-order",
        "unknown update order",
        lambda t: _solver(_problem(), order="random"),
        ConfigError,
        ("order must be one of", "'dual_primal'", "got 'random'"),
    ),
    # -- declarations -------------------------------------------------------------------------
    Row(
        "wrong-sense",
        "strict inequality '<' as a constraint sense",
        lambda t: Constraint("c", "<"),
        ValidationError,
        ("sense", "one of '<=', '>=', '=='", "got '<'"),
    ),
    Row(
        "duplicate-names",
        "two constraints with the same name",
        lambda t: _problem(Constraint("a", fn=_objective), Constraint("a", fn=_objective)),
        ValidationError,
        ("duplicate constraint name 'a'", "unique name"),
    ),
    Row(
        "infinite-rhs",
        "infinite right-hand side",
        lambda t: Constraint("c", "<=", rhs=math.inf),
        ValidationError,
        ("rhs", "must be finite", "got inf"),
    ),
    Row(
        "per-sample-without-size",
        "per-sample constraint without size=",
        lambda t: Constraint("c", "<=", per_sample=True),
        ValidationError,
        ("per-sample constraint 'c'", "needs size="),
    ),
    Row(
        "negative-strength",
        "regularizer with negative strength",
        lambda t: Regularizer(prox="l1", strength=-1.0),
        ValidationError,
        ("strength", "greater than or equal to 0", "input_value=-1.0"),
    ),
    Row(
        "non-numeric-variable",
        "a string as the initial value of a variable",
        lambda t: Variables(x="abc"),
        ConfigError,
        ("variable 'x'", "expected a tensor, array or number", "'abc' (str)"),
    ),
    Row(
        "nan-variable",
        "NaN initial value of a variable",
        lambda t: Variables(x=NAN),
        ConfigError,
        ("variable 'x'", "not finite"),
    ),
    # -- what evaluate() returns ----------------------------------------------------------------
    Row(
        "size-mismatch",
        "constraint declared with size 3 returning 1 entry (3 multipliers)",
        lambda t: _step(_problem(SIZE3)),
        ShapeError,
        ("constraint 'budget'", "declared with size 3", "has 1 entries"),
    ),
    Row(
        "size-changes",
        "constraint group that changes size between steps",
        _resize,
        ShapeError,
        ("constraint 'grows'", "returned 3 entries", "has 2 multipliers"),
    ),
    Row(
        "non-scalar-objective",
        "objective returning a vector",
        lambda t: _step(_problem(objective=lambda m, b: m.x.pow(2))),
        ShapeError,
        ("objective must be a scalar", "shape (3,)", ".mean() or .sum()"),
    ),
    Row(
        "integer-constraint",
        "constraint returning an integer count (wrong dtype)",
        lambda t: _step(_problem(Constraint("count", fn=lambda m, b: (m.x > 0).sum()))),
        ShapeError,
        ("constraint 'count'", "floating-point tensor", "dtype=torch.int64"),
    ),
    Row(
        "float-indices",
        "per-sample indices given as floats (wrong dtype)",
        lambda t: _step(
            _problem(
                Constraint(
                    "ps",
                    size=5,
                    per_sample=True,
                    fn=lambda m, b: ConstraintValue(m.x, indices=torch.tensor([0.0, 1.0, 2.0])),
                )
            )
        ),
        ShapeError,
        ("constraint 'ps'", "integer tensor", "dtype=torch.float32"),
    ),
    Row(
        "indices-out-of-range",
        "per-sample index 7 for 5 samples",
        lambda t: _step(
            _problem(
                Constraint(
                    "ps",
                    size=5,
                    per_sample=True,
                    fn=lambda m, b: ConstraintValue(m.x, indices=torch.tensor([0, 1, 7])),
                )
            )
        ),
        ShapeError,
        ("per-sample constraint 'ps'", "[0, 5)", "[0, 7]"),
    ),
    Row(
        "missing-indices",
        "per-sample constraint returned without indices",
        lambda t: _step(_problem(Constraint("ps", size=5, per_sample=True, fn=lambda m, b: m.x))),
        ShapeError,
        ("per-sample constraint 'ps'", "needs sample indices", "indices="),
    ),
    Row(
        "empty-data",
        "an empty data iterable",
        lambda t: _solver(_problem()).fit([], 3),
        ConfigError,
        ("data iterable", "yielded no batch", "empty"),
    ),
    Row(
        "empty-batch",
        "a batch with zero rows for a group with one entry per row",
        lambda t: _step(
            _problem(
                Constraint("rows", size=4, fn=lambda m, b: m.x.sum() * torch.ones(0, dtype=DTYPE))
            )
        ),
        ShapeError,
        ("constraint 'rows'", "size 4", "0 entries"),
    ),
    Row(
        "negative-steps",
        "negative number of steps",
        lambda t: _solver(_problem()).fit(None, -1),
        ConfigError,
        ("steps", "non-negative integer", "got -1"),
    ),
    # -- NaN / Inf during training ------------------------------------------------------------
    Row(
        "nan-constraint",
        "NaN in a constraint value",
        lambda t: _step(_problem(Constraint("c", fn=lambda m, b: m.x.sum() * NAN))),
        NonFiniteError,
        ("constraint 'c'", "at step 0", "values [nan]", "expected finite"),
    ),
    Row(
        "inf-objective",
        "Inf in the objective",
        lambda t: _step(_problem(objective=lambda m, b: m.x.sum() * math.inf)),
        NonFiniteError,
        ("objective is inf", "at step 0", "expected finite"),
    ),
    Row(
        "nan-gradient",
        "finite objective with a NaN gradient (sqrt at 0)",
        lambda t: _solver(_problem(objective=lambda m, b: (m.x - 0.5).abs().sqrt().sum())).fit(
            None, 1
        ),
        NonFiniteError,
        ("gradient of parameter(s) ['x']", "at step 0"),
    ),
    Row(
        "multiplier-overflow",
        "multiplicative weights overflowing to inf",
        lambda t: _step(
            _problem(Constraint("c", ">=", rhs=100.0, fn=lambda m, b: m.x.sum())),
            steps=3,
            controller={"name": "multiplicative", "lr": 1000.0},
        ),
        NonFiniteError,
        ("multipliers of constraint 'c'", "non-finite", "'multiplicative'"),
    ),
    # -- configuration ------------------------------------------------------------------------
    Row(
        "config-negative-steps",
        "steps: -5 in a run configuration",
        lambda t: RunConfig.parse({"problem": "iris-svm", "steps": -5}),
        ConfigError,
        ("steps:", "greater than or equal to 0", "received -5"),
    ),
    Row(
        "config-typo",
        "misspelled configuration key",
        lambda t: RunConfig.parse({"problem": "iris-svm", "stpes": 5}),
        ConfigError,
        ("stpes:", "unknown field", "received 5"),
    ),
    Row(
        "config-dtype",
        "unsupported dtype",
        lambda t: RunConfig.parse({"problem": "iris-svm", "dtype": "float16"}),
        ConfigError,
        ("dtype:", "'float32' or 'float64'", "received 'float16'"),
    ),
    Row(
        "config-unsafe-yaml",
        "YAML with a python object tag (must not be executed)",
        lambda t: load_config(
            _write(t, "evil.yaml", "problem: !!python/object/apply:os.system ['echo x']\n")
        ),
        ConfigError,
        ("evil.yaml", "not valid", "python/object/apply"),
    ),
    Row(
        "config-not-mapping",
        "a YAML list instead of a mapping",
        lambda t: load_config(_write(t, "list.yaml", "- a\n- b\n")),
        ConfigError,
        ("list.yaml", "must hold a mapping", "got list"),
    ),
    Row(
        "config-missing-file",
        "a configuration file that does not exist",
        lambda t: load_config(t / "nope.yaml"),
        ConfigError,
        ("nope.yaml", "cannot read"),
    ),
    # -- checkpoints ----------------------------------------------------------------------------
    Row(
        "truncated-checkpoint",
        "checkpoint cut in half",
        lambda t: load_checkpoint(_damaged(t, "truncated")),
        CheckpointError,
        ("truncated.pt", "corrupt or truncated", "expected a complete torch.save archive"),
    ),
    Row(
        "corrupt-checkpoint",
        "checkpoint with one flipped byte",
        lambda t: load_checkpoint(_damaged(t, "flipped")),
        CheckpointError,
        ("flipped.pt", "CRC-32", "expected intact data"),
    ),
    Row(
        "not-a-checkpoint",
        "a torch file that is not a constrain checkpoint",
        lambda t: load_checkpoint(_saved(t, "plain.pt", {"weights": torch.zeros(2)})),
        CheckpointError,
        ("plain.pt", "expected format 'constrain-checkpoint'", "got None"),
    ),
    Row(
        "pickled-code",
        "checkpoint holding a pickled callable (weights_only refuses it)",
        lambda t: load_checkpoint(_saved(t, "evil.pt", {"format": "x", "obj": _Evil()})),
        CheckpointError,
        ("evil.pt", "cannot be loaded safely", "weights_only=True"),
    ),
    Row(
        "checkpoint-dtype",
        "float64 checkpoint loaded into a float32 run",
        _float32_resume,
        CheckpointError,
        ("model entry 'w'", "dtype torch.float32", "torch.float64"),
    ),
    # -- command line (exit status 2, message on stderr) ---------------------------------------
    Row(
        "cli-unknown-problem",
        "constrain run with an unknown problem",
        lambda t: ["run", "iris-svn", "--steps", "1"],
        UnknownNameError,
        ("'iris-svn'", "Did you mean 'iris-svm'", "Known problems"),
        cli=True,
    ),
    Row(
        "cli-unknown-controller",
        "--controller with a typo",
        lambda t: ["run", "iris-svm", "--controller", "nupy", "--steps", "1"],
        UnknownNameError,
        ("'nupy'", "Did you mean 'nupi'", "Known controllers"),
        cli=True,
    ),
    Row(
        "cli-bad-nu",
        "--set controller.nu=1.5",
        lambda t: ["run", "iris-svm", "--set", "controller.nu=1.5", "--steps", "1"],
        ConfigError,
        ("nu:", "less than 1", "received 1.5"),
        cli=True,
    ),
    Row(
        "cli-negative-lr",
        "--set optimizer.lr=-1",
        lambda t: ["run", "iris-svm", "--set", "optimizer.lr=-1", "--steps", "1"],
        ConfigError,
        ("optimizer 'sgd'", "'lr': -1", "Invalid learning rate"),
        cli=True,
    ),
    Row(
        "cli-unknown-key",
        "--set with an unknown key",
        lambda t: ["run", "iris-svm", "--set", "stpes=3"],
        ConfigError,
        ("'stpes'", "not a config section", "valid keys"),
        cli=True,
    ),
    Row(
        "cli-no-equals",
        "--set without '='",
        lambda t: ["run", "iris-svm", "--set", "steps"],
        ConfigError,
        ("--set expects KEY=VALUE", "got 'steps'"),
        cli=True,
    ),
    Row(
        "cli-negative-steps",
        "--steps -5",
        lambda t: ["run", "iris-svm", "--steps", "-5"],
        ConfigError,
        ("steps:", "greater than or equal to 0", "received -5"),
        cli=True,
    ),
    Row(
        "cli-checkpoint-every-zero",
        "--checkpoint-every 0",
        lambda t: [
            "run",
            "iris-svm",
            "--steps",
            "2",
            "--checkpoint-every",
            "0",
            "--out",
            str(t / "z"),
        ],
        ConfigError,
        ("--checkpoint-every", "positive integer", "got 0"),
        cli=True,
    ),
    Row(
        "cli-checkpoint-without-out",
        "--checkpoint-every without --out",
        lambda t: ["run", "iris-svm", "--steps", "2", "--checkpoint-every", "1"],
        ConfigError,
        ("--checkpoint-every needs --out DIR",),
        cli=True,
    ),
    Row(
        "cli-resume-empty",
        "--resume from a folder without checkpoints",
        lambda t: ["run", "iris-svm", "--resume", str(t)],
        CheckpointError,
        ("no checkpoint in", "expected files checkpoints/step-*.pt"),
        cli=True,
    ),
    Row(
        "cli-resume-other-problem",
        "--resume an iris-svm checkpoint as simplex",
        lambda t: ["run", "simplex", "--resume", str(_iris_run(t))],
        CheckpointError,
        ("belongs to problem 'iris-svm'", "this run is 'simplex'"),
        cli=True,
    ),
    Row(
        "cli-resume-other-settings",
        "--resume with another optimizer lr",
        lambda t: ["run", "iris-svm", "--resume", str(_iris_run(t)), "--set", "optimizer.lr=0.5"],
        CheckpointError,
        ("other settings", "optimizer: checkpoint", "'lr': 0.001", "'lr': 0.5"),
        cli=True,
    ),
    Row(
        "cli-resume-fewer-steps",
        "--resume asking for fewer total steps than saved",
        lambda t: ["run", "iris-svm", "--resume", str(_iris_run(t)), "--steps", "3"],
        ConfigError,
        ("steps=3", "already at step 10", "at least 10"),
        cli=True,
    ),
    Row(
        "cli-unsafe-config",
        "--config with a python object tag",
        lambda t: [
            "run",
            "iris-svm",
            "--config",
            str(_write(t, "evil.yaml", "steps: !!python/object/apply:os.system ['x']\n")),
        ],
        ConfigError,
        ("evil.yaml", "not valid", "python/object/apply"),
        cli=True,
    ),
    Row(
        "rate-unknown-name",
        "rate constraint on a misspelled rate",
        lambda t: _rate_constraint("fpt", "<=", 0.1),
        ConfigError,
        ("unknown rate 'fpt'", "false_positive_rate"),
    ),
    Row(
        "rate-binary-labels",
        "binary rate with labels other than 0 and 1",
        lambda t: _rate("tpr", torch.zeros(3), torch.tensor([0.0, 2.0, 1.0])),
        ConfigError,
        ("true_positive_rate", "binary labels must be 0 or 1", "[2.0]"),
    ),
    Row(
        "shrinking-infeasible",
        "randomized solution asked to be feasible when no distribution is",
        lambda t: _shrinking([0.0, 1.0], [[1.0], [2.0]], on_infeasible="raise"),
        ConfigError,
        ("no distribution over the 2 candidates", "is 1 > tolerance 0.0"),
    ),
    # -- per-group dual settings ---------------------------------------------------------------
    Row(
        "controller-pattern-twice",
        "per-group controllers whose patterns both match one constraint",
        lambda t: _step(
            _problem(Constraint("gap_a", fn=lambda m, b: m.x[0:1])),
            controller={"gap*": "gda", "*_a": "nupi"},
        ),
        ConfigError,
        ("'gap_a' is matched by several patterns ['gap*', '*_a']", "disjoint"),
    ),
    Row(
        "controller-pattern-none",
        "per-group controllers that leave a constraint without a controller",
        lambda t: _step(
            _problem(
                Constraint("gap", fn=lambda m, b: m.x[0:1]),
                Constraint("budget", fn=lambda m, b: m.x.sum()),
            ),
            controller={"gap": "gda"},
        ),
        ConfigError,
        ("['budget'] are matched by no pattern", "patterns: ['gap']"),
    ),
    Row(
        "max-multiplier-negative",
        "max_multiplier=-1",
        lambda t: _solver(_problem(Constraint("g", fn=lambda m, b: m.x)), max_multiplier=-1.0),
        ConfigError,
        ("max_multiplier must be a number >= 0", "got -1.0"),
    ),
    Row(
        "restart-equalities",
        "restarts asked for equality constraints only",
        lambda t: _step(_problem(Constraint("h", "==", fn=lambda m, b: m.x)), restart={"h": True}),
        ConfigError,
        ("restart: pattern 'h' selects only equality constraints ['h']", "never reset"),
    ),
    Row(
        "dual-every-zero",
        "dual_every=0",
        lambda t: _solver(_problem(Constraint("g", fn=lambda m, b: m.x)), dual_every=0),
        ConfigError,
        ("dual_every must be a positive integer", "got 0"),
    ),
    Row(
        "rhs-schedule-incomplete",
        "a linear rhs schedule without end and steps",
        lambda t: Constraint("g", rhs={"name": "linear", "start": 0.1}),
        ValidationError,
        ("invalid rhs schedule 'linear'", "end: Field required", "steps: Field required"),
    ),
    Row(
        "intermittent-without-size",
        "an intermittent constraint missing at the first step, without size",
        lambda t: _step(_problem(Constraint("late", fn=lambda m, b: None, intermittent=True))),
        ShapeError,
        ("intermittent constraint 'late'", "declare it with size=N"),
    ),
    Row(
        "penalty-updater-and-schedule",
        "a per-entry penalty updater with a growing shared schedule",
        lambda t: formulations.build(
            {"name": "augmented_lagrangian", "updater": "additive", "schedule": {"growth": 2}}
        ),
        ConfigError,
        ("growing schedule", "cannot be combined with per-constraint penalties"),
    ),
    Row(
        "cli-controller-mixed-with-patterns",
        "--set a pattern key under a single controller",
        lambda t: ["run", "random-qp", "--set", "controller.inequalities.kp=5"],
        ConfigError,
        ("mixes one controller", "patterns ['inequalities']"),
        cli=True,
    ),
    Row(
        "penalty-schedule-and-updater",
        "a solver penalty_schedule with a per-entry penalty updater",
        lambda t: _solver(
            _problem(Constraint("g", fn=lambda m, b: m.x)),
            formulation={"name": "augmented_lagrangian", "updater": "multiplicative"},
            penalty_schedule=lambda step: 1.0 + step,
        ),
        ConfigError,
        ("penalty_schedule sets one penalty for every constraint", "'multiplicative'"),
    ),
    Row(
        "dual-lr-schedule-per-group",
        "a dual_lr_schedule with per-group controllers",
        lambda t: _solver(
            _problem(Constraint("g", fn=lambda m, b: m.x)),
            controller={"g": "gda"},
            dual_lr_schedule=lambda step: 0.1,
        ),
        ConfigError,
        ("dual_lr_schedule sets the step size of one controller", "per-group"),
    ),
]


def _rate_constraint(*args: Any, **kwargs: Any) -> Any:
    from constrain.studies import rate_constraint

    return rate_constraint(*args, **kwargs)


def _rate(*args: Any, **kwargs: Any) -> Any:
    from constrain.studies import rate

    return rate(*args, **kwargs)


def _shrinking(*args: Any, **kwargs: Any) -> Any:
    from constrain import shrinking_distribution

    return shrinking_distribution(*args, **kwargs)


def test_the_table_has_at_least_30_rows() -> None:
    assert len(ROWS) >= 30
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", [r for r in ROWS if not r.cli], ids=lambda r: r.id)
def test_bad_input_fails_with_a_clear_message(row: Row, tmp_path_factory: Any) -> None:
    tmp = _shared_tmp(tmp_path_factory)
    with pytest.raises(row.error) as info:
        row.trigger(tmp)
    assert_library_error(row, info.value)


def assert_library_error(row: Row, error: BaseException) -> None:
    """``error`` is a library error (constrain's, or pydantic's for declarations) whose
    message holds every part of ``row.contains``."""
    assert type(error).__module__.startswith(("constrain", "pydantic")), (
        f"{row.id}: {type(error).__module__}.{type(error).__name__} is not a library error"
    )
    if not isinstance(error, ValidationError):
        assert isinstance(error, ConstrainError)
    message = str(error)
    for part in row.contains:
        assert _found(part, message), f"{row.id}: {part!r} not in {message!r}"


@pytest.mark.parametrize("row", [r for r in ROWS if r.cli], ids=lambda r: r.id)
def test_bad_command_line_exits_2_with_a_message(
    row: Row, tmp_path_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from constrain.cli import main

    tmp = _shared_tmp(tmp_path_factory)
    argv = row.trigger(tmp)
    capsys.readouterr()
    status = main([*argv, "--no-progress"])
    captured = capsys.readouterr()
    assert status == 2, f"{row.id}: exit status {status}; stderr {captured.err!r}"
    assert captured.err.startswith("constrain: error: "), captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    for part in row.contains:
        assert _found(part, captured.err), f"{row.id}: {part!r} not in {captured.err!r}"


def _found(part: str | re.Pattern[str], message: str) -> bool:
    return part in message if isinstance(part, str) else part.search(message) is not None


def test_nonfinite_skip_records_and_continues() -> None:
    """With on_nonfinite='skip' a NaN step is recorded as skipped (with a warning) and the
    run goes on; the parameters did not move on that step."""
    calls = {"n": 0}

    def flaky(model: Any, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        value = model.x.sum()
        return value * NAN if calls["n"] == 2 else value

    solver = _solver(_problem(Constraint("c", "<=", rhs=0.0, fn=flaky)), on_nonfinite="skip")
    solver.fit(None, 4)
    assert [r.skipped for r in solver.history] == [False, True, False, False]
    assert math.isnan(solver.history[1].violation[0])


def _shared_tmp(factory: Any) -> Path:
    path: Path = factory.getbasetemp() / "bad-inputs"
    path.mkdir(exist_ok=True)
    return path


def _markdown() -> str:  # pragma: no cover - documentation helper
    """The table with the actual messages (run this file with python)."""
    import tempfile

    from constrain.cli import main

    lines = ["| # | bad input | error | message (abridged) |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for k, row in enumerate(ROWS, 1):
            if row.cli:
                import contextlib
                import io

                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    main([*row.trigger(tmp), "--no-progress"])
                message = err.getvalue().strip()
                kind = f"exit 2 ({row.error.__name__})"
                what = f"CLI: {row.what}"
            else:
                try:
                    row.trigger(tmp)
                    message = "NO ERROR"
                except BaseException as exc:
                    message = str(exc)
                kind = row.error.__name__
                what = row.what
            message = " ".join(message.replace(str(tmp), "DIR").split())
            if len(message) > 230:
                message = message[:227] + "..."
            message = message.replace("|", "\\|")
            lines.append(f"| {k} | {what} | `{kind}` | {message} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(_markdown() + "\n")
