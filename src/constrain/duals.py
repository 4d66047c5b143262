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
(``on_nonfinite="skip"``) logs it. See docs/algorithms.md, 'Multiplier controllers', and docs/algorithms.md,
'Formulations', for the update rules and the projection convention.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ._errors import CheckpointError, ConfigError, describe
from .controllers import Controller, ControllerState
from .formulations import Formulation, FormulationState
from .layout import ConstraintLayout, StackedConstraints
from .multipliers import Multipliers

__all__ = ["DualReport", "Duals", "NonFinitePolicy"]

logger = logging.getLogger("constrain")

NonFinitePolicy = Literal["raise", "skip"]


class Duals:
    """Multipliers and the state of the controller and the formulation.

    Args:
        controller: The multiplier controller.
        formulation: The formulation (projection, dual signal, penalty state).
        on_nonfinite: ``"raise"`` or ``"skip"`` (keep the old multipliers and report the
            update as skipped).

    Attributes:
        layout: The constraint layout (``None`` before :meth:`initialise`).
        multipliers: Current multipliers (``None`` before :meth:`initialise`).
        controller_state: Controller state of the dense multipliers.
        indexed_state: Controller state of each per-sample group (one entry per sample).
        formulation_state: Formulation state (e.g. the current penalty).
    """

    def __init__(
        self,
        controller: Controller,
        formulation: Formulation,
        *,
        on_nonfinite: NonFinitePolicy = "raise",
    ) -> None:
        self.controller = controller
        self.formulation = formulation
        self.on_nonfinite = on_nonfinite
        self.layout: ConstraintLayout | None = None
        self.multipliers: Multipliers | None = None
        self.controller_state: ControllerState = {}
        self.indexed_state: dict[str, ControllerState] = {}
        self.formulation_state: FormulationState = {}
        self._deferred: Mapping[str, Any] | None = None

    # -- set-up -------------------------------------------------------------------------
    def initialise(self, layout: ConstraintLayout) -> None:
        """Initial multipliers and states for ``layout``.

        Raises:
            ConfigError: If the controller cannot handle the problem's equality constraints.
        """
        if layout.has_equality and not self.controller.supports_equality:
            raise ConfigError(
                f"controller {self.controller.name!r} only handles inequality constraints "
                "(it keeps multipliers non-negative) but the problem has equality "
                "constraints; use e.g. 'gda' or 'nupi'."
            )
        self.layout = layout
        initial = self.controller.initial_multipliers(
            torch.zeros(layout.num_dense, dtype=layout.dtype, device=layout.device)
        )
        self.multipliers = layout.init_multipliers(initial)
        self.controller_state = self.controller.init(self.multipliers.dense)
        self.indexed_state = {
            name: self.controller.init(lam) for name, lam in self.multipliers.per_sample.items()
        }
        self.formulation_state = self.formulation.init_state(layout)
        if self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            self.load_state_dict(deferred)

    def reset(self) -> None:
        """Forget the layout, the multipliers and the states (a state saved before the
        first step)."""
        self.__init__(self.controller, self.formulation, on_nonfinite=self.on_nonfinite)  # type: ignore[misc]

    @property
    def ready(self) -> bool:
        """True once :meth:`initialise` has run."""
        return self.layout is not None and self.multipliers is not None

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
        """The formulation's primal loss at the current multipliers."""
        assert self.multipliers is not None
        return self.formulation.primal_loss(
            objective, stacked, self.multipliers, self.formulation_state
        )

    # -- the multiplier step -------------------------------------------------------------
    def step(self, stacked: StackedConstraints, step: int) -> DualReport:
        """One multiplier update from ``stacked``; returns what it proposed and whether
        it was taken, on the device (no host synchronisation).

        The dense vector is updated in one call; each per-sample group is updated at its
        observed indices only. A proposal with a NaN/Inf entry is dropped on the device
        (the multipliers and the controller state keep their values); the solver reports
        it when the step is flushed (:class:`~constrain.NonFiniteError` naming the
        constraint, or a warning with ``on_nonfinite="skip"``). A formulation without
        multipliers only advances its state (penalty schedules).
        """
        assert self.multipliers is not None and self.layout is not None
        formulation, controller = self.formulation, self.controller
        if not formulation.uses_multipliers:
            self.formulation_state = formulation.after_dual_step(stacked, self.formulation_state)
            return DualReport(torch.ones((), dtype=torch.bool, device=self.layout.device))
        lam = self.multipliers
        signal = formulation.dual_signal(stacked, self.formulation_state)
        dense, controller_state = controller.update(lam.dense, signal, self.controller_state)
        if stacked.observed is not None:  # unobserved entries keep multiplier and state
            dense = torch.where(stacked.observed, dense, lam.dense)
            controller_state = _keep_unobserved(
                stacked.observed, controller_state, self.controller_state
            )
        ok = _all_finite(dense)
        self.controller_state = _keep_unless(ok, controller_state, self.controller_state)
        lam.dense = torch.where(ok, formulation.project(dense, self.layout.equality), lam.dense)
        report = DualReport(ok, dense)
        for name, iv in stacked.per_sample.items():
            sig = formulation.indexed_signal(iv.violation, self.formulation_state)
            store, state = lam.per_sample[name], self.indexed_state[name]
            before = {k: v[..., iv.indices] for k, v in state.items()}
            old = store[iv.indices]
            updated, observed = controller.update(old, sig, before)
            ok = _all_finite(updated)
            mask = torch.full_like(updated, iv.equality, dtype=torch.bool)
            store[iv.indices] = torch.where(ok, formulation.project(updated, mask), old)  # O(batch)
            for k, v in _keep_unless(ok, observed, before).items():
                state[k][..., iv.indices] = v
            report.per_sample[name] = updated
            report.ok = report.ok & ok
        self.formulation_state = formulation.after_dual_step(stacked, self.formulation_state)
        return report

    def lookahead(self, stacked: StackedConstraints) -> Multipliers:
        """The extrapolated multipliers of an extragradient step (no state changes).

        Dense and per-sample multipliers alike: the observed entries of each per-sample
        group are extrapolated, the others keep their value.
        """
        assert self.multipliers is not None and self.layout is not None
        lam = self.multipliers
        if not self.formulation.uses_multipliers:
            return lam
        signal = self.formulation.dual_signal(stacked, self.formulation_state)
        dense = self.controller.extrapolate(lam.dense, signal, self.controller_state)
        if stacked.observed is not None:
            dense = torch.where(stacked.observed, dense, lam.dense)
        per_sample = dict(lam.per_sample)
        for name, iv in stacked.per_sample.items():
            sig = self.formulation.indexed_signal(iv.violation, self.formulation_state)
            observed = {k: v[..., iv.indices] for k, v in self.indexed_state[name].items()}
            ahead = self.controller.extrapolate(lam.per_sample[name][iv.indices], sig, observed)
            mask = torch.full_like(ahead, iv.equality, dtype=torch.bool)
            copy = lam.per_sample[name].clone()
            copy[iv.indices] = self.formulation.project(ahead, mask)
            per_sample[name] = copy
        return Multipliers(self.formulation.project(dense, self.layout.equality), per_sample)

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
        (``dense``, ``per_sample``), ``controller_state``, ``indexed_state``,
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
        self.controller_state = clone_tree(state["controller_state"], device)
        self.indexed_state = clone_tree(state["indexed_state"], device)
        self.formulation_state = clone_tree(state["formulation_state"], device)


@dataclass
class DualReport:
    """What one multiplier update did, as device tensors (see :meth:`Duals.step`).

    Attributes:
        ok: 0-dim bool tensor: every proposal was finite (else the non-finite ones were
            dropped).
        dense: The proposed (unprojected) dense multipliers, ``None`` without multipliers.
        per_sample: The proposed multipliers of the observed entries of each group.
    """

    ok: Tensor
    dense: Tensor | None = None
    per_sample: dict[str, Tensor] = field(default_factory=dict)


def _all_finite(values: Tensor) -> Tensor:
    """0-dim bool tensor: every entry of ``values`` is finite (their float64 sum is
    non-finite exactly then; no host synchronisation)."""
    return torch.isfinite(values.sum(dtype=torch.float64))


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
