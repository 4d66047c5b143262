"""Per-sample loss constraints: Feasible Learning with indexed multipliers.

Feasible Learning (Ramirez, Hashemizadeh, Lacoste-Julien, Gallego-Posada, ... AISTATS
2025) asks every training sample to be fitted well instead of the average one::

    minimize   w * (1/N) sum_i l_i(x)          (w = 0: a pure feasibility problem)
    subject to l_i(x) <= epsilon,   i = 1, ..., N,

with one Lagrange multiplier ``lam_i`` per sample. The constraint group is *indexed*: a
minibatch returns the losses of its samples together with their indices, the primal
player descends ``sum_{i in batch} lam_i (l_i - epsilon)`` and only the observed
multipliers move, so a step costs O(batch) whatever N is.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from .._errors import ConfigError, ShapeError, describe
from ..problem import ConstrainedProblem, ConstraintValue, ProblemState, constraint

__all__ = ["FeasibleLearning", "per_sample_losses"]


def per_sample_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy ``l_i`` (no reduction).

    * Binary: logits ``(n,)`` or ``(n, 1)``, labels in {0, 1}:
      ``l_i = log(1 + exp(-s_i))`` if ``y_i = 1`` else ``log(1 + exp(s_i))``.
    * Multi-class: logits ``(n, C)``, integer labels: ``l_i = -log softmax(s_i)[y_i]``.

    Raises:
        ShapeError: If logits and labels do not match.
    """
    if logits.dim() == 2 and logits.shape[1] > 1:
        if labels.reshape(-1).numel() != logits.shape[0]:
            raise ShapeError(
                f"per_sample_losses: {logits.shape[0]} rows of logits but labels are "
                f"{describe(labels)}; give one integer label per row."
            )
        return F.cross_entropy(logits, labels.reshape(-1).long(), reduction="none")
    s = logits.reshape(-1)
    if labels.reshape(-1).numel() != s.numel():
        raise ShapeError(
            f"per_sample_losses: {s.numel()} binary logits but labels are {describe(labels)}; "
            "give one 0/1 label per logit."
        )
    return F.binary_cross_entropy_with_logits(s, labels.reshape(-1).to(s.dtype), reduction="none")


class FeasibleLearning(ConstrainedProblem):
    """Feasible Learning: every training sample's loss at most ``epsilon``.

    ::

        minimize   objective_weight * mean_{i in batch} l_i
        subject to l_i <= epsilon   for every training sample i     (sample_loss, indexed)

    The batch is ``(x, y, indices)`` (what ``Minibatches`` yields: sample indices last);
    ``model(x)`` returns binary logits ``(n,)``/``(n, 1)`` or multi-class logits ``(n, C)``.
    Recorded metrics: the batch's ``mean_loss`` and ``feasible_fraction``.

    Attributes:
        num_samples: ``N``, the number of training samples (one multiplier each).
        epsilon: Loss threshold ``epsilon > 0``.
        objective_weight: Weight ``w >= 0`` of the average loss (0: pure feasibility, as in
            the paper; a small value breaks ties between feasible models).
    """

    num_samples: int = Field(ge=1)
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    objective_weight: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ConfigError(
                f"FeasibleLearning expects batches (x, y, indices); got {describe(batch)}."
            )
        return batch[0], batch[1], batch[-1]

    def objective(self, model: Any, batch: Any) -> Tensor:
        """``objective_weight * mean_i l_i`` over the batch."""
        x, y, _ = self._unpack(batch)
        return self._weighted_mean(per_sample_losses(model(x), y))

    def _weighted_mean(self, losses: Tensor) -> Tensor:
        """``w * mean(l)``; exactly 0 (not ``0 * inf``) for a pure feasibility problem."""
        if self.objective_weight == 0.0:
            return losses.new_zeros(())
        return self.objective_weight * losses.mean()

    @constraint(
        "<=",
        rhs="epsilon",
        per_sample=True,
        size="num_samples",
        description="l_i <= epsilon for every sample",
    )
    def sample_loss(self, model: Any, batch: Any) -> ConstraintValue:
        """The batch's per-sample losses with their sample indices."""
        x, y, idx = self._unpack(batch)
        return ConstraintValue(per_sample_losses(model(x), y), indices=idx)

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        """One forward pass for the objective and the indexed constraint."""
        x, y, idx = self._unpack(batch)
        losses = per_sample_losses(model(x), y)
        detached = losses.detach()
        return ProblemState(
            objective=self._weighted_mean(losses),
            constraints={"sample_loss": ConstraintValue(losses, indices=idx)},
            metrics={
                "mean_loss": detached.mean(),
                "feasible_fraction": (detached <= self.epsilon).to(detached.dtype).mean(),
            },
        )
