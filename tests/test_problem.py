"""Declaring problems: subclassing and composition agree; bad declarations fail clearly."""

from __future__ import annotations

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
    ProblemState,
    Regularizer,
    ShapeError,
    Solver,
    Variables,
    constraint,
)
from constrain.problem import as_constraint_value, check_names

DTYPE = torch.float64
TARGET = torch.tensor([1.5, -0.5, 2.0], dtype=DTYPE)
A = torch.tensor([1.0, 2.0, 1.0], dtype=DTYPE)


def _objective(model: Any, batch: Any) -> Tensor:
    return 0.5 * (model.x - TARGET).pow(2).sum()


def _ridge(x: Tensor) -> Tensor:
    return x.pow(2).sum()


class Declared(ConstrainedProblem):
    """Subclass form: hyperparameters as fields, constraints as decorated methods."""

    budget: float = 1.0
    lower: float = -0.25
    dimension: int = 3

    def objective(self, model: Any, batch: Any) -> Tensor:
        return _objective(model, batch)

    @constraint("<=", rhs="budget")
    def weighted(self, model: Any, batch: Any) -> Tensor:
        return A @ model.x

    @constraint(">=", rhs="lower", size="dimension")
    def bounds(self, model: Any, batch: Any) -> Tensor:
        return model.x

    @constraint("==", rhs=(0.25,))
    def balance(self, model: Any, batch: Any) -> Tensor:
        return (model.x[0] - model.x[1]).reshape(1)


class SharedForward(Declared):
    """Same problem, one shared forward pass through an overridden ``evaluate``."""

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        x = model.x
        return ProblemState(
            objective=_objective(model, batch),
            constraints={
                "weighted": A @ x,
                "bounds": x,
                "balance": (x[0] - x[1]).reshape(1),
            },
        )


def composed(budget: float = 1.0, lower: float = -0.25, **extra: Any) -> ConstrainedProblem:
    return ConstrainedProblem(
        objective=_objective,
        constraints=[
            Constraint("weighted", "<=", rhs=budget, fn=lambda m, b: A @ m.x),
            Constraint("bounds", ">=", rhs=lower, size=3, fn=lambda m, b: m.x),
            Constraint("balance", "==", rhs=(0.25,), fn=lambda m, b: (m.x[0] - m.x[1]).reshape(1)),
        ],
        **extra,
    )


def trajectory(problem: ConstrainedProblem, steps: int = 200) -> tuple[Tensor, Tensor]:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    controller = {"name": "nupi", "lr": 1.0, "ki": 0.5, "kp": 1.0}
    solver = Solver(problem, model, optimizer, controller=controller)
    solver.fit(steps=steps)
    return model.x.detach().clone(), torch.tensor(solver.history.multipliers())


# -- the two declaration styles ---------------------------------------------------------


def test_subclass_declares_constraints_in_definition_order_with_field_rhs_and_size() -> None:
    problem = Declared(budget=2.0, lower=-1.0)
    names = [c.name for c in problem.all_constraints]
    assert names == ["weighted", "bounds", "balance"]
    weighted, bounds, balance = problem.all_constraints
    assert (weighted.sense, weighted.rhs) == ("<=", 2.0)
    assert (bounds.sense, bounds.rhs, bounds.size) == (">=", -1.0, 3)
    assert (balance.sense, balance.rhs, balance.is_equality) == ("==", (0.25,), True)
    assert problem.hyperparameters() == {"budget": 2.0, "lower": -1.0, "dimension": 3}


def test_subclass_composition_and_shared_forward_give_identical_evaluations() -> None:
    model = Variables(x=torch.tensor([0.3, -0.7, 1.1], dtype=DTYPE))
    states = [p.evaluate(model, None) for p in (Declared(), composed(), SharedForward())]
    for state in states[1:]:
        assert torch.equal(state.objective, states[0].objective)
        assert state.constraints.keys() == states[0].constraints.keys()
        for name, value in state.constraints.items():
            assert isinstance(value, Tensor)
            assert torch.equal(value, states[0].constraints[name])  # type: ignore[arg-type]


