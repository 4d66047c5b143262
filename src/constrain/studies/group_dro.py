"""Group distributionally robust optimisation (Group DRO) declared as a constrained problem.

Group DRO (Sagawa, Koh, Hashimoto, Liang, "Distributionally robust neural networks for group
shifts", ICLR 2020) minimises the largest expected loss over groups,

    min_theta max_g L_g(theta) = min_theta max_{q in simplex} sum_g q_g L_g(theta),

with ``L_g`` the mean loss of group ``g``. :class:`GroupDROProblem` declares the group losses
as the constraint group ``L_g(theta) + C / sqrt(n_g) <= 0`` with a zero objective, so that
the Lagrangian is ``sum_g q_g (L_g + C / sqrt(n_g))``; the controller ``group_dro``
(:class:`constrain.controllers.GroupDRO`) keeps ``q`` on the simplex with normalised
exponentiated-gradient ascent. ``C / sqrt(n_g)`` is the paper's "generalization adjustment"
(``C = 0``: none). A group absent from a minibatch has loss 0 there, as in the paper's code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor

from .._errors import ConfigError, ShapeError, describe
from ..problem import ConstrainedProblem, Constraint, ProblemState
from .groups import group_means, membership_from_labels

__all__ = ["GroupDROProblem"]


class GroupDROProblem(ConstrainedProblem):
    """Group DRO: the group losses as the constraints, their multipliers on the simplex.

    ::

        minimize 0   subject to   L_g(theta) + C / sqrt(n_g) <= 0   for g = 1..G

    solved with ``controller="group_dro"``, the Lagrangian formulation and
    ``order="dual_primal"``. The recorded objective is 0; the metrics ``worst_group_loss``,
    ``average_loss`` (the mean of the per-sample losses) and ``group_loss_{g}`` report the
    losses of each batch.

    Args:
        losses: ``losses(model, batch) -> (per_sample_losses, groups)``: differentiable losses
            ``(n,)`` and the samples' groups, as integer labels ``(n,)`` or a membership matrix
            ``(n, G)``.
        num_groups: ``G``.
        adjustment: ``C >= 0`` of the generalization adjustment (needs ``group_sizes``).
        group_sizes: Training-set size ``n_g`` of every group (for the adjustment).
        constraint_name: Name of the constraint group.

    Raises:
        pydantic.ValidationError: For a bad field (e.g. ``adjustment > 0`` without sizes).
        ShapeError: At evaluation, for losses or groups of the wrong shape.
    """

    losses: Any = Field(exclude=True)
    num_groups: int = Field(ge=1)
    adjustment: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    group_sizes: tuple[float, ...] | None = None
    constraint_name: str = "group_loss"

    @field_validator("losses")
    @classmethod
    def _callable(cls, value: object) -> object:
        if not callable(value):
            raise ValueError(
                f"expected a callable losses(model, batch) -> (losses, groups); got "
                f"{describe(value)}"
            )
        return value

    @field_validator("group_sizes")
    @classmethod
    def _positive_sizes(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and not all(math.isfinite(v) and v > 0 for v in value):
            raise ValueError(f"group sizes must be positive and finite; got {value}")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.adjustment > 0 and self.group_sizes is None:
            raise ConfigError(
                "GroupDROProblem: adjustment > 0 needs group_sizes (the training-set size of "
                "every group)."
            )
        if self.group_sizes is not None and len(self.group_sizes) != self.num_groups:
            raise ConfigError(
                f"GroupDROProblem: {len(self.group_sizes)} group sizes for "
                f"num_groups={self.num_groups}."
            )
        super().model_post_init(context)
        name = self.constraint_name
        if any(c.name == name for c in self._declared):
            raise ConfigError(f"GroupDROProblem: duplicate constraint name {name!r}.")
        self._declared = [
            *self._declared,
            Constraint(
                name=name,
                sense="<=",
                rhs=0.0,
                size=self.num_groups,
                fn=lambda model, batch: self.group_losses(model, batch)[0],
                description="group loss L_g + C / sqrt(n_g) <= 0 (weights on the simplex)",
            ),
        ]

    def group_losses(self, model: Any, batch: Any) -> tuple[Tensor, Tensor]:
        """The adjusted group losses ``L_g + C / sqrt(n_g)`` ``(G,)`` and the per-sample
        losses ``(n,)``."""
        out = self.losses(model, batch)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ShapeError(
                f"GroupDROProblem: losses(model, batch) must return (per_sample_losses, groups); "
                f"got {describe(out)}."
            )
        losses, groups = out
        if not isinstance(losses, Tensor) or losses.dim() != 1:
            raise ShapeError(
                f"GroupDROProblem: per-sample losses must be a 1-d tensor; got {describe(losses)}."
            )
        if not isinstance(groups, Tensor):
            raise ShapeError(f"GroupDROProblem: groups must be a tensor; got {describe(groups)}.")
        if groups.dim() == 1:
            membership = membership_from_labels(groups, self.num_groups, dtype=losses.dtype)
        else:
            membership = groups
        if membership.dim() != 2 or membership.shape[1] != self.num_groups:
            raise ShapeError(
                f"GroupDROProblem: groups must be labels (n,) or a membership matrix "
                f"(n, {self.num_groups}); got {describe(groups)}."
            )
        group_loss = group_means(losses, membership.to(losses.device))
        if self.adjustment > 0 and self.group_sizes is not None:
            sizes = torch.as_tensor(self.group_sizes, dtype=losses.dtype, device=losses.device)
            group_loss = group_loss + self.adjustment / sizes.sqrt()
        return group_loss, losses

    def objective(self, model: Any, batch: Any) -> Tensor:
        """Zero: the primal player minimises ``sum_g q_g L_g`` through the multipliers."""
        group_loss, _ = self.group_losses(model, batch)
        return torch.zeros((), dtype=group_loss.dtype, device=group_loss.device)

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        """One evaluation of the losses for the constraint group and the metrics."""
        group_loss, losses = self.group_losses(model, batch)
        values: dict[str, Any] = {self.constraint_name: group_loss}
        for c in self._declared:
            if c.name != self.constraint_name:
                if c.fn is None:
                    raise ConfigError(f"constraint {c.name!r} has no value function.")
                values[c.name] = c.fn(model, batch)
        detached = group_loss.detach()
        metrics: dict[str, float | Tensor] = {
            "worst_group_loss": detached.max(),
            "average_loss": losses.detach().mean(),
        }
        for g in range(self.num_groups):
            metrics[f"group_loss_{g}"] = detached[g]
        return ProblemState(
            objective=torch.zeros((), dtype=group_loss.dtype, device=group_loss.device),
            constraints=values,
            metrics=metrics,
        )
