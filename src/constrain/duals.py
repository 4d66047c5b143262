"""The dual side of a run: multipliers, controller state and formulation state.

:class:`Duals` owns everything the multiplier player keeps between steps and exposes a
small interface to the solver:

* :meth:`Duals.initialise` from the constraint layout (first evaluation);
* :meth:`Duals.primal_loss`: the formulation's primal loss at the current multipliers;
* :meth:`Duals.step`: ``lam <- project(controller.update(lam, signal))`` for the dense
  vector and, in place, for the observed entries of each per-sample group (O(batch));
* :meth:`Duals.lookahead` and :meth:`Duals.swapped`: the extrapolated multipliers of
  extragradient methods;
* :meth:`Duals.state_dict` / :meth:`Duals.load_state_dict`: the dual part of a checkpoint.

A proposed update with a NaN/Inf entry is dropped on the device (the old multipliers
stay) and reported in the step's :class:`DualReport`; the solver raises
:class:`~constrain.NonFiniteError` naming the constraint when the step is flushed, or
(``on_nonfinite="skip"``) logs it. See docs/algorithms.md, 'Multiplier controllers', and
docs/algorithms.md, 'Formulations', for the update rules and the projection convention.

Per-group settings (each one value for all groups or a mapping from constraint-name
patterns to values; docs/algorithms.md, 'Per-group dual settings'):

* the controller: groups matched by one pattern form a *block* that shares one controller
  and one state (the dense entries of a block are gathered, updated and scattered back;
  one block covering everything takes the plain path);
* ``max_multiplier``: ``lam`` is kept in ``[0, M]`` (inequalities), ``|mu| <= M``
  (equalities), after the formulation's projection;
* ``restart``: an inequality multiplier whose constraint is strictly satisfied
  (``g_i < 0``) is reset to its initial value and its controller state to the state of a
  fresh controller; never for equalities;
* ``dual_every``: a group's multipliers move on steps ``t`` with ``t % k == 0`` only.

Groups a step did not measure (``StackedConstraints.unobserved``, absent or unobserved
per-sample groups) keep their multipliers, controller state and penalties. Which groups
take part in a step is decided on the host from host facts only (the step number, the
groups an evaluation left out); everything else (finite checks, bounds, restarts, penalty
growth) is decided on the device, so a step needs no host synchronisation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import torch
from torch import Tensor

from ._errors import CheckpointError, ConfigError, ShapeError, describe
from ._patterns import resolve
from .controllers import Controller, ControllerMap, ControllerState
from .formulations import Formulation, FormulationState
from .layout import ConstraintLayout, IndexedViolation, StackedConstraints
from .multiplier_models import MultiplierModel
from .multipliers import Multipliers

__all__ = ["DualEvery", "DualReport", "Duals", "MaxMultiplier", "NonFinitePolicy", "Restart"]

_ALL = "*"
"""The key of the single block when one controller serves every group."""

logger = logging.getLogger("constrain")

NonFinitePolicy = Literal["raise", "skip"]


@dataclass
class _Block:
    """The dense entries served by one controller.

    Attributes:
        key: The pattern (``"*"`` for a single controller); its controller is looked up
            at every step (:meth:`Duals._controller_of`), so that a scheduled step size
            reaches it.
        index: The block's dense entries (int64, on the device); ``None`` for all.
        groups: The block's dense group names.
        initial: The initial multipliers of the block's entries.
        fresh: The state of a fresh controller for those entries (restarts).
    """

    key: str
    index: Tensor | None
    groups: list[str]
    initial: Tensor
    fresh: ControllerState

    def take(self, values: Tensor) -> Tensor:
        """The block's entries of a dense vector (the last dimension)."""
        return values if self.index is None else values[..., self.index]


MaxMultiplier = float | Mapping[str, float] | None
Restart = bool | Mapping[str, bool]
DualEvery = int | Mapping[str, int]


