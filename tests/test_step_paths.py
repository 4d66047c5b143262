"""The common step takes short paths (one dense group, one controller, the simultaneous
order without options): they give the same numbers as the general paths, bit for bit.

Each test runs one problem twice, once on the short path and once forced onto the general
one, and compares the iterates, the multipliers and the records exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    NonFiniteError,
    Solver,
    Variables,
)
from constrain.history import StepRecord

DTYPE = torch.float64
STEPS = 60


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    A = torch.randn(7, 4, generator=generator, dtype=DTYPE)
    b = torch.rand(7, generator=generator, dtype=DTYPE) - 0.5
    return A, b


def _problem(wrapped: bool = False) -> ConstrainedProblem:
    """min ||x - 1||^2 s.t. A x <= b (7 inequalities in one group)."""
    A, b = _data()

    def fn(model: Any, batch: Any) -> Any:
        value = A @ model.x - b
        return ConstraintValue(value) if wrapped else value

    return ConstrainedProblem(
        objective=lambda m, batch: (m.x - 1.0).pow(2).sum(),
        constraints=[Constraint("rows", "<=", fn=fn, size=7)],
    )


def _solver(controller: Any = "gda", *, wrapped: bool = False, **options: Any) -> Solver:
    model = Variables(x=torch.zeros(4, dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.3)
    if isinstance(controller, str):
        controller = {"name": controller, "lr": 0.3}
    return Solver(
        _problem(wrapped), model, optimizer, controller=controller, vectors_every=5, **options
    )


def _facts(record: StepRecord) -> dict[str, Any]:
    """Everything a record says except the wall time."""
    return {k: v for k, v in vars(record).items() if k != "seconds"}


def _same_run(short: Solver, general: Solver) -> None:
    assert torch.equal(short.model.x, general.model.x)
    for name, lam in short.multipliers.items():
        assert torch.equal(lam, general.multipliers[name])
    assert len(short.history) == len(general.history) == STEPS
    for a, b in zip(short.history, general.history, strict=True):
        assert _facts(a) == _facts(b)


def _own_step(solver: Solver) -> torch.Tensor:
    """One step in the own-loop pieces; returns the step's primal loss."""
    loss = solver.lagrangian()
    solver.optimizer.zero_grad()
    loss.backward()
    solver.optimizer.step()
    solver.dual_step()
    return loss


def _step_and_pieces(short: Solver, general: Solver, steps: int = STEPS) -> tuple[Solver, Solver]:
    """Run ``short`` with Solver.step and ``general`` with the own-loop pieces."""
    for _ in range(steps):
        short.step()
        _own_step(general)
    return short, general


@pytest.mark.parametrize("controller", ["gda", "nupi", "adam", "momentum"])
def test_the_whole_step_equals_its_pieces(controller: str) -> None:
    """Solver.step (the simultaneous order's whole step) against the own-loop pieces."""
    short, general = _solver(controller), _solver(controller)
    _same_run(*_step_and_pieces(short, general))


def test_a_step_recorded_at_once_equals_a_buffered_one() -> None:
    """Steps flushed one at a time against steps buffered three at a time."""
    short, general = _solver(), _solver(check_every=3)
    for _ in range(STEPS):
        short.step()
        general.step()
    general.flush()
    _same_run(short, general)


def test_a_plain_tensor_stacks_as_a_constraint_value() -> None:
    """A constraint returned as a plain tensor against the same one wrapped."""
    short, general = _solver(), _solver(wrapped=True)
    for _ in range(STEPS):
        short.step()
        general.step()
    _same_run(short, general)


@pytest.mark.parametrize("controller", ["gda", "nupi"])
def test_one_controller_steps_as_a_controller_map(controller: str) -> None:
    """One controller for every entry against a per-group map holding the same one."""
    spec = {"name": controller, "lr": 0.3}
    short, general = _solver(spec), _solver({"rows": spec})
    for _ in range(STEPS):
        short.step()
        general.step()
    _same_run(short, general)


