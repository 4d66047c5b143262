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

The solver is the public face of the loop; the step runner
(:mod:`constrain._step_runner`) builds the stages from the solver's arguments (validated
up front by :mod:`constrain._arguments`) and takes the steps. The step in progress and
the order of its pieces live in :mod:`constrain._stepping`; the dual-side schedules in
:mod:`constrain._dual_schedules`.

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

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, overload

import torch
from torch import Tensor, nn

from ._arguments import Order, check_arguments, check_stateful
from ._checkpoint_state import load_solver_state, solver_state
from ._errors import ConfigError
from ._resume import DataCursor
from ._step_runner import StepRunner
from .controllers import Controller, ControllerMap, ControllerSpec, ControllerState
from .duals import DualEvery, MaxMultiplier, NonFinitePolicy, Restart
from .formulations import Formulation
from .history import History, StepRecord
from .layout import ConstraintLayout
from .loggers import Logger
from .multipliers import Multipliers
from .primal import OptimizerSpec, SignalReducer, make_optimizer
from .problem import ConstrainedProblem
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

T = TypeVar("T")


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

    def __set__(self, obj: object, value: object) -> None:
        raise AttributeError(
            f"Solver.{self.attribute} is fixed when the solver is built (its stages hold "
            "it); build a new Solver with the setting you want."
        )


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
        self.runner = StepRunner.build(
            problem,
            model,
            optimizer,
            controller=controller,
            formulation=formulation,
            order=order,
            on_nonfinite=on_nonfinite,
            record_every=record_every,
            vectors_every=vectors_every,
            check_every=check_every,
            history=history,
            loggers=loggers,
            dual_lr_schedule=dual_lr_schedule,
            penalty_schedule=penalty_schedule,
            reducer=reducer,
            max_multiplier=max_multiplier,
            restart=restart,
            dual_every=dual_every,
            rhs_schedule=rhs_schedule,
            cgd_tol=cgd_tol,
            cgd_max_iter=cgd_max_iter,
        )
        self.problem, self.model = problem, model
        self.duals, self.primal = self.runner.duals, self.runner.primal
        self.regularizers, self.schedules = self.runner.regularizers, self.runner.schedules
        self.step_log = self.runner.step_log
        self.loggers: list[Logger] = self.step_log.loggers
        self.cursor = DataCursor()
        self.extra_state: dict[str, Stateful] = {}

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
    order = _View[Order]("runner", "order", "The update order.")
    on_nonfinite = _View[NonFinitePolicy]("runner", "on_nonfinite", "The NaN/Inf policy.")
    rhs_schedule = _View[Mapping[str, Any] | None](
        "runner", "rhs_schedule", "Right-hand sides replacing the declared ones."
    )
    cgd_tol = _View[float]("runner", "cgd_tol", "order='cgd': conjugate-gradient tolerance.")
    cgd_max_iter = _View[int | None]("runner", "cgd_max_iter", "order='cgd': CG iteration cap.")
    record_every = _View[int]("step_log", "record_every", "Record every k-th step.")
    vectors_every = _View[int | None]("step_log", "vectors_every", "Vectors every k-th step.")
    check_every = _View[int]("step_log", "check_every", "Host check every k-th step.")

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

    @property
    def step_count(self) -> int:
        """The number of finished steps (the index of the next step)."""
        return self.runner.step_count

    @step_count.setter
    def step_count(self, step_count: int) -> None:
        self.runner.step_count = step_count

    def register_state(self, name: str, obj: Stateful) -> None:
        """Save and restore ``obj`` (an LR scheduler, a GradScaler, ...) with the solver.

        Raises:
            ConfigError: If ``obj`` lacks ``state_dict``/``load_state_dict`` or ``name`` is
                taken.
        """
        check_stateful(name, obj, self.extra_state)
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
        self.runner.initialise(batch, data)

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
        if self.runner.pending is not None:
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
        return self.runner.start(batch, accumulate=accumulate)

    def prox_step(self) -> None:
        """Run the regularizers' proximal steps (after the optimizer step).

        Raises:
            ConfigError: If called outside a step or twice in one step."""
        self.runner.prox()

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
        return self.runner.finish()

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
        return self.runner.step(batch)

    def flush(self) -> list[StepRecord]:
        """Copy the buffered steps to the host (one synchronisation), check them for
        NaN/Inf, record them in the history and hand them to the loggers; returns the new
        records. Runs by itself every ``check_every`` steps and at the end of :meth:`fit`.

        Raises:
            NonFiniteError: As :meth:`dual_step`.
        """
        return self.step_log.flush(self.step_count, None, self.duals.controller.name)

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
        batches = self.cursor.batches(data) if data is not None else itertools.repeat(batch)
        after_step = None if callback is None else functools.partial(callback, self)
        return self.runner.run(batches, steps, progress=progress, after_step=after_step)


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
    on_nonfinite: NonFinitePolicy = "raise",
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
        on_nonfinite: ``"raise"`` or ``"skip"`` (see :class:`Solver`).
        **optimizer_options: Extra optimizer arguments (e.g. ``momentum=0.9``).

    Example:
        >>> result = solve(problem, constrain.Variables(x=torch.zeros(3)), steps=500,
        ...                controller="nupi")  # doctest: +SKIP
    """
    check_arguments(problem, model, order, on_nonfinite, 1)
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
        on_nonfinite=on_nonfinite,
    )
    history = solver.fit(data, steps, batch=batch, progress=progress)
    return SolveResult(model, solver.multipliers, history, solver)