class Duals:
    """Multipliers and the state of the controller(s) and the formulation.

    Args:
        controller: The multiplier controller, or a :class:`~constrain.controllers.
            ControllerMap` of per-group controllers.
        formulation: The formulation (projection, dual signal, penalty state).
        on_nonfinite: ``"raise"`` or ``"skip"`` (how the solver reports a dropped
            non-finite proposal; the proposal is dropped on the device either way).
        max_multiplier: Upper bound ``M`` on the multipliers: one number for every group,
            ``{pattern: M}``, or ``None`` (the groups' declared
            :attr:`Constraint.max_multiplier <constrain.Constraint>`, else unbounded). A
            value given here overrides the declaration of the groups it matches.
        restart: Dual restarts: ``True`` for every inequality group, or
            ``{pattern: bool}``.
        dual_every: Update the multipliers every ``k`` steps: one ``k`` or
            ``{pattern: k}`` (unmatched groups: every step).

    Attributes:
        layout: The constraint layout (``None`` before :meth:`initialise`).
        multipliers: Current multipliers (``None`` before :meth:`initialise`).
        indexed_state: Controller state of each per-sample group (one entry per sample).
        formulation_state: Formulation state (e.g. the current penalty).

    Raises:
        ConfigError: For invalid ``max_multiplier`` (negative, NaN), ``restart`` or
            ``dual_every`` (not a positive integer) values.
    """

    def __init__(
        self,
        controller: Controller | ControllerMap,
        formulation: Formulation,
        *,
        on_nonfinite: NonFinitePolicy = "raise",
        max_multiplier: MaxMultiplier = None,
        restart: Restart = False,
        dual_every: DualEvery = 1,
    ) -> None:
        _check_options(max_multiplier, restart, dual_every)
        self.controller = controller
        self.formulation = formulation
        self.on_nonfinite = on_nonfinite
        self.max_multiplier = max_multiplier
        self.restart = restart
        self.dual_every = dual_every
        self.layout: ConstraintLayout | None = None
        self.multipliers: Multipliers | None = None
        self.indexed_state: dict[str, ControllerState] = {}
        self.formulation_state: FormulationState = {}
        self._states: dict[str, ControllerState] = {}
        self._blocks: list[_Block] = []
        self._indexed: dict[str, str] = {}
        self._initial_dense: Tensor | None = None
        self._upper: Tensor | None = None
        self._upper_indexed: dict[str, float] = {}
        self._restart_mask: Tensor | None = None
        self._restart_indexed: set[str] = set()
        self._every: dict[str, int] = {}
        self._models: dict[str, MultiplierModel] = {}
        self._deferred: Mapping[str, Any] | None = None
        self._single: str | None = None  # the block's key when one controller serves all
        # the formulation's hooks that do something (the plain Lagrangian's do not)
        self._formulation_steps = _overrides(formulation, "after_dual_step")
        self.reports = _overrides(formulation, "diagnostics")
        """Whether the formulation reports anything (:meth:`diagnostics`)."""

    # -- set-up -------------------------------------------------------------------------
    def initialise(self, layout: ConstraintLayout) -> None:
        """Initial multipliers and states for ``layout``.

        Raises:
            ConfigError: If a controller cannot handle the equality groups it is given,
                per-group patterns do not match the groups one to one, or multiplier
                options are given to a formulation without multipliers.
        """
        controllers = self._assign(layout)
        self.layout = layout
        dtype, device = layout.dtype, layout.device
        # the projection's mask (None: every dense entry is an inequality) and the
        # health of steps without an update, made once
        self._equality = layout.equality if layout.dense_equality else None
        self._healthy = torch.zeros((), dtype=dtype, device=device)
        dense = torch.zeros(layout.num_dense, dtype=dtype, device=device)
        self._zeros = dense.clone()  # for the one-kernel health check (_health)
        keys = list(dict.fromkeys(controllers[n] for n in layout.names))
        if not keys and not isinstance(self.controller, ControllerMap):
            keys = [_ALL]  # a single controller keeps its (empty) dense state
        self._blocks = []
        for key in keys:
            ctrl = self._controller_of(key)
            groups = [n for n in layout.names if controllers[n] == key]
            if len(keys) == 1:
                index = None
            else:
                spans = [
                    torch.arange(layout.offsets[k], layout.offsets[k + 1])
                    for k, n in enumerate(layout.names)
                    if controllers[n] == key
                ]
                index = torch.cat(spans).to(device)
            zeros = dense if index is None else dense[index]
            initial = ctrl.initial_multipliers(torch.zeros_like(zeros))
            initial = torch.zeros_like(zeros) if initial is None else initial.to(zeros)
            self._blocks.append(_Block(key, index, groups, initial, ctrl.init(initial)))
        for block in self._blocks:
            if block.index is None:
                dense = block.initial.clone()
            else:
                dense[block.index] = block.initial
        per_sample: dict[str, Tensor] = {}
        self._indexed = {}
        for c in layout.per_sample:
            ctrl = self._controller_of(controllers[c.name])
            zeros = torch.zeros(int(c.size or 0), dtype=dtype, device=device)
            start = ctrl.initial_multipliers(zeros)
            per_sample[c.name] = zeros if start is None else start.to(zeros).clone()
            self._indexed[c.name] = controllers[c.name]
        self._models = {
            c.name: c.multiplier_model
            for c in layout.per_sample
            if isinstance(c.multiplier_model, MultiplierModel)
        }
        if self._models and not self.formulation.uses_multipliers:
            raise ConfigError(
                f"formulation {self.formulation.name!r} has no multipliers, so the multiplier "
                f"model(s) of {sorted(self._models)} would never be used; drop them or use "
                "'lagrangian' or 'augmented_lagrangian'."
            )
        self.multipliers = Multipliers(dense, per_sample)
        self._initial_dense = dense.clone()
        self._states = {b.key: self._controller_of(b.key).init(b.take(dense)) for b in self._blocks}
        self.indexed_state = {
            name: {} if name in self._models else self._controller_of(self._indexed[name]).init(lam)
            for name, lam in per_sample.items()
        }
        self._set_safeguards(layout)
        single = len(self._blocks) == 1 and self._blocks[0].index is None
        self._single = (
            self._blocks[0].key
            if single and not isinstance(self.controller, ControllerMap)
            else None
        )
        self.formulation_state = self.formulation.init_state(layout)
        if self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            self.load_state_dict(deferred)

    def _controller_of(self, key: str) -> Controller:
        if isinstance(self.controller, ControllerMap):
            return self.controller.controllers[key]
        return self.controller

    def _assign(self, layout: ConstraintLayout) -> dict[str, str]:
        """``{group: block key}``, checking that each controller can serve its groups."""
        names = layout.group_names
        if isinstance(self.controller, ControllerMap):
            assigned = self.controller.assign(names)
        else:
            assigned = dict.fromkeys(names, _ALL)
        equality = {c.name for c in layout.dense + layout.per_sample if c.is_equality}
        for key in dict.fromkeys(assigned.values()):
            ctrl = self._controller_of(key)
            if ctrl.supports_equality:
                continue
            bad = [n for n in names if assigned[n] == key and n in equality]
            if bad:
                where = "" if key == _ALL else f" (pattern {key!r})"
                raise ConfigError(
                    f"controller {ctrl.name!r}{where} only handles inequality constraints (it "
                    f"keeps multipliers non-negative) but the equality constraint(s) {bad} "
                    "use it; use e.g. 'gda' or 'nupi' for them."
                )
        return assigned

    def _set_safeguards(self, layout: ConstraintLayout) -> None:
        """Resolve ``max_multiplier``, ``restart`` and ``dual_every`` per group."""
        names = layout.group_names
        declared = {c.name: c for c in layout.dense + layout.per_sample}
        uses = self.formulation.uses_multipliers
        if not uses and (self.max_multiplier is not None or self.restart is not False):
            raise ConfigError(
                f"formulation {self.formulation.name!r} has no multipliers, so max_multiplier "
                "and restart do not apply; drop them or use 'lagrangian' or "
                "'augmented_lagrangian'."
            )
        bound = resolve(self.max_multiplier, names, None, what="max_multiplier")
        upper = {
            n: (bound[n] if bound[n] is not None else declared[n].max_multiplier) for n in names
        }
        dense_upper = [
            math.inf if upper[n] is None else float(upper[n])  # type: ignore[arg-type]
            for n in layout.names
        ]
        self._upper = None
        if any(u != math.inf for u in dense_upper):
            counts = torch.tensor(layout.sizes, dtype=torch.int64)
            values = torch.tensor(dense_upper, dtype=layout.dtype).repeat_interleave(counts)
            self._upper = values.to(layout.device)
        self._upper_indexed = {
            c.name: float(upper[c.name])  # type: ignore[arg-type]
            for c in layout.per_sample
            if upper[c.name] is not None
        }
        wants = resolve(self.restart, names, False, what="restart")
        if isinstance(self.restart, Mapping):
            for pattern, on in self.restart.items():
                matched = [n for n in names if wants[n] and fnmatchcase(n, pattern)]
                if on and matched and all(declared[n].is_equality for n in matched):
                    raise ConfigError(
                        f"restart: pattern {pattern!r} selects only equality constraints "
                        f"{matched}; restarts reset inequality multipliers (an equality "
                        "multiplier is never reset)."
                    )
        restarted = {n for n in names if wants[n] and not declared[n].is_equality}
        self._restart_mask = None
        if restarted.intersection(layout.names):
            mask = layout.entry_mask(frozenset(layout.names) - restarted)
            if mask is None:  # every dense group restarts
                mask = torch.ones(layout.num_dense, dtype=torch.bool, device=layout.device)
            self._restart_mask = mask
        self._restart_indexed = {c.name for c in layout.per_sample if c.name in restarted}
        modelled = sorted(self._restart_indexed.intersection(self._models))
        if modelled:
            raise ConfigError(
                f"restart: per-sample constraint(s) {modelled} take their multipliers from a "
                "multiplier model, which has no per-entry multiplier to reset; leave them out "
                "of restart (e.g. restart={'other_group': True})."
            )
        every = resolve(self.dual_every, names, 1, what="dual_every")
        self._every = {n: k for n, k in every.items() if k != 1}

    def reset(self) -> None:
        """Forget the layout, the multipliers and the states (a state saved before the
        first step)."""
        self.__init__(  # type: ignore[misc]
            self.controller,
            self.formulation,
            on_nonfinite=self.on_nonfinite,
            max_multiplier=self.max_multiplier,
            restart=self.restart,
            dual_every=self.dual_every,
        )

    @property
    def ready(self) -> bool:
        """True once :meth:`initialise` has run."""
        return self.layout is not None and self.multipliers is not None

    @property
    def controller_state(self) -> ControllerState | dict[str, ControllerState]:
        """Controller state of the dense multipliers: the state of the single controller,
        or ``{pattern: state}`` with per-group controllers (entries in the order of the
        groups each pattern matches)."""
        if isinstance(self.controller, ControllerMap):
            return self._states
        return self._states.get(_ALL, {})

    @controller_state.setter
    def controller_state(self, state: ControllerState | dict[str, ControllerState]) -> None:
        if isinstance(self.controller, ControllerMap):
            self._states = dict(state)  # type: ignore[arg-type]
        else:
            self._states = {_ALL: state}  # type: ignore[dict-item]

    def named(self) -> dict[str, Tensor]:
        """Current multipliers by constraint name (copies; empty before the first step)."""
        if self.multipliers is None or self.layout is None:
            return {}
        out = {k: v.clone() for k, v in self.layout.split(self.multipliers.dense).items()}
        out.update({k: v.clone() for k, v in self.multipliers.per_sample.items()})
        return out

    def diagnostics(self) -> dict[str, Tensor]:
        """What the formulation reports about its state (e.g. ``penalty``)."""
        return self.formulation.diagnostics(self.formulation_state)

    # -- the primal player's view --------------------------------------------------------
    def primal_loss(self, objective: Tensor, stacked: StackedConstraints) -> Tensor:
        """The formulation's primal loss at the current multipliers.

        The entries of a group with a multiplier model first take the model's prediction
        for the batch's features (stored at the batch's indices, O(batch); a non-finite
        prediction keeps the stored value)."""
        assert self.multipliers is not None
        self._predict(stacked)
        return self.formulation.primal_loss(
            objective, stacked, self.multipliers, self.formulation_state
        )

    def _predict(self, stacked: StackedConstraints) -> None:
        """Store the model multipliers of the batch's entries of every modelled group."""
        assert self.multipliers is not None
        for name, model in self._models.items():
            iv = stacked.per_sample.get(name)
            store = self.multipliers.per_sample.get(name)
            if iv is None or iv.features is None or store is None:
                continue
            with torch.no_grad():
                upper = self._upper_indexed.get(name)
                lam = model.forward(iv.features).to(store.dtype)
                lam = self._bound(lam, upper)
                old = store[iv.indices]
                store[iv.indices] = torch.where(torch.isfinite(lam), lam, old)

    @property
    def multiplier_models(self) -> dict[str, MultiplierModel]:
        """The multiplier models by per-sample group name (empty without any)."""
        return dict(self._models)

    # -- the multiplier step -------------------------------------------------------------
    def active(self, stacked: StackedConstraints, step: int) -> StackedConstraints | None:
        """``stacked`` restricted to the groups that take part in the multiplier step of
        ``step``: measured, and due by ``dual_every``. ``None`` when none does.

        The other dense entries read 0 and are outside ``observed``; the other per-sample
        groups are left out.
        """
        assert self.layout is not None
        layout = self.layout
        if not (self._every or stacked.unobserved) and all(
            iv.observed for iv in stacked.per_sample.values()
        ):
            return stacked  # every group measured and due: the common case
        inactive = set(stacked.unobserved)
        inactive.update(n for n, k in self._every.items() if step % k)
        per_sample = {
            n: iv for n, iv in stacked.per_sample.items() if iv.observed and n not in inactive
        }
        if not inactive and len(per_sample) == len(stacked.per_sample):
            return stacked
        dense_inactive = frozenset(inactive.intersection(layout.names))
        nothing_left = len(dense_inactive) == len(layout.names) and not per_sample
        if nothing_left and (layout.names or layout.per_sample):
            return None
        mask = layout.entry_mask(dense_inactive)
        if mask is None:
            mask = stacked.observed
        elif stacked.observed is not None:
            mask = mask & stacked.observed
        violation = stacked.violation if mask is None else torch.where(mask, stacked.violation, 0)
        return dataclasses.replace(
            stacked,
            violation=violation,
            per_sample=per_sample,
            unobserved=dense_inactive,
            observed=mask,
        )

    def step(self, stacked: StackedConstraints, step: int, *, guard: bool = True) -> DualReport:
        """One multiplier update from ``stacked``; returns what it proposed and whether
        it was taken, on the device (no host synchronisation).

        The dense vector is updated block by block (one call for a single controller);
        each per-sample group is updated at its observed indices only. Then the
        formulation's projection, the bounds and the restarts apply, and the formulation
        updates its state (penalties) from the multipliers before the update. A
        formulation without multipliers only advances its state. Groups that do not take
        part (see :meth:`active`: unmeasured, or not due by ``dual_every``) do not move.

        A proposal with a NaN/Inf entry is dropped on the device (the multipliers and the
        controller state keep their values); the solver reports it when the step is
        flushed (:class:`~constrain.NonFiniteError` naming the constraint, or a warning
        with ``on_nonfinite="skip"``).

        Args:
            stacked: The evaluation the update reads.
            step: The step's number (for ``dual_every``).
            guard: Drop a non-finite dense proposal on the device, as above (one select
                per tensor). With ``guard=False`` the dense update is applied as proposed
                and the caller must read the report's health on the host before the
                multipliers are used again, and call :meth:`restore` if it is not 0: the
                solver does so on the steps it flushes, which copy the report to the host
                anyway. Per-sample groups are always guarded (their updates are in place).
        """
        assert self.multipliers is not None and self.layout is not None
        formulation = self.formulation
        key = self._single
        if (
            key is not None
            and not stacked.per_sample
            and stacked.observed is None
            and not stacked.unobserved
            and not self._every
            and self._restart_mask is None
            and not self._formulation_steps
            and formulation.uses_multipliers
        ):
            # The common case: one controller over the dense entries, every entry measured
            # and due, no restarts, no formulation state to move (the steps below, without
            # their branches for what is absent).
            dense, state = self.controller.update(  # type: ignore[union-attr]
                self.multipliers.dense,
                formulation.dual_signal(stacked, self.formulation_state),
                self._states[key],
            )
            health = self._dense_health(dense)
            projected = self._bound(formulation.project(dense, self._equality), self._upper)
            return self._take_dense(health, dense, projected, {key: state}, guard)
        current = self.active(stacked, step)
        if current is None:
            return DualReport(self._healthy)
        fstate = self.formulation_state
        if not formulation.uses_multipliers:
            self.formulation_state = formulation.after_dual_step(current, fstate, None)
            return DualReport(self._healthy)
        lam = self.multipliers
        signal = formulation.dual_signal(current, fstate)
        signals = {
            name: formulation.indexed_signal(
                iv.violation, formulation.group_state(fstate, name, iv)
            )
            for name, iv in current.per_sample.items()
        }
        # Penalties move with the multipliers of this step's subproblem (before the update).
        new_fstate = (
            formulation.after_dual_step(current, fstate, lam) if self._formulation_steps else fstate
        )
        dense, states = self._update_dense(lam.dense, signal, current.observed)
        health = self._dense_health(dense)
        projected = self._bound(formulation.project(dense, self._equality), self._upper)
        projected, states = self._restart_dense(
            projected, states, current.violation, current.observed
        )
        report = self._take_dense(health, dense, projected, states, guard)
        for name, iv in current.per_sample.items():
            if name in self._models:
                taken = self._model_step(name, iv, signals[name], report)
                report.health = report.health + torch.where(taken, 0.0, math.nan)
                continue
            controller = self._controller_of(self._indexed[name])
            store, state = lam.per_sample[name], self.indexed_state[name]
            before = {k: v[..., iv.indices] for k, v in state.items()}
            old = store[iv.indices]
            updated, after = controller.update(old, signals[name], before)
            if not isinstance(updated, Tensor) or updated.shape != old.shape:
                raise _proposal_error(controller, updated, old)
            health = _health(updated)
            ok = health == 0
            mask = torch.ones_like(updated, dtype=torch.bool) if iv.equality else None
            new = self._bound(formulation.project(updated, mask), self._upper_indexed.get(name))
            if name in self._restart_indexed:
                new, after = _restart(controller, new, after, iv.violation < 0)
            store[iv.indices] = torch.where(ok, new, old)  # O(batch), in place
            for k, v in _keep_unless(ok, after, before).items():
                state[k][..., iv.indices] = v
            report.per_sample[name] = updated
            report.health = report.health + health
        self.formulation_state = new_fstate
        return report

    def _dense_health(self, dense: Tensor) -> Tensor:
        """:func:`_health` of a dense proposal, after checking that it is one: a tensor of
        the multipliers' shape on their device (what ``Controller.update`` must return).
        ``torch.dot`` with the zeros accepts exactly a 1-d tensor of their size, dtype and
        device, so the common case is decided by the health kernel itself.

        Raises:
            ShapeError: If the controller returned anything else, naming it.
        """
        try:
            return torch.dot(dense, self._zeros)
        except (RuntimeError, TypeError):
            pass
        zeros = self._zeros  # the multipliers' shape, dtype and device
        if (
            not isinstance(dense, Tensor)
            or dense.shape != zeros.shape
            or dense.device != zeros.device
        ):
            raise _proposal_error(self.controller, dense, zeros)
        return _health(dense)

    def _take_dense(
        self,
        health: Tensor,
        dense: Tensor,
        projected: Tensor,
        states: dict[str, ControllerState],
        guard: bool,
    ) -> DualReport:
        """Take the dense update: the ``projected`` multipliers and the controller
        ``states`` (dropped on the device where ``health`` says the proposal ``dense`` was
        not finite, with ``guard``; else kept for :meth:`restore`). Returns the report."""
        assert self.multipliers is not None
        lam = self.multipliers
        report = DualReport(health, dense)
        if guard:
            ok = health == 0
            lam.dense = torch.where(ok, projected, lam.dense)
            states = {
                key: _keep_unless(ok, state, self._states[key]) for key, state in states.items()
            }
        else:
            report.previous = (lam.dense, self._states)  # references: nothing is copied
            lam.dense = projected
        self._states = states
        return report

    def restore(self, report: DualReport) -> Tensor | None:
        """Undo the dense part of an unguarded update (``step(..., guard=False)``) whose
        report is not healthy, if its dense proposal was not finite: the dense multipliers
        and the controller states go back to their values before it. A finite dense
        proposal stands (the non-finite one was a per-sample group's, guarded on the
        device), as on a guarded step. Returns the dense multipliers put back, or ``None``
        if nothing was undone (one host synchronisation: call it only on that rare path)."""
        previous, report.previous = report.previous, None
        if previous is None or report.dense is None or bool(torch.isfinite(report.dense).all()):
            return None
        assert self.multipliers is not None
        self.multipliers.dense, self._states = previous
        return self.multipliers.dense

    def _model_step(
        self, name: str, iv: IndexedViolation, signal: Tensor, report: DualReport
    ) -> Tensor:
        """The ascent step of group ``name``'s multiplier model on its observed entries;
        their stored multipliers take the model's new predictions (see
        :meth:`MultiplierModel.ascent_step`). Returns whether the step was taken."""
        assert self.multipliers is not None and iv.features is not None
        model = self._models[name]
        if iv.first is not None:  # a sample drawn twice counts once
            signal = torch.where(iv.first, signal, 0)
        proposal, ok = model.ascent_step(iv.features, signal, self._upper_indexed.get(name))
        store = self.multipliers.per_sample[name]
        proposal = proposal.to(store.dtype)
        store[iv.indices] = torch.where(ok, proposal, store[iv.indices])
        report.per_sample[name] = torch.where(ok, proposal, math.nan)
        return ok

    def _update_dense(
        self, lam: Tensor, signal: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, dict[str, ControllerState]]:
        """Every block's controller update; entries outside ``mask`` keep their values."""
        if self._single is not None and mask is None:  # one controller, every entry
            controller = self.controller
            assert not isinstance(controller, ControllerMap)
            new, state = controller.update(lam, signal, self._states[self._single])
            return new, {self._single: state}
        states: dict[str, ControllerState] = {}
        new = lam
        for block in self._blocks:
            old_state = self._states[block.key]
            sub_lam, sub_signal = block.take(lam), block.take(signal)
            controller = self._controller_of(block.key)
            updated, state = controller.update(sub_lam, sub_signal, old_state)
            if not isinstance(updated, Tensor) or updated.shape != sub_lam.shape:
                raise _proposal_error(controller, updated, sub_lam)
            if mask is not None:  # unobserved entries keep multiplier and state
                m = block.take(mask)
                updated = torch.where(m, updated, sub_lam)
                state = _keep_unobserved(m, state, old_state)
            states[block.key] = state
            if block.index is None:
                new = updated
            else:
                if new is lam:
                    new = lam.clone()
                new.index_copy_(0, block.index, updated.to(new.dtype))
        return new, states

    def _restart_dense(
        self,
        lam: Tensor,
        states: dict[str, ControllerState],
        violation: Tensor,
        mask: Tensor | None,
    ) -> tuple[Tensor, dict[str, ControllerState]]:
        """Dual restarts of the dense entries: strictly satisfied inequalities (selected
        by ``restart``) go back to their initial multiplier and a fresh controller state."""
        if self._restart_mask is None:
            return lam, states
        assert self._initial_dense is not None
        reset = self._restart_mask & (violation < 0)
        if mask is not None:
            reset = reset & mask
        lam = torch.where(reset, self._initial_dense, lam)
        for block in self._blocks:
            states[block.key] = _keep_unobserved(~block.take(reset), states[block.key], block.fresh)
        return lam, states

    @staticmethod
    def _bound(values: Tensor, upper: Tensor | float | None) -> Tensor:
        """``clamp(lam, -M, M)``: after the projection this keeps inequality multipliers in
        ``[0, M]`` and equality multipliers in ``[-M, M]``."""
        if upper is None:
            return values
        if isinstance(upper, float):
            return values.clamp(-upper, upper)
        return torch.maximum(torch.minimum(values, upper), -upper)

    def lookahead(self, stacked: StackedConstraints, step: int | None = None) -> Multipliers:
        """The extrapolated multipliers of an extragradient step (no state changes).

        Dense and per-sample multipliers alike: the observed entries of each per-sample
        group are extrapolated, the others keep their value; so do the groups that do not
        take part in the step of ``step`` (see :meth:`active`; ``None``: all measured
        groups take part).
        """
        assert self.multipliers is not None and self.layout is not None
        lam = self.multipliers
        if not self.formulation.uses_multipliers:
            return lam
        current = self.active(stacked, 0 if step is None else step)
        if current is None:
            return lam
        fstate = self.formulation_state
        signal = self.formulation.dual_signal(current, fstate)
        dense = lam.dense
        for block in self._blocks:
            sub = block.take(lam.dense)
            controller = self._controller_of(block.key)
            ahead = controller.extrapolate(sub, block.take(signal), self._states[block.key])
            if current.observed is not None:
                ahead = torch.where(block.take(current.observed), ahead, sub)
            if block.index is None:
                dense = ahead
            else:
                if dense is lam.dense:
                    dense = lam.dense.clone()
                dense.index_copy_(0, block.index, ahead.to(dense.dtype))
        per_sample = dict(lam.per_sample)
        for name, iv in current.per_sample.items():
            if name in self._models:  # the model's multipliers are not extrapolated
                continue
            controller = self._controller_of(self._indexed[name])
            sig = self.formulation.indexed_signal(
                iv.violation, self.formulation.group_state(fstate, name, iv)
            )
            observed = {k: v[..., iv.indices] for k, v in self.indexed_state[name].items()}
            ahead = controller.extrapolate(lam.per_sample[name][iv.indices], sig, observed)
            mask = torch.ones_like(ahead, dtype=torch.bool) if iv.equality else None
            copy = lam.per_sample[name].clone()
            copy[iv.indices] = self._bound(
                self.formulation.project(ahead, mask), self._upper_indexed.get(name)
            )
            per_sample[name] = copy
        dense = self._bound(self.formulation.project(dense, self._equality), self._upper)
        return Multipliers(dense, per_sample)

    @contextmanager
    def swapped(self, multipliers: Multipliers) -> Iterator[None]:
        """Use ``multipliers`` (e.g. :meth:`lookahead`) inside the block, then restore."""
        original = self.multipliers
        self.multipliers = multipliers
        try:
            yield
        finally:
            self.multipliers = original

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The dual state as copies: ``layout`` (signature or ``None``), ``multipliers``
        (``dense``, ``per_sample``), ``controller_state`` (the single controller's state,
        or ``{pattern: state}`` with per-group controllers), ``indexed_state``,
        ``formulation_state``."""
        multipliers = None
        if self.multipliers is not None:
            multipliers = {
                "dense": self.multipliers.dense,
                "per_sample": self.multipliers.per_sample,
            }
        return {
            "layout": None if self.layout is None else self.layout.signature(),
            "multipliers": clone_tree(multipliers),
            "controller_state": clone_tree(self.controller_state),
            "indexed_state": clone_tree(self.indexed_state),
            "formulation_state": clone_tree(self.formulation_state),
            "multiplier_models": {name: m.state_dict() for name, m in self._models.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: now if the layout is known, else when
        :meth:`initialise` builds it (the layouts must be equal).

        Raises:
            CheckpointError: Naming the part whose keys, shapes or dtypes differ.
        """
        if self.layout is None or self.multipliers is None:
            self._deferred = state
            return
        expect_equal("constraint layout", self.layout.signature(), state["layout"])
        saved = state["multipliers"]
        if not isinstance(saved, Mapping):
            raise CheckpointError(
                f"multipliers: expected a mapping with 'dense' and 'per_sample'; the "
                f"checkpoint holds {describe(saved)}."
            )
        check_tree("dense multipliers", self.multipliers.dense, saved.get("dense"))
        check_tree("per-sample multipliers", self.multipliers.per_sample, saved.get("per_sample"))
        check_tree("controller state", self.controller_state, state["controller_state"])
        check_tree("per-sample controller state", self.indexed_state, state["indexed_state"])
        check_tree("formulation state", self.formulation_state, state["formulation_state"])
        device = self.layout.device
        self.multipliers = Multipliers(
            clone_tree(saved["dense"], device), clone_tree(saved["per_sample"], device)
        )
        controller_state = clone_tree(state["controller_state"], device)
        if isinstance(self.controller, ControllerMap):
            self._states = controller_state
        else:
            self._states = {b.key: controller_state for b in self._blocks}
        self.indexed_state = clone_tree(state["indexed_state"], device)
        self.formulation_state = clone_tree(state["formulation_state"], device)
        self._load_models(state.get("multiplier_models", {}))

    def _load_models(self, saved: Any) -> None:
        """Restore the multiplier models' modules and optimizers (a checkpoint written
        before multiplier models holds none)."""
        if not isinstance(saved, Mapping) or set(saved) != set(self._models):
            keys = sorted(saved) if isinstance(saved, Mapping) else describe(saved)
            raise CheckpointError(
                f"multiplier models: this run has models for {sorted(self._models)}; the "
                f"checkpoint holds {keys}. Resume with the same multiplier models."
            )
        for name, model in self._models.items():
            try:
                model.load_state_dict(saved[name])
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise CheckpointError(
                    f"multiplier model of {name!r}: the checkpoint's module or optimizer "
                    f"state does not fit this model ({exc}). Resume with the same module."
                ) from None