def test_subclass_composition_and_shared_forward_give_the_same_runs() -> None:
    (x, lam), (x_composed, lam_composed), (x_shared, lam_shared) = [
        trajectory(p) for p in (Declared(), composed(), SharedForward())
    ]
    # Subclass and composition build the same graph: bit-for-bit equal.
    assert torch.equal(x, x_composed) and torch.equal(lam, lam_composed)
    # The shared forward pass builds the graph in another order: equal up to rounding.
    torch.testing.assert_close(x_shared, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(lam_shared, lam, rtol=0, atol=1e-12)
    # The constraints mattered: the multipliers moved away from zero.
    assert lam.abs().max() > 0.5


def test_regularizers_are_accepted_by_both_styles_and_agree() -> None:
    reg = [Regularizer(penalty=_ridge, strength=0.3)]
    a = trajectory(Declared(regularizers=reg))
    b = trajectory(composed(regularizers=reg))
    plain = trajectory(Declared())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], plain[0])  # the penalty changed the solution


def test_penalty_regularizer_equals_the_penalty_written_into_the_objective() -> None:
    with_reg = trajectory(composed(regularizers=[Regularizer(penalty=_ridge, strength=0.3)]))
    inline = ConstrainedProblem(
        objective=lambda m, b: _objective(m, b) + 0.3 * _ridge(m.x),
        constraints=composed().constraints,
    )
    x, lam = trajectory(inline)
    torch.testing.assert_close(with_reg[0], x, rtol=0, atol=1e-14)
    torch.testing.assert_close(with_reg[1], lam, rtol=0, atol=1e-14)


def test_assigning_a_field_redeclares_the_constraint_rhs() -> None:
    problem = Declared(budget=1.0)
    problem.budget = 3.0
    assert problem.constraint_named("weighted").rhs == 3.0
    with pytest.raises(ValidationError, match="budget"):
        problem.budget = "many"  # type: ignore[assignment]


def test_constraint_positional_name_and_sense_and_aliases() -> None:
    assert Constraint("c", ">=").sense == ">="
    for alias, sense in [("le", "<="), ("GE", ">="), ("=", "=="), ("eq", "=="), (" <= ", "<=")]:
        assert Constraint("c", alias).sense == sense
    assert Constraint("c", ">=").sign == -1.0
    assert Constraint("c", "==").sign == 1.0


def test_violation_is_the_standard_form() -> None:
    g = torch.tensor([0.5, 2.0], dtype=DTYPE)
    assert torch.equal(Constraint("a", "<=", rhs=1.0).violation(g), g - 1.0)
    assert torch.equal(Constraint("b", ">=", rhs=1.0).violation(g), 1.0 - g)
    assert torch.equal(
        Constraint("c", "==", rhs=(1.0, 3.0)).violation(g), g - torch.tensor([1.0, 3.0])
    )


def test_describe_lists_every_constraint() -> None:
    text = Declared().describe()
    assert text.splitlines()[0] == "Declared"
    assert "bounds[3]: g >= -0.25" in text
    assert "weighted[?]: g <= 1.0" in text


def test_rhs_given_as_a_tensor_is_converted() -> None:
    assert Constraint("a", rhs=torch.tensor(2.0)).rhs == 2.0
    assert Constraint("a", rhs=torch.tensor([1.0, 2.0])).rhs == (1.0, 2.0)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Declared(budgt=2.0),
        lambda: ConstrainedProblem(objective=_objective, constraint=[]),
        lambda: Constraint("a", fnn=lambda m, b: m.x),
        lambda: Regularizer(penalty=_ridge, strenght=1.0),
    ],
    ids=["subclass-field", "composition-field", "constraint-field", "regularizer-field"],
)
def test_unknown_fields_are_errors(build: Any) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        build()


