"""The solver loop: problem -> formulation -> controller -> primal optimizer -> prox -> history.

:class:`Solver` only sequences the stages; each stage is a plain function call on tensors.
One step in the default *simultaneous* order:

1. ``state = problem.evaluate(model, batch)``; stack constraints into standard form;
2. ``loss = formulation.primal_loss(f, g~, lam_t)``; ``loss.backward()``;
3. ``lam_{t+1} = project(controller.update(lam_t, formulation.dual_signal(g)))``;
4. ``optimizer.step()``; apply each regularizer's prox;
5. append a :class:`~constrain.history.StepRecord`.

``order="dual_primal"`` performs step 3 before step 2 (the primal player sees
``lam_{t+1}``; the order of the nuPI paper's experiments), ``order="primal_dual"``
performs step 4 first and evaluates the constraints again at ``x_{t+1}`` for step 3.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from . import controllers as _controllers
from . import formulations as _formulations
from ._errors import CheckpointError, ConfigError, NonFiniteError, describe
from ._registry import Registry
from ._resume import DataCursor, get_rng_state, set_rng_state
from .controllers import Controller, ControllerState
from .formulations import Formulation, FormulationState
from .history import History, StepRecord
from .multipliers import ConstraintLayout, Multipliers, StackedConstraints
from .problem import ConstrainedProblem, ProblemState, Regularizer, check_names

__all__ = ["Order", "SignalReducer", "SolveResult", "Solver", "solve"]

logger = logging.getLogger("constrain")

Order = Literal["simultaneous", "dual_primal", "primal_dual"]
_ORDERS = ("simultaneous", "dual_primal", "primal_dual")


class SignalReducer(Protocol):
    """Combines evaluations and gradients across processes.

    The default does nothing; :class:`constrain.distributed.DistributedReducer` makes every
    evaluation global (:meth:`reduce_state`) and averages gradients over
    ``torch.distributed`` ranks so that every rank holds identical multipliers and
    parameters.
    """

    def reduce_state(self, problem: ConstrainedProblem, state: ProblemState) -> ProblemState: ...

    def reduce_gradients(self, model: nn.Module) -> None: ...

    def reduce_objective(self, value: Tensor) -> Tensor: ...

    def reduce_dense(self, signal: Tensor) -> Tensor: ...

    def reduce_indexed(self, indices: Tensor, signal: Tensor) -> tuple[Tensor, Tensor]: ...


class _LocalReducer:
    def reduce_state(self, problem: ConstrainedProblem, state: ProblemState) -> ProblemState:
        return state

    def reduce_gradients(self, model: nn.Module) -> None:
        return None

    def reduce_objective(self, value: Tensor) -> Tensor:
        return value

    def reduce_dense(self, signal: Tensor) -> Tensor:
        return signal

    def reduce_indexed(self, indices: Tensor, signal: Tensor) -> tuple[Tensor, Tensor]:
        return indices, signal


@dataclass
class _ProxTarget:
    regularizer: Regularizer
    fn: Callable[..., Tensor]
    params: list[tuple[str, nn.Parameter, int]]  # (name, parameter, optimizer group index)


class Solver:
    """Minibatch solver for a :class:`~constrain.problem.ConstrainedProblem`.

    Args:
        problem: The problem declaration.
        model: The ``nn.Module`` holding the primal variables (``constrain.Variables`` for
            plain tensors).
        optimizer: Any ``torch.optim.Optimizer`` over the model's parameters.
        controller: Multiplier controller: a registered name, a mapping
            ``{"name": ..., **hyperparameters}`` or a :class:`Controller` instance.
        formulation: ``"lagrangian"`` (default), ``"augmented_lagrangian"``,
            ``"quadratic_penalty"``, a mapping or a :class:`Formulation` instance.
        order: ``"simultaneous"``, ``"dual_primal"`` or ``"primal_dual"``.
        on_nonfinite: ``"raise"`` (default) stops with :class:`NonFiniteError` naming the
            constraint and the step; ``"skip"`` skips the step and records it.
        record_every: Record every k-th step in the history (the last step is always
            recorded when :meth:`fit` ends).
        reducer: Cross-process signal reduction (see :mod:`constrain.distributed`).

    Raises:
        ConfigError: For an unknown order/controller/formulation, an optimizer that does
            not own the model's parameters, or a controller that cannot handle the
            problem's constraints.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        controller: str | Controller | Mapping[str, Any] = "gda",
        formulation: str | Formulation | Mapping[str, Any] = "lagrangian",
        order: Order = "simultaneous",
        on_nonfinite: Literal["raise", "skip"] = "raise",
        record_every: int = 1,
        reducer: SignalReducer | None = None,
    ) -> None:
        if not isinstance(problem, ConstrainedProblem):
            raise ConfigError(
                f"problem must be a constrain.ConstrainedProblem; got {describe(problem)}."
            )
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model must be a torch.nn.Module (wrap plain tensors in constrain.Variables); "
                f"got {describe(model)}."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer must be a torch.optim.Optimizer instance; got {describe(optimizer)}."
            )
        if order not in _ORDERS:
            raise ConfigError(f"order must be one of {list(_ORDERS)}; got {order!r}.")
        if on_nonfinite not in ("raise", "skip"):
            raise ConfigError(f"on_nonfinite must be 'raise' or 'skip'; got {on_nonfinite!r}.")
        if not isinstance(record_every, int) or record_every < 1:
            raise ConfigError(f"record_every must be a positive integer; got {record_every!r}.")
        self.problem = problem
        self.model = model
        self.optimizer = optimizer
        self.controller = _controllers.build(controller)
        self.formulation = _formulations.build(formulation)
        self.order: Order = order
        self.on_nonfinite = on_nonfinite
        self.record_every = record_every
        self.reducer: SignalReducer = reducer or _default_reducer()
        self._group_of = self._map_parameter_groups()
        self._prox_targets, self._penalties = self._resolve_regularizers()
        self.step_count = 0
        self.layout: ConstraintLayout | None = None
        self._multipliers: Multipliers | None = None
        self.controller_state: ControllerState = {}
        self.indexed_state: dict[str, ControllerState] = {}
        self.formulation_state: FormulationState = {}
        self.history = History()
        self._always_record = -1
        self._indexed_equality: dict[str, bool] = {}
        self._cursor = DataCursor()
        self._pending_duals: dict[str, Any] | None = None
        self._step_skipped = False

    # -- set-up -------------------------------------------------------------------------
    def _map_parameter_groups(self) -> dict[int, int]:
        group_of: dict[int, int] = {}
        for k, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                group_of[id(p)] = k
        owned = [name for name, p in self.model.named_parameters() if id(p) in group_of]
        if not owned and any(True for _ in self.model.parameters()):
            raise ConfigError(
                "the optimizer does not own any parameter of the model; build it from "
                "model.parameters() (or named groups of them)."
            )
        return group_of

    def _resolve_regularizers(
        self,
    ) -> tuple[list[_ProxTarget], list[tuple[Regularizer, list[nn.Parameter]]]]:
        named = list(self.model.named_parameters())
        proxes: list[_ProxTarget] = []
        penalties: list[tuple[Regularizer, list[nn.Parameter]]] = []
        for reg in self.problem.regularizers:
            if reg.params is None:
                chosen = named
            else:
                chosen = [
                    (n, p)
                    for n, p in named
                    if any(fnmatch.fnmatchcase(n, pat) for pat in reg.params)
                ]
                if not chosen:
                    raise ConfigError(
                        f"regularizer {reg.label!r}: params {list(reg.params)} match no parameter "
                        f"of the model; parameters: {[n for n, _ in named]}."
                    )
            if reg.penalty is not None:
                penalties.append((reg, [p for _, p in chosen]))
                continue
            if isinstance(reg.prox, str):
                from . import prox as _prox

                fn = _prox.get(reg.prox)
            else:
                fn = reg.prox
            targets = []
            for n, p in chosen:
                if id(p) not in self._group_of:
                    raise ConfigError(
                        f"regularizer {reg.label!r} acts on parameter {n!r}, which the "
                        "optimizer does not own; its step size is unknown."
                    )
                targets.append((n, p, self._group_of[id(p)]))
            proxes.append(_ProxTarget(reg, fn, targets))
        return proxes, penalties

    def _initialise(self, state: ProblemState) -> None:
        check_names(self.problem, state)
        layout = ConstraintLayout(self.problem, state)
        if layout.has_equality and not self.controller.supports_equality:
            raise ConfigError(
                f"controller {self.controller.name!r} only handles inequality constraints "
                "(it keeps multipliers non-negative) but the problem has equality "
                f"constraints; use e.g. 'gda' or 'nupi'."
            )
        self.layout = layout
        initial = self.controller.initial_multipliers(
            torch.zeros(layout.num_dense, dtype=layout.dtype, device=layout.device)
        )
        self._multipliers = layout.init_multipliers(initial)
        self.controller_state = self.controller.init(self._multipliers.dense)
        self.indexed_state = {
            name: self.controller.init(lam) for name, lam in self._multipliers.per_sample.items()
        }
        self.formulation_state = self.formulation.init_state(layout)
        self._indexed_equality = {c.name: c.is_equality for c in layout.per_sample}
        self.history = History(layout.labels())
        if self._pending_duals is not None:
            pending, self._pending_duals = self._pending_duals, None
            self._load_duals(pending)

    # -- public state -------------------------------------------------------------------
    @property
    def multipliers(self) -> dict[str, Tensor]:
        """Current multipliers by constraint name (copies)."""
        if self._multipliers is None or self.layout is None:
            return {}
        out = {k: v.clone() for k, v in self.layout.split(self._multipliers.dense).items()}
        out.update({k: v.clone() for k, v in self._multipliers.per_sample.items()})
        return out

    def constraint_values(self, batch: Any = None) -> dict[str, Tensor]:
        """Evaluate the constraints' left-hand sides at the current point (no gradient).

        Returns the true values (not proxies, not standard form) by constraint name.
        """
        from .problem import as_constraint_value

        with torch.no_grad():
            state = self.problem.evaluate(self.model, batch)
        return {
            name: as_constraint_value(name, raw).value.detach()
            for name, raw in state.constraints.items()
        }

    @property
    def multiplier_store(self) -> Multipliers | None:
        """The raw multiplier storage (``None`` before the first step)."""
        return self._multipliers

    # -- checkpointing ------------------------------------------------------------------
    def initialise(self, batch: Any = None, data: Iterable[Any] | None = None) -> None:
        """Build the constraint layout and the initial multipliers from one evaluation
        (without gradient), without taking a step. Does nothing if already done.

        Lets :meth:`load_state_dict` check a checkpoint's constraint layout at once instead
        of at the first step. With ``data`` the first batch of a fresh pass is evaluated.
        May draw random numbers; :meth:`load_state_dict` restores the random states.

        Raises:
            ConfigError: If ``data`` yields no batch.
        """
        if self.layout is not None:
            return
        if data is not None:
            iterator = iter(data)
            try:
                batch = next(iterator)
            except StopIteration:
                raise ConfigError("the data iterable yielded no batch; it is empty.") from None
        with torch.no_grad():
            self._evaluate(batch)

    def state_dict(self) -> dict[str, Any]:
        """The whole solver state, as copies, made only of tensors and plain containers
        (so that ``torch.load(..., weights_only=True)`` can read it back).

        Keys: ``version``; what the state belongs to: ``problem`` (class name),
        ``hyperparameters``, ``layout`` (:meth:`ConstraintLayout.signature`; ``None`` before
        the first step), ``controller`` and ``formulation`` (specs), ``optimizer_type``,
        ``order``, ``record_every``; the state itself: ``step_count``, ``model``,
        ``optimizer``, ``multipliers`` (``dense`` and ``per_sample``), ``controller_state``,
        ``indexed_state``, ``formulation_state``, ``history`` (:meth:`History.to_dict`),
        ``rng`` (torch, CUDA, numpy and Python generators) and ``data`` (the position in
        the data stream).
        """
        multipliers = None
        if self._multipliers is not None:
            multipliers = {
                "dense": self._multipliers.dense,
                "per_sample": self._multipliers.per_sample,
            }
        controller = {"name": self.controller.name, **self.controller.model_dump(mode="json")}
        formulation = {"name": self.formulation.name, **self.formulation.model_dump(mode="json")}
        return {
            "version": SOLVER_STATE_VERSION,
            "problem": type(self.problem).__name__,
            "hyperparameters": self.problem.hyperparameters(),
            "layout": None if self.layout is None else self.layout.signature(),
            "controller": controller,
            "formulation": formulation,
            "optimizer_type": type(self.optimizer).__name__,
            "order": self.order,
            "record_every": self.record_every,
            "step_count": self.step_count,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "multipliers": _clone_tree(multipliers),
            "controller_state": _clone_tree(self.controller_state),
            "indexed_state": _clone_tree(self.indexed_state),
            "formulation_state": _clone_tree(self.formulation_state),
            "history": self.history.to_dict(),
            "rng": get_rng_state(),
            "data": self._cursor.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`, so that the run continues
        bit-for-bit as if it had never stopped.

        The solver must be built like the saved one: same problem class, controller,
        formulation and optimizer type, and a model with the same parameter names, shapes
        and dtypes. The random generators are restored too. A last history record that
        only exists because the saved run's :meth:`fit` ended there (off the
        ``record_every`` grid) is dropped, so that the resumed history equals an
        uninterrupted one. Multipliers and controller state are checked against this
        problem's constraint layout now if it is known (see :meth:`initialise`), otherwise
        at the first step.

        Raises:
            CheckpointError: Naming the part that does not match, what this solver expects
                and what the state holds.
        """
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"a solver state must be a mapping from Solver.state_dict(); got {describe(state)}."
            )
        try:
            self._load_state(state)
        except KeyError as exc:
            raise CheckpointError(
                f"the solver state lacks the entry {exc.args[0]!r}; it was not written by "
                "Solver.state_dict() of this version."
            ) from None

    def _load_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != SOLVER_STATE_VERSION:
            raise CheckpointError(
                f"unsupported solver state version: expected {SOLVER_STATE_VERSION}, got "
                f"{state.get('version')!r}."
            )
        _expect_equal("problem", type(self.problem).__name__, state["problem"])
        _expect_equal("controller", self.controller.name, state["controller"].get("name"))
        _expect_equal("formulation", self.formulation.name, state["formulation"].get("name"))
        _expect_equal("optimizer type", type(self.optimizer).__name__, state["optimizer_type"])
        own_controller = {"name": self.controller.name, **self.controller.model_dump(mode="json")}
        if own_controller != state["controller"]:
            logger.warning(
                "resuming with controller settings %s instead of the checkpoint's %s",
                own_controller,
                state["controller"],
            )
        if self.problem.hyperparameters() != state["hyperparameters"]:
            logger.warning(
                "resuming with problem hyperparameters %s instead of the checkpoint's %s",
                self.problem.hyperparameters(),
                state["hyperparameters"],
            )
        _load_model(self.model, state["model"])
        try:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"the optimizer state does not fit this {type(self.optimizer).__name__} "
                f"(expected {len(self.optimizer.param_groups)} parameter group(s) of sizes "
                f"{[len(g['params']) for g in self.optimizer.param_groups]}): {exc}"
            ) from None
        self.step_count = int(state["step_count"])
        duals = {
            k: state[k]
            for k in (
                "layout",
                "multipliers",
                "controller_state",
                "indexed_state",
                "formulation_state",
                "history",
            )
        }
        if duals["layout"] is None:
            self.layout, self._multipliers, self._pending_duals = None, None, None
            self.history = History.from_dict(duals["history"])
        elif self.layout is None:
            self._pending_duals = duals
        else:
            self._load_duals(duals)
        self._cursor.load_state_dict(state["data"])
        set_rng_state(state["rng"])

    def _load_duals(self, state: Mapping[str, Any]) -> None:
        """Load multipliers, controller/formulation state and history (layout known)."""
        assert self.layout is not None and self._multipliers is not None
        _expect_equal("constraint layout", self.layout.signature(), state["layout"])
        saved = state["multipliers"]
        _check_tree("dense multipliers", self._multipliers.dense, saved["dense"])
        _check_tree("per-sample multipliers", self._multipliers.per_sample, saved["per_sample"])
        _check_tree("controller state", self.controller_state, state["controller_state"])
        _check_tree("per-sample controller state", self.indexed_state, state["indexed_state"])
        _check_tree("formulation state", self.formulation_state, state["formulation_state"])
        device = self.layout.device
        self._multipliers = Multipliers(
            _clone_tree(saved["dense"], device), _clone_tree(saved["per_sample"], device)
        )
        self.controller_state = _clone_tree(state["controller_state"], device)
        self.indexed_state = _clone_tree(state["indexed_state"], device)
        self.formulation_state = _clone_tree(state["formulation_state"], device)
        history = History.from_dict(state["history"])
        last = history.records[-1] if history.records else None
        if last is not None and last.step == self.step_count - 1 and last.step % self.record_every:
            history.records.pop()  # recorded only because the saved fit() ended there
        self.history = history

    # -- one step -----------------------------------------------------------------------
    def _evaluate(self, batch: Any) -> tuple[Tensor, StackedConstraints, ProblemState]:
        state = self.problem.evaluate(self.model, batch)
        if not isinstance(state, ProblemState):
            raise ConfigError(
                f"{type(self.problem).__name__}.evaluate() must return a ProblemState; got "
                f"{describe(state)}."
            )
        state = self.reducer.reduce_state(self.problem, state)
        if self.layout is None:
            self._initialise(state)
        assert self.layout is not None
        stacked = self.layout.stack(state, self.step_count)
        return state.objective, stacked, state

    def _primal_backward(self, objective: Tensor, stacked: StackedConstraints) -> Tensor:
        assert self._multipliers is not None
        loss = self.formulation.primal_loss(
            objective, stacked, self._multipliers, self.formulation_state
        )
        for reg, params in self._penalties:
            for p in params:
                loss = loss + reg.strength * reg.penalty(p)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.reducer.reduce_gradients(self.model)
        self._check_gradients()
        return loss

    def _check_gradients(self) -> None:
        """Raise :class:`NonFiniteError` naming the parameters with a NaN/Inf gradient (or,
        with ``on_nonfinite="skip"``, drop every gradient so the primal step does nothing)."""
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if not grads:
            return
        # One read pass per gradient and one synchronisation: a NaN/Inf anywhere makes the
        # sum non-finite. Only then look element-wise (a finite sum can also overflow).
        sums = torch.stack([g.sum().to(torch.float64) for _, g in grads])
        if bool(torch.isfinite(sums).all()):
            return
        bad = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        if not bad:
            return
        message = (
            f"the gradient of parameter(s) {bad} is not finite at step {self.step_count} "
            "although the objective and the constraints are finite (e.g. sqrt or log at 0, "
            "or an overflow in backward); guard the offending operation or lower the lr."
        )
        if self.on_nonfinite == "raise":
            raise NonFiniteError(message)
        logger.warning("%s Primal step skipped.", message)
        self.optimizer.zero_grad(set_to_none=True)
        self._step_skipped = True

    def _finite_update(self, values: Tensor, group: str | None) -> bool:
        """True if the updated multipliers ``values`` are finite; otherwise raise
        :class:`NonFiniteError` naming the constraint (or return False to keep the old
        multipliers when ``on_nonfinite="skip"``)."""
        if bool(torch.isfinite(values).all()):
            return True
        assert self.layout is not None
        if group is None:
            parts = self.layout.split(values)
            group = next(n for n, v in parts.items() if not bool(torch.isfinite(v).all()))
        message = (
            f"the multipliers of constraint {group!r} became non-finite at step "
            f"{self.step_count} after the {self.controller.name!r} update; lower the "
            "controller's lr (multiplicative rules overflow for large lr * violation)."
        )
        if self.on_nonfinite == "raise":
            raise NonFiniteError(message)
        logger.warning("%s Multiplier update skipped.", message)
        self._step_skipped = True
        return False

    def _primal_step(self) -> None:
        self.optimizer.step()
        self._apply_prox()

    def _apply_prox(self) -> None:
        if not self._prox_targets:
            return
        with torch.no_grad():
            for target in self._prox_targets:
                reg = target.regularizer
                for _, p, group in target.params:
                    lr = float(self.optimizer.param_groups[group].get("lr", 1.0))
                    p.copy_(target.fn(p.detach(), reg.strength * lr, **reg.options))

    def _dual_update(
        self, stacked: StackedConstraints, *, extrapolate: bool = False
    ) -> Multipliers:
        """Multiplier update ``lam <- project(controller(lam, signal))``; returns the new
        multipliers. With ``extrapolate`` the look-ahead multipliers are returned and no
        state changes."""
        assert self._multipliers is not None and self.layout is not None
        lam = self._multipliers
        if not self.formulation.uses_multipliers:
            if not extrapolate:  # penalty schedules still advance
                self.formulation_state = self.formulation.after_dual_step(
                    stacked, self.formulation_state
                )
            return lam
        equality = self.layout.equality
        signal = self.reducer.reduce_dense(
            self.formulation.dual_signal(stacked, self.formulation_state)
        )
        if extrapolate:
            dense = self.controller.extrapolate(lam.dense, signal, self.controller_state)
            return Multipliers(self.formulation.project(dense, equality), lam.per_sample)
        dense, controller_state = self.controller.update(lam.dense, signal, self.controller_state)
        if not self._finite_update(dense, None):
            return lam
        self.controller_state = controller_state
        new = Multipliers(self.formulation.project(dense, equality), lam.per_sample)
        for name, iv in stacked.per_sample.items():
            indices, sig = self.reducer.reduce_indexed(
                iv.indices, self.formulation.indexed_signal(iv.violation, self.formulation_state)
            )
            store = lam.per_sample[name]
            ctrl_state = self.indexed_state[name]
            observed = {k: v[..., indices] for k, v in ctrl_state.items()}
            updated, observed = self.controller.update(store[indices], sig, observed)
            if not self._finite_update(updated, name):
                continue
            mask = torch.full_like(updated, self._indexed_equality[name], dtype=torch.bool)
            store[indices] = self.formulation.project(updated, mask)  # O(batch), in place
            for k, v in observed.items():
                ctrl_state[k][..., indices] = v
        self.formulation_state = self.formulation.after_dual_step(stacked, self.formulation_state)
        return new

    def step(self, batch: Any = None) -> StepRecord | None:
        """Run one step on ``batch`` and return its record (``None`` if not recorded).

        Raises:
            NonFiniteError: If the objective or a constraint is NaN/Inf and
                ``on_nonfinite="raise"``; the message names the constraint and the step.
        """
        start = time.perf_counter()
        self._step_skipped = False
        objective, stacked, state = self._evaluate(batch)
        assert self.layout is not None and self._multipliers is not None
        try:
            self.layout.check_finite(objective, stacked, self.step_count)
        except NonFiniteError:
            if self.on_nonfinite == "raise":
                raise
            logger.warning("step %d skipped: non-finite objective or constraint", self.step_count)
            return self._finish(start, objective, stacked, state, skipped=True)
        if self.controller.extrapolates:
            self._extragradient_step(batch, objective, stacked)
        elif self.order == "simultaneous":
            self._primal_backward(objective, stacked)
            self._multipliers = self._dual_update(stacked)
            self._primal_step()
        elif self.order == "dual_primal":
            self._multipliers = self._dual_update(stacked)
            self._primal_backward(objective, stacked)
            self._primal_step()
        else:  # primal_dual
            self._primal_backward(objective, stacked)
            self._primal_step()
            with torch.no_grad():
                _, after, _ = self._evaluate(batch)
            try:
                self.layout.check_finite(torch.zeros(()), after, self.step_count)
            except NonFiniteError:
                if self.on_nonfinite == "raise":
                    raise
                logger.warning(
                    "step %d: multiplier update skipped: non-finite constraint after the "
                    "primal step",
                    self.step_count,
                )
            else:
                self._multipliers = self._dual_update(after)
        return self._finish(start, objective, stacked, state, skipped=self._step_skipped)

    def _extragradient_step(
        self, batch: Any, objective: Tensor, stacked: StackedConstraints
    ) -> None:
        """Extragradient: look ahead with both players, then step from the original point
        with the look-ahead gradients and signal."""
        snapshot = [p.detach().clone() for p in self.model.parameters()]
        lookahead = self._dual_update(stacked, extrapolate=True)
        original = self._multipliers
        self._primal_backward(objective, stacked)
        self._primal_step()
        self._multipliers = lookahead
        objective_half, stacked_half, _ = self._evaluate(batch)
        self._primal_backward(objective_half, stacked_half)
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), snapshot, strict=True):
                p.copy_(saved)
        self._multipliers = original
        self._primal_step()
        self._multipliers = self._dual_update(stacked_half)

    def _finish(
        self,
        start: float,
        objective: Tensor,
        stacked: StackedConstraints,
        state: ProblemState,
        *,
        skipped: bool,
    ) -> StepRecord | None:
        step = self.step_count
        self.step_count += 1
        if step % self.record_every != 0 and step != self._always_record:
            return None
        record = self._record(step, objective, stacked, state, skipped)
        record.seconds = time.perf_counter() - start
        self.history.append(record)
        return record

    def _record(
        self,
        step: int,
        objective: Tensor,
        stacked: StackedConstraints,
        state: ProblemState,
        skipped: bool,
    ) -> StepRecord:
        assert self._multipliers is not None and self.layout is not None
        v = stacked.violation
        lam = self._multipliers.dense
        obj = self.reducer.reduce_objective(objective.detach().reshape(1).to(v.dtype))
        packed = torch.cat([obj, v, lam.to(v.dtype)]).cpu()
        n = v.numel()
        violation = packed[1 : 1 + n]
        positive = torch.where(self.layout.equality.cpu(), violation.abs(), violation)
        max_violation = max(0.0, float(positive.max())) if n else 0.0
        per_sample: dict[str, dict[str, float]] = {}
        for name, iv in stacked.per_sample.items():
            observed = self._multipliers.per_sample[name][iv.indices]
            g = iv.violation.abs() if iv.equality else iv.violation
            per_sample[name] = {
                "max_violation": float(g.max()) if g.numel() else 0.0,
                "feasible_fraction": float((g <= 0).float().mean()) if g.numel() else 1.0,
                "mean_multiplier": float(observed.mean()) if observed.numel() else 0.0,
                "max_multiplier": float(observed.max()) if observed.numel() else 0.0,
            }
            max_violation = max(max_violation, per_sample[name]["max_violation"])
        metrics = {k: float(val) for k, val in state.metrics.items()}
        clusters: dict[str, int] = {}
        for target in self._prox_targets:
            if target.regularizer.track_clusters:
                for pname, p, _ in target.params:
                    clusters[pname] = int(torch.unique(p.detach()).numel())
        penalty = self.formulation_state.get("penalty")
        return StepRecord(
            step=step,
            objective=float(packed[0]),
            max_violation=max_violation,
            violation=violation.tolist(),
            multipliers=packed[1 + n :].tolist(),
            per_sample=per_sample,
            metrics=metrics,
            clusters=clusters,
            penalty=None if penalty is None else float(penalty),
            skipped=skipped,
        )

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
            callback: Called after every step with the solver and the step's record.
        """
        if not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps must be a non-negative integer; got {steps!r}.")
        batches = self._batches(data) if data is not None else itertools.repeat(batch)
        bar = _progress(steps, progress)
        record: StepRecord | None = None
        self._always_record = self.step_count + steps - 1
        for _ in range(steps):
            record = self.step(next(batches))
            if callback is not None:
                callback(self, record)
            if bar is not None:
                bar.update(1)
                if record is not None and self.step_count % 50 == 0:
                    bar.set_postfix(
                        obj=f"{record.objective:.4g}", viol=f"{record.max_violation:.3g}"
                    )
        if bar is not None:
            bar.close()
        return self.history

    def _batches(self, data: Iterable[Any]) -> Iterator[Any]:
        """Endless batches of ``data`` through the resumable :class:`DataCursor`."""
        while True:
            yield self._cursor.next_batch(data)


SOLVER_STATE_VERSION = 1
"""Version of the :meth:`Solver.state_dict` layout."""


def _default_reducer() -> SignalReducer:
    """:class:`~constrain.distributed.DistributedReducer` when torch.distributed is
    initialised with several ranks, else the no-op reducer."""
    from . import distributed

    if distributed.is_distributed():
        return distributed.DistributedReducer()
    return _LocalReducer()


def _clone_tree(tree: Any, device: torch.device | None = None) -> Any:
    """Copy nested dicts of tensors (tensors detached, cloned, moved to ``device``)."""
    if isinstance(tree, Tensor):
        return tree.detach().to(device).clone() if device is not None else tree.detach().clone()
    if isinstance(tree, Mapping):
        return {k: _clone_tree(v, device) for k, v in tree.items()}
    return tree


def _expect_equal(what: str, expected: Any, received: Any) -> None:
    if expected != received:
        raise CheckpointError(
            f"the checkpoint belongs to another run: {what} differs (this run: {expected!r}; "
            f"checkpoint: {received!r}). Resume with the same problem and settings."
        )


def _check_tree(what: str, own: Any, saved: Any) -> None:
    """Check that ``saved`` has the keys, shapes and dtypes of ``own`` (nested dicts)."""
    if isinstance(own, Tensor):
        if not isinstance(saved, Tensor) or saved.shape != own.shape or saved.dtype != own.dtype:
            raise CheckpointError(
                f"{what}: expected a tensor of shape {tuple(own.shape)} and dtype {own.dtype}; "
                f"the checkpoint holds {describe(saved)}."
            )
        return
    if not isinstance(saved, Mapping) or set(saved) != set(own):
        keys = sorted(saved) if isinstance(saved, Mapping) else describe(saved)
        raise CheckpointError(
            f"{what}: expected entries {sorted(own)}; the checkpoint holds {keys}."
        )
    for key in own:
        _check_tree(f"{what} {key!r}", own[key], saved[key])


def _load_model(model: nn.Module, saved: Any) -> None:
    own = model.state_dict()
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"the model state must be a mapping; got {describe(saved)}.")
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"the model does not match the checkpoint: entries missing from the checkpoint "
            f"{missing}, entries this model lacks {unexpected}."
        )
    for key, tensor in own.items():
        value = saved[key]
        same = isinstance(value, Tensor) and value.shape == tensor.shape
        if not same or value.dtype != tensor.dtype:
            raise CheckpointError(
                f"model entry {key!r}: expected shape {tuple(tensor.shape)} and dtype "
                f"{tensor.dtype}; the checkpoint holds {describe(value)}."
            )
    model.load_state_dict(saved)


def _progress(total: int, enabled: bool | None) -> Any:
    import sys

    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="constrain", unit="step", leave=False)


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
    controller: str | Controller | Mapping[str, Any] = "gda",
    formulation: str | Formulation | Mapping[str, Any] = "lagrangian",
    order: Order = "simultaneous",
    batch: Any = None,
    data: Iterable[Any] | None = None,
    progress: bool | None = False,
    **optimizer_options: Any,
) -> SolveResult:
    """Full-batch (or minibatch, with ``data``) convenience around :class:`Solver`.

    Args:
        problem: The problem.
        model: The primal variables.
        steps: Number of steps.
        lr: Primal learning rate (when ``optimizer`` is a name).
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"`` or an optimizer instance.
        controller: Multiplier controller (name, mapping or instance).
        formulation: Formulation (name, mapping or instance).
        order: Update order.
        batch: Fixed batch passed at every step.
        data: Iterable of batches instead of ``batch``.
        progress: Progress bar.
        **optimizer_options: Extra optimizer arguments (e.g. ``momentum=0.9``).

    Example:
        >>> result = solve(problem, constrain.Variables(x=torch.zeros(3)), steps=500,
        ...                controller="nupi")  # doctest: +SKIP
    """
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, **optimizer_options)
    solver = Solver(
        problem, model, opt, controller=controller, formulation=formulation, order=order
    )
    history = solver.fit(data, steps, batch=batch, progress=progress)
    return SolveResult(model, solver.multipliers, history, solver)


_OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
for _name, _cls in (
    ("sgd", torch.optim.SGD),
    ("adam", torch.optim.Adam),
    ("adamw", torch.optim.AdamW),
    ("rmsprop", torch.optim.RMSprop),
    ("adagrad", torch.optim.Adagrad),
):
    _OPTIMIZERS.add(_name, _cls)


def make_optimizer(
    spec: str | torch.optim.Optimizer, params: Iterable[nn.Parameter], **options: Any
) -> torch.optim.Optimizer:
    """Build a primal optimizer from a name (``sgd``, ``adam``, ...) or pass one through.

    Raises:
        UnknownNameError: For an unknown name (lists the known ones).
        ConfigError: For invalid options (the optimizer's own message, with its name).
    """
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    cls = _OPTIMIZERS.get(spec)
    try:
        return cls(params, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options for optimizer {spec!r} {options}: {exc}") from None
