"""The bad-input table, solver side: inputs that once gave silently wrong numbers or a raw
traceback. Two tables:

* ``ERRORS``: each input must fail with a library error whose message names what is wrong,
  what was expected and what was received (same contract as ``tests/test_bad_input.py``);
* ``VALUES``: each input is legitimate but was once computed wrongly without a word; the
  row checks the right value.

``python tests/test_bad_input_solver.py`` prints both tables (the source of the matching
section of ``docs/bad_inputs.md``).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    NonFiniteError,
    ProblemState,
    Regularizer,
    ShapeError,
    Solver,
    Variables,
    constraint,
    controllers,
    make_optimizer,
    prox,
)
from test_bad_input import Row, assert_library_error

DTYPE = torch.float64
NAN = float("nan")


def _model(n: int = 3, value: float = 0.5) -> Variables:
    return Variables(x=torch.full((n,), value, dtype=DTYPE))


def _run(
    objective: Callable[..., Any],
    constraints: list[Constraint] | None = None,
    steps: int = 2,
    regularizers: list[Regularizer] | None = None,
    model: Variables | None = None,
    batch: Any = None,
    **options: Any,
) -> Solver:
    problem = ConstrainedProblem(
        objective=objective, constraints=constraints or [], regularizers=regularizers or []
    )
    model = model or _model()
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1), **options)
    solver.fit(None, steps, batch=batch)
    return solver


def _sq(m: Any, b: Any) -> Tensor:
    return m.x.pow(2).sum()


def _nested(x: Tensor) -> Tensor:
    """``x`` as a nested tensor (a prototype API of torch: its warning is not the test's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.nested.as_nested_tensor([x])


def _later(kind: Callable[[Tensor], Tensor]) -> Callable[[Any, Any], Tensor]:
    """A constraint ``x - 1`` that comes back as ``kind(x - 1)`` from the second step on
    (once the first step has left a gradient)."""

    def fn(m: Any, b: Any) -> Tensor:
        value = m.x - 1.0
        return value if m.x.grad is None else kind(value)

    return fn


def _edited_problem(edit: Callable[[ProblemState], None]) -> ConstrainedProblem:
    """A problem whose evaluation is changed by ``edit`` before the solver reads it."""

    class Edited(ConstrainedProblem):
        def objective(self, model: Any, batch: Any) -> Tensor:
            return model.x.pow(2).sum()

        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            state = super().evaluate(model, batch)
            edit(state)
            return state

    return Edited()


def _metric_problem(metric: Any) -> None:
    def edit(state: ProblemState) -> None:
        state.metrics["accuracy"] = metric

    model = _model()
    Solver(_edited_problem(edit), model, torch.optim.SGD(model.parameters(), lr=0.1)).fit(None, 1)


def _metrics_not_a_mapping(accumulate: bool) -> None:
    def edit(state: ProblemState) -> None:
        state.metrics = None  # type: ignore[assignment]

    model = _model()
    solver = Solver(_edited_problem(edit), model, torch.optim.SGD(model.parameters(), lr=0.1))
    if not accumulate:
        solver.fit(None, 1)
        return
    for k in range(2):
        solver.lagrangian(None, accumulate=k > 0).backward()
    solver.dual_step()


def _late_constraint() -> None:
    calls = {"n": 0}

    class Late(ConstrainedProblem):
        def objective(self, model: Any, batch: Any) -> Tensor:
            return model.x.pow(2).sum()

        def evaluate(self, model: Any, batch: Any) -> Any:
            state = super().evaluate(model, batch)
            calls["n"] += 1
            if calls["n"] > 1:
                state.constraints["budget"] = model.x.sum()
            return state

    model = _model()
    Solver(Late(), model, torch.optim.SGD(model.parameters(), lr=0.1)).fit(None, 3)


def _extragradient_nan_lookahead() -> None:
    calls = {"n": 0}

    def flaky(m: Any, b: Any) -> Tensor:
        calls["n"] += 1
        return m.x.sum() * (NAN if calls["n"] == 2 else 1.0)

    _run(_sq, [Constraint("budget", "<=", rhs=0.1, fn=flaky)], controller="extragradient")


ERRORS: list[Row] = [
    Row(
        "metrics-not-a-mapping",
        "evaluate() returning ProblemState(metrics=None)",
        lambda t: _metrics_not_a_mapping(False),
        ConfigError,
        ("ProblemState.metrics", "mapping", "None"),
    ),
    Row(
        "metrics-not-a-mapping-accumulated",
        "ProblemState(metrics=None) with gradient accumulation",
        lambda t: _metrics_not_a_mapping(True),
        ConfigError,
        ("ProblemState.metrics", "mapping", "None"),
    ),
    Row(
        "complex-objective",
        "a complex objective",
        lambda t: _run(lambda m, b: m.x.sum().to(torch.complex128)),
        ShapeError,
        ("objective", "real floating-point", "complex128"),
    ),
    Row(
        "integer-objective",
        "an integer objective (never trained)",
        lambda t: _run(lambda m, b: m.x.sum().round().long()),
        ShapeError,
        ("objective", "real floating-point", "int64"),
    ),
    Row(
        "objective-becomes-float",
        "an objective that becomes a Python float after the first step",
        lambda t: _run(lambda m, b: 3.0 if m.x.grad is not None else m.x.pow(2).sum()),
        ShapeError,
        ("objective", "scalar tensor", "3.0 (float)"),
    ),
    Row(
        "objective-becomes-integer",
        "an objective that becomes an integer tensor after the first step",
        lambda t: _run(lambda m, b: torch.tensor(3) if m.x.grad is not None else _sq(m, b)),
        ShapeError,
        ("objective", "real floating-point", "int64"),
    ),
    Row(
        "sparse-constraint",
        "a constraint returned as a sparse tensor",
        lambda t: _run(_sq, [Constraint("c", "<=", fn=lambda m, b: (m.x * 1).to_sparse())]),
        ShapeError,
        ("constraint 'c'", "dense (strided) tensor", "sparse_coo", "to_dense()"),
    ),
    Row(
        "nested-constraint",
        "a constraint returned as a nested tensor",
        lambda t: _run(
            _sq,
            [Constraint("c", "<=", size=3, fn=lambda m, b: _nested(m.x))],
        ),
        ShapeError,
        ("constraint 'c'", "dense (strided) tensor", "nested", "torch.cat"),
    ),
    Row(
        "constraint-becomes-sparse",
        "a constraint that becomes a sparse tensor after the first step",
        lambda t: _run(_sq, [Constraint("c", "<=", fn=_later(lambda x: x.to_sparse()))]),
        ShapeError,
        ("constraint 'c'", "dense (strided) tensor", "sparse_coo", "to_dense()"),
    ),
    Row(
        "constraint-becomes-mkldnn",
        "a constraint that becomes an mkldnn tensor after the first step",
        lambda t: _run(_sq, [Constraint("c", "<=", fn=_later(lambda x: x.float().to_mkldnn()))]),
        ShapeError,
        ("constraint 'c'", "dense (strided) tensor", "_mkldnn", "to_dense()"),
    ),
    Row(
        "constraint-becomes-nested",
        "a constraint that becomes a nested tensor after the first step (two groups)",
        lambda t: _run(
            _sq,
            [
                Constraint("c", "<=", size=3, fn=_later(_nested)),
                Constraint("d", "<=", fn=lambda m, b: m.x.sum()),
            ],
        ),
        ShapeError,
        ("constraint 'c'", "dense (strided) tensor", "nested", "torch.cat"),
    ),
    Row(
        "constant-everything",
        "objective and every constraint constant",
        lambda t: _run(
            lambda m, b: torch.tensor(1.0, dtype=DTYPE),
            [Constraint("c", "<=", rhs=1.0, fn=lambda m, b: torch.tensor(0.0, dtype=DTYPE))],
        ),
        ConfigError,
        ("['c']", "carry no gradient", "proxy="),
    ),
    Row(
        "no-grad-objective-rate-without-proxy",
        "objective computed under no_grad with a rate constraint that has no proxy",
        lambda t: _run(
            lambda m, b: torch.no_grad()(lambda: m.x.pow(2).sum())(),
            [Constraint("rate", "<=", rhs=0.5, fn=lambda m, b: (m.x > 0).to(DTYPE).mean())],
        ),
        ConfigError,
        ("['rate']", "count or rate without a proxy", "torch.no_grad()"),
    ),
    Row(
        "detached-proxy",
        "a detached proxy (the primal never sees the constraint)",
        lambda t: _run(
            _sq,
            [
                Constraint(
                    "c",
                    "<=",
                    rhs=0.0,
                    fn=lambda m, b: ConstraintValue(m.x.sum().detach(), m.x.sum().detach()),
                )
            ],
        ),
        ConfigError,
        ("['c']", "carry no gradient", "detached"),
    ),
    Row(
        "integer-proxy",
        "an integer proxy",
        lambda t: _run(
            _sq,
            [Constraint("c", "<=", fn=lambda m, b: ConstraintValue(m.x.sum(), m.x.sum().long()))],
        ),
        ShapeError,
        ("'c'", "proxy must be a real floating-point tensor", "int64"),
    ),
    Row(
        "float-proxy",
        "a proxy given as a Python float",
        lambda t: _run(
            _sq, [Constraint("c", "<=", fn=lambda m, b: ConstraintValue(m.x.sum(), 0.5))]
        ),
        ShapeError,
        ("'c'", "proxy must be a real floating-point tensor", "0.5 (float)"),
    ),
    Row(
        "indices-as-list",
        "per-sample indices given as a Python list",
        lambda t: _run(
            _sq,
            [
                Constraint(
                    "s",
                    "<=",
                    per_sample=True,
                    size=3,
                    fn=lambda m, b: ConstraintValue(m.x, indices=[0, 1, 2]),  # type: ignore[arg-type]
                )
            ],
        ),
        ShapeError,
        ("'s'", "indices must be an integer tensor", "(list)"),
    ),
    Row(
        "value-on-another-device",
        "a constraint value on another device than the model (meta)",
        lambda t: _run(
            _sq, [Constraint("c", "<=", fn=lambda m, b: torch.zeros((), device="meta"))]
        ),
        ShapeError,
        ("'c'", "meta", "model's device"),
    ),
    Row(
        "proxy-on-another-device",
        "a proxy on another device than its value (meta)",
        lambda t: _run(
            _sq,
            [
                Constraint(
                    "c",
                    "<=",
                    fn=lambda m, b: ConstraintValue(m.x.sum(), torch.zeros((), device="meta")),
                )
            ],
        ),
        ShapeError,
        ("'c'", "proxy is on meta", "cpu"),
    ),
    Row(
        "vector-metric",
        "a vector metric",
        lambda t: _metric_problem(torch.ones(3)),
        ShapeError,
        ("'accuracy'", "real scalar", "shape=(3,)"),
    ),
    Row(
        "string-metric",
        "a string metric",
        lambda t: _metric_problem("high"),
        ShapeError,
        ("'accuracy'", "real scalar", "'high' (str)"),
    ),
    Row(
        "prox-returns-scalar",
        "a prox callable that returns a scalar (was broadcast to every weight)",
        lambda t: _run(
            _sq, regularizers=[Regularizer(prox=lambda x, s: x.sum(), strength=0.1, name="flat")]
        ),
        ConfigError,
        ("'flat'", "a tensor of shape ()", "shape (3,)"),
    ),
    Row(
        "prox-wrong-shape",
        "a prox returning the wrong shape",
        lambda t: _run(
            _sq, regularizers=[Regularizer(prox=lambda x, s: x[:2], strength=0.1, name="cut")]
        ),
        ConfigError,
        ("'cut'", "shape (2,)", "shape (3,)"),
    ),
    Row(
        "prox-option-typo",
        "a typo in prox options (found when the solver is built)",
        lambda t: _run(
            _sq,
            steps=0,
            regularizers=[Regularizer(prox="group_l1", strength=0.1, options={"dimm": 0})],
        ),
        ConfigError,
        ("'dimm'", "did you mean 'dim'", "accepts"),
    ),
    Row(
        "constraint-after-step-0",
        "a constraint first returned after step 0 (was ignored)",
        lambda t: _late_constraint(),
        ConfigError,
        ("['budget']", "does not declare", "first step"),
    ),
    Row(
        "name-with-latex",
        "a constraint name with $\\frac$ (figure writing crashed)",
        lambda t: Constraint("$\\frac{a}{b}$", "<=", fn=_sq),
        ValidationError,
        ("constraint name", "letters, digits", "frac"),
    ),
    Row(
        "name-colliding-column",
        "a group named c[0] beside a group c of size 2 (history columns collided)",
        lambda t: Constraint("c[0]", "<=", fn=_sq),
        ValidationError,
        ("constraint name", "letters, digits", "'c[0]'"),
    ),
    Row(
        "name-with-colon",
        "a per-sample group named loss:per (empty CSV cells)",
        lambda t: Constraint("loss:per", "<=", per_sample=True, size=3, fn=_sq),
        ValidationError,
        ("constraint name", "'loss:per'", "loss_per"),
    ),
    Row(
        "nan-lr",
        "a NaN optimizer lr (was accepted, then blamed on the data)",
        lambda t: make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=NAN),
        ConfigError,
        ("optimizer 'sgd'", "finite number", "nan"),
    ),
    Row(
        "inf-lr",
        "an infinite optimizer lr",
        lambda t: make_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], lr=math.inf),
        ConfigError,
        ("optimizer 'adam'", "finite number", "inf"),
    ),
    Row(
        "extragradient-nan-lookahead",
        "a NaN in the extragradient look-ahead (was reported as non-finite multipliers)",
        lambda t: _extragradient_nan_lookahead(),
        NonFiniteError,
        ("constraint 'budget'", "not finite", "step 0"),
    ),
    Row(
        "penalty-zero-augmented",
        "augmented Lagrangian with penalty 0 (constraints were ignored)",
        lambda t: _run(
            lambda m, b: (m.x - 3).pow(2).sum(),
            [Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
            formulation={"name": "augmented_lagrangian", "penalty": 0.0},
        ),
        ConfigError,
        ("penalty:", "must be > 0", "received 0.0"),
    ),
    Row(
        "penalty-zero-quadratic",
        "quadratic penalty with penalty 0 and a growth schedule",
        lambda t: _run(
            lambda m, b: (m.x - 3).pow(2).sum(),
            [Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
            formulation={"name": "quadratic_penalty", "penalty": 0, "schedule": {"growth": 2}},
        ),
        ConfigError,
        ("penalty:", "must be > 0", "received 0"),
    ),
    Row(
        "own-loop-order",
        "dual_step() before lagrangian() in an own training loop",
        lambda t: _run(_sq, steps=0).dual_step(),
        ConfigError,
        ("dual_step()", "before lagrangian()", "lagrangian() -> backward()"),
    ),
]


# -- inputs that were computed wrongly without a word: the right value ---------------------------
def _aliasing() -> None:
    def run(clone: bool) -> tuple[list[float], float]:
        solver = _run(
            lambda m, b: m.x.sum() * 0,
            [Constraint("pin", "==", fn=lambda m, b: m.x.clone() if clone else m.x)],
            steps=3,
            model=_model(1, 1.0),
            controller={"name": "optimistic", "lr": 0.1},
        )
        return solver.history.violation()[:, 0].tolist(), solver.multipliers["pin"].item()

    assert run(clone=False) == run(clone=True)


def _stale_rhs() -> None:
    class Budget(ConstrainedProblem):
        budget: float = 1.0

        def objective(self, model: Any, batch: Any) -> Tensor:
            return (model.x - 2).pow(2).sum()

        @constraint("<=", rhs="budget")
        def total(self, model: Any, batch: Any) -> Tensor:
            return model.x.sum()

    problem, model = Budget(), _model(2, 0.0)
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.05),
        controller={"name": "nupi", "lr": 0.5, "kp": 1.0},
    )  # fmt: skip
    solver.fit(None, 1500)
    problem.budget = 0.5
    solver.fit(None, 1500)
    assert float(model.x.detach().sum()) == pytest.approx(0.5, abs=1e-3)