@dataclass
class DualReport:
    """What one multiplier update did, as device tensors (see :meth:`Duals.step`).

    Attributes:
        health: 0-dim float tensor: 0 when every proposal was finite, NaN otherwise (the
            non-finite ones were dropped).
        dense: The proposed (unprojected) dense multipliers, ``None`` without multipliers.
        per_sample: The proposed multipliers of the observed entries of each group.
        previous: After an unguarded update (``Duals.step(..., guard=False)``): the dense
            multipliers and controller states before it, for :meth:`Duals.restore`.
    """

    health: Tensor
    dense: Tensor | None = None
    per_sample: dict[str, Tensor] = field(default_factory=dict)
    previous: tuple[Tensor, dict[str, ControllerState]] | None = None


def _health(values: Tensor) -> Tensor:
    """0-dim tensor: 0 when every entry of ``values`` is finite, else NaN (no host
    synchronisation).

    ``x - x`` is 0 for a finite entry and NaN for NaN/Inf, so its sum is exactly 0 when all
    are finite (no overflow, whatever their size) and NaN otherwise; so is ``x . 0``, one
    kernel, which the dense multipliers use (:meth:`Duals._dense_health`)."""
    return (values - values).sum()


def _proposal_error(controller: object, proposal: object, multipliers: Tensor) -> ShapeError:
    """The error for a controller update that is not a tensor of the multipliers' shape."""
    name = getattr(controller, "name", "") or type(controller).__name__
    return ShapeError(
        f"controller {name!r} returned {describe(proposal)} as the updated "
        f"multipliers; expected a tensor of shape {tuple(multipliers.shape)} on "
        f"{multipliers.device}, one entry per multiplier (see Controller.update)."
    )