def test_invalid_hyperparameter_value_names_the_field() -> None:
    with pytest.raises(ValidationError, match="budget"):
        Declared(budget="lots")


def test_duplicate_names_in_composition() -> None:
    with pytest.raises(ValueError, match="duplicate constraint name 'c'"):
        ConstrainedProblem(
            objective=_objective,
            constraints=[Constraint("c", fn=_objective), Constraint("c", fn=_objective)],
        )


def test_duplicate_names_between_methods_and_constraints_list() -> None:
    with pytest.raises(ValueError, match="duplicate constraint name 'weighted'"):
        Declared(constraints=[Constraint("weighted", fn=_objective)])


def test_duplicate_names_from_decorator_name() -> None:
    class Twice(ConstrainedProblem):
        @constraint(name="same")
        def first(self, model: Any, batch: Any) -> Tensor:
            return model.x

        @constraint(name="same")
        def second(self, model: Any, batch: Any) -> Tensor:
            return model.x

    with pytest.raises(ValueError, match="duplicate constraint name 'same' in Twice"):
        Twice()


@pytest.mark.parametrize("rhs", [float("nan"), float("inf"), -float("inf"), (1.0, float("nan"))])
def test_non_finite_rhs_is_an_error(rhs: Any) -> None:
    with pytest.raises(ValidationError, match="finite"):
        Constraint("c", rhs=rhs)


def test_non_finite_rhs_from_a_field_is_an_error() -> None:
    with pytest.raises(ValidationError, match="finite"):
        Declared(budget=float("inf"))


@pytest.mark.parametrize("rhs", [True, ()])
def test_bool_or_empty_rhs_is_an_error(rhs: Any) -> None:
    with pytest.raises(ValidationError, match="rhs"):
        Constraint("c", rhs=rhs)


@pytest.mark.parametrize("sense", ["<", ">", "lt", "gt", "=>", "!=", 1])
def test_invalid_sense_is_an_error_with_the_valid_ones(sense: Any) -> None:
    with pytest.raises(ValidationError, match=r"sense must be one of '<=', '>=', '=='") as info:
        Constraint("c", sense)
    assert "Strict inequalities are not supported" in str(info.value)


def test_invalid_sense_in_a_decorator_is_an_error() -> None:
    class Strict(ConstrainedProblem):
        @constraint("lt")
        def c(self, model: Any, batch: Any) -> Tensor:
            return model.x

    with pytest.raises(ValidationError, match="got 'lt'"):
        Strict()


def test_per_sample_constraint_needs_a_size() -> None:
    with pytest.raises(ValidationError, match="per-sample constraint 'c' needs size="):
        Constraint("c", per_sample=True)

    class NoSize(ConstrainedProblem):
        @constraint(per_sample=True)
        def c(self, model: Any, batch: Any) -> Tensor:
            return model.x

    with pytest.raises(ValidationError, match="needs size="):
        NoSize()


def test_per_sample_constraint_takes_a_scalar_rhs() -> None:
    with pytest.raises(ValidationError, match="scalar rhs"):
        Constraint("c", per_sample=True, size=2, rhs=(1.0, 2.0))


def test_rhs_tuple_length_must_match_declared_size() -> None:
    with pytest.raises(ValidationError, match="rhs has 2 entries but size is 3"):
        Constraint("c", rhs=(1.0, 2.0), size=3)


@pytest.mark.parametrize("size", [0, -1])
def test_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValidationError, match="size"):
        Constraint("c", size=size)


@pytest.mark.parametrize("name", ["", " padded", "a,b", "a=b", "a\nb"])
def test_bad_constraint_names(name: str) -> None:
    with pytest.raises(ValidationError):
        Constraint(name)


@pytest.mark.parametrize("key", ["rhs", "size"])
def test_rhs_or_size_naming_no_field_is_an_error(key: str) -> None:
    class Typo(ConstrainedProblem):
        tolerance: float = 1.0

        @constraint(**{key: "tolerence"})
        def c(self, model: Any, batch: Any) -> Tensor:
            return model.x

    with pytest.raises(ValidationError, match=f"gives {key}='tolerence', which is not a field"):
        Typo()