def _extragradient_per_sample() -> None:
    """min 0 s.t. x = 0 (bilinear game), per-sample: x reaches 0 as the dense form does."""

    def final(per_sample: bool) -> float:
        if per_sample:
            c = Constraint(
                "pin", "==", per_sample=True, size=1,
                fn=lambda m, b: ConstraintValue(m.x, indices=torch.tensor([0])),
            )  # fmt: skip
        else:
            c = Constraint("pin", "==", fn=lambda m, b: m.x)
        solver = _run(
            lambda m, b: m.x.sum() * 0, [c], steps=2000, model=_model(1, 1.0),
            controller={"name": "extragradient", "lr": 0.1},
        )  # fmt: skip
        return abs(float(solver.model.x.detach()[0]))

    assert final(per_sample=False) < 1e-3 and final(per_sample=True) < 1e-3


def _skip_not_feasible() -> None:
    solver = _run(
        _sq,
        [Constraint("c", "<=", fn=lambda m, b: m.x.sum() * NAN)],
        steps=2,
        on_nonfinite="skip",
    )
    assert all(r.skipped and math.isnan(r.max_violation) for r in solver.history)


def _primal_dual_skip_recorded() -> None:
    calls = {"n": 0}

    def flaky(m: Any, b: Any) -> Tensor:
        calls["n"] += 1
        return m.x.sum() * (NAN if calls["n"] == 2 else 1.0)  # the re-evaluation of step 0

    solver = _run(
        _sq,
        [Constraint("c", "<=", fn=flaky)],
        steps=1,
        on_nonfinite="skip",
        order="primal_dual",
    )
    assert solver.history[0].skipped


