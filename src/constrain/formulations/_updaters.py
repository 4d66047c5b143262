"""Feasibility-driven penalty updaters: one penalty coefficient per constraint entry.

The augmented Lagrangian and the quadratic penalty may keep a *vector* of penalties
``c_i``, one per dense constraint entry and one per sample of each per-sample group, and
grow each one when *its own* violation does not shrink fast enough (Birgin and Martínez,
"Practical augmented Lagrangian methods for constrained optimization", SIAM 2014,
Algorithm 4.1, applied entry by entry; Cooper's multiplicative and additive penalty
coefficient updaters). At each check (every ``every`` multiplier steps), for every
observed entry ``i`` with violation measure ``v_i``::

    grow_i = v_i > tolerance  and  v_i > shrink * v_i^prev
    c_i   <- max(c_i, min(increase(c_i), max_penalty))   where grow_i
    c_i   <- c_i^0                                       where restart and g_i <= 0
    v_i^prev <- v_i

with ``increase(c) = growth * c`` (``multiplicative``) or ``c + increment``
(``additive``), ``v_i = max(g_i, 0)`` for inequalities and ``|h_i|`` for equalities
(``measure="violation"``), or Birgin and Martínez's ``|max(g_i, -lam_i / c_i)|``, which also
measures complementarity (``measure="complementarity"``, augmented Lagrangian only; it uses
the multipliers before the step's update). ``shrink = 0`` drops the comparison with the
previous check (Cooper's rule: grow whenever the violation exceeds the tolerance).
See docs/algorithms.md, 'Penalty updaters'.

Updaters are registered components (``constrain list``); third-party ones come from the
entry-point group ``constrain.penalty_updaters``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from torch import Tensor

from .._components import build_component
from .._errors import ConfigError
from .._registry import Registry
from ..layout import StackedConstraints
from ..multipliers import Multipliers

__all__ = [
    "PENALTY_UPDATERS",
    "AdditiveUpdater",
    "MultiplicativeUpdater",
    "PenaltyUpdater",
    "build_updater",
    "register_updater",
]

U = TypeVar("U", bound="type[PenaltyUpdater]")

PENALTY_UPDATERS: Registry[type[PenaltyUpdater]] = Registry(
    "penalty updater", "constrain.penalty_updaters"
)
"""All registered penalty updaters."""


class PenaltyUpdater(BaseModel):
    """Base class of feasibility-driven updates of a vector of penalty coefficients.

    Subclasses define :meth:`increase`; the test deciding *which* entries grow is shared
    (see the module docstring).

    Attributes:
        shrink: Required reduction factor ``tau`` in [0, 1]: an entry grows when its
            violation measure exceeds ``shrink`` times its value at the previous check.
            0 drops that comparison.
        tolerance: Violations at or below it never grow a penalty (>= 0).
        every: Check every ``every`` multiplier steps (>= 1).
        max_penalty: Upper bound of the grown penalties (> 0).
        restart: Reset an inequality entry's penalty to its initial value when the
            constraint is satisfied (``g_i <= 0``); equality penalties never reset.
        measure: ``"violation"`` or ``"complementarity"`` (Birgin and Martínez's
            ``max(g_i, -lam_i / c_i)``; augmented Lagrangian only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""

    shrink: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False)
    tolerance: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    every: int = Field(default=1, ge=1)
    max_penalty: float = Field(default=1e6, gt=0, allow_inf_nan=False)
    restart: bool = False
    measure: Literal["violation", "complementarity"] = "violation"

    @model_serializer(mode="wrap")
    def _with_name(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {"name": self.name, **handler(self)}

    def increase(self, penalty: Tensor) -> Tensor:
        """The grown penalty (before the cap at ``max_penalty``)."""
        raise NotImplementedError

    # -- the shared rule ---------------------------------------------------------------
    def violation_measure(
        self, g: Tensor, equality: Tensor, multipliers: Tensor | None, penalty: Tensor
    ) -> Tensor:
        """``v_i``: ``max(g_i, 0)`` / ``|h_i|``, or ``|max(g_i, -lam_i / c_i)|`` for
        inequalities with ``measure="complementarity"``."""
        if self.measure == "complementarity" and multipliers is not None:
            positive = penalty > 0
            safe = torch.where(positive, penalty, torch.ones_like(penalty))
            ratio = torch.where(positive, multipliers / safe, torch.inf)
            ineq = torch.maximum(g, -ratio).abs()
        else:
            ineq = g.clamp_min(0)
        return torch.where(equality, g.abs(), ineq)

    def rule(
        self,
        penalty: Tensor,
        last: Tensor,
        measure: Tensor,
        active: Tensor | None,
        initial: Tensor,
        satisfied: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """One check on a vector of entries: the new penalties and previous measures.

        Args:
            penalty: Current penalties ``c``.
            last: Measures at the previous check (``inf`` before the first).
            measure: This step's measures ``v``.
            active: Entries that take part in the check (observed, due), or ``None``: all.
            initial: Initial penalties (restarts go back to them).
            satisfied: Inequality entries with ``g_i <= 0`` (restart candidates).
        """
        grow = measure > self.tolerance
        if self.shrink > 0:
            grow = grow & (measure > self.shrink * last)
        if active is not None:
            grow = grow & active
        capped = torch.clamp(self.increase(penalty), max=self.max_penalty)
        new = torch.where(grow, torch.maximum(penalty, capped), penalty)
        if self.restart:
            reset = satisfied if active is None else satisfied & active
            new = torch.where(reset, initial, new)
        last = measure if active is None else torch.where(active, measure, last)
        return new, last

    def update(
        self,
        stacked: StackedConstraints,
        state: Mapping[str, Tensor],
        multipliers: Multipliers | None,
    ) -> dict[str, Tensor]:
        """Apply the rule to the dense entries and the observed entries of each per-sample
        group of ``stacked`` (per-sample penalties change in place, O(batch)).

        Args:
            stacked: The step's constraints; entries outside ``stacked.observed`` and
                per-sample groups that are absent or unobserved do not move.
            state: The formulation state (``penalty``, ``initial_penalty``,
                ``last_violation``, ``step`` and their ``/<group>`` per-sample versions).
            multipliers: The multipliers before this step's update (``None`` without
                multipliers).
        """
        count = state["step"] + 1
        out = {**state, "step": count}
        due: Tensor | None = None if self.every == 1 else (count % self.every == 0)
        active = stacked.observed
        if due is not None:
            active = due if active is None else active & due
        g, eq = stacked.violation, stacked.equality
        c = state["penalty"]
        lam = None if multipliers is None else multipliers.dense.to(c.dtype)
        v = self.violation_measure(g, eq, lam, c)
        out["penalty"], out["last_violation"] = self.rule(
            c, state["last_violation"], v, active, state["initial_penalty"], (g <= 0) & ~eq
        )
        for name, iv in stacked.per_sample.items():
            if not iv.observed:
                continue
            idx = iv.indices
            store, last = state[f"penalty/{name}"], state[f"last_violation/{name}"]
            c_i = store[idx]
            lam_i = None
            if multipliers is not None and name in multipliers.per_sample:
                lam_i = multipliers.per_sample[name][idx].to(c_i.dtype)
            eq_i = torch.full_like(iv.violation, iv.equality, dtype=torch.bool)
            v_i = self.violation_measure(iv.violation, eq_i, lam_i, c_i)
            new, seen = self.rule(
                c_i,
                last[idx],
                v_i,
                None if due is None else due.expand_as(v_i),
                state[f"initial_penalty/{name}"][idx],
                (iv.violation <= 0) & ~eq_i,
            )
            store[idx] = new  # in place, O(batch)
            last[idx] = seen
        return out


def register_updater(name: str, *, overwrite: bool = False) -> Callable[[U], U]:
    """Class decorator registering a :class:`PenaltyUpdater` subclass under ``name``."""

    def decorator(cls: U) -> U:
        if not (isinstance(cls, type) and issubclass(cls, PenaltyUpdater)):
            raise ConfigError(
                f"@register_updater({name!r}) expects a subclass of PenaltyUpdater; got {cls!r}."
            )
        cls.name = name
        PENALTY_UPDATERS.register(name, overwrite=overwrite)(cls)
        return cls

    return decorator


def build_updater(spec: str | PenaltyUpdater | Mapping[str, Any]) -> PenaltyUpdater:
    """Build an updater from a name, a mapping ``{"name": ..., **options}`` or an instance.

    Raises:
        UnknownNameError: For an unknown name (lists the known ones).
        ConfigError: For invalid options, naming each field.
    """
    return build_component(PENALTY_UPDATERS, PenaltyUpdater, spec, {})


@register_updater("multiplicative")
class MultiplicativeUpdater(PenaltyUpdater):
    """``c_i <- growth * c_i`` for the entries whose violation does not shrink (Birgin and
    Martínez 2014, with their defaults ``growth = 10``, ``shrink = 0.5``; Cooper's
    ``MultiplicativePenaltyCoefficientUpdater`` is ``shrink = 0`` with a tolerance).

    Attributes:
        growth: Factor ``gamma > 1``.
    """

    growth: float = Field(default=10.0, gt=1, allow_inf_nan=False)

    def increase(self, penalty: Tensor) -> Tensor:
        """``growth * c``."""
        return penalty * self.growth


@register_updater("additive")
class AdditiveUpdater(PenaltyUpdater):
    """``c_i <- c_i + increment`` for the entries whose violation does not shrink
    (Cooper's ``AdditivePenaltyCoefficientUpdater`` is ``shrink = 0`` with a tolerance).

    Attributes:
        increment: Added amount (> 0).
    """

    increment: float = Field(default=1.0, gt=0, allow_inf_nan=False)

    def increase(self, penalty: Tensor) -> Tensor:
        """``c + increment``."""
        return penalty + self.increment