def test_non_callable_objective_or_fn_is_an_error() -> None:
    with pytest.raises(ValidationError, match="objective must be a callable"):
        ConstrainedProblem(objective=3.0)
    with pytest.raises(ValidationError, match="expected a callable"):
        Constraint("c", fn="x")


def test_missing_objective_or_value_function_fails_at_evaluation() -> None:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    with pytest.raises(ConfigError, match="has no objective"):
        ConstrainedProblem().evaluate(model, None)
    problem = ConstrainedProblem(objective=_objective, constraints=[Constraint("c")])
    with pytest.raises(ConfigError, match="constraint 'c' has no value function"):
        problem.evaluate(model, None)


def test_constraint_named_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"no constraint named 'nope'; known: \['weighted'"):
        Declared().constraint_named("nope")


def test_evaluate_must_return_every_declared_constraint() -> None:
    class Forgetful(Declared):
        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            return ProblemState(
                _objective(model, batch), {"weighted": A @ model.x, "extra": model.x}
            )

    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    problem = Forgetful()
    with pytest.raises(
        ConfigError, match=r"missing: \['balance', 'bounds'\], undeclared: \['extra'\]"
    ):
        check_names(problem, problem.evaluate(model, None))
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="missing"):
        solver.step()


def test_regularizer_needs_exactly_one_kind_and_a_valid_strength() -> None:
    with pytest.raises(ValidationError, match="exactly one of prox"):
        Regularizer(strength=1.0)
    with pytest.raises(ValidationError, match="exactly one of prox"):
        Regularizer(prox="l1", penalty=_ridge, strength=1.0)
    with pytest.raises(ValidationError, match="strength"):
        Regularizer(prox="l1", strength=-1.0)
    with pytest.raises(ValidationError, match="strength"):
        Regularizer(prox="l1", strength=float("nan"))
    with pytest.raises(ValidationError, match="prox must be"):
        Regularizer(prox=3, strength=1.0)
    reg = Regularizer(penalty=_ridge, strength=1.0, params="layer.*")
    assert reg.params == ("layer.*",)
    assert reg.label == "_ridge"
    assert Regularizer(prox="l1", strength=0.0, name="sparse").label == "sparse"


# -- shapes -------------------------------------------------------------------------------


def _one_constraint(fn: Any, **kwargs: Any) -> ConstrainedProblem:
    return ConstrainedProblem(
        objective=_objective, constraints=[Constraint("cap", fn=fn, **kwargs)]
    )


def _first_step(problem: ConstrainedProblem) -> Solver:
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    solver.step()
    return solver


def test_declared_size_must_match_the_value() -> None:
    problem = _one_constraint(lambda m, b: torch.cat([m.x, m.x[:1]]), size=3)
    with pytest.raises(
        ShapeError, match="constraint 'cap' is declared with size 3 but its value has 4"
    ):
        _first_step(problem)


def test_rhs_tuple_must_match_the_inferred_size() -> None:
    problem = _one_constraint(lambda m, b: m.x, rhs=(1.0, 2.0))
    with pytest.raises(ShapeError, match="constraint 'cap' has 2 right-hand sides for 3 entries"):
        _first_step(problem)


def test_size_change_between_steps_is_an_error_naming_the_constraint() -> None:
    sizes = iter([3, 2])
    problem = ConstrainedProblem(
        objective=_objective,
        constraints=[
            Constraint("first", fn=lambda m, b: m.x[: next(sizes)]),
            Constraint("second", fn=lambda m, b: m.x),
        ],
    )
    solver = _first_step(problem)
    with pytest.raises(
        ShapeError, match="constraint 'first' returned 2 entries but has 3 multipliers"
    ):
        solver.step()


