"""Per-sample loss constraints: Feasible Learning with indexed multipliers.

Feasible Learning (Ramirez, Hashemizadeh, Lacoste-Julien, Gallego-Posada, ... AISTATS
2025) asks every training sample to be fitted well instead of the average one::

    minimize   w * (1/N) sum_i l_i(x)          (w = 0: a pure feasibility problem)
    subject to l_i(x) <= epsilon,   i = 1, ..., N,

with one Lagrange multiplier ``lam_i`` per sample. The constraint group is *indexed*: a
minibatch returns the losses of its samples together with their indices, the primal
player descends ``sum_{i in batch} lam_i (l_i - epsilon)`` and only the observed
multipliers move, so a step costs O(batch) whatever N is.

**Resilient (relaxed) Feasible Learning** (the same paper, for thresholds some samples
cannot meet): every sample gets a slack ``u_i`` and the slacks pay a minimal-norm penalty,

    minimize   w * (1/N) sum_i l_i(x) + (alpha/2) ||u||^2
    subject to l_i(x) <= epsilon + u_i,   i = 1, ..., N.

At a solution ``u_i = lam_i / alpha`` and ``lam_i = alpha * max(0, l_i - epsilon)``; the
authors' code implements the same game as weight decay ``1/alpha`` on the multipliers
(dual signal ``l_i - epsilon - lam_i / alpha``). Here the slacks are explicit primal
variables, one per sample, held by :class:`SampleSlack` (so that they are trained by the
primal optimizer and saved with the model).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .._errors import ConfigError, ShapeError, describe
from ..problem import ConstrainedProblem, ConstraintValue, ProblemState, constraint

__all__ = ["FeasibleLearning", "SampleSlack", "per_sample_losses"]


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


class SampleSlack(nn.Module):
    """A model plus one slack variable ``u_i`` per training sample (Resilient Feasible
    Learning); ``forward`` is the wrapped model's.

    Attributes:
        model: The wrapped model.
        slack: ``nn.Parameter`` of shape ``(num_samples,)``, initialised to 0.

    Raises:
        ConfigError: If ``num_samples`` is not a positive integer.
    """

    def __init__(self, model: nn.Module, num_samples: int) -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(
                f"SampleSlack: num_samples must be a positive integer (one slack per training "
                f"sample); received {describe(num_samples)}."
            )
        self.model = model
        dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
        self.slack = nn.Parameter(torch.zeros(num_samples, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped model's output."""
        return self.model(x)  # type: ignore[no-any-return]


class FeasibleLearning(ConstrainedProblem):
    """Feasible Learning: every training sample's loss at most ``epsilon``.

    ::

        minimize   objective_weight * mean_{i in batch} l_i
        subject to l_i <= epsilon   for every training sample i     (sample_loss, indexed)

    The batch is ``(x, y, indices)`` (what ``Minibatches`` yields: sample indices last);
    ``model(x)`` returns binary logits ``(n,)``/``(n, 1)`` or multi-class logits ``(n, C)``.
    Recorded metrics: the batch's ``mean_loss`` and ``feasible_fraction``.

    With ``slack_penalty = alpha`` (resilient / relaxed Feasible Learning) the model must be
    a :class:`SampleSlack`; the constraint becomes ``l_i - u_i <= epsilon`` and the
    objective gains ``(alpha/2) sum_{i in batch} u_i^2`` (summed like the constraint term of
    the Lagrangian, so that ``alpha u_i = lam_i`` at a stationary point). ``u_i >= 0`` need
    not be imposed: the minimizer over ``u_i`` of ``(alpha/2) u_i^2 - lam_i u_i`` is
    ``lam_i / alpha >= 0``. Recorded metrics then include the batch's ``mean_slack``.

    Attributes:
        num_samples: ``N``, the number of training samples (one multiplier each).
        epsilon: Loss threshold ``epsilon > 0``.
        objective_weight: Weight ``w >= 0`` of the average loss (0: pure feasibility, as in
            the paper; a small value breaks ties between feasible models).
        slack_penalty: ``alpha > 0`` of the minimal-norm slack penalty, or ``None`` for the
            plain (hard) constraints.
    """

    num_samples: int = Field(ge=1)
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    objective_weight: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    slack_penalty: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ConfigError(
                f"FeasibleLearning expects batches (x, y, indices); got {describe(batch)}."
            )
        return batch[0], batch[1], batch[-1]

    def _slack(self, model: Any, idx: Tensor) -> Tensor | None:
        """The batch's slacks ``u_i`` (``None`` without a slack penalty)."""
        if self.slack_penalty is None:
            return None
        slack = getattr(model, "slack", None)
        if not isinstance(slack, Tensor) or slack.dim() != 1 or slack.numel() != self.num_samples:
            raise ConfigError(
                "FeasibleLearning with slack_penalty needs a model carrying one slack per "
                f"sample (a 1-d tensor attribute 'slack' of length {self.num_samples}); "
                f"received a model whose 'slack' is {describe(slack)}. Wrap the model: "
                "SampleSlack(model, num_samples)."
            )
        return slack[idx.to(slack.device)]

    def _slack_penalty(self, slack: Tensor | None, like: Tensor) -> Tensor:
        if slack is None or self.slack_penalty is None:
            return like.new_zeros(())
        return 0.5 * self.slack_penalty * (slack**2).sum()

    def objective(self, model: Any, batch: Any) -> Tensor:
        """``objective_weight * mean_i l_i`` over the batch (plus the slack penalty)."""
        x, y, idx = self._unpack(batch)
        losses = per_sample_losses(model(x), y)
        return self._weighted_mean(losses) + self._slack_penalty(self._slack(model, idx), losses)

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
        """The batch's per-sample losses (minus their slacks) with their sample indices."""
        x, y, idx = self._unpack(batch)
        losses = per_sample_losses(model(x), y)
        slack = self._slack(model, idx)
        return ConstraintValue(losses if slack is None else losses - slack, indices=idx)

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        """One forward pass for the objective and the indexed constraint."""
        x, y, idx = self._unpack(batch)
        losses = per_sample_losses(model(x), y)
        slack = self._slack(model, idx)
        detached = losses.detach()
        metrics: dict[str, float | Tensor] = {
            "mean_loss": detached.mean(),
            "feasible_fraction": (detached <= self.epsilon).to(detached.dtype).mean(),
        }
        if slack is not None:
            metrics["mean_slack"] = slack.detach().mean()
        return ProblemState(
            objective=self._weighted_mean(losses) + self._slack_penalty(slack, losses),
            constraints={
                "sample_loss": ConstraintValue(
                    losses if slack is None else losses - slack, indices=idx
                )
            },
            metrics=metrics,
        )
