"""The formulation contract: how constraints enter the primal loss and the dual signal."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from torch import Tensor

from .._errors import ConfigError
from .._patterns import match_patterns
from ..layout import ConstraintLayout, IndexedViolation, StackedConstraints
from ..multipliers import Multipliers
from ._updaters import PenaltyUpdater, build_updater

__all__ = [
    "Formulation",
    "FormulationState",
    "PenalizedFormulation",
    "PenaltySchedule",
    "PenaltySpec",
]

FormulationState = dict[str, Tensor]
"""Explicit formulation state (e.g. the current penalty coefficient), saved in checkpoints."""

_ZERO_PENALTY = (
    "the penalty must be > 0: at 0 the quadratic term vanishes and the augmented "
    "Lagrangian's multiplier step (c * g) does not move, so the constraints would be "
    "ignored; use a positive penalty (or the plain 'lagrangian' formulation)"
)

PenaltySpec = float | dict[str, float]
"""An initial penalty: one finite number ``c > 0``, or ``{constraint-name pattern: c}``."""


class Formulation(BaseModel):
    """Base class of formulations (Lagrangian, augmented Lagrangian, quadratic penalty).

    A formulation turns one :class:`~constrain.multipliers.StackedConstraints` into

    * ``primal_loss``: the scalar the primal player minimises (``backward()`` on it), and
    * ``dual_signal``: the error signal of each multiplier (``None`` if the formulation has
      no multipliers),

    and projects the multipliers onto their domain after every controller update.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""
    uses_multipliers: ClassVar[bool] = True
    linear_terms: ClassVar[bool] = False
    """Whether :meth:`terms` is linear in the constraint values (``lam . g~``): its
    backward then keeps none of them, and the solver may hand it the user's tensor itself
    instead of a copy (see ``ConstraintLayout``'s ``share_values``). Leave it ``False``
    unless that holds: a subclass that overrides :meth:`terms` without setting it again
    gets ``False``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "terms" in vars(cls) and "linear_terms" not in vars(cls):
            cls.linear_terms = False

    def init_state(self, layout: ConstraintLayout) -> FormulationState:
        """Initial formulation state (empty for the plain Lagrangian)."""
        return {}

    def primal_loss(
        self,
        objective: Tensor,
        stacked: StackedConstraints,
        multipliers: Multipliers,
        state: FormulationState,
    ) -> Tensor:
        """The scalar the primal player minimises: ``f`` plus :meth:`terms` of the dense
        entries and of the observed entries of each per-sample group (multipliers
        detached: the primal player does not move them)."""
        dense, primal = multipliers.dense, stacked.primal
        if dense.requires_grad:
            dense = dense.detach()
        if dense.dtype is not primal.dtype:
            dense = dense.to(primal.dtype)
        loss = objective + self.terms(dense, primal, stacked.equality, state)
        for name, iv in stacked.per_sample.items():
            store = multipliers.per_sample.get(name)  # absent without multipliers
            lam = (
                store.detach()[iv.indices]
                if store is not None
                else torch.zeros_like(iv.primal.detach())
            )
            mask = torch.full_like(lam, iv.equality, dtype=torch.bool)
            loss = loss + self.terms(lam, iv.primal, mask, self.group_state(state, name, iv))
        return loss

    def group_state(
        self, state: FormulationState, name: str, iv: IndexedViolation
    ) -> FormulationState:
        """The state seen by :meth:`terms` and :meth:`indexed_signal` for the observed
        entries ``iv`` (an :class:`~constrain.layout.IndexedViolation`) of per-sample
        group ``name`` (default: ``state`` itself; per-entry penalties are gathered)."""
        return state

    def terms(
        self, multipliers: Tensor, values: Tensor, equality: Tensor, state: FormulationState
    ) -> Tensor:
        """The constraint terms of the primal loss for one stacked vector ``values``
        (standard form, proxies where given) and its multipliers (a scalar tensor)."""
        raise NotImplementedError

    def dual_signal(self, stacked: StackedConstraints, state: FormulationState) -> Tensor:
        """Error signal for the dense multipliers (default: the violation ``g``)."""
        return stacked.violation

    def indexed_signal(self, violation: Tensor, state: FormulationState) -> Tensor:
        """Error signal for observed per-sample multipliers (default: the violation)."""
        return violation

    def project(self, multipliers: Tensor, equality: Tensor | None) -> Tensor:
        """Project onto the multiplier domain: ``max(lam, 0)`` for inequalities.

        Args:
            multipliers: Multipliers after a controller update.
            equality: Boolean mask, True where the constraint is an equality; ``None``
                when every entry is an inequality.
        """
        if equality is None:
            return multipliers.clamp_min(0)
        return torch.where(equality, multipliers, multipliers.clamp_min(0))

    def after_dual_step(
        self,
        stacked: StackedConstraints,
        state: FormulationState,
        multipliers: Multipliers | None = None,
    ) -> FormulationState:
        """Update the formulation state at a multiplier step (penalty schedules).

        Args:
            stacked: The step's constraints, restricted to the entries that take part in
                the step (``stacked.observed``; absent per-sample groups do not).
            state: The current state.
            multipliers: The multipliers *before* the step's update (``None`` without
                multipliers).
        """
        return state

    def diagnostics(self, state: FormulationState) -> dict[str, Tensor]:
        """What the formulation reports about its state for the history (scalars, on the
        device; none for the plain Lagrangian)."""
        return {}


class PenaltySchedule(BaseModel):
    """Increase a penalty coefficient when the violation stops shrinking.

    Every ``every`` steps: if ``||max(g, 0)|| + ||h||`` exceeds ``shrink`` times its value at
    the previous check, ``c <- min(growth * c, max_penalty)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    growth: float = Field(default=1.0, ge=1.0, allow_inf_nan=False)
    shrink: float = Field(default=0.25, gt=0, le=1, allow_inf_nan=False)
    every: int = Field(default=1, ge=1)
    max_penalty: float = Field(default=1e6, gt=0, allow_inf_nan=False)

    def init_state(self, penalty: float, layout: ConstraintLayout) -> FormulationState:
        return {
            "penalty": torch.tensor(penalty, dtype=layout.dtype, device=layout.device),
            "last_violation": torch.tensor(float("inf"), dtype=layout.dtype, device=layout.device),
            "step": torch.zeros((), dtype=torch.int64, device=layout.device),
        }

    def update(self, stacked: StackedConstraints, state: FormulationState) -> FormulationState:
        if self.growth == 1.0:
            return state
        step = state["step"] + 1
        # Decided on the device (no host synchronisation): off the ``every`` grid only the
        # step count moves.
        due = step % self.every == 0
        v = stacked.violation
        size = torch.where(stacked.equality, v, v.clamp_min(0)).norm()
        for iv in stacked.per_sample.values():
            size = size + (iv.violation if iv.equality else iv.violation.clamp_min(0)).norm()
        grow = due & (size > self.shrink * state["last_violation"])
        penalty = torch.where(
            grow, (state["penalty"] * self.growth).clamp_max(self.max_penalty), state["penalty"]
        )
        last = torch.where(due, size, state["last_violation"])
        return {"penalty": penalty, "last_violation": last, "step": step}