def test_a_hook_that_runs_a_piece_of_the_step_meets_the_order_checks() -> None:
    """A piece of the step run from an optimizer hook inside Solver.step: the step goes on
    through the pieces, whose order checks name what is wrong."""
    twice = _solver()
    twice.optimizer.register_step_post_hook(
        lambda *_: twice.prox_step() if twice.step_count == 2 else None
    )
    twice.step(), twice.step()
    with pytest.raises(ConfigError, match=r"prox_step\(\) was called twice in step 2"):
        twice.step()

    early = _solver()
    early.optimizer.register_step_post_hook(
        lambda *_: early.dual_step() if early.step_count == 2 else None
    )
    early.step(), early.step()
    with pytest.raises(ConfigError, match=r"prox_step\(\) was called before lagrangian\(\)"):
        early.step()  # the hook's dual_step ended step 2
    assert [r.step for r in early.history] == [0, 1, 2]


def test_a_micro_batch_added_by_a_hook_joins_the_update() -> None:
    """lagrangian(accumulate=True) from an optimizer hook: Solver.step updates the
    multipliers from both micro-batches, as the own-loop pieces do."""

    def hooked(solver: Solver) -> Solver:
        solver.optimizer.register_step_post_hook(
            lambda *_: solver.lagrangian(accumulate=True) if solver.step_count % 7 == 3 else None
        )
        return solver

    short, general = hooked(_solver()), hooked(_solver())
    _same_run(*_step_and_pieces(short, general))


def _scaled_solver(scale: float, dtype: torch.dtype, size: int) -> Solver:
    """min scale * sum(x) s.t. sum(x) <= 1: every gradient entry is ``scale``."""
    model = Variables(x=torch.zeros(size, dtype=dtype))
    problem = ConstrainedProblem(
        objective=lambda m, batch: (m.x * scale).sum(),
        constraints=[Constraint("total", "<=", rhs=1.0, fn=lambda m, batch: m.x.sum())],
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3 / scale)
    return Solver(problem, model, optimizer, controller={"name": "gda", "lr": 0.5})


@pytest.mark.parametrize(
    ("scale", "dtype", "size"),
    [(3e38, torch.float32, 4), (1e3, torch.float16, 100), (1e37, torch.bfloat16, 64)],
    ids=["float32-sum-overflows", "float16-summed-in-float32", "bfloat16"],
)
def test_a_gradient_screen_that_overflows_is_not_a_nonfinite_gradient(
    scale: float, dtype: torch.dtype, size: int
) -> None:
    """Solver.step screens the gradients by their sums; finite gradients whose sum
    overflows are confirmed finite by their max-norms (no NonFiniteError), and the run
    equals the own-loop pieces, which measure the max-norms directly."""
    steps = 5
    short, general = _step_and_pieces(
        _scaled_solver(scale, dtype, size), _scaled_solver(scale, dtype, size), steps
    )
    assert short.model.x.grad is not None and torch.isfinite(short.model.x.grad).all()
    assert torch.equal(short.model.x, general.model.x)
    assert torch.equal(short.multipliers["total"], general.multipliers["total"])
    assert [_facts(r) for r in short.history] == [_facts(r) for r in general.history]
    assert len(short.history) == steps


def test_a_float32_gradient_sum_overflows_as_the_screen_assumes() -> None:
    """The premise of the float32 case above: the screen (a sum) is not finite there."""
    assert not torch.isfinite(torch.full((4,), 3e38).sum())


def test_a_nonfinite_gradient_is_named_on_the_short_path() -> None:
    """A NaN gradient with a finite objective and constraint: Solver.step names the
    parameter and the step."""
    model = Variables(x=torch.zeros(3, dtype=DTYPE), y=torch.ones(2, dtype=DTYPE))
    problem = ConstrainedProblem(
        objective=lambda m, batch: m.x.sqrt().sum() * 0 + m.y.sum(),
        constraints=[Constraint("cap", "<=", rhs=5.0, fn=lambda m, batch: m.y)],
    )
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(NonFiniteError, match=r"gradient of parameter\(s\) \['x'\] .* step 0"):
        solver.step()


def test_finite_float64_gradients_beyond_float32_are_finite_on_every_path() -> None:
    """A float64 parameter whose gradient entries (+-1e300, cancelling in their sum) lie
    beyond the range of the float32 record: finite, so no NonFiniteError, whether the
    step is copied at once, buffered or run in pieces."""
    weights = torch.tensor([1e300, -1e300, 1e300, -1e300], dtype=torch.float64)

    def solver(**options: Any) -> Solver:
        model = Variables(x=torch.zeros(4, dtype=torch.float64))
        problem = ConstrainedProblem(
            objective=lambda m, b: (m.x @ weights).float(),
            constraints=[Constraint("c", "<=", rhs=1.0, fn=lambda m, b: m.x.float().sum())],
        )
        return Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.0), **options)

    short, buffered, pieces = solver(), solver(check_every=3), solver()
    _step_and_pieces(short, pieces, 6)
    for _ in range(6):
        buffered.step()
    buffered.flush()
    assert short.model.x.grad is not None
    assert torch.equal(short.model.x.grad.abs(), weights.abs())  # finite, beyond float32
    facts = [_facts(r) for r in short.history]
    assert facts == [_facts(r) for r in buffered.history] == [_facts(r) for r in pieces.history]
    assert len(facts) == 6


