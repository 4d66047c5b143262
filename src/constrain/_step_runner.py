"""The step runner: builds the solver's stages and takes its steps, piece by piece.

:class:`StepRunner` holds the stages a step goes through (the problem and the model, the
dual side, the primal side, the regularizers, the dual-side schedules and the step log)
and the step counter, and runs a step's pieces in order::

    start(batch)  -> evaluate once; the primal loss (``Solver.lagrangian``)
    prox()        -> the proximal steps (``Solver.prox_step``)
    finish()      -> the multiplier step; record the step (``Solver.dual_step``)
    step(batch)   -> a whole step: the pieces above with backward and the optimizer
                     step, the extragradient step of an extrapolating controller, or
                     the ``"cgd"`` order's step
    run(...)      -> steps in a loop (``Solver.fit``)

The step in progress that the pieces hand to each other, and the checks of their order,
are in :mod:`constrain._stepping`; the ``"cgd"`` order's whole step is in
:mod:`constrain._cgd_order`. See docs/algorithms.md, 'Update orders'.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import controllers as _controllers
from . import formulations as _formulations
from ._arguments import Order, check_arguments
from ._cgd_order import cgd_solver_step, check_cgd_solver
from ._dual_schedules import DualSchedules
from ._errors import ConfigError, NonFiniteError, describe
from ._step_log import StepLog
from ._stepping import ORDER, Micro, StepInProgress, check_accumulate, expect
from .controllers import ControllerMap, ControllerSpec
from .duals import DualEvery, Duals, MaxMultiplier, NonFinitePolicy, Restart
from .formulations import Formulation
from .history import History, StepRecord
from .layout import ConstraintLayout, StackedConstraints
from .loggers import Logger
from .primal import LocalReducer, OptimizerSpec, PrimalSide, SignalReducer
from .problem import (
    ConstrainedProblem,
    ProblemState,
    check_names,
    check_objective,
    check_trainable,
)
from .regularization import RegularizerStage
from .schedules import Schedule

__all__ = ["StepRunner"]

logger = logging.getLogger("constrain")


class StepRunner:
    """Runs the steps of one solver over its stages (see the module docstring);
    :meth:`build` builds the stages from the solver's arguments.

    Args:
        problem: The problem declaration.
        model: The module holding the primal variables.
        order: The update order: ``"simultaneous"``, ``"dual_primal"``, ``"primal_dual"``
            or ``"cgd"`` (whose whole steps :mod:`constrain._cgd_order` takes).
        on_nonfinite: ``"raise"`` or ``"skip"``.
        rhs_schedule: Right-hand-side overrides by pattern, for the constraint layout.
        duals: The dual side.
        primal: The primal side.
        regularizers: The regularizer stage.
        schedules: The dual-side schedules.
        step_log: The step log (records and history).
        cgd_tol: ``order="cgd"``: relative residual tolerance of conjugate gradient.
        cgd_max_iter: ``order="cgd"``: cap on conjugate-gradient iterations per step.

    Attributes:
        step_count: The number of finished steps (the index of the next step).
        pending: The step in progress, between :meth:`start` and :meth:`finish`.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        model: nn.Module,
        *,
        order: Order,
        on_nonfinite: NonFinitePolicy,
        rhs_schedule: Mapping[str, Any] | None,
        duals: Duals,
        primal: PrimalSide,
        regularizers: RegularizerStage,
        schedules: DualSchedules,
        step_log: StepLog,
        cgd_tol: float = 1e-10,
        cgd_max_iter: int | None = None,
    ) -> None:
        self.problem, self.model, self.order = problem, model, order
        self.on_nonfinite, self.rhs_schedule = on_nonfinite, rhs_schedule
        self.duals, self.primal, self.regularizers = duals, primal, regularizers
        self.schedules, self.step_log = schedules, step_log
        self.cgd_tol, self.cgd_max_iter = cgd_tol, cgd_max_iter
        self.step_count = 0
        self.pending: StepInProgress | None = None
        self._trainable_checked = False

    @classmethod
    def build(
        cls,
        problem: ConstrainedProblem,
        model: nn.Module,
        optimizer: OptimizerSpec,
        *,
        controller: ControllerSpec | ControllerMap,
        formulation: str | Formulation | Mapping[str, Any],
        order: Order,
        on_nonfinite: NonFinitePolicy,
        record_every: int,
        vectors_every: int | None,
        check_every: int,
        history: History | None,
        loggers: Sequence[Logger],
        dual_lr_schedule: Schedule | None,
        penalty_schedule: Schedule | None,
        reducer: SignalReducer | None,
        max_multiplier: MaxMultiplier,
        restart: Restart,
        dual_every: DualEvery,
        rhs_schedule: Mapping[str, Any] | None,
        cgd_tol: float,
        cgd_max_iter: int | None,
    ) -> StepRunner:
        """Validate the arguments of :class:`constrain.Solver` (documented there), build
        the stages from them and the runner over them.

        Raises:
            ConfigError: As :class:`constrain.Solver`.
        """
        check_arguments(
            problem,
            model,
            order,
            on_nonfinite,
            record_every,
            cgd_tol=cgd_tol,
            cgd_max_iter=cgd_max_iter,
            vectors_every=vectors_every,
            check_every=check_every,
            history=history,
            loggers=loggers,
        )
        duals = Duals(
            _controllers.build_controllers(controller),
            _formulations.build(formulation),
            on_nonfinite=on_nonfinite,
            max_multiplier=max_multiplier,
            restart=restart,
            dual_every=dual_every,
        )
        primal = PrimalSide(model, optimizer, reducer or _default_reducer(), on_nonfinite)
        regularizers = RegularizerStage(
            problem.regularizers, model, primal.group_of, primal.optimizers
        )
        schedules = DualSchedules(
            duals.controller, duals.formulation, dual_lr_schedule, penalty_schedule
        )
        step_log = StepLog(
            history if history is not None else History(),
            list(loggers),
            record_every=record_every,
            vectors_every=vectors_every,
            check_every=check_every,
            on_nonfinite=on_nonfinite,
        )
        runner = cls(
            problem,
            model,
            order=order,
            on_nonfinite=on_nonfinite,
            rhs_schedule=rhs_schedule,
            duals=duals,
            primal=primal,
            regularizers=regularizers,
            schedules=schedules,
            step_log=step_log,
            cgd_tol=float(cgd_tol),
            cgd_max_iter=cgd_max_iter,
        )
        if order == "cgd":
            check_cgd_solver(runner)
        return runner

    @property
    def layout(self) -> ConstraintLayout | None:
        """The constraint layout (``None`` before the first evaluation)."""
        return self.duals.layout

    def initialise(self, batch: Any = None, data: Iterable[Any] | None = None) -> None:
        """Build the layout and the initial multipliers from one evaluation without
        gradient (on ``batch``, or the first batch of ``data``), unless already done.

        Raises:
            ConfigError: If ``data`` yields no batch.
        """
        if self.duals.ready:
            return
        if data is not None:
            try:
                batch = next(iter(data))
            except StopIteration:
                raise ConfigError("the data iterable yielded no batch; it is empty.") from None
        with torch.no_grad():
            self.evaluate(batch)

    # -- one step in pieces --------------------------------------------------------------
    def start(self, batch: Any, *, accumulate: bool = False) -> Tensor:
        """Start a step (or add a micro-batch to it): evaluate once and return the primal
        loss; in the ``"dual_primal"`` order take the multiplier step first.

        Raises:
            ConfigError: As :meth:`constrain.Solver.lagrangian`.
        """
        if self.duals.controller.extrapolates:
            raise ConfigError(
                f"the {self.duals.controller.name!r} controller evaluates the problem twice "
                "per step (a look-ahead, then the step); run it with Solver.step() or "
                "Solver.fit(), not with lagrangian()/dual_step()."
            )
        if self.order == "cgd":
            raise ConfigError(
                "order='cgd' computes both players' updates together from one evaluation "
                "(the equilibrium of the local game); run it with Solver.step() or "
                "Solver.fit(), not with lagrangian()/dual_step()."
            )
        pending = self.pending
        if pending is not None:
            if accumulate:
                check_accumulate(pending, self.order, self.step_count)
            else:
                expect(pending, "lagrangian", self.step_count, idle=True)  # raises
        start = time.perf_counter()
        objective, stacked, state = self.evaluate(batch)
        if not self._trainable_checked and torch.is_grad_enabled() and self.primal.group_of:
            check_trainable(self.problem, state)
            self._trainable_checked = True
        micro = Micro(batch, objective, stacked, state)
        if pending is None:  # a new step
            if self.schedules:
                self.schedules.apply_penalty(self.duals, self.step_count)
            pending = self.pending = StepInProgress([micro], start)
        else:
            pending.add(micro)
        if not self.host_check(objective, stacked):
            pending.skipped = pending.dual_done = True
            return objective.new_zeros((), requires_grad=objective.requires_grad)
        if self.order == "dual_primal":
            self.dual_update(pending, stacked)
            pending.dual_done = True
        return self.loss(objective, stacked)

    def prox(self) -> None:
        """Run the proximal steps of the step in progress.

        Raises:
            ConfigError: As :meth:`constrain.Solver.prox_step`.
        """
        pending = self.pending
        if pending is None or pending.prox_done:
            self._out_of_order("prox_step")
        assert pending is not None
        pending.prox_done = True
        if pending.gradients is None and self.on_nonfinite != "skip":
            # the gradients the optimizer step used (the user's own backward too): their
            # norms go to the flush (on the device, no sync)
            pending.gradients = self.primal.gradient_norms()
        if self.regularizers.active and not pending.skipped:
            self.regularizers.apply()

    def finish(self) -> StepRecord | None:
        """The multiplier step (and the proximal steps if not run yet); ends the step and
        records it.

        Raises:
            ConfigError, NonFiniteError, ShapeError: As :meth:`constrain.Solver.dual_step`.
        """
        pending = self.pending
        if pending is None:
            self._out_of_order("dual_step")
        assert pending is not None
        if not pending.prox_done:
            self.prox()
        duals = self.duals
        layout = duals.layout
        assert layout is not None
        if not pending.dual_done:
            stacked = pending.evaluation(layout)
            if self.order == "primal_dual":
                with torch.no_grad():
                    again = [self.evaluate(m.batch)[1] for m in pending.micro]
                stacked = layout.merge(again)
                pending.extra.append(stacked)
                if not self.host_check(None, stacked):
                    pending.skipped = True
            if not pending.skipped:
                self.dual_update(pending, stacked, last=True)
        self.pending = None
        record = self.record(pending, layout)
        if self.schedules:
            self.schedules.advance()
        return record

    def record(self, pending: StepInProgress, layout: ConstraintLayout) -> StepRecord | None:
        """Hand the ended step to the step log (which undoes its multiplier update if the
        flush finds the proposal non-finite) and count it; returns its record, if any.

        Raises:
            NonFiniteError, ShapeError: As :meth:`StepLog.add`.
        """
        duals = self.duals
        assert duals.multipliers is not None
        report = pending.report
        restore = (
            None
            if report is None or report.previous is None
            else functools.partial(duals.restore, report)
        )
        try:
            record = self.step_log.add(
                self.step_count,
                pending,
                layout,
                duals.multipliers,
                duals.diagnostics() if duals.reports else {},
                self.regularizers.diagnostics if self.regularizers.counts_clusters else None,
                duals.controller.name,
                restore=restore,
            )
        except BaseException:
            if restore is not None:  # an error came before the flush checked the update
                restore()
            raise
        self.step_count += 1
        return record

    def _out_of_order(self, what: str) -> None:
        """Raise the error of a piece ``what`` called out of order (no step in progress,
        or a second prox step).

        Raises:
            ConfigError: Always, naming the expected order.
        """
        pending = expect(self.pending, what, self.step_count)
        if what == "prox_step" and pending.prox_done:
            raise ConfigError(
                f"prox_step() was called twice in step {self.step_count}; a step runs {ORDER}."
            )

    # -- one step -----------------------------------------------------------------------
    def step(self, batch: Any) -> StepRecord | None:
        """One whole step: :meth:`start`, backward, the optimizer step(s) (closure
        optimizers get a closure), :meth:`prox`, :meth:`finish`; the ``"cgd"`` order's
        step, or the extragradient step for an extrapolating controller.

        Raises:
            NonFiniteError: As :meth:`constrain.Solver.step`.
        """
        if self.order == "cgd":
            return cgd_solver_step(self, batch)
        if self.duals.controller.extrapolates:
            return self.extragradient_step(batch)
        if (
            self.order == "simultaneous"
            and self.pending is None
            and self.on_nonfinite == "raise"
            and self._trainable_checked
            and not self.schedules
            and not self.regularizers.active
            and not self.primal.needs_closure
        ):
            return self.simultaneous_step(batch)
        loss = self.start(batch)
        pending = self.pending
        assert pending is not None
        if not pending.skipped:
            self.backward(loss)
            self.optimizer_step(
                (lambda: self.closure_loss(pending)) if self.primal.needs_closure else None
            )
        self.prox()
        return self.finish()

    def simultaneous_step(self, batch: Any) -> StepRecord | None:
        """A whole step of the ``"simultaneous"`` order without what is not in use: no
        step in progress, ``on_nonfinite="raise"``, no schedule, no regularizer, no
        closure optimizer, the first step's checks done. The calls of :meth:`start`,
        backward, the optimizer step, :meth:`prox` and :meth:`finish`, in their order,
        without their checks of the order and their branches for the options above (the
        step's hot path; the tests hold it to the pieces, bit for bit). If a hook of
        backward or of the optimizer ran a piece of the step from inside it, the step
        goes on with :meth:`prox` and :meth:`finish`, which check the order."""
        start = time.perf_counter()
        objective, stacked, state = self.evaluate(batch)
        pending = self.pending = StepInProgress([Micro(batch, objective, stacked, state)], start)
        primal, duals = self.primal, self.duals
        primal.backward(duals.primal_loss(objective, stacked))
        primal.step(None)
        if self.pending is not pending or pending.prox_done or len(pending.micro) > 1:
            # a hook ran a piece of this step from inside it: the pieces check the order
            self.prox()
            return self.finish()
        pending.prox_done = True
        pending.measure_gradients = primal.gradient_norms  # read when the step is recorded
        step = self.step_count
        pending.report = duals.step(stacked, step, guard=not self.step_log.due(step))
        self.pending = None
        layout = duals.layout
        assert layout is not None and duals.multipliers is not None
        if not duals.reports:  # no diagnostics: the step log may record the step at once
            record = self.step_log.add_at_once(self.step_count, pending, layout, duals.multipliers)
            if record is not False:
                self.step_count += 1
                return record
        return self.record(pending, layout)

    def extragradient_step(self, batch: Any) -> StepRecord | None:
        """Extragradient (any order): look ahead with both players, then step from the
        original point with the look-ahead gradient and signal."""
        start = time.perf_counter()
        expect(self.pending, "step", self.step_count, idle=True)
        objective, stacked, state = self.evaluate(batch)
        self.schedules.apply_penalty(self.duals, self.step_count)
        pending = StepInProgress([Micro(batch, objective, stacked, state)], start, dual_done=True)
        pending.prox_done = True
        self.pending = pending
        if not self.host_check(objective, stacked):
            pending.skipped = True
            return self.finish()
        snapshot = [p.detach().clone() for p in self.model.parameters()]
        with self.schedules.controller(self.duals, self.step_count):
            lookahead = self.duals.lookahead(stacked, self.step_count)
        self.backward(self.loss(objective, stacked))
        self.primal_and_prox()
        with self.duals.swapped(lookahead):
            objective_half, stacked_half, _ = self.evaluate(batch)
            pending.extra.append(stacked_half)
            finite = self.host_check(objective_half, stacked_half)
            if finite:
                self.backward(self.loss(objective_half, stacked_half))
                if self.on_nonfinite != "skip":
                    pending.gradients = self.primal.gradient_norms()
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), snapshot, strict=True):
                p.copy_(saved)
        if finite and not pending.skipped:
            self.primal_and_prox()
            self.dual_update(pending, stacked_half, last=True)
        else:
            pending.skipped = True
        return self.finish()

    def run(
        self,
        batches: Iterator[Any],
        steps: int,
        *,
        progress: bool | None,
        after_step: Callable[[StepRecord | None], None] | None,
    ) -> History:
        """Take ``steps`` steps on the next ``batches`` (a progress bar if asked; the last
        step always recorded), calling ``after_step`` with each step's record; then close
        the step log (its history's stream and loggers flushed) and return the history."""
        self.step_log.last_step = self.step_count + steps - 1
        try:
            with _Progress(steps, progress) as bar:
                for _ in range(steps):
                    record = self.step(next(batches))
                    if after_step is not None:
                        after_step(record)
                    bar.update(self.step_count, record)
        finally:
            self.step_log.close()
        return self.step_log.history

    # -- the pieces' pieces -------------------------------------------------------------
    def evaluate(self, batch: Any) -> tuple[Tensor, StackedConstraints, ProblemState]:
        """Evaluate the problem at the current point and stack its constraints; the first
        evaluation builds the layout and the initial multipliers.

        Raises:
            ConfigError: If the problem's ``evaluate`` does not return a ProblemState.
        """
        state = self.problem.evaluate(self.model, batch)
        if not isinstance(state, ProblemState):
            raise ConfigError(
                f"{type(self.problem).__name__}.evaluate() must return a ProblemState; got "
                f"{describe(state)}."
            )
        check_objective(self.problem, state.objective)
        if not self.primal.local:
            state = self.primal.reducer.reduce_state(self.problem, state)
        layout = self.duals.layout
        if layout is None or self.duals.multipliers is None:
            check_names(self.problem, state)
            layout = ConstraintLayout(
                self.problem,
                state,
                rhs_schedule=self.rhs_schedule,
                share_values=self.duals.formulation.linear_terms,
            )
            self.duals.initialise(layout)
            history = self.step_log.history
            if not history.labels:
                history.labels = layout.labels()
            if not history.groups:
                history.groups = list(layout.names)
        return state.objective, layout.stack(state, self.step_count), state

    def host_check(self, objective: Tensor | None, stacked: StackedConstraints) -> bool:
        """``on_nonfinite="skip"``: check an evaluation on the host (one synchronisation)
        and return False (with a warning) if the step must be skipped. Otherwise nothing
        is checked here: the step's record carries the facts to the next flush."""
        if self.on_nonfinite != "skip":
            return True
        assert self.layout is not None
        try:
            self.layout.check_finite(objective, stacked, self.step_count)
        except NonFiniteError:
            logger.warning("step %d skipped: non-finite objective or constraint", self.step_count)
            return False
        return True

    def dual_update(
        self, pending: StepInProgress, stacked: StackedConstraints, *, last: bool = False
    ) -> None:
        """The multiplier step on ``stacked`` (under the scheduled step size). ``last``:
        nothing else runs before the step is recorded; if the step is then flushed, the
        flush checks the update on the host (see ``Duals.step``'s ``guard``)."""
        guard = not (last and self.step_log.due(self.step_count))
        with self.schedules.controller(self.duals, self.step_count):
            pending.report = self.duals.step(stacked, self.step_count, guard=guard)

    def backward(self, loss: Tensor) -> None:
        """Backward through ``loss``; with ``on_nonfinite="skip"``, check the gradients on
        the host (a non-finite one skips the step). Otherwise their norms are noted after
        the optimizer step (:meth:`prox`), from the gradients it used, for the flush."""
        self.primal.backward(loss)
        if self.on_nonfinite == "skip":
            pending = self.pending
            if pending is not None and not self.primal.check_gradients(self.step_count):
                pending.skipped = True

    def optimizer_step(self, closure: Callable[[], Tensor] | None) -> None:
        """The optimizer step(s), unless the step is skipped."""
        if self.pending is None or not self.pending.skipped:
            self.primal.step(closure)

    def closure_loss(self, pending: StepInProgress) -> Tensor:
        """Re-evaluate the primal loss at the current point (for closure optimizers)."""
        with torch.enable_grad():
            objective, stacked, _ = self.evaluate(pending.micro[0].batch)
            loss = self.loss(objective, stacked)
            self.backward(loss)
        return loss.detach()

    def loss(self, objective: Tensor, stacked: StackedConstraints) -> Tensor:
        """The primal loss: the formulation's loss at the multipliers, plus the smooth
        penalties of the regularizers."""
        loss = self.duals.primal_loss(objective, stacked)
        return self.regularizers.penalty(loss) if self.regularizers.active else loss

    def primal_and_prox(self) -> None:
        """The optimizer step(s) and the proximal steps, unless the step is skipped."""
        self.optimizer_step(None)
        if self.regularizers.active and (self.pending is None or not self.pending.skipped):
            self.regularizers.apply()


def _default_reducer() -> SignalReducer:
    """:class:`~constrain.distributed.DistributedReducer` when torch.distributed runs
    several ranks, else the no-op reducer."""
    from . import distributed

    if distributed.is_distributed():
        return distributed.DistributedReducer()
    return LocalReducer()


class _Progress:
    """A tqdm progress bar (only on a terminal by default, and only if tqdm is installed)."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        self.bar: Any = None
        if enabled if enabled is not None else sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="constrain", unit="step", leave=False)

    def __enter__(self) -> _Progress:
        return self

    def update(self, step_count: int, record: StepRecord | None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if record is not None and step_count % 50 == 0:
            self.bar.set_postfix(obj=f"{record.objective:.4g}", viol=f"{record.max_violation:.3g}")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