def test_size_swap_between_groups_is_an_error() -> None:
    """The total size is unchanged, but each group must keep its own size."""
    sizes = {"first": 1, "second": 2}
    problem = ConstrainedProblem(
        objective=_objective,
        constraints=[
            Constraint("first", fn=lambda m, b: m.x[: sizes["first"]]),
            Constraint("second", fn=lambda m, b: m.x[: sizes["second"]]),
        ],
    )
    solver = _first_step(problem)
    sizes.update(first=2, second=1)
    with pytest.raises(ShapeError, match="constraint 'first' returned 2 entries but has 1"):
        solver.step()


def test_objective_must_be_a_scalar() -> None:
    problem = ConstrainedProblem(objective=lambda m, b: m.x, constraints=[])
    with pytest.raises(
        ShapeError, match=r"objective must be a scalar; got a tensor of shape \(3,\)"
    ):
        _first_step(problem)


@pytest.mark.parametrize(
    ("late", "message"),
    [
        (lambda m: 3.0, r"must be a scalar tensor; got 3\.0 \(float\)"),
        (lambda m: (m.x - 1.0).pow(2), r"must be a scalar; got a tensor of shape \(3,\)"),
        (lambda m: torch.tensor(3), "must be a real floating-point scalar; got tensor.*int64"),
        (lambda m: torch.tensor(True), "must be a real floating-point scalar; got tensor.*bool"),
        (
            lambda m: torch.complex(m.x.sum(), m.x.sum()),
            "must be a real floating-point scalar; got tensor.*complex",
        ),
    ],
    ids=["float", "vector", "integer", "bool", "complex"],
)
@pytest.mark.parametrize("own_loop", [False, True], ids=["step", "own-loop"])
def test_an_objective_that_changes_type_later_is_refused_at_that_step(
    late: Any, message: str, own_loop: bool
) -> None:
    """The objective is checked at every evaluation, not only at the first one: a bad
    one at step 2 is a ShapeError there, whichever way the step runs."""
    model = Variables(x=torch.zeros(3, dtype=torch.float64))
    problem = ConstrainedProblem(
        objective=lambda m, b: late(m) if b == 2 else (m.x - 1.0).pow(2).sum(),
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
    )
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    for batch in range(2):
        solver.step(batch)
    with pytest.raises(ShapeError, match=message):
        if own_loop:
            solver.lagrangian(2)
        else:
            solver.step(2)
    assert solver.step_count == 2


def test_as_constraint_value_checks() -> None:
    with pytest.raises(ShapeError, match="constraint 'c': expected a tensor"):
        as_constraint_value("c", [1.0])
    with pytest.raises(ShapeError, match="expected a floating-point tensor"):
        as_constraint_value("c", torch.tensor([1, 2]))
    with pytest.raises(ShapeError, match=r"proxy has shape \(3,\) but the value has shape \(2,\)"):
        as_constraint_value("c", ConstraintValue(torch.zeros(2), proxy=torch.zeros(3)))
    with pytest.raises(ShapeError, match="indices must be an integer tensor"):
        as_constraint_value("c", ConstraintValue(torch.zeros(2), indices=torch.zeros(2)))
    with pytest.raises(ShapeError, match="3 indices for 2 values"):
        as_constraint_value("c", ConstraintValue(torch.zeros(2), indices=torch.arange(3)))
    value = as_constraint_value("c", torch.zeros(2))
    assert value.proxy is None and value.indices is None


def test_composed_proxy_is_attached_to_the_value() -> None:
    problem = _one_constraint(lambda m, b: m.x.detach().sign(), proxy=lambda m, b: m.x)
    model = Variables(x=torch.tensor([1.0, -2.0, 0.0], dtype=DTYPE))
    value = problem.evaluate(model, None).constraints["cap"]
    assert isinstance(value, ConstraintValue)
    assert torch.equal(value.value, torch.tensor([1.0, -1.0, 0.0], dtype=DTYPE))
    assert value.proxy is not None and value.proxy.requires_grad
