"""Fairness constraints for binary classifiers, with exact values and differentiable proxies.

A binary classifier outputs logits ``s_i``; it predicts positive when ``s_i > 0``. Group
statistics are masked means over a membership matrix ``M`` (see
:mod:`constrain.studies.groups`). Every constraint comes as a
:class:`~constrain.ConstraintValue` whose ``value`` is the exact, counting statistic (what
the multipliers respond to) and whose ``proxy`` replaces the indicator ``1[s > 0]`` by
``sigmoid(s / T)`` (what the primal player differentiates):

* demographic parity: ``rate_g - rate``, with ``rate_g = mean_g 1[s > 0]``;
* true-positive-rate parity (equal opportunity): the same restricted to ``y = 1``;
* equalized odds: true- and false-positive-rate gaps, stacked;
* per-group accuracy ``mean_g 1[correct]`` and per-group loss ``mean_g loss_i``.

A two-sided bound ``|gap_g| <= tol`` is two inequality groups, ``gap_g <= tol`` and
``-gap_g <= tol``; :class:`FairClassification` declares them for a whole problem.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from .._errors import ConfigError, ShapeError, describe
from ..problem import ConstrainedProblem, ConstraintValue, ProblemState, constraint
from .groups import group_major, group_means

__all__ = [
    "Criterion",
    "FairClassification",
    "correctness",
    "demographic_parity",
    "equalized_odds",
    "group_accuracy",
    "group_loss",
    "max_parity_gap",
    "negate",
    "positive_rates",
    "true_positive_rate_parity",
]

Criterion = Literal["demographic_parity", "true_positive_rate", "equalized_odds"]


def _binary_logits(logits: Tensor, what: str) -> Tensor:
    """Logits of a binary classifier as a 1-d tensor (accepts ``(n,)`` or ``(n, 1)``)."""
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() != 1:
        raise ShapeError(
            f"{what}: expected binary-classifier logits of shape (n,) or (n, 1); got "
            f"{describe(logits)}. For multi-class models use correctness()/group_accuracy()."
        )
    return logits


def _labels(labels: Tensor, n: int, what: str) -> Tensor:
    labels = labels.reshape(-1)
    if labels.numel() != n:
        raise ShapeError(f"{what}: expected {n} labels (one per logit); got {describe(labels)}.")
    return labels


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature!r}.")


def negate(value: ConstraintValue) -> ConstraintValue:
    """``-value`` (and ``-proxy``): turns ``gap <= tol`` into the lower side ``-gap <= tol``."""
    proxy = None if value.proxy is None else -value.proxy
    return ConstraintValue(-value.value, proxy, value.indices, value.observed)


def _conditional_gaps(
    predicted: Tensor, soft: Tensor, membership: Tensor, weights: Tensor | None
) -> ConstraintValue:
    """``mean_g(p | w) - mean(p | w)`` for the hard and the soft predictions.

    ``w`` selects (or weights) the samples that count (``None``: all). Groups with no
    counted sample are marked unobserved (``observed`` False, value 0): no evidence, so
    their multipliers do not move and they count as no violation.
    """
    if membership.dim() != 2 or membership.shape[0] != soft.shape[0]:
        raise ShapeError(
            f"membership must have shape (n, G) with n = {soft.shape[0]} samples; got "
            f"{describe(membership)}."
        )
    mt = group_major(membership, soft.dtype)  # (G, n)
    if weights is not None:
        w = weights.to(soft.dtype)
        mt = mt * w
        total = w.sum().clamp_min(1.0)
        overall_hard = (w @ predicted) / total
        overall_soft = (w @ soft) / total
    else:
        overall_hard, overall_soft = predicted.mean(), soft.mean()
    counts = mt.sum(dim=1)
    present = counts > 0
    hard = torch.where(present, (mt @ predicted) / counts.clamp_min(1.0) - overall_hard, 0.0)
    proxy = torch.where(present, (mt @ soft) / counts.clamp_min(1.0) - overall_soft, 0.0)
    return ConstraintValue(hard.detach(), proxy, observed=present)


def positive_rates(
    logits: Tensor, membership: Tensor, *, temperature: float = 1.0
) -> ConstraintValue:
    """Per-group positive rates ``rate_g = mean_g 1[s_i > 0]``; proxy ``mean_g sigmoid(s_i / T)``.

    Args:
        logits: Binary logits ``(n,)`` or ``(n, 1)``.
        membership: Membership matrix ``(n, G)``.
        temperature: ``T > 0`` of the sigmoid proxy (smaller: closer to the step function,
            smaller gradients away from the boundary).

    Returns:
        Value and proxy of shape ``(G,)`` (empty groups: 0).
    """
    _check_temperature(temperature)
    s = _binary_logits(logits, "positive_rates")
    hard = (s.detach() > 0).to(s.dtype)
    return ConstraintValue(
        group_means(hard, membership), group_means(torch.sigmoid(s / temperature), membership)
    )


def demographic_parity(
    logits: Tensor, membership: Tensor, *, temperature: float = 1.0
) -> ConstraintValue:
    """Demographic-parity gaps ``rate_g - rate`` of every group.

    ``rate_g = mean_g 1[s_i > 0]`` and ``rate = mean_i 1[s_i > 0]`` (the exact value);
    the proxy uses ``sigmoid(s_i / T)`` in place of the indicator. Bound it two-sided with
    ``gap <= tol`` and ``-gap <= tol`` (see :func:`negate`).

    Args:
        logits: Binary logits ``(n,)`` or ``(n, 1)``.
        membership: Membership matrix ``(n, G)``.
        temperature: ``T > 0`` of the proxy.

    Returns:
        Value (detached) and differentiable proxy of shape ``(G,)``; groups absent from
        the batch get gap 0.
    """
    _check_temperature(temperature)
    s = _binary_logits(logits, "demographic_parity")
    hard = (s.detach() > 0).to(s.dtype)
    return _conditional_gaps(hard, torch.sigmoid(s / temperature), membership, None)


def true_positive_rate_parity(
    logits: Tensor, labels: Tensor, membership: Tensor, *, temperature: float = 1.0
) -> ConstraintValue:
    """Equal-opportunity gaps ``TPR_g - TPR``, the positive rate among samples with ``y = 1``.

    ``TPR_g = sum_i M[i,g] y_i 1[s_i > 0] / sum_i M[i,g] y_i``; the proxy uses the sigmoid.

    Returns:
        Value and proxy of shape ``(G,)``; groups without a positive sample get gap 0.
    """
    _check_temperature(temperature)
    s = _binary_logits(logits, "true_positive_rate_parity")
    y = _labels(labels, s.numel(), "true_positive_rate_parity")
    hard = (s.detach() > 0).to(s.dtype)
    return _conditional_gaps(hard, torch.sigmoid(s / temperature), membership, (y > 0.5))


def equalized_odds(
    logits: Tensor, labels: Tensor, membership: Tensor, *, temperature: float = 1.0
) -> ConstraintValue:
    """Equalized-odds gaps: ``[TPR_g - TPR for g in groups] + [FPR_g - FPR for g in groups]``.

    ``FPR_g`` is the positive rate among samples with ``y = 0``.

    Returns:
        Value and proxy of shape ``(2G,)``.
    """
    _check_temperature(temperature)
    s = _binary_logits(logits, "equalized_odds")
    y = _labels(labels, s.numel(), "equalized_odds")
    hard = (s.detach() > 0).to(s.dtype)
    soft = torch.sigmoid(s / temperature)
    tpr = _conditional_gaps(hard, soft, membership, y > 0.5)
    fpr = _conditional_gaps(hard, soft, membership, y <= 0.5)
    assert tpr.proxy is not None and fpr.proxy is not None
    assert isinstance(tpr.observed, Tensor) and isinstance(fpr.observed, Tensor)
    return ConstraintValue(
        torch.cat([tpr.value, fpr.value]),
        torch.cat([tpr.proxy, fpr.proxy]),
        observed=torch.cat([tpr.observed, fpr.observed]),
    )


def correctness(logits: Tensor, labels: Tensor, *, temperature: float = 1.0) -> ConstraintValue:
    """Per-sample correctness: exact ``1[prediction = y_i]`` and a smooth proxy in ``[0, 1]``.

    * Binary (logits ``(n,)`` or ``(n, 1)``, labels in {0, 1}): exact
      ``1[(s_i > 0) = y_i]``; proxy ``sigmoid((2 y_i - 1) s_i / T)``.
    * Multi-class (logits ``(n, C)``, integer labels): exact ``1[argmax_c s_ic = y_i]``;
      proxy ``softmax(s_i / T)[y_i]``, the predicted probability of the true class.

    Returns:
        Value (detached) and proxy, shape ``(n,)``.
    """
    _check_temperature(temperature)
    if logits.dim() == 2 and logits.shape[1] > 1:
        y = _labels(labels, logits.shape[0], "correctness").long()
        hard = (logits.detach().argmax(dim=1) == y).to(logits.dtype)
        soft = torch.softmax(logits / temperature, dim=1).gather(1, y[:, None])[:, 0]
        return ConstraintValue(hard, soft)
    s = _binary_logits(logits, "correctness")
    y = _labels(labels, s.numel(), "correctness").to(s.dtype)
    hard = ((s.detach() > 0).to(s.dtype) == (y > 0.5).to(s.dtype)).to(s.dtype)
    return ConstraintValue(hard, torch.sigmoid((2.0 * y - 1.0) * s / temperature))


def group_accuracy(
    logits: Tensor, labels: Tensor, membership: Tensor, *, temperature: float = 1.0
) -> ConstraintValue:
    """Per-group accuracy ``acc_g = mean_g 1[correct_i]``, proxy ``mean_g`` of the smooth
    correctness of :func:`correctness` (binary or multi-class).

    Bound it from below with a ``">="`` constraint.

    Returns:
        Value and proxy of shape ``(G,)`` (empty groups: 0).
    """
    c = correctness(logits, labels, temperature=temperature)
    assert c.proxy is not None
    return ConstraintValue(group_means(c.value, membership), group_means(c.proxy, membership))


def group_loss(losses: Tensor, membership: Tensor) -> Tensor:
    """Per-group mean loss ``mean_g l_i`` (differentiable: no proxy needed), shape ``(G,)``.

    Args:
        losses: Per-sample losses ``(n,)`` (e.g. ``F.binary_cross_entropy_with_logits(...,
            reduction="none")``).
        membership: Membership matrix ``(n, G)``.
    """
    return group_means(losses, membership)


def max_parity_gap(logits: Tensor, membership: Tensor) -> float:
    """The reporting metric ``max_g |rate_g - rate|`` over non-empty groups (exact rates).

    Returns:
        The largest absolute demographic-parity gap (empty groups count as gap 0).
    """
    gaps = demographic_parity(logits.detach(), membership).value
    return float(gaps.abs().max()) if gaps.numel() else 0.0


class FairClassification(ConstrainedProblem):
    """A binary classifier trained under two-sided parity constraints.

    ::

        minimize   (1/n) sum_i BCE(s_i, y_i)                 (s = model(x): logits)
        subject to gap_g(s)  <= tolerance   for every group g  (parity_upper)
                   -gap_g(s) <= tolerance   for every group g  (parity_lower)

    where ``gap`` is chosen by ``criterion``: ``"demographic_parity"``
    (:func:`demographic_parity`, ``G`` entries), ``"true_positive_rate"``
    (:func:`true_positive_rate_parity`, ``G``) or ``"equalized_odds"``
    (:func:`equalized_odds`, ``2G``). The multipliers see the exact (counting) gaps, the
    primal player their sigmoid proxies.

    The batch is ``(x, y, membership, *rest)``: features, labels in {0, 1} and the
    membership matrix of the batch's samples (extra entries, e.g. sample indices, are
    ignored). Recorded metrics: the batch's ``accuracy`` and ``max_gap``, the largest
    ``|gap_g|`` of the constrained criterion.

    Attributes:
        tolerance: Largest allowed ``|gap_g|``.
        temperature: Temperature of the sigmoid proxy.
        criterion: Which parity notion to constrain.
    """

    tolerance: float = Field(default=0.02, gt=0, allow_inf_nan=False)
    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    criterion: Criterion = "demographic_parity"

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ConfigError(
                "FairClassification expects batches (x, y, membership, ...); got "
                f"{describe(batch)}."
            )
        return batch[0], batch[1], batch[2]

    def gaps(self, logits: Tensor, labels: Tensor, membership: Tensor) -> ConstraintValue:
        """The constrained gaps for ``criterion`` (value and proxy)."""
        if self.criterion == "demographic_parity":
            return demographic_parity(logits, membership, temperature=self.temperature)
        if self.criterion == "true_positive_rate":
            return true_positive_rate_parity(
                logits, labels, membership, temperature=self.temperature
            )
        return equalized_odds(logits, labels, membership, temperature=self.temperature)

    def objective(self, model: Any, batch: Any) -> Tensor:
        """Mean binary cross-entropy of the logits."""
        x, y, _ = self._unpack(batch)
        s = _binary_logits(model(x), "FairClassification")
        return F.binary_cross_entropy_with_logits(s, y.to(s.dtype))

    @constraint("<=", rhs="tolerance", description="gap_g <= tolerance")
    def parity_upper(self, model: Any, batch: Any) -> ConstraintValue:
        """``gap_g`` for every group."""
        x, y, m = self._unpack(batch)
        return self.gaps(model(x), y, m)

    @constraint("<=", rhs="tolerance", description="-gap_g <= tolerance")
    def parity_lower(self, model: Any, batch: Any) -> ConstraintValue:
        """``-gap_g`` for every group."""
        x, y, m = self._unpack(batch)
        return negate(self.gaps(model(x), y, m))

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        """One forward pass for the objective and both constraint groups."""
        x, y, m = self._unpack(batch)
        s = _binary_logits(model(x), "FairClassification")
        gaps = self.gaps(s, y, m)
        accuracy = correctness(s.detach(), y).value.mean()
        return ProblemState(
            objective=F.binary_cross_entropy_with_logits(s, y.to(s.dtype)),
            constraints={"parity_upper": gaps, "parity_lower": negate(gaps)},
            metrics={"accuracy": accuracy, "max_gap": gaps.value.abs().max()},
        )
