"""Schedules of the controller's step size and of the penalty (a callable of the step or
a torch scheduler over a ScheduledValue), their errors, and bit-exact resume with them
and with a primal LR scheduler registered with the solver."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from constrain import (
    CheckpointError,
    ConfigError,
    ConstrainedProblem,
    Constraint,
    History,
    ScheduledValue,
    Solver,
    Variables,
    schedules,
)
from constrain.checkpoint import load_checkpoint, save_checkpoint

DTYPE = torch.float64


def _fixed() -> ConstrainedProblem:
    """min (x - 3)^2 s.t. x <= 1; with primal lr 0, x stays at 3: the violation is 2."""
    return ConstrainedProblem(
        objective=lambda m, b: (m.x - 3).pow(2).sum(),
        constraints=[Constraint("cap", "<=", rhs=1.0, fn=lambda m, b: m.x.sum())],
    )


def _frozen(**options: Any) -> Solver:
    model = Variables(x=torch.full((1,), 3.0, dtype=DTYPE))
    return Solver(_fixed(), model, torch.optim.SGD(model.parameters(), lr=0.0), **options)


def test_callable_dual_lr_schedule() -> None:
    """GDA with lr_t = 0.1 (t + 1) and a constant violation 2: lam_T = sum_t 0.2 (t + 1)."""
    solver = _frozen(controller="gda", dual_lr_schedule=lambda t: 0.1 * (t + 1))
    solver.fit(steps=5)
    assert solver.multipliers["cap"].item() == pytest.approx(0.2 * 15, abs=1e-12)
    assert solver.controller.lr == 1e-2  # the configured controller is unchanged


def test_torch_scheduler_dual_lr_schedule() -> None:
    """StepLR halving every 2 steps from 0.4: steps use 0.4, 0.4, 0.2, 0.2, 0.1."""
    value = ScheduledValue(0.4)
    scheduler = torch.optim.lr_scheduler.StepLR(value, step_size=2, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()"
        solver = _frozen(controller="gda", dual_lr_schedule=scheduler)
        solver.fit(steps=5)
    assert solver.multipliers["cap"].item() == pytest.approx(2 * (0.4 + 0.4 + 0.2 + 0.2 + 0.1))
    assert value.value == pytest.approx(0.1)  # what step 5 would use


def test_penalty_schedule_sets_the_penalty_of_each_step() -> None:
    solver = _frozen(
        controller="gda",
        formulation={"name": "augmented_lagrangian", "penalty": 1.0},
        penalty_schedule=lambda t: 2.0**t,
    )
    history = solver.fit(steps=4)
    assert [r.penalty for r in history] == [1.0, 2.0, 4.0, 8.0]


def test_registered_schedules_drive_the_dual_step_size_and_the_penalty() -> None:
    """A registered schedule (constrain.schedules.Linear, the rhs schedules' kind) is a
    callable of the step, so it serves as dual_lr_schedule and penalty_schedule too: GDA
    with lr_t = 0.1 + 0.1 t (t < 4, then 0.4) and a constant violation 2, and the penalty
    1, 2, 3, 4 of a linear schedule over 3 steps."""
    lr = schedules.Linear(start=0.1, end=0.4, steps=3)
    solver = _frozen(controller="gda", dual_lr_schedule=lr)
    solver.fit(steps=5)
    expected = 2 * (0.1 + 0.2 + 0.3 + 0.4 + 0.4)
    assert solver.multipliers["cap"].item() == pytest.approx(expected, abs=1e-12)
    penalty = schedules.build({"name": "linear", "start": 1.0, "end": 4.0, "steps": 3})
    solver = _frozen(
        controller="gda",
        formulation={"name": "augmented_lagrangian", "penalty": 1.0},
        penalty_schedule=penalty,
    )
    history = solver.fit(steps=5)
    assert [r.penalty for r in history] == pytest.approx([1.0, 2.0, 3.0, 4.0, 4.0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"penalty_schedule": lambda t: 1.0},
            "penalty_schedule needs a formulation with a penalty",
        ),
        (
            {
                "formulation": {"name": "quadratic_penalty", "schedule": {"growth": 2.0}},
                "penalty_schedule": lambda t: 1.0,
            },
            "replaces the formulation's own schedule",
        ),
        ({"dual_lr_schedule": 0.1}, "expected a callable of the step or a torch LR scheduler"),
        (
            {
                "formulation": {"name": "augmented_lagrangian", "updater": "multiplicative"},
                "penalty_schedule": lambda t: 1.0,
            },
            "keeps one penalty per constraint entry with a feasibility-driven updater",
        ),
        (
            {
                "formulation": {"name": "quadratic_penalty", "penalty": {"cap": 2.0}},
                "penalty_schedule": lambda t: 1.0,
            },
            r"per-group penalties \(a penalty mapping\)",
        ),
        (
            {"controller": {"cap": "gda"}, "dual_lr_schedule": lambda t: 0.1},
            "dual_lr_schedule sets the step size of one controller",
        ),
    ],
    ids=[
        "no-penalty",
        "two-schedules",
        "not-a-schedule",
        "schedule-and-updater",
        "schedule-and-penalty-map",
        "lr-schedule-per-group",
    ],
)
def test_schedule_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _frozen(**options)


def test_scheduler_of_another_optimizer_and_bad_values_are_refused() -> None:
    model = Variables(x=torch.zeros(1, dtype=DTYPE))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"built on a constrain\.ScheduledValue"):
        _frozen(dual_lr_schedule=torch.optim.lr_scheduler.StepLR(sgd, 2))
    solver = _frozen(dual_lr_schedule=lambda t: math.nan)
    with pytest.raises(
        ConfigError, match=r"dual_lr_schedule gave nan at step 0; expected a finite number >= 0"
    ):
        solver.step()
    with pytest.raises(ConfigError, match="ScheduledValue needs a finite number"):
        ScheduledValue(math.inf)


class Regression(ConstrainedProblem):
    """A noisy minibatch problem (the RNG matters on resume)."""

    def objective(self, model: Any, batch: Any) -> torch.Tensor:
        noise = 1 + 0.01 * torch.randn((), dtype=DTYPE)
        return noise * (model.w - torch.tensor([2.0, -1.0], dtype=DTYPE)).pow(2).sum()

    from constrain import constraint as _c

    @_c("<=", rhs=1.0)
    def norm(self, model: Any, batch: Any) -> torch.Tensor:
        return model.w.pow(2).sum()


def _scheduled(stream: Path) -> Solver:
    torch.manual_seed(0)
    model = Variables(w=torch.zeros(2, dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    dual = torch.optim.lr_scheduler.CosineAnnealingLR(ScheduledValue(0.5), T_max=10)
    penalty = torch.optim.lr_scheduler.ExponentialLR(ScheduledValue(0.5), gamma=1.1)
    solver = Solver(
        Regression(),
        model,
        optimizer,
        controller={"name": "nupi", "lr": 0.5, "kp": 0.3},
        formulation={"name": "augmented_lagrangian", "penalty": 0.5},
        dual_lr_schedule=dual,
        penalty_schedule=penalty,
        history=History(stream=stream),
    )
    solver.register_state("lr", torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7))
    return solver


def test_resume_with_schedulers_is_bit_exact(tmp_path: Path) -> None:
    """Dual step-size and penalty schedulers (checkpointed by the solver) and a primal LR
    scheduler (registered): 7 + 9 steps equal 16, state and stream alike."""
    reference = _scheduled(tmp_path / "a.jsonl")
    reference.fit(steps=16)
    first = _scheduled(tmp_path / "b.jsonl")
    first.fit(steps=7)
    path = save_checkpoint(tmp_path / "c.pt", first)
    first.fit(steps=2)
    resumed = _scheduled(tmp_path / "b.jsonl")
    resumed.load_state_dict(load_checkpoint(path)["solver"])
    resumed.fit(steps=9)
    assert torch.equal(resumed.model.w, reference.model.w)
    assert torch.equal(resumed.multipliers["norm"], reference.multipliers["norm"])
    assert resumed.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]
    for name in ("dual_lr", "penalty"):
        ours, theirs = resumed.schedules[name].scheduler, reference.schedules[name].scheduler
        assert ours is not None and theirs is not None
        assert ours.get_last_lr() == theirs.get_last_lr()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_a_checkpoint_without_the_scheduler_is_refused(tmp_path: Path) -> None:
    plain = _frozen()
    plain.fit(steps=2)
    scheduled = _frozen(dual_lr_schedule=torch.optim.lr_scheduler.StepLR(ScheduledValue(0.1), 2))
    with pytest.raises(
        CheckpointError, match="dual_lr_schedule: this run schedules with a torch scheduler"
    ):
        scheduled.load_state_dict(plain.state_dict())


def test_schedule_values_from_numpy_and_tensors_are_numbers() -> None:
    import numpy as np

    for value in (np.float32(0.5), np.array(0.5), torch.tensor(0.5)):
        solver = _frozen(controller="gda", dual_lr_schedule=lambda t, v=value: v)
        solver.fit(steps=1)
        assert solver.multipliers["cap"].item() == pytest.approx(1.0)
    assert ScheduledValue(np.float32(0.25)).value == 0.25


def test_schedulers_stepped_outside_the_solver_or_twice_are_refused() -> None:
    value = ScheduledValue(0.4)
    scheduler = torch.optim.lr_scheduler.StepLR(value, step_size=1, gamma=0.5)
    with pytest.raises(ConfigError, match="are the same object"):
        _frozen(
            formulation={"name": "augmented_lagrangian", "penalty": 1.0},
            dual_lr_schedule=scheduler,
            penalty_schedule=scheduler,
        )
    solver = _frozen(controller="gda", dual_lr_schedule=scheduler)
    solver.step()
    value.step()
    scheduler.step()  # a user's own loop stepping it too
    with pytest.raises(ConfigError, match="stepped outside the solver"):
        solver.step()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(ScheduledValue(0.1))
    with pytest.raises(ConfigError, match="ReduceLROnPlateau needs a metric"):
        _frozen(dual_lr_schedule=plateau)


def test_a_checkpoint_with_a_schedule_is_refused_by_a_solver_without(tmp_path: Path) -> None:
    solver = _frozen(controller="gda", dual_lr_schedule=lambda t: 0.1)
    solver.fit(steps=2)
    save_checkpoint(tmp_path / "ck.pt", solver)
    plain = _frozen(controller="gda")
    with pytest.raises(CheckpointError, match="dual_lr_schedule"):
        plain.load_state_dict(load_checkpoint(tmp_path / "ck.pt")["solver"])