def _overrides(formulation: Formulation, hook: str) -> bool:
    """Whether ``formulation`` overrides the base class's no-op ``hook``."""
    return getattr(type(formulation), hook) is not getattr(Formulation, hook)


def _keep_unless(ok: Tensor, new: ControllerState, old: ControllerState) -> ControllerState:
    """``new`` where ``ok`` else ``old``, key by key (keys only in ``new`` are taken)."""
    return {k: torch.where(ok, v, old[k]) if k in old else v for k, v in new.items()}


def _keep_unobserved(
    observed: Tensor, new: ControllerState, old: ControllerState
) -> ControllerState:
    """``new`` controller state, with the unobserved entries (last dimension) of ``old``."""
    out = {}
    for key, value in new.items():
        before = old.get(key)
        if (
            before is not None
            and before.shape == value.shape
            and value.shape[-1:] == observed.shape
        ):
            out[key] = torch.where(observed, value, before)
        else:
            out[key] = value
    return out


def _restart(
    controller: Controller, lam: Tensor, state: ControllerState, reset: Tensor
) -> tuple[Tensor, ControllerState]:
    """Reset the entries of ``lam`` and ``state`` selected by ``reset`` to a fresh
    controller's initial multipliers and state (per-sample groups: the observed entries)."""
    start = controller.initial_multipliers(torch.zeros_like(lam))
    initial = torch.zeros_like(lam) if start is None else start.to(lam)
    fresh = controller.init(initial)
    lam = torch.where(reset, initial, lam)
    return lam, _keep_unobserved(~reset, state, fresh)


