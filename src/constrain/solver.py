"""The solver: sequences problem -> formulation -> controller -> primal optimizer -> prox ->
history, in one of four orders.

Each stage is its own object and the solver only calls them in order:

* the problem evaluates objective and constraints; the layout stacks them in standard form
  (:mod:`constrain.layout`);
* the dual side (:class:`constrain.duals.Duals`: formulation + controller + multipliers)
  gives the primal loss and takes the multiplier step;
* the primal optimizer(s) (any ``torch.optim``) step the model;
* the regularizer stage (:mod:`constrain.regularization`) runs the proximal steps;
* the recorder (:mod:`constrain.recording`) turns the stages' reports into a record, and
  the step log (:mod:`constrain._step_log`) checks the records and writes the history.

The step in progress and the order of its pieces live in :mod:`constrain._stepping`; the
dual-side schedules in :mod:`constrain._dual_schedules`.

One step can also be taken in pieces by the user's own loop (gradient clipping, AMP,
accumulation, several optimizers)::

    loss = solver.lagrangian(batch)      # evaluate once; primal loss at the multipliers
    loss.backward(); clip_grad_norm_(...); optimizer.step(); optimizer.zero_grad()
    solver.prox_step()                   # proximal steps of the regularizers
    solver.dual_step()                   # multiplier step; ends the step and records it

Host synchronisation: the steps only launch device work; each step's record (scalars,
vectors at a cadence, and the facts of the non-finite check) waits in a device buffer
(:mod:`constrain.recording`) that is copied to the host once every ``check_every`` steps
(default: every step, so one synchronisation per step), checked, and streamed to the
history.

In the default *simultaneous* order the multiplier step uses ``g(x_t)`` (evaluated by
``lagrangian``); in ``"dual_primal"`` it happens inside ``lagrangian`` (the primal loss
then uses ``lam_{t+1}``: the order of the nuPI paper's experiments); in ``"primal_dual"``
``dual_step`` evaluates the constraints again at ``x_{t+1}``; in ``"cgd"`` each step is
one competitive-gradient-descent step (:mod:`constrain._cgd_order`). See
docs/algorithms.md, 'Update orders'.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

import torch
from torch import Tensor, nn

from . import controllers as _controllers
from . import formulations as _formulations
from ._cgd_order import cgd_solver_step, check_cgd_options, check_cgd_solver
from ._checkpoint_state import load_solver_state, solver_state
from ._dual_schedules import DualSchedules
from ._errors import ConfigError, NonFiniteError, describe
from ._resume import DataCursor
from ._step_log import StepLog
from ._stepping import ORDER, Micro, StepInProgress, check_accumulate, expect
from .controllers import Controller, ControllerMap, ControllerSpec, ControllerState
from .duals import DualEvery, Duals, MaxMultiplier, NonFinitePolicy, Restart
from .formulations import Formulation
from .history import History, StepRecord
from .layout import ConstraintLayout, StackedConstraints
from .loggers import Logger
from .multipliers import Multipliers
from .primal import LocalReducer, OptimizerSpec, PrimalSide, SignalReducer, make_optimizer
from .problem import ConstrainedProblem, ProblemState, check_names, check_trainable
from .regularization import RegularizerStage
from .schedules import Schedule

__all__ = [
    "Order",
    "SignalReducer",
    "SolveResult",
    "Solver",
    "Stateful",
    "make_optimizer",
    "solve",
]

logger = logging.getLogger("constrain")
T = TypeVar("T")

Order = Literal["simultaneous", "dual_primal", "primal_dual", "cgd"]
_ORDERS = ("simultaneous", "dual_primal", "primal_dual", "cgd")


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (LR schedulers, scalers, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class _View(Generic[T]):
    """A read-only attribute of the solver that shows an attribute of one of its stages."""

    def __init__(self, stage: str, attribute: str, doc: str) -> None:
        self.stage, self.attribute, self.__doc__ = stage, attribute, doc

    @overload
    def __get__(self, obj: None, owner: type) -> _View[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> T | _View[T]:
        if obj is None:
            return self
        value: T = getattr(getattr(obj, self.stage), self.attribute)
        return value


class Solver:
    """Minibatch solver for a :class:`~constrain.problem.ConstrainedProblem`.

    Args:
        problem: The problem declaration.
        model: The ``nn.Module`` holding the primal variables (``constrain.Variables`` for
            plain tensors).
        optimizer: Any ``torch.optim.Optimizer`` over the model's parameters, or a list of
            them (e.g. SGD for the weights and Adam for gates); together they must own
            every parameter that a regularizer acts on.
        controller: Multiplier controller: a registered name, a mapping
            ``{"name": ..., **hyperparameters}`` or a :class:`Controller` instance; or
            per-group controllers, a mapping from constraint-name patterns to those
            (``{"budget": "gda", "parity*": {"name": "nupi", "kp": 5}}``; every group
            matched by exactly one pattern).
        formulation: ``"lagrangian"`` (default), ``"augmented_lagrangian"``,
            ``"quadratic_penalty"``, a mapping or a :class:`Formulation` instance.
        order: ``"simultaneous"``, ``"dual_primal"``, ``"primal_dual"`` or ``"cgd"``
            (competitive gradient descent, Schäfer & Anandkumar 2019: each step is the Nash
            equilibrium of the regularised bilinear game, solved by conjugate gradient on
            mixed Hessian-vector products; needs the ``lagrangian`` formulation, one
            ``gda`` controller whose ``lr`` is the multipliers' step size, one plain
            ``torch.optim.SGD`` whose ``lr`` is the primal step size, dense constraints
            only, and whole steps: :meth:`step` / :meth:`fit`).
        on_nonfinite: ``"raise"`` (default) stops with :class:`NonFiniteError` naming the
            constraint and the step when the step is checked (see ``check_every``; the
            multipliers keep their last finite values); ``"skip"`` skips such steps, which
            needs host decisions inside the step (``check_every=1``).
        record_every: Record every k-th step in the history (the last step of :meth:`fit`
            is always recorded).
        vectors_every: Keep the full violation and multiplier vectors every k-th step
            (default: ``ceil(n / 128)`` for ``n`` dense constraint entries, so that vectors
            cost at most about 256 numbers per step on average); per-group scalars are
            recorded at every step.
        check_every: Copy the steps' records to the host, check them for NaN/Inf and write
            them to the history every k-th step (and at the end of :meth:`fit`). The steps
            in between never synchronise with the device; the default 1 synchronises once
            per step.
        history: The :class:`History` to record into, e.g. ``History(stream=path)`` to
            stream it to a JSON Lines file (default: an in-memory history).
        loggers: Objects with ``log(record, history)`` and ``flush()`` (e.g.
            :class:`constrain.TensorBoardLogger`) that receive every record.
        dual_lr_schedule: The controller's step size ``lr`` per step: a callable of the
            step or a torch LR scheduler over a :class:`constrain.ScheduledValue`.
        penalty_schedule: The penalty coefficient of a penalty formulation per step
            (same kinds); replaces the formulation's own growth schedule.
        reducer: Cross-process reduction (default: :class:`DistributedReducer` when
            ``torch.distributed`` runs several ranks).
        max_multiplier: Upper bound on the multipliers (``[0, M]`` for inequalities,
            ``|mu| <= M`` for equalities): a number or ``{pattern: M}``; overrides the
            groups' declared ``Constraint.max_multiplier``.
        restart: Dual restarts (reset an inequality multiplier and its controller state
            when its constraint is strictly satisfied): ``True`` or ``{pattern: bool}``.
        dual_every: Multiplier step every ``k`` steps: an int or ``{pattern: k}``.
        rhs_schedule: Right-hand sides by constraint-name pattern that replace the
            declared ones: schedules (:mod:`constrain.schedules`) or numbers.
        cgd_tol: ``order="cgd"``: relative residual tolerance of conjugate gradient,
            ``> 0``.
        cgd_max_iter: ``order="cgd"``: cap on conjugate-gradient iterations per step
            (default ``None``: twice the solved player's size plus 10).

    Raises:
        ConfigError: For an unknown order/controller/formulation, ``order="cgd"`` with
            a formulation, controller, optimizer or ``dual_every`` it cannot run (or
            ``cgd_tol``/``cgd_max_iter`` that are invalid or given without it),
            optimizers that own no parameter of the model, a controller that cannot handle the problem, a bad
            interval, ``on_nonfinite="skip"`` with ``check_every > 1``, or a schedule of
            the wrong kind.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        model: nn.Module,
        optimizer: OptimizerSpec,
        *,
        controller: ControllerSpec | ControllerMap = "gda",
        formulation: str | Formulation | Mapping[str, Any] = "lagrangian",
        order: Order = "simultaneous",
        on_nonfinite: NonFinitePolicy = "raise",
        record_every: int = 1,
        vectors_every: int | None = None,
        check_every: int = 1,
        history: History | None = None,
        loggers: Sequence[Logger] = (),
        dual_lr_schedule: Schedule | None = None,
        penalty_schedule: Schedule | None = None,
        reducer: SignalReducer | None = None,
        max_multiplier: MaxMultiplier = None,
        restart: Restart = False,
        dual_every: DualEvery = 1,
        rhs_schedule: Mapping[str, Any] | None = None,
        cgd_tol: float = 1e-10,
        cgd_max_iter: int | None = None,
    ) -> None:
        _check_arguments(problem, model, order, on_nonfinite, record_every)
        check_cgd_options(order, cgd_tol, cgd_max_iter)
        _check_interval("vectors_every", vectors_every, allow_none=True)
        _check_interval("check_every", check_every)
        if on_nonfinite == "skip" and check_every != 1:
            raise ConfigError(
                f"on_nonfinite='skip' decides on the host inside each step and needs "
                f"check_every=1; got check_every={check_every}. Use on_nonfinite='raise' "
                "for steps without host synchronisation."
            )
        if history is not None and not isinstance(history, History):
            raise ConfigError(f"history must be a constrain.History; got {describe(history)}.")
        for k, sink in enumerate(loggers):
            if not (
                callable(getattr(sink, "log", None)) and callable(getattr(sink, "flush", None))
            ):
                raise ConfigError(
                    f"loggers[{k}] must have log(record, history) and flush() methods (e.g. a "
                    f"constrain.TensorBoardLogger); got {describe(sink)}."
                )
        self.problem, self.model, self.order = problem, model, order
        self.on_nonfinite: NonFinitePolicy = on_nonfinite
        self.record_every = record_every
        self.vectors_every = vectors_every
        self.check_every = check_every
        self.rhs_schedule = rhs_schedule
        self.duals = Duals(
            _controllers.build_controllers(controller),
            _formulations.build(formulation),
            on_nonfinite=on_nonfinite,
            max_multiplier=max_multiplier,
            restart=restart,
            dual_every=dual_every,
        )
        self.primal = PrimalSide(model, optimizer, reducer or _default_reducer(), on_nonfinite)
        self.regularizers = RegularizerStage(
            problem.regularizers, model, self.primal.group_of, self.primal.optimizers
        )
        self.schedules = DualSchedules(
            self.duals.controller, self.duals.formulation, dual_lr_schedule, penalty_schedule
        )
        self.loggers: list[Logger] = list(loggers)
        self.step_log = StepLog(
            history if history is not None else History(),
            self.loggers,
            record_every=record_every,
            vectors_every=vectors_every,
            check_every=check_every,
            on_nonfinite=on_nonfinite,
        )
        self.step_count = 0
        self.cursor = DataCursor()
        self.extra_state: dict[str, Stateful] = {}
        self._pending: StepInProgress | None = None
        self._trainable_checked = False
        self.cgd_tol, self.cgd_max_iter = float(cgd_tol), cgd_max_iter
        if order == "cgd":
            check_cgd_solver(self)

    # -- public state (read-only views of the stages) -------------------------------------
    optimizers = _View[list[torch.optim.Optimizer]](
        "primal", "optimizers", "The primal optimizers."
    )
    reducer = _View[SignalReducer]("primal", "reducer", "The cross-process reduction.")
    controller = _View[Controller | ControllerMap](
        "duals", "controller", "The multiplier controller (or the per-group controllers)."
    )
    formulation = _View[Formulation]("duals", "formulation", "The formulation.")
    layout = _View[ConstraintLayout | None]("duals", "layout", "The constraint layout.")
    multiplier_store = _View[Multipliers | None]("duals", "multipliers", "Raw multipliers.")
    indexed_state = _View[dict[str, ControllerState]](
        "duals", "indexed_state", "Controller state of each per-sample group."
    )

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The primal optimizer (the first one when there are several)."""
        return self.primal.optimizers[0]

    @property
    def multipliers(self) -> dict[str, Tensor]:
        """Current multipliers by constraint name (copies)."""
        return self.duals.named()

    @property
    def history(self) -> History:
        """The run's records (reading it first flushes the steps not yet copied to the
        host: one synchronisation)."""
        if self.step_log.buffered():
            self.flush()
        return self.step_log.history

    @history.setter
    def history(self, history: History) -> None:
        self.step_log.history = history

    def register_state(self, name: str, obj: Stateful) -> None:
        """Save and restore ``obj`` (an LR scheduler, a GradScaler, ...) with the solver.

        Raises:
            ConfigError: If ``obj`` lacks ``state_dict``/``load_state_dict`` or ``name`` is
                taken.
        """
        _check_stateful(name, obj, self.extra_state)
        self.extra_state[name] = obj

    def constraint_values(self, batch: Any = None) -> dict[str, Tensor]:
        """The constraints' left-hand sides at the current point (true values, not proxies,
        not standard form), evaluated without gradient."""
        return self.problem.constraint_values(self.model, batch)

    # -- checkpointing ------------------------------------------------------------------
    def initialise(self, batch: Any = None, data: Iterable[Any] | None = None) -> None:
        """Build the constraint layout and the initial multipliers from one evaluation
        (without gradient), without taking a step. Does nothing if already done.

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
            self._evaluate(batch)

    def state_dict(self) -> dict[str, Any]:
        """The whole solver state, as copies, made only of tensors and plain containers
        (``torch.load(..., weights_only=True)`` reads it). The format is described in
        :mod:`constrain._checkpoint_state` (model, optimizer(s), multipliers, controller,
        per-sample and formulation state, the history's stream position, schedules,
        registered objects, RNG states, data position, step count, and what the state
        belongs to). Flushes the buffered steps first.

        Raises:
            ConfigError: If called in the middle of a step (between :meth:`lagrangian` and
                :meth:`dual_step`).
        """
        if self._pending is not None:
            raise ConfigError(
                f"state_dict() was called in the middle of step {self.step_count} (after "
                "lagrangian(), before dual_step()); a resumed run could not continue it. "
                "Save between steps, after dual_step()."
            )
        self.flush()
        return solver_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so that the run continues bit-for-bit.

        The solver must be built like the saved one (same problem class, controller,
        formulation and optimizer types, a model with the same parameters, the same kinds
        of schedules). Multipliers are checked against the layout now if it is known
        (:meth:`initialise`), else at the first step. A history streaming to a file is
        truncated back to the checkpoint's position and continued. Version-1 and -2 states
        (which embed the history) load too.

        Raises:
            CheckpointError: Naming the part that does not match, what this solver expects
                and what the state holds.
        """
        self.step_log.recorder = None
        load_solver_state(self, state)

    # -- one step in pieces --------------------------------------------------------------
    def lagrangian(self, batch: Any = None, *, accumulate: bool = False) -> Tensor:
        """Start a step: evaluate objective and constraints once, return the primal loss.

        Then ``backward()``, the optimizer step(s), :meth:`prox_step`, :meth:`dual_step`.
        In the ``"dual_primal"`` order the multiplier step happens here, before the loss.

        With ``accumulate=True`` while a step is in progress, ``batch`` is one more
        micro-batch of that step (gradient accumulation): its primal loss is returned at
        the same multipliers, and the multiplier step averages the constraint signal over
        the micro-batches (the mean of the dense violations; the per-sample entries of all
        micro-batches, a sample seen twice counting once with its mean). Scale the losses
        by ``1 / k`` for the mean gradient, as usual.

        Raises:
            ConfigError: If the previous step was not finished with :meth:`dual_step`, or
                ``accumulate=True`` comes after the optimizer or multiplier step, or in the
                ``"dual_primal"`` order, or the controller extrapolates (extragradient:
                use :meth:`step`), or the order is ``"cgd"`` (whole steps only).
            NonFiniteError: With ``on_nonfinite="raise"``, a NaN/Inf objective or
                constraint is reported when the step is checked (:meth:`dual_step` with
                ``check_every=1``).
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
        pending = self._pending
        if accumulate and pending is not None:
            check_accumulate(pending, self.order, self.step_count)
        else:
            expect(pending, "lagrangian", self.step_count, idle=True)
        start = time.perf_counter()
        objective, stacked, state = self._evaluate(batch)
        if not self._trainable_checked and torch.is_grad_enabled() and self.primal.group_of:
            check_trainable(self.problem, state)
            self._trainable_checked = True
        micro = Micro(batch, objective, stacked, state)
        if pending is None:  # a new step
            self.schedules.apply_penalty(self.duals, self.step_count)
            pending = self._pending = StepInProgress([micro], start)
        else:
            pending.add(micro)
        if not self._host_check(objective, stacked):
            pending.skipped = pending.dual_done = True
            return objective.new_zeros((), requires_grad=objective.requires_grad)
        if self.order == "dual_primal":
            self._dual_update(pending, stacked)
            pending.dual_done = True
        return self._loss(objective, stacked)

    def prox_step(self) -> None:
        """Run the regularizers' proximal steps (after the optimizer step).

        Raises:
            ConfigError: If called outside a step or twice in one step."""
        pending = expect(self._pending, "prox_step", self.step_count)
        if pending.prox_done:
            raise ConfigError(
                f"prox_step() was called twice in step {self.step_count}; a step runs {ORDER}."
            )
        pending.prox_done = True
        if pending.gradients is None and self.on_nonfinite != "skip":
            # the user's own backward: check its gradients too (on the device, no sync)
            pending.gradients = self.primal.gradient_norms()
        if not pending.skipped:
            self.regularizers.apply()

    def dual_step(self) -> StepRecord | None:
        """The multiplier step; finishes the step and returns its record (``None`` when the
        step is not recorded, or not yet copied to the host: see ``check_every``).

        Raises:
            ConfigError: If called before :meth:`lagrangian`.
            NonFiniteError: With ``on_nonfinite="raise"``, if this step (or, with
                ``check_every > 1``, a step since the last check) had a NaN/Inf objective,
                constraint, gradient or multiplier proposal; names the first one.
            ShapeError: If per-sample indices left their range.
        """
        pending = expect(self._pending, "dual_step", self.step_count)
        if not pending.prox_done:
            self.prox_step()
        if not pending.dual_done:
            assert self.layout is not None
            stacked = pending.evaluation(self.layout)
            if self.order == "primal_dual":
                with torch.no_grad():
                    again = [self._evaluate(m.batch)[1] for m in pending.micro]
                stacked = self.layout.merge(again)
                pending.extra.append(stacked)
                if not self._host_check(None, stacked):
                    pending.skipped = True
            if not pending.skipped:
                self._dual_update(pending, stacked)
        self._pending = None
        assert self.layout is not None and self.duals.multipliers is not None
        record = self.step_log.add(
            self.step_count,
            pending,
            self.layout,
            self.duals.multipliers,
            self.duals.diagnostics(),
            self.regularizers.diagnostics,
            self.duals.controller.name,
        )
        self.step_count += 1
        self.schedules.advance()
        return record

    # -- one step -----------------------------------------------------------------------
    def step(self, batch: Any = None) -> StepRecord | None:
        """Run one step on ``batch``: :meth:`lagrangian`, backward, the optimizer step(s)
        (closure optimizers such as LBFGS get a closure), :meth:`prox_step`,
        :meth:`dual_step`. Returns the step's record (``None`` if not recorded or not yet
        copied to the host).

        Raises:
            NonFiniteError: If the objective, a constraint, a gradient or a multiplier
                proposal is NaN/Inf and ``on_nonfinite="raise"``; the message names the
                constraint (or parameter) and the step.
        """
        if self.order == "cgd":
            return cgd_solver_step(self, batch)
        if self.duals.controller.extrapolates:
            return _extragradient_step(self, batch)
        loss = self.lagrangian(batch)
        pending = self._pending
        assert pending is not None
        if not pending.skipped:
            self._backward(loss)
            self._optimizer_step(lambda: self._closure_loss(pending))
        self.prox_step()
        return self.dual_step()

    def flush(self) -> list[StepRecord]:
        """Copy the buffered steps to the host (one synchronisation), check them for
        NaN/Inf, record them in the history and hand them to the loggers; returns the new
        records. Runs by itself every ``check_every`` steps and at the end of :meth:`fit`.

        Raises:
            NonFiniteError: As :meth:`dual_step`.
        """
        return self.step_log.flush(self.step_count, None, self.duals.controller.name)

    def _loss(self, objective: Tensor, stacked: StackedConstraints) -> Tensor:
        return self.regularizers.penalty(self.duals.primal_loss(objective, stacked))

    def _primal_and_prox(self) -> None:
        self._optimizer_step(None)
        if self._pending is None or not self._pending.skipped:
            self.regularizers.apply()

    # -- helpers ------------------------------------------------------------------------
    def _evaluate(self, batch: Any) -> tuple[Tensor, StackedConstraints, ProblemState]:
        state = self.problem.evaluate(self.model, batch)
        if not isinstance(state, ProblemState):
            raise ConfigError(
                f"{type(self.problem).__name__}.evaluate() must return a ProblemState; got "
                f"{describe(state)}."
            )
        state = self.primal.reducer.reduce_state(self.problem, state)
        if not self.duals.ready:
            check_names(self.problem, state)
            layout = ConstraintLayout(self.problem, state, rhs_schedule=self.rhs_schedule)
            self.duals.initialise(layout)
            history = self.step_log.history
            if not history.labels:
                history.labels = layout.labels()
            if not history.groups:
                history.groups = list(layout.names)
        assert self.layout is not None
        return state.objective, self.layout.stack(state, self.step_count), state

    def _host_check(self, objective: Tensor | None, stacked: StackedConstraints) -> bool:
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

    def _dual_update(self, pending: StepInProgress, stacked: StackedConstraints) -> None:
        with self.schedules.controller(self.duals, self.step_count):
            pending.report = self.duals.step(stacked, self.step_count)

    def _backward(self, loss: Tensor) -> None:
        self.primal.backward(loss)
        pending = self._pending
        if pending is None:
            return
        if self.on_nonfinite == "skip":
            if not self.primal.check_gradients(self.step_count):
                pending.skipped = True
        else:
            pending.gradients = self.primal.gradient_norms()

    def _optimizer_step(self, closure: Callable[[], Tensor] | None) -> None:
        if self._pending is None or not self._pending.skipped:
            self.primal.step(closure)

    def _closure_loss(self, pending: StepInProgress) -> Tensor:
        """Re-evaluate the primal loss at the current point (for closure optimizers)."""
        with torch.enable_grad():
            objective, stacked, _ = self._evaluate(pending.micro[0].batch)
            loss = self._loss(objective, stacked)
            self._backward(loss)
        return loss.detach()

    # -- loops --------------------------------------------------------------------------
    def fit(
        self,
        data: Iterable[Any] | None = None,
        steps: int = 1000,
        *,
        batch: Any = None,
        progress: bool | None = None,
        callback: Callable[[Solver, StepRecord | None], None] | None = None,
    ) -> History:
        """Run ``steps`` steps and return the history.

        Args:
            data: An iterable of batches (a ``DataLoader``), re-iterated when exhausted;
                ``None`` to pass ``batch`` at every step.
            steps: Number of steps to run (from the current step count).
            batch: The fixed batch for full-batch problems (ignored when ``data`` is given).
            progress: Show a progress bar (default: only on an interactive terminal).
            callback: Called after every step with the solver and the step's record
                (``None`` on steps not recorded or not yet flushed).

        Raises:
            ConfigError: If ``steps`` is not a non-negative integer.
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ConfigError(f"steps must be a non-negative integer; got {steps!r}.")
        batches = self._batches(data) if data is not None else itertools.repeat(batch)
        self.step_log.last_step = self.step_count + steps - 1
        try:
            with _Progress(steps, progress) as bar:
                for _ in range(steps):
                    record = self.step(next(batches))
                    if callback is not None:
                        callback(self, record)
                    bar.update(self.step_count, record)
        finally:
            self.step_log.close()
        return self.step_log.history

    def _batches(self, data: Iterable[Any]) -> Iterator[Any]:
        """Endless batches of ``data`` through the resumable data cursor."""
        while True:
            yield self.cursor.next_batch(data)


def _extragradient_step(solver: Solver, batch: Any) -> StepRecord | None:
    """Extragradient (any order): look ahead with both players, then step from the
    original point with the look-ahead gradient and signal."""
    start = time.perf_counter()
    expect(solver._pending, "step", solver.step_count, idle=True)
    objective, stacked, state = solver._evaluate(batch)
    solver.schedules.apply_penalty(solver.duals, solver.step_count)
    pending = StepInProgress([Micro(batch, objective, stacked, state)], start, dual_done=True)
    pending.prox_done = True
    solver._pending = pending
    if not solver._host_check(objective, stacked):
        pending.skipped = True
        return solver.dual_step()
    snapshot = [p.detach().clone() for p in solver.model.parameters()]
    with solver.schedules.controller(solver.duals, solver.step_count):
        lookahead = solver.duals.lookahead(stacked, solver.step_count)
    solver._backward(solver._loss(objective, stacked))
    solver._primal_and_prox()
    with solver.duals.swapped(lookahead):
        objective_half, stacked_half, _ = solver._evaluate(batch)
        pending.extra.append(stacked_half)
        finite = solver._host_check(objective_half, stacked_half)
        if finite:
            solver._backward(solver._loss(objective_half, stacked_half))
    with torch.no_grad():
        for p, saved in zip(solver.model.parameters(), snapshot, strict=True):
            p.copy_(saved)
    if finite and not pending.skipped:
        solver._primal_and_prox()
        solver._dual_update(pending, stacked_half)
    else:
        pending.skipped = True
    return solver.dual_step()


def _check_interval(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}.")


def _check_arguments(
    problem: object, model: object, order: object, on_nonfinite: object, record_every: object
) -> None:
    """Validate the solver's arguments up front (:class:`ConfigError` naming each)."""
    if not isinstance(problem, ConstrainedProblem):
        raise ConfigError(
            f"problem must be a constrain.ConstrainedProblem; got {describe(problem)}."
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module (wrap plain tensors in constrain.Variables); "
            f"got {describe(model)}."
        )
    if order not in _ORDERS:
        raise ConfigError(f"order must be one of {list(_ORDERS)}; got {order!r}.")
    if on_nonfinite not in ("raise", "skip"):
        raise ConfigError(f"on_nonfinite must be 'raise' or 'skip'; got {on_nonfinite!r}.")
    if not isinstance(record_every, int) or isinstance(record_every, bool) or record_every < 1:
        raise ConfigError(f"record_every must be a positive integer; got {record_every!r}.")


