"""The stacked constraint layout: standard form, bookkeeping, indexed groups, sign domains."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintLayout,
    ConstraintValue,
    Multipliers,
    NonFiniteError,
    ProblemState,
    ShapeError,
    Solver,
    Variables,
    controllers,
)

DTYPE = torch.float64


def _state(objective: float = 0.0, **constraints: Tensor | ConstraintValue) -> ProblemState:
    return ProblemState(torch.tensor(objective, dtype=DTYPE), dict(constraints))


def _problem(*constraints: Constraint) -> ConstrainedProblem:
    return ConstrainedProblem(objective=lambda m, b: m.x.sum(), constraints=list(constraints))


MIXED = _problem(
    Constraint("le", "<=", rhs=1.0),
    Constraint("ge", ">=", rhs=(2.0, -1.0)),
    Constraint("eq", "==", rhs=0.5),
    Constraint("samples", ">=", rhs=1.0, per_sample=True, size=5),
)
VALUES = {
    "le": torch.tensor([0.25, 3.0], dtype=DTYPE),
    "ge": torch.tensor([1.0, 4.0], dtype=DTYPE),
    "eq": torch.tensor(2.0, dtype=DTYPE),
    "samples": ConstraintValue(torch.tensor([0.0, 2.0], dtype=DTYPE), indices=torch.tensor([4, 1])),
}


def test_layout_bookkeeping() -> None:
    layout = ConstraintLayout(MIXED, _state(**VALUES))
    assert layout.names == ["le", "ge", "eq"]
    assert layout.sizes == [2, 2, 1]
    assert layout.offsets == [0, 2, 4, 5]
    assert layout.num_dense == 5
    assert [c.name for c in layout.per_sample] == ["samples"]
    assert layout.labels() == ["le[0]", "le[1]", "ge[0]", "ge[1]", "eq"]
    assert layout.slice_of("ge") == slice(2, 4)
    assert layout.equality.tolist() == [False, False, False, False, True]
    assert layout.has_equality
    assert layout.dtype == DTYPE
    parts = layout.split(torch.arange(5.0))
    assert {k: v.tolist() for k, v in parts.items()} == {"le": [0, 1], "ge": [2, 3], "eq": [4]}
    assert layout.signature() == {
        "dense": [["le", "<=", 2], ["ge", ">=", 2], ["eq", "==", 1]],
        "per_sample": [["samples", ">=", 5]],
    }
    with pytest.raises(ConfigError, match=r"no dense constraint named 'samples'; known: \['le'"):
        layout.slice_of("samples")


def test_standard_form_conventions() -> None:
    """``<=``: g - rhs; ``>=``: rhs - g; ``==``: g - rhs (feasible means <= 0 / == 0)."""
    layout = ConstraintLayout(MIXED, _state(**VALUES))
    stacked = layout.stack(_state(**VALUES))
    expected = [0.25 - 1.0, 3.0 - 1.0, 2.0 - 1.0, -1.0 - 4.0, 2.0 - 0.5]
    assert stacked.violation.tolist() == expected
    assert torch.equal(stacked.primal, stacked.violation)
    samples = stacked.per_sample["samples"]
    assert samples.violation.tolist() == [1.0 - 0.0, 1.0 - 2.0]
    assert samples.indices.tolist() == [4, 1]
    assert samples.equality is False


@settings(max_examples=50, deadline=None)
@given(
    g=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
    rhs=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
)
def test_standard_form_property(g: list[float], rhs: list[float]) -> None:
    problem = _problem(
        Constraint("a", "<=", rhs=rhs[0]),
        Constraint("b", ">=", rhs=rhs[1]),
        Constraint("c", "==", rhs=rhs[2]),
    )
    state = _state(**{k: torch.tensor(v, dtype=DTYPE) for k, v in zip("abc", g, strict=True)})
    stacked = ConstraintLayout(problem, state).stack(state)
    expected = torch.tensor([g[0] - rhs[0], rhs[1] - g[1], g[2] - rhs[2]], dtype=DTYPE)
    torch.testing.assert_close(stacked.violation, expected, rtol=0, atol=0)


def test_identity_form_shortcut_keeps_values() -> None:
    problem = _problem(Constraint("a"), Constraint("b"))
    state = _state(a=torch.tensor([1.0, -2.0], dtype=DTYPE), b=torch.tensor([3.0], dtype=DTYPE))
    stacked = ConstraintLayout(problem, state).stack(state)
    assert stacked.violation.tolist() == [1.0, -2.0, 3.0]


def test_proxy_enters_only_the_primal_vector() -> None:
    problem = _problem(Constraint("a", ">=", rhs=1.0), Constraint("b", "<=", rhs=0.5))
    x = torch.tensor([0.0, 3.0], dtype=DTYPE, requires_grad=True)
    state = _state(
        a=ConstraintValue(x.detach().round(), proxy=2 * x),
        b=x[:1],
    )
    stacked = ConstraintLayout(problem, state).stack(state)
    assert stacked.violation.tolist() == [1.0, -2.0, -0.5]
    assert stacked.primal.tolist() == [1.0, -5.0, -0.5]
    assert not stacked.violation.requires_grad and stacked.primal.requires_grad


def test_stack_reports_a_missing_constraint() -> None:
    layout = ConstraintLayout(MIXED, _state(**VALUES))
    values = dict(VALUES)
    del values["ge"]
    with pytest.raises(ConfigError, match="evaluate\\(\\) did not return constraint 'ge'"):
        layout.stack(_state(**values))
    values = dict(VALUES)
    del values["samples"]
    with pytest.raises(ConfigError, match="per-sample constraint 'samples'"):
        layout.stack(_state(**values))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (ConstraintValue(torch.zeros(2, dtype=DTYPE)), "needs sample indices"),
        (
            ConstraintValue(torch.zeros(2, dtype=DTYPE), indices=torch.tensor([0, 5])),
            r"indices must lie in \[0, 5\); got \[0, 5\]",
        ),
        (
            ConstraintValue(torch.zeros(2, dtype=DTYPE), indices=torch.tensor([-1, 2])),
            r"indices must lie in \[0, 5\); got \[-1, 2\]",
        ),
    ],
    ids=["no-indices", "too-large", "negative"],
)
def test_bad_sample_indices(value: ConstraintValue, message: str) -> None:
    """Missing indices fail at once; out-of-range ones are clamped on the device (no
    synchronisation) and reported by check_indices (the solver reads the same facts from
    the step's record when it flushes)."""
    layout = ConstraintLayout(MIXED, _state(**VALUES))
    with pytest.raises(ShapeError, match=message) as info:
        stacked = layout.stack(_state(**{**VALUES, "samples": value}))
        assert bool((stacked.per_sample["samples"].indices < 5).all())
        layout.check_indices(stacked)
    assert "'samples'" in str(info.value)


def test_empty_sample_batch_is_allowed() -> None:
    layout = ConstraintLayout(MIXED, _state(**VALUES))
    empty = ConstraintValue(torch.zeros(0, dtype=DTYPE), indices=torch.zeros(0, dtype=torch.int64))
    stacked = layout.stack(_state(**{**VALUES, "samples": empty}))
    assert stacked.per_sample["samples"].indices.numel() == 0


def test_init_multipliers() -> None:
    layout = ConstraintLayout(MIXED, _state(**VALUES))
    lam = layout.init_multipliers()
    assert lam.dense.tolist() == [0.0] * 5 and lam.dense.dtype == DTYPE
    assert lam.per_sample["samples"].tolist() == [0.0] * 5
    lam = layout.init_multipliers(torch.tensor(0.5, dtype=DTYPE))
    assert lam.dense.tolist() == [0.5] * 5 and lam.per_sample["samples"].tolist() == [0.5] * 5


def test_multipliers_clone_and_tensors() -> None:
    lam = Multipliers(torch.zeros(2), {"s": torch.ones(3)})
    copy = lam.clone()
    copy.dense += 1
    copy.per_sample["s"] += 1
    assert lam.dense.tolist() == [0.0, 0.0] and lam.per_sample["s"].tolist() == [1.0] * 3
    assert [name for name, _ in lam.tensors()] == ["dense", "s"]


def test_check_finite_names_the_constraint_and_step() -> None:
    layout = ConstraintLayout(MIXED, _state(**VALUES))
    stacked = layout.stack(
        _state(**{**VALUES, "ge": torch.tensor([1.0, float("nan")], dtype=DTYPE)})
    )
    with pytest.raises(
        NonFiniteError, match=r"constraint 'ge' is not finite at step 7 \(entries \[1\]"
    ):
        layout.check_finite(torch.tensor(0.0, dtype=DTYPE), stacked, 7)
    stacked = layout.stack(_state(**VALUES))
    with pytest.raises(NonFiniteError, match="the objective is inf at step 3"):
        layout.check_finite(torch.tensor(float("inf"), dtype=DTYPE), stacked, 3)
    bad = ConstraintValue(
        torch.tensor([float("inf"), 0.0], dtype=DTYPE), indices=torch.tensor([2, 0])
    )
    stacked = layout.stack(_state(**{**VALUES, "samples": bad}))
    with pytest.raises(NonFiniteError, match=r"per-sample constraint 'samples'.*samples \[2\]"):
        layout.check_finite(torch.tensor(0.0, dtype=DTYPE), stacked, 0)


def test_layout_rejects_a_non_scalar_or_non_tensor_objective() -> None:
    with pytest.raises(ShapeError, match="objective must be a scalar tensor"):
        ConstraintLayout(MIXED, ProblemState(1.0, dict(VALUES)))  # type: ignore[arg-type]


# -- sign domains through the solver ------------------------------------------------------


class Oscillating(ConstrainedProblem):
    """Constraints whose violations change sign, so projection is exercised every step."""

    def objective(self, model: Any, batch: Any) -> Tensor:
        return 0.5 * (model.x - torch.tensor([2.0, -1.0, 0.5], dtype=DTYPE)).pow(2).sum()

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        x = model.x
        return ProblemState(
            self.objective(model, batch),
            {"upper": x, "lower": x, "sum": x.sum().reshape(1), "diff": (x[0] - x[1]).reshape(1)},
        )


OSCILLATING = ConstrainedProblem(
    objective=Oscillating().objective,
    constraints=[
        Constraint("upper", "<=", rhs=1.0, fn=lambda m, b: m.x),
        Constraint("lower", ">=", rhs=0.0, fn=lambda m, b: m.x),
        Constraint("sum", "==", rhs=3.0, fn=lambda m, b: m.x.sum()),
        Constraint("diff", "==", rhs=-0.5, fn=lambda m, b: m.x[0] - m.x[1]),
    ],
)


@pytest.mark.parametrize("order", ["simultaneous", "dual_primal", "primal_dual"])
@pytest.mark.parametrize(
    "controller",
    [
        {"name": "gda", "lr": 0.7},
        {"name": "nupi", "lr": 1.0, "ki": 0.5, "kp": 2.0, "nu": 0.3},
        {"name": "momentum", "lr": 0.5, "beta": 0.6},
    ],
    ids=["gda", "nupi", "momentum"],
)
def test_inequality_multipliers_stay_nonnegative_and_equalities_go_negative(
    order: str, controller: dict[str, Any]
) -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(
        OSCILLATING,
        model,
        torch.optim.SGD(model.parameters(), lr=0.2),
        controller=controller,
        order=order,
    )  # type: ignore[arg-type]
    solver.fit(steps=80)
    lam = solver.history.multipliers()
    layout = solver.layout
    assert layout is not None
    inequality = ~layout.equality.numpy()
    assert (lam[:, inequality] >= 0).all()
    assert (lam[:, inequality] > 0).any()  # the projection did not just zero everything
    assert (lam[:, ~inequality] < 0).any()  # equality multipliers may be negative


@pytest.mark.parametrize("scalar", [False, True])
def test_many_plain_groups_stack_like_one_group_at_a_time(scalar: bool) -> None:
    """Groups that all return plain tensors of their size (or all 0-d numbers) are stacked
    in one go; the result is the standard form of each group in order."""
    size = 1 if scalar else 3
    problem = _problem(
        *[Constraint(f"g{k}", "<=" if k % 2 else ">=", size=size, rhs=0.5) for k in range(6)]
    )
    values = {
        f"g{k}": torch.full((), float(k), dtype=DTYPE)
        if scalar
        else torch.arange(3, dtype=DTYPE) + k
        for k in range(6)
    }
    layout = ConstraintLayout(problem, _state(**values))
    got = layout.stack(_state(**values)).violation
    expected = torch.cat(
        [(1 if k % 2 else -1) * (values[f"g{k}"].reshape(-1) - 0.5) for k in range(6)]
    )
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(4, dtype=DTYPE), r"'g3'.*3 entries|'g3'.*size"),
        (torch.zeros(3, dtype=torch.int64), r"'g3'.*floating-point"),
        (torch.zeros(1, 3, dtype=DTYPE), None),
        (torch.zeros(3, dtype=torch.complex128), r"'g3'.*floating-point"),
    ],
)
def test_one_bad_group_among_many_is_named(bad: Tensor, message: str | None) -> None:
    """The shared pass over plain groups never lets a bad group through: the group-by-group
    checks run and name it (a 1 x 3 value is the right size and is flattened)."""
    problem = _problem(*[Constraint(f"g{k}", "<=", size=3) for k in range(6)])
    values = {f"g{k}": torch.zeros(3, dtype=DTYPE) for k in range(6)}
    layout = ConstraintLayout(problem, _state(**values))
    values["g3"] = bad
    if message is None:
        assert layout.stack(_state(**values)).violation.shape == (18,)
        return
    with pytest.raises(ShapeError, match=message):
        layout.stack(_state(**values))