class PenalizedFormulation(Formulation):
    """Base of formulations with a penalty coefficient ``c``.

    One penalty for all constraints (``penalty`` a number), grown by a
    :class:`PenaltySchedule`; or one penalty per constraint entry (``penalty`` a mapping
    from constraint-name patterns to initial values, or an ``updater``), each grown by a
    feasibility-driven :class:`~constrain.formulations.PenaltyUpdater` when its own
    violation does not shrink (docs/algorithms.md, 'Penalty updaters'). The penalties live
    in the formulation state (``state["penalty"]``: a scalar, or one value per dense entry
    plus ``state["penalty/<group>"]`` with one value per sample of each per-sample group),
    so that they are checkpointed.

    Args:
        penalty: Initial penalty ``c > 0`` (0 is refused: it would ignore the
            constraints), or ``{pattern: c}`` (every constraint group matched by exactly
            one pattern).
        schedule: When and how one shared ``c`` grows (default: constant).
        updater: Per-entry growth rule: a registered name (``"multiplicative"``,
            ``"additive"``), a mapping ``{"name": ..., **options}`` or an instance.

    Raises:
        ConfigError: For a growing ``schedule`` combined with per-entry penalties.
    """

    penalty: PenaltySpec = 1.0
    schedule: PenaltySchedule = PenaltySchedule()
    updater: SerializeAsAny[PenaltyUpdater] | None = None

    @field_validator("penalty", mode="before")
    @classmethod
    def _check_penalty(cls, value: object) -> object:
        def check(v: object, where: str) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise PydanticCustomError(
                    "penalty_type",
                    f"{where}Input should be a number > 0 or a mapping from constraint-name "
                    "patterns to such numbers",
                )
            if not math.isfinite(v):
                raise PydanticCustomError(
                    "finite_number", f"{where}Input should be a finite number"
                )
            if v <= 0:
                raise PydanticCustomError("greater_than", f"{where}{_ZERO_PENALTY}")
            return float(v)

        if isinstance(value, Mapping):
            return {str(k): check(v, f"{k!r}: ") for k, v in value.items()}
        return check(value, "")

    @field_validator("updater", mode="before")
    @classmethod
    def _build_updater(cls, value: object) -> object:
        if value is None or isinstance(value, PenaltyUpdater):
            return value
        if isinstance(value, (str, Mapping)):
            try:
                return build_updater(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> PenalizedFormulation:
        if self.per_entry and self.schedule.growth != 1.0:
            raise ValueError(
                "a growing schedule (one penalty for all constraints) cannot be combined with "
                "per-constraint penalties (a penalty mapping or an updater); use the updater's "
                "options instead of schedule"
            )
        if isinstance(self.penalty, dict) and not self.penalty:
            raise ValueError("the penalty mapping is empty; give {pattern: value, ...}")
        if (
            not self.uses_multipliers
            and self.updater is not None
            and self.updater.measure == "complementarity"
        ):
            raise ValueError(
                f"{self.name} has no multipliers, so the updater's measure 'complementarity' "
                "(max(g, -lam / c)) is undefined; use measure='violation'"
            )
        return self

    @property
    def per_entry(self) -> bool:
        """True when there is one penalty per constraint entry."""
        return self.updater is not None or isinstance(self.penalty, dict)

    def init_state(self, layout: ConstraintLayout) -> FormulationState:
        if not self.per_entry:
            assert isinstance(self.penalty, float)
            return self.schedule.init_state(self.penalty, layout)
        if isinstance(self.penalty, dict):
            assigned = match_patterns(
                self.penalty, layout.group_names, what="penalty", require_all=True
            )
            initial = {name: self.penalty[p] for name, p in assigned.items()}
        else:
            initial = dict.fromkeys(layout.group_names, self.penalty)
        dtype, device = layout.dtype, layout.device
        dense = [initial[c.name] for c, n in zip(layout.dense, layout.sizes, strict=True)]
        counts = torch.tensor(layout.sizes, dtype=torch.int64)
        c0 = torch.tensor(dense, dtype=dtype).repeat_interleave(counts).to(device)
        state: FormulationState = {
            "penalty": c0,
            "initial_penalty": c0.clone(),
            "last_violation": torch.full_like(c0, torch.inf),
            "step": torch.zeros((), dtype=torch.int64, device=device),
        }
        for c in layout.per_sample:
            n = int(c.size or 0)
            full = torch.full((n,), initial[c.name], dtype=dtype, device=device)
            state[f"penalty/{c.name}"] = full
            state[f"initial_penalty/{c.name}"] = full.clone()
            state[f"last_violation/{c.name}"] = torch.full_like(full, torch.inf)
        return state

    def group_state(
        self, state: FormulationState, name: str, iv: IndexedViolation
    ) -> FormulationState:
        """Per-entry penalties: ``state["penalty"]`` becomes the observed samples' ones."""
        key = f"penalty/{name}"
        if key not in state:
            return state
        return {**state, "penalty": state[key][iv.indices]}

    def after_dual_step(
        self,
        stacked: StackedConstraints,
        state: FormulationState,
        multipliers: Multipliers | None = None,
    ) -> FormulationState:
        if self.updater is not None:
            return self.updater.update(
                stacked, state, multipliers if self.uses_multipliers else None
            )
        if self.per_entry:
            return state  # constant per-entry penalties
        return self.schedule.update(stacked, state)

    def diagnostics(self, state: FormulationState) -> dict[str, Tensor]:
        """The current penalty ``c`` (``{"penalty": c}``); with per-entry penalties their
        maximum."""
        if not self.per_entry:
            return {"penalty": state["penalty"]}
        parts = [v.reshape(-1) for k, v in state.items() if k.split("/")[0] == "penalty"]
        flat = torch.cat(parts)
        if not flat.numel():
            return {}
        return {"penalty": flat.max()}