@pytest.mark.parametrize("formulation", ["augmented_lagrangian", "quadratic_penalty"])
def test_a_tensor_changed_in_place_before_backward_is_copied_for_a_quadratic_term(
    formulation: str,
) -> None:
    """Formulations whose terms are not linear in the values keep them for backward: the
    constraint's own tensor, changed in place between lagrangian() and backward(), must
    not reach them (the one-group path copies it for them; the Lagrangian needs no copy)."""
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    cache: dict[str, torch.Tensor] = {}

    def cached(m: Any, b: Any) -> torch.Tensor:
        cache["out"] = m.x * 2.0 - 1.0
        return cache["out"]

    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - 1.0).pow(2).sum(),
        constraints=[Constraint("c", "<=", fn=cached, size=3)],
    )
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.1), formulation=formulation
    )
    for _ in range(3):
        loss = solver.lagrangian()
        with torch.no_grad():
            cache["out"].zero_()  # the user's code reuses its buffer
        solver.optimizer.zero_grad()
        loss.backward()
        solver.optimizer.step()
        solver.dual_step()
    assert solver.step_count == 3


def test_a_strided_constraint_gives_the_loss_of_a_contiguous_one() -> None:
    """A non-contiguous tensor (a column of a matrix) is copied before the primal loss
    reduces it: the Lagrangian's value is that of the same values in contiguous memory,
    bit for bit (a reduction over strided memory may round differently)."""
    A, b = _data()

    def problem(contiguous: bool) -> ConstrainedProblem:
        def fn(m: Any, batch: Any) -> Any:
            column = torch.stack([A @ m.x - b, A @ m.x], dim=1)[:, 0]
            return column.contiguous() if contiguous else column

        return ConstrainedProblem(
            objective=lambda m, batch: (m.x - 1.0).pow(2).sum(),
            constraints=[Constraint("rows", "<=", fn=fn, size=7)],
        )

    losses = []
    for contiguous in (False, True):
        model = Variables(x=torch.zeros(4, dtype=DTYPE))
        solver = Solver(problem(contiguous), model, torch.optim.SGD(model.parameters(), lr=0.05))
        losses.append([_own_step(solver).item() for _ in range(STEPS)])
    assert losses[0] == losses[1]


class _Embedded(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(10, 3, sparse=True, dtype=DTYPE)
        with torch.no_grad():
            self.emb.weight.copy_(torch.rand(10, 3, generator=generator, dtype=DTYPE))
        self.w = torch.nn.Parameter(torch.ones(3, dtype=DTYPE))


@pytest.mark.parametrize(
    "options",
    [{}, {"vectors_every": 2}, {"check_every": 3}],
    ids=["at-once", "vectors", "buffered"],
)
def test_sparse_gradients_are_checked_on_every_path(options: dict[str, Any]) -> None:
    """nn.Embedding(sparse=True): the gradient check reads the stored values of a sparse
    gradient; a NaN among them is named."""
    index = torch.tensor([1, 2, 2])

    def solver(objective: Any) -> Solver:
        model = _Embedded()
        problem = ConstrainedProblem(
            objective=objective,
            constraints=[Constraint("c", "<=", rhs=0.5, fn=lambda m, b: m.emb(index).sum(1))],
        )
        return Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.01), **options)

    fine = solver(lambda m, b: (m.emb(index) * m.w).pow(2).sum())
    for _ in range(6):
        fine.step()
    fine.flush()
    assert len(fine.history) == 6

    bad = solver(lambda m, b: (m.emb(index) * 0).pow(2).sqrt().sum() + m.w.sum())  # d/dx 0
    with pytest.raises(NonFiniteError, match=r"gradient of parameter\(s\) \['emb.weight'\]"):
        for _ in range(3):
            bad.step()
        bad.flush()