def _written(p: Tensor) -> Tensor:
    """``p`` written in place from an expression with a gradient (``buffer.copy_(...)``):
    it has a ``grad_fn`` and is no view, yet it is the user's tensor and changes when
    ``p`` is written again."""
    source = torch.ones_like(p, requires_grad=True)
    return p.copy_(source * 1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p,  # the parameter itself (one group, the fast path)
        lambda p: p[1:],  # a view with an offset
        lambda p: p.reshape(2, 2),  # another shape
        lambda p: ConstraintValue(p),  # wrapped (the general path)
        lambda p: p.requires_grad_(),  # a parameter with a gradient
        lambda p: p.requires_grad_()[1:],  # a view of it, made by autograd (SliceBackward)
        lambda p: p.requires_grad_().view(4),  # a view of the whole parameter
        lambda p: p.requires_grad_() * 1.0,  # a new tensor
        _written,  # a buffer written in place from a value with a gradient (a grad_fn)
    ],
    ids=[
        "itself",
        "offset-view",
        "reshaped",
        "wrapped",
        "parameter",
        "autograd-view",
        "autograd-full-view",
        "new-tensor",
        "buffer-written-in-place",
    ],
)
def test_the_signal_never_shares_memory_with_the_users_tensor(make: Any) -> None:
    """A constraint that returns (a view of) a tensor the optimizer later changes in place:
    the stacked signal is a copy, so it keeps the values of the evaluation."""
    p = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=DTYPE)
    value = make(p)
    size = 3 if isinstance(value, Tensor) and value.numel() == 3 else 4
    problem = _problem(Constraint("a", size=size))
    state = _state(a=value)
    stacked = ConstraintLayout(problem, state).stack(state)
    before = stacked.violation.clone()
    with torch.no_grad():
        p.add_(10.0)  # the optimizer step, in place
    assert torch.equal(stacked.violation, before)


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_the_health_of_a_proposal_is_exact(bad: float | None) -> None:
    """0 when every entry is finite, NaN otherwise (however large the finite entries)."""
    from constrain.duals import _health

    values = torch.tensor([1e308, -2.0, 3.0], dtype=torch.float64)
    if bad is not None:
        values[1] = bad
    health = _health(values)
    assert health.dim() == 0
    assert (health.item() == 0.0) if bad is None else math.isnan(health.item())