def _unobserved() -> None:
    """An unobserved entry keeps its multiplier (the parity helper's absent group)."""
    observed = torch.tensor([True, False])
    solver = _run(
        _sq,
        [
            Constraint(
                "gap", "<=", rhs=0.1,
                fn=lambda m, b: ConstraintValue(
                    torch.stack([m.x[0], torch.tensor(NAN, dtype=DTYPE)]), observed=observed
                ),
            )
        ],
        steps=3,
        controller={"name": "nupi", "lr": 0.5, "kp": 1.0},
    )  # fmt: skip
    lam = solver.multipliers["gap"]
    assert lam[0] > 0 and lam[1] == 0
    assert all(r.max_violation == pytest.approx(r.violation[0]) for r in solver.history)


def _duplicates() -> None:
    def multipliers(indices: list[int]) -> Tensor:
        c = Constraint(
            "s", "<=", per_sample=True, size=3,
            fn=lambda m, b: ConstraintValue(m.x[b], indices=b),
        )  # fmt: skip
        return _run(_sq, [c], steps=1, batch=torch.tensor(indices)).multipliers["s"]

    torch.testing.assert_close(multipliers([0, 2, 2]), multipliers([0, 2]), rtol=0, atol=0)


def _huge_strength() -> None:
    out = prox.weight_sharing(torch.tensor([3.0, 1.0, -2.0], dtype=DTYPE), 1e17)
    torch.testing.assert_close(out, torch.full((3,), 2 / 3, dtype=DTYPE))