def _check_options(max_multiplier: object, restart: object, dual_every: object) -> None:
    """Validate the per-group multiplier options up front (:class:`ConfigError`)."""

    def number(value: object) -> bool:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not math.isnan(value)
            and value >= 0
        )

    def count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    checks: list[tuple[str, object, Any, str]] = [
        ("max_multiplier", max_multiplier, number, "a number >= 0 (or None)"),
        ("restart", restart, lambda v: isinstance(v, bool), "True or False"),
        ("dual_every", dual_every, count, "a positive integer"),
    ]
    for what, value, ok, expected in checks:
        if what == "max_multiplier" and value is None:
            continue
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for pattern, v in items:
            if not ok(v):
                where = f"[{pattern!r}]" if pattern is not None else ""
                raise ConfigError(
                    f"{what}{where} must be {expected}, or a mapping from constraint-name "
                    f"patterns to such values; got {describe(v)}."
                )


def clone_tree(tree: Any, device: torch.device | None = None) -> Any:
    """Copy nested dicts of tensors (tensors detached, cloned, moved to ``device``)."""
    if isinstance(tree, Tensor):
        return tree.detach().to(device).clone() if device is not None else tree.detach().clone()
    if isinstance(tree, Mapping):
        return {k: clone_tree(v, device) for k, v in tree.items()}
    return tree


def expect_equal(what: str, expected: Any, received: Any) -> None:
    """Raise :class:`CheckpointError` if a checkpoint's ``what`` differs from this run's."""
    if expected != received:
        raise CheckpointError(
            f"the checkpoint belongs to another run: {what} differs (this run: {expected!r}; "
            f"checkpoint: {received!r}). Resume with the same problem and settings."
        )


def check_tree(what: str, own: Any, saved: Any) -> None:
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
        check_tree(f"{what} {key!r}", own[key], saved[key])