def _check_stateful(name: str, obj: object, taken: Iterable[str]) -> None:
    if not (
        callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    ):
        raise ConfigError(
            f"register_state({name!r}, ...): expected an object with state_dict() and "
            f"load_state_dict(); got {describe(obj)}."
        )
    if name in taken:
        raise ConfigError(f"register_state: the name {name!r} is already registered.")


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
        import sys

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


@dataclass
class SolveResult:
    """What :func:`solve` returns.

    Attributes:
        model: The model (trained in place).
        multipliers: Final multipliers by constraint name.
        history: Per-step records.
        solver: The solver (to continue, checkpoint or inspect).
    """

    model: nn.Module
    multipliers: dict[str, Tensor]
    history: History
    solver: Solver

    @property
    def objective(self) -> float:
        """Final objective."""
        return self.history.last.objective

    @property
    def max_violation(self) -> float:
        """Final max violation."""
        return self.history.last.max_violation


def solve(
    problem: ConstrainedProblem,
    model: nn.Module,
    *,
    steps: int = 1000,
    lr: float = 1e-2,
    optimizer: str | torch.optim.Optimizer = "sgd",
    controller: ControllerSpec | ControllerMap = "gda",
    formulation: str | Formulation | Mapping[str, Any] = "lagrangian",
    order: Order = "simultaneous",
    batch: Any = None,
    data: Iterable[Any] | None = None,
    progress: bool | None = False,
    max_multiplier: MaxMultiplier = None,
    restart: Restart = False,
    dual_every: DualEvery = 1,
    rhs_schedule: Mapping[str, Any] | None = None,
    cgd_tol: float = 1e-10,
    cgd_max_iter: int | None = None,
    **optimizer_options: Any,
) -> SolveResult:
    """Full-batch (or minibatch, with ``data``) convenience around :class:`Solver`.

    Args:
        problem: The problem.
        model: The primal variables.
        steps: Number of steps.
        lr: Primal learning rate (when ``optimizer`` is a name).
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"adagrad"``,
            ``"lbfgs"`` or an optimizer instance.
        controller: Multiplier controller (name, mapping or instance), or per-group
            controllers ``{pattern: controller}``.
        formulation: Formulation (name, mapping or instance).
        order: Update order.
        batch: Fixed batch passed at every step.
        data: Iterable of batches instead of ``batch``.
        progress: Progress bar.
        max_multiplier: Multiplier bound (see :class:`Solver`).
        restart: Dual restarts (see :class:`Solver`).
        dual_every: Multiplier step every ``k`` steps (see :class:`Solver`).
        rhs_schedule: Right-hand-side overrides by pattern (see :class:`Solver`).
        cgd_tol: CG tolerance of ``order="cgd"`` (see :class:`Solver`).
        cgd_max_iter: CG iteration cap of ``order="cgd"`` (see :class:`Solver`).
        **optimizer_options: Extra optimizer arguments (e.g. ``momentum=0.9``).

    Example:
        >>> result = solve(problem, constrain.Variables(x=torch.zeros(3)), steps=500,
        ...                controller="nupi")  # doctest: +SKIP
    """
    _check_arguments(problem, model, order, "raise", 1)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, **optimizer_options)
    solver = Solver(
        problem,
        model,
        opt,
        controller=controller,
        formulation=formulation,
        order=order,
        max_multiplier=max_multiplier,
        restart=restart,
        dual_every=dual_every,
        rhs_schedule=rhs_schedule,
        cgd_tol=cgd_tol,
        cgd_max_iter=cgd_max_iter,
    )
    history = solver.fit(data, steps, batch=batch, progress=progress)
    return SolveResult(model, solver.multipliers, history, solver)