def _plugin_name() -> None:
    from constrain.controllers import CONTROLLERS

    class Mine(controllers.GDA):
        pass

    CONTROLLERS.add("mine-gda", Mine)
    try:
        assert controllers.build("mine-gda").name == "mine-gda"
        assert controllers.GDA.name == "gda"
    finally:
        CONTROLLERS._items.pop("mine-gda")


@dataclass(frozen=True)
class Value:
    """One input that was computed wrongly without a word, and the check of its value."""

    id: str
    what: str
    right: str
    check: Callable[[], None]


VALUES: list[Value] = [
    Value(
        "aliasing",
        "a constraint returning the parameter itself, optimistic controller",
        "the signal is a copy: the same multipliers and violations as with .clone()",
        _aliasing,
    ),
    Value(
        "stale-rhs",
        "rhs='budget', then problem.budget changed between fits",
        "the new right-hand side is read at the next step: sum(x) -> 0.5",
        _stale_rhs,
    ),
    Value(
        "extragradient-per-sample",
        "extragradient with a per-sample equality x = 0",
        "the look-ahead covers per-sample multipliers: |x| < 1e-3 as in the dense form",
        _extragradient_per_sample,
    ),
    Value(
        "skip-not-feasible",
        "on_nonfinite='skip' with a NaN constraint",
        "the step is recorded skipped with max_violation NaN (was 0.0: feasible)",
        _skip_not_feasible,
    ),
    Value(
        "primal-dual-skip",
        "primal_dual order, skip, NaN at the re-evaluation",
        "the skipped multiplier update is recorded skipped=True",
        _primal_dual_skip_recorded,
    ),
    Value(
        "unobserved-entry",
        "a dense entry not measured in this batch (observed=False, value NaN)",
        "no multiplier update, no violation, no NaN error",
        _unobserved,
    ),
    Value(
        "duplicate-indices",
        "a per-sample index drawn twice in one batch",
        "counted once with the mean of its values (one rule, one process or several)",
        _duplicates,
    ),
    Value(
        "weight-sharing-huge-strength",
        "weight_sharing([3, 1, -2], 1e17)",
        "the mean 0.6667 (was [0, 0, 0])",
        _huge_strength,
    ),
    Value(
        "plugin-name",
        "a controller registered under a new name (entry point or subclass)",
        "reports its registered name (was '' or its parent's name)",
        _plugin_name,
    ),
]


@pytest.mark.parametrize("row", ERRORS, ids=lambda r: r.id)
def test_bad_input_fails_with_a_clear_message(row: Row) -> None:
    with pytest.raises(row.error) as info:
        row.trigger(None)  # type: ignore[arg-type]
    assert_library_error(row, info.value)


@pytest.mark.parametrize("row", VALUES, ids=lambda r: r.id)
def test_once_silent_inputs_give_the_right_value(row: Value) -> None:
    row.check()


def test_ids_are_unique() -> None:
    ids = [r.id for r in ERRORS] + [r.id for r in VALUES]
    assert len(ids) == len(set(ids))


if __name__ == "__main__":  # print the tables for docs/bad_inputs.md
    for row in ERRORS:
        try:
            row.trigger(None)  # type: ignore[arg-type]
        except Exception as exc:
            first = str(exc).splitlines()[-1 if "validation error" in str(exc) else 0]
            sys.stdout.write(f"| {row.what} | `{type(exc).__name__}`: {first} |\n")
    for value in VALUES:
        sys.stdout.write(f"| {value.what} | {value.right} |\n")