class _Returns(controllers.Controller):
    """A custom controller that returns ``make(multipliers)`` as its update."""

    make: Any

    def init(self, multipliers: Tensor) -> dict[str, Tensor]:
        return {}

    def update(
        self, multipliers: Tensor, signal: Tensor, state: dict[str, Tensor]
    ) -> tuple[Any, dict[str, Tensor]]:
        return self.make(multipliers + signal), {}


@pytest.mark.parametrize(
    ("make", "got"),
    [
        (lambda lam: lam.numpy(), "ndarray"),
        (lambda lam: lam.tolist(), "list"),
        (lambda lam: lam[:-1], r"shape=\(\d,\)"),
        (lambda lam: lam.sum(), r"shape=\(\)"),
        (lambda lam: lam.reshape(1, -1), r"shape=\(1, \d\)"),
    ],
    ids=["numpy", "list", "shorter", "0-d", "2-d"],
)
@pytest.mark.parametrize("groups", [1, 2, "map"], ids=["one-group", "two-groups", "map"])
def test_a_controller_update_that_is_not_multipliers_is_named(
    make: Any, got: str, groups: int | str
) -> None:
    """A controller must return a tensor of the multipliers' shape: anything else is a
    ShapeError naming the controller, the expected shape and what it returned."""
    model = Variables(x=torch.zeros(3, dtype=torch.float64))
    sizes = [3] if groups == 1 else [1, 2]
    constraints = [
        Constraint(f"g{k}", "<=", fn=lambda m, b, n=n: m.x[:n] - 1.0, size=n)
        for k, n in enumerate(sizes)
    ]
    problem = ConstrainedProblem(objective=lambda m, b: m.x.sum(), constraints=constraints)
    controller: Any = _Returns(make=make)
    if groups == "map":  # a controller per group: the custom one takes the second
        controller = {"g0": {"name": "gda", "lr": 0.1}, "g1": controller}
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.1), controller=controller
    )
    with pytest.raises(
        ShapeError,
        match=rf"controller '_Returns' returned .*{got}.*expected a tensor of shape \({3 if groups != 'map' else 2},\)",
    ):
        solver.step()
