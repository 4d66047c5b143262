"""The ``"cgd"`` update order: one competitive-gradient-descent step per solver step.

Each step evaluates the problem once, inside the closure that builds the Lagrangian

    L(x, lam) = f(x) + lam . g~(x) + lam . (g(x) - g~(x))|detached  (+ smooth penalties)

as a function of the primal parameters ``x`` (read from the model) and the dense
multipliers ``lam`` (``g~``: the values the primal player sees, proxies where given; the
detached correction makes ``grad_lam L`` the true violation ``g``, the signal of the other
orders, and is exactly 0 without proxies). :func:`constrain._cgd.cgd_step` returns the
Nash equilibrium ``(dx, dlam)`` of the regularised bilinear game with ``eta_x`` the primal
SGD's ``lr`` and ``eta_lam`` the ``gda`` controller's ``lr``; the solver adds ``dx`` to the
parameters, runs the proximal steps, and hands ``lam + dlam`` to the dual side, which
projects it (``lam >= 0`` for inequalities, the bounds, the restarts), checks it for
NaN/Inf and keeps it, so records, history and checkpoints work as in the other orders.

Schäfer & Anandkumar, "Competitive Gradient Descent", NeurIPS 2019. See
docs/algorithms.md, 'Update orders', and docs/papers/competitive-gradient-descent.md.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from pydantic import PrivateAttr
from torch import Tensor

from ._cgd import CGDStep, cgd_step
from ._errors import ConfigError, NonFiniteError, describe
from ._stepping import Micro, StepInProgress, expect
from .controllers import ControllerMap, ControllerState
from .controllers.gda import GDA
from .layout import StackedConstraints
from .problem import ProblemState

if TYPE_CHECKING:
    from ._step_runner import StepRunner
    from .history import StepRecord

__all__ = ["CGD_METRICS", "check_cgd_options", "check_cgd_solver", "cgd_solver_step"]

logger = logging.getLogger("constrain")

CGD_METRICS = (
    "cgd/hvp",
    "cgd/evaluations",
    "cgd/cg_iterations",
    "cgd/residual",
    "cgd/frozen",
)
"""The metrics each ``"cgd"`` step records (``StepRecord.metrics``): mixed Hessian-vector products, gradient
evaluations plus products (the step's cost in gradient evaluations), CG iterations, CG's
final relative residual, and the inequality multipliers held at 0 for the step."""


class _GivenUpdate(GDA):
    """The multiplier update computed by the CGD step, in the controller's place for one
    :meth:`~constrain.duals.Duals.step` (``lam + dlam``; stateless like ``gda``)."""

    _delta: Tensor = PrivateAttr()

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``lam + dlam`` and the (empty) state."""
        return multipliers + self._delta.to(multipliers), {}


def check_cgd_options(order: object, cgd_tol: object, cgd_max_iter: object) -> None:
    """Validate ``cgd_tol`` and ``cgd_max_iter`` (and that they come with ``order="cgd"``).

    Raises:
        ConfigError: Naming the option, what was expected and what was received.
    """
    if (
        isinstance(cgd_tol, bool)
        or not isinstance(cgd_tol, (int, float))
        or not math.isfinite(cgd_tol)
        or cgd_tol <= 0
    ):
        raise ConfigError(
            f"cgd_tol (the relative residual tolerance of conjugate gradient in "
            f"order='cgd') must be a finite number > 0, e.g. 1e-10; got {describe(cgd_tol)}."
        )
    if cgd_max_iter is not None and (
        isinstance(cgd_max_iter, bool) or not isinstance(cgd_max_iter, int) or cgd_max_iter < 1
    ):
        raise ConfigError(
            "cgd_max_iter (the cap on conjugate-gradient iterations per step in order='cgd') "
            f"must be a positive integer or None (twice the solved player's size plus 10); "
            f"got {describe(cgd_max_iter)}."
        )
    if order != "cgd" and (cgd_tol != 1e-10 or cgd_max_iter is not None):
        raise ConfigError(
            f"cgd_tol and cgd_max_iter set the conjugate-gradient solve of order='cgd'; the "
            f"order is {order!r}. Drop them or pass order='cgd'."
        )


def check_cgd_solver(runner: StepRunner) -> None:
    """Refuse what ``order="cgd"`` cannot run (called when the solver is built).

    CGD replaces both update rules: it needs the ``lagrangian`` formulation, one plain
    ``gda`` controller (its ``lr`` is ``eta_lam``) and one ``torch.optim.SGD`` without
    momentum, weight decay, Nesterov or ``maximize`` and with one ``lr`` (``eta_x``), and
    multiplier steps at every step.

    Raises:
        ConfigError: Naming the part that does not fit and what is expected.
    """
    formulation = runner.duals.formulation
    if formulation.name != "lagrangian":
        raise ConfigError(
            f"order='cgd' plays the game min_x max_lam L(x, lam) = f + lam . g of the "
            f"'lagrangian' formulation; got formulation {formulation.name!r}. Use "
            "formulation='lagrangian' (or another order for penalty formulations)."
        )
    controller = runner.duals.controller
    if isinstance(controller, ControllerMap) or type(controller) is not GDA:
        name = controller.name if not isinstance(controller, ControllerMap) else "per-group"
        raise ConfigError(
            "order='cgd' computes the multiplier step itself and takes its step size from "
            f"one 'gda' controller (lr = eta of the multipliers); got controller {name!r}. "
            "Use controller={'name': 'gda', 'lr': ...}."
        )
    optimizers = runner.primal.optimizers
    expected = (
        "one torch.optim.SGD with momentum=0, weight_decay=0, nesterov=False, "
        "maximize=False and one lr for every parameter group (its lr is CGD's primal step "
        "size eta)"
    )
    if len(optimizers) != 1 or type(optimizers[0]) is not torch.optim.SGD:
        got = ", ".join(type(o).__name__ for o in optimizers)
        raise ConfigError(f"order='cgd' needs {expected}; got optimizer(s) {got}.")
    for k, group in enumerate(optimizers[0].param_groups):
        for option, plain in (
            ("momentum", 0),
            ("dampening", None),
            ("weight_decay", 0),
            ("nesterov", False),
            ("maximize", False),
        ):
            if plain is not None and group.get(option, plain) != plain:
                raise ConfigError(
                    f"order='cgd' needs {expected}; parameter group {k} of the SGD optimizer "
                    f"has {option}={group[option]!r}."
                )
    _primal_lr(runner)
    if not runner.primal.local:
        raise ConfigError(
            "order='cgd' differentiates one process's Lagrangian twice and does not combine "
            "Hessian-vector products across processes; got the reducer "
            f"{type(runner.primal.reducer).__name__}. Run it in a single process, without a "
            "reducer."
        )
    if runner.regularizers.has_prox:
        raise ConfigError(
            "order='cgd' cannot run proximal regularizers: the multiplier step anticipates "
            "the primal gradient step, which the prox then changes, so the game settles on "
            "an infeasible point. Give the regularizer as a smooth penalty "
            "(Regularizer(penalty=...)), or use another order with the prox."
        )
    if runner.duals.dual_every != 1:
        raise ConfigError(
            "order='cgd' moves the multipliers at every step (the primal player anticipates "
            f"their move); got dual_every={runner.duals.dual_every!r}. Drop dual_every."
        )


def _primal_lr(runner: StepRunner) -> float:
    groups = runner.primal.optimizers[0].param_groups
    rates = {float(g["lr"]) for g in groups}
    if len(rates) != 1:
        raise ConfigError(
            "order='cgd' takes one primal step size eta from the SGD optimizer, but its "
            f"parameter groups have the learning rates {sorted(rates)}; give them one lr."
        )
    (lr,) = rates
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(
            f"order='cgd': the SGD optimizer's lr (the primal step size eta) must be finite "
            f"and > 0; it is {lr!r}."
        )
    return lr


def cgd_solver_step(runner: StepRunner, batch: Any) -> StepRecord | None:
    """One ``"cgd"`` step of the solver's ``runner`` on ``batch`` (see the module
    docstring).

    Raises:
        ConfigError: For per-sample constraints, or a scheduled multiplier step size or an
            SGD learning rate that is not > 0.
        NonFiniteError: With ``on_nonfinite="raise"``, for a NaN/Inf objective, constraint
            or gradient of ``L``, naming the constraint (or the quantity) and the step.
    """
    start = time.perf_counter()
    step = runner.step_count
    expect(runner.pending, "step", step, idle=True)
    if not runner.duals.ready:
        # The set-up evaluation leaves the random state as it found it, so that a resumed
        # run (which sets up again) draws the same numbers as the run it continues.
        cuda = {p.device.index or 0 for p in runner.model.parameters() if p.device.type == "cuda"}
        with torch.random.fork_rng(devices=sorted(cuda)):
            runner.initialise(batch)
    layout, duals = runner.layout, runner.duals
    assert layout is not None and duals.multipliers is not None
    if layout.per_sample:
        raise ConfigError(
            "order='cgd' plays the game on the dense multipliers; the per-sample constraint "
            f"group(s) {[c.name for c in layout.per_sample]} are not supported. Use another "
            "order for problems with per-sample constraints."
        )
    eta = _primal_lr(runner)
    runner.schedules.apply_penalty(duals, step)
    params = [p for group in runner.primal.optimizers[0].param_groups for p in group["params"]]
    params = [p for p in params if p.requires_grad]
    evaluated: list[tuple[Tensor, StackedConstraints, ProblemState]] = []
    formulation, fstate = duals.formulation, duals.formulation_state

    def lagrangian(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
        objective, stacked, state = runner.evaluate(batch)
        evaluated.append((objective, stacked, state))
        lam = ys[0].to(stacked.primal.dtype)
        value = objective + formulation.terms(lam, stacked.primal, stacked.equality, fstate)
        value = value + lam @ (stacked.violation - stacked.primal.detach())  # grad_lam = g
        return runner.regularizers.penalty(value)

    with runner.schedules.controller(duals, step):
        controller = duals.controller
        assert isinstance(controller, GDA)
        eta_dual = float(controller.lr)
        if not math.isfinite(eta_dual) or eta_dual <= 0:
            raise ConfigError(
                f"order='cgd' in step {step}: the multiplier step size (the gda controller's "
                f"lr, from dual_lr_schedule) is {eta_dual!r}; CGD needs it finite and > 0."
            )
        result: CGDStep | None = None
        failure: NonFiniteError | None = None
        try:
            result = cgd_step(
                params,
                [duals.multipliers.dense],
                lagrangian,
                eta,
                eta_dual=eta_dual,
                tol=runner.cgd_tol,
                max_iter=runner.cgd_max_iter,
                nonnegative=[~layout.equality],
            )
        except NonFiniteError as exc:
            if not evaluated:
                raise
            failure = exc
        objective, stacked, state = evaluated[0]
        pending = StepInProgress([Micro(batch, objective, stacked, state)], start)
        pending.prox_done = pending.dual_done = True
        runner.pending = pending
        if failure is not None or result is None:
            if runner.on_nonfinite == "skip":
                logger.warning("step %d skipped: non-finite Lagrangian or gradient", step)
                pending.skipped = True
                return runner.finish()
            runner.pending = None
            layout.check_finite(objective, stacked, step)  # names a non-finite constraint
            raise NonFiniteError(
                f"step {step} (order='cgd'): {failure}; expected finite values of the "
                "objective, the constraints and their gradients."
            ) from failure
        with torch.no_grad():
            for p, dx in zip(params, result.primal, strict=True):
                p.add_(dx)
        runner.regularizers.apply()
        given = _GivenUpdate(lr=eta_dual)
        given._delta = result.dual[0]
        duals.controller = given
        try:
            pending.report = duals.step(stacked, step)
        finally:
            duals.controller = controller
    if not result.converged:
        logger.warning(
            "step %d: conjugate gradient stopped at relative residual %.3g after %d "
            "iterations (cgd_tol=%g, cgd_max_iter=%s)",
            step,
            result.residual,
            result.cg_iterations,
            runner.cgd_tol,
            runner.cgd_max_iter,
        )
    values = (
        result.hvps,
        result.evaluations,
        result.cg_iterations,
        result.residual,
        result.frozen,
    )
    pending.rule_metrics = {
        name: torch.tensor(float(v), dtype=layout.dtype, device=layout.device)
        for name, v in zip(CGD_METRICS, values, strict=True)
    }
    return runner.finish()
