"""Rate constraints: the confusion-matrix vocabulary per group, exact values and proxies.

A classifier with scores ``s`` predicts, for every sample ``i`` and every *column* ``k``,
a positive indicator ``yhat_ik`` in {0, 1}:

* binary (logits ``(n,)`` or ``(n, 1)``, labels in {0, 1}): one column, ``yhat_i = 1[s_i > 0]``;
* multi-class (logits ``(n, C)``, ``C >= 2``, integer labels): one column per class, one
  versus the rest, ``yhat_ic = 1[argmax_k s_ik = c]`` (ties go to the first maximum) and
  ``y_ic = 1[y_i = c]``.

The rates of group ``g`` (a column of the membership matrix ``M``; groups may be given as
``M`` or as integer labels) and column ``k`` are conditional means of indicators,

    rate_gk = sum_i M_ig w_ik u_ik / sum_i M_ig w_ik,

with the condition ``w`` and the counted indicator ``u``:

=========================================  ============  ==================================
rate                                       condition w   counted u
=========================================  ============  ==================================
positive prediction rate                   1             yhat
true positive rate (recall)                y             yhat
false positive rate                        1 - y         yhat
false negative rate                        y             1 - yhat
true negative rate                         1 - y         1 - yhat
error rate (one column)                    1             1[prediction != y]
precision                                  yhat          y      (a ratio: see below)
=========================================  ============  ==================================

Every function returns a :class:`~constrain.ConstraintValue`: ``value`` is the exact,
thresholded rate (not differentiable; it drives the multipliers) and ``proxy`` the same mean
with each indicator replaced by a differentiable surrogate (what the model is trained on),
the "proxy constraints" of Cotter et al. (JMLR 2019):

* ``proxy="sigmoid"``: ``yhat ~ sigmoid(s / T)`` (binary), ``yhat_c ~ softmax(s / T)_c``
  (multi-class), and ``1 - yhat ~ 1 - sigmoid``;
* ``proxy="hinge"``: with the margin ``z_ic = s_ic - max_{k != c} s_ik`` (``z_i = s_i`` in the
  binary case) ``yhat ~ max(0, 1 + z / T)`` and ``1 - yhat ~ max(0, 1 - z / T)``, upper
  bounds of the indicators (TFCO's hinge). The rate functions return these upper bounds;
  the builders below orient them so that the proxy of every standard-form entry bounds the
  exact entry from above (a feasible proxy implies a feasible exact value).

Shapes: binary rates have one entry per group ``(G,)``; multi-class rates one per group and
class, flattened group-major ``(G * C,)`` (entry ``g * C + c``); the error rate has one entry
per group. Groups with no sample meeting the condition get value 0 and proxy 0.

The mathematics is summarised in docs/algorithms.md, 'Rate constraints'.

**Ratios (precision).** Precision ``TP_g / PP_g`` is not linear in the indicators, so a bound
on it is linearised by moving the denominator to the constraint side (Cotter et al., JMLR
2019; TFCO's ratio constraints): for ``PP_g > 0``,

    TP_g / PP_g >= p   <=>   TP_g - p * PP_g >= 0   <=>   mean_g(y * yhat) - p * mean_g(yhat) >= 0,

dividing by the group size ``n_g`` (docs/algorithms.md, 'Ratio constraints'). The linear form is what the builders constrain; a group
with no predicted positive satisfies it (precision is then undefined).

**Builders** return a :class:`RateConstraint` (name, sense, right-hand side and the
left-hand side as a function of ``(logits, labels, groups)``):

* :func:`rate_constraint`: ``rate <= b`` or ``rate >= b`` overall or per group ("recall >= 0.9");
* :func:`rate_gap_constraint`: ``rate_g <= rate_all + slack`` ("FPR(g) <= FPR(all) + 0.05");
* :func:`rate_parity_constraint`: ``|rate_g - rate_all| <= tol`` as two one-sided entries;
* :func:`equalized_odds_constraint`: TPR and FPR parity (Hardt, Price, Srebro, NeurIPS 2016);
* :func:`demographic_parity_constraint`: positive-rate parity, per class for multi-class models.

:class:`RateProblem` declares a classifier trained under any list of them with one forward
pass per step.

**Groups absent from a batch.** An entry without evidence (a group with no sample meeting
the condition, e.g. no positive sample of a group in a minibatch) is marked unobserved
(``ConstraintValue.observed`` False): its multiplier and controller state do not move and it
counts as no violation. The rate functions give such entries value 0 and proxy 0; the
builders give them the right-hand side itself (a standard-form violation of exactly 0, a
zero error signal even for code that ignores the mask).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from pydantic import Field, PrivateAttr
from torch import Tensor

from .._errors import ConfigError, ShapeError, describe
from ..problem import ConstrainedProblem, Constraint, ConstraintValue, ProblemState
from .groups import group_major, membership_from_labels

__all__ = [
    "Proxy",
    "RateConstraint",
    "RateName",
    "RateProblem",
    "demographic_parity_constraint",
    "equalized_odds_constraint",
    "error_rate",
    "false_negative_rate",
    "false_positive_rate",
    "positive_prediction_rate",
    "precision",
    "rate",
    "rate_constraint",
    "rate_constraint_from_spec",
    "rate_gap_constraint",
    "rate_parity_constraint",
    "recall",
    "true_negative_rate",
    "true_positive_rate",
]

RateName: TypeAlias = Literal[
    "positive_prediction_rate",
    "true_positive_rate",
    "false_positive_rate",
    "false_negative_rate",
    "true_negative_rate",
    "error_rate",
    "precision",
    "recall",
]
"""The rates of this module (``recall`` is the true positive rate)."""

Proxy: TypeAlias = Literal["sigmoid", "hinge"]
"""Differentiable surrogate of the indicators: ``"sigmoid"`` (softmax for multi-class) or
``"hinge"`` (upper bounds)."""

_ALIASES: dict[str, str] = {
    "ppr": "positive_prediction_rate",
    "positive_rate": "positive_prediction_rate",
    "tpr": "true_positive_rate",
    "fpr": "false_positive_rate",
    "fnr": "false_negative_rate",
    "tnr": "true_negative_rate",
    "error": "error_rate",
    "recall": "true_positive_rate",
}
_NAMES = (
    "positive_prediction_rate",
    "true_positive_rate",
    "false_positive_rate",
    "false_negative_rate",
    "true_negative_rate",
    "error_rate",
    "precision",
)
_SHORT = {
    "positive_prediction_rate": "ppr",
    "true_positive_rate": "tpr",
    "false_positive_rate": "fpr",
    "false_negative_rate": "fnr",
    "true_negative_rate": "tnr",
    "error_rate": "error",
    "precision": "precision",
}
GroupSelection: TypeAlias = Literal["overall", "each"] | Sequence[int]
"""Which entries a builder constrains: ``"overall"`` (all samples as one group), ``"each"``
(every group) or a list of group indices."""


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _NAMES:
        known = sorted({*_NAMES, *_ALIASES})
        raise ConfigError(f"unknown rate {name!r}; known rates and aliases: {known}.")
    return key


def _check_options(proxy: str, temperature: float) -> None:
    if proxy not in ("sigmoid", "hinge"):
        raise ConfigError(f"proxy must be 'sigmoid' or 'hinge'; got {proxy!r}.")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ConfigError(f"temperature must be a number > 0; got {temperature!r}.")


# -- predictions, labels and groups as indicator matrices --------------------------------
@dataclass(frozen=True)
class _Prepared:
    """Indicators of one batch: ``(n, K)`` matrices, ``K = 1`` (binary) or ``C`` classes.

    ``hard`` is ``yhat`` (detached), ``up``/``low`` bound it from above/below (both equal to
    the sigmoid for the sigmoid proxy), ``neg_up``/``neg_low`` bound ``1 - yhat``; ``y`` is the
    label indicator (``None`` without labels). ``mt`` is the ``(G + 1, n)`` group-major
    membership whose last row is "all samples".
    """

    hard: Tensor
    up: Tensor
    low: Tensor
    neg_up: Tensor
    neg_low: Tensor
    y: Tensor | None
    mt: Tensor
    multiclass: bool

    @property
    def num_groups(self) -> int:
        return self.mt.shape[0] - 1

    @property
    def num_columns(self) -> int:
        return self.hard.shape[1]

    def labels(self, what: str) -> Tensor:
        if self.y is None:
            raise ConfigError(f"{what} needs labels; got labels=None.")
        return self.y

    def indicator(self, counted: str) -> tuple[Tensor, Tensor, Tensor]:
        """Exact value, upper and lower bound of the counted indicator ``(n, K)``."""
        if counted == "positive":
            return self.hard, self.up, self.low
        if counted == "negative":
            return 1.0 - self.hard, self.neg_up, self.neg_low
        # "mistake": one column.
        y = self.labels("the error rate")
        if self.multiclass:
            exact = 1.0 - (y * self.hard).sum(1, keepdim=True)
            up = (y * self.neg_up).sum(1, keepdim=True)
            if self.neg_up is self.neg_low:
                return exact, up, up
            low = (y * self.neg_low).sum(1, keepdim=True)
            return exact, up, low
        exact = y * (1.0 - self.hard) + (1.0 - y) * self.hard
        up = y * self.neg_up + (1.0 - y) * self.up
        if self.up is self.low:
            return exact, up, up
        low = y * self.neg_low + (1.0 - y) * self.low
        return exact, up, low


def _scores(logits: Tensor, what: str) -> tuple[Tensor, bool]:
    """``(n, K)`` scores and whether the model is multi-class."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ShapeError(f"{what}: logits must be a floating tensor; got {describe(logits)}.")
    if logits.dim() == 1:
        return logits[:, None], False
    if logits.dim() == 2 and logits.shape[1] == 1:
        return logits, False
    if logits.dim() == 2 and logits.shape[1] >= 2:
        return logits, True
    raise ShapeError(
        f"{what}: expected logits of shape (n,) or (n, 1) (binary) or (n, C) with C >= 2 "
        f"(multi-class); got {describe(logits)}."
    )


def _label_indicator(labels: Tensor, scores: Tensor, multiclass: bool, what: str) -> Tensor:
    n, num_classes = scores.shape
    if not isinstance(labels, Tensor):
        raise ShapeError(f"{what}: labels must be a tensor; got {describe(labels)}.")
    flat = labels.reshape(-1)
    if flat.numel() != n:
        raise ShapeError(f"{what}: expected {n} labels (one per sample); got {describe(labels)}.")
    if multiclass:
        if flat.is_floating_point() or flat.dtype == torch.bool:
            raise ShapeError(
                f"{what}: multi-class labels must be integer class indices; got {describe(labels)}."
            )
        if n and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
            raise ConfigError(
                f"{what}: class labels must lie in [0, {num_classes}); got values in "
                f"[{int(flat.min())}, {int(flat.max())}]."
            )
        return F.one_hot(flat.long(), num_classes).to(scores.dtype)
    y = flat.to(scores.dtype)
    valid = (y == 0) | (y == 1)
    if n and not bool(valid.all()):
        bad = sorted(set(y[~valid].tolist()))[:5]
        raise ConfigError(
            f"{what}: binary labels must be 0 or 1; got the values {bad}. For multi-class "
            "models pass logits of shape (n, C) and integer labels."
        )
    return y[:, None]


def _membership(groups: Tensor | None, n: int, num_groups: int | None, like: Tensor) -> Tensor:
    """``(G + 1, n)`` group-major membership with a final all-ones row."""
    ones = torch.ones(1, n, dtype=like.dtype, device=like.device)
    if groups is None:  # one group of all samples
        return torch.cat([ones, ones])
    if not isinstance(groups, Tensor):
        raise ShapeError(
            f"groups must be a membership matrix (n, G) or integer labels (n,); got "
            f"{describe(groups)}."
        )
    if groups.dim() == 1:
        if groups.shape[0] != n:
            raise ShapeError(f"groups: expected {n} group labels; got {describe(groups)}.")
        m = membership_from_labels(groups, num_groups, dtype=like.dtype)
    elif groups.dim() == 2:
        if groups.shape[0] != n:
            raise ShapeError(
                f"groups: a membership matrix must have shape (n, G) with n = {n}; got "
                f"{describe(groups)}."
            )
        if num_groups is not None and groups.shape[1] != num_groups:
            raise ShapeError(
                f"groups: the membership matrix has {groups.shape[1]} columns but "
                f"num_groups={num_groups}."
            )
        m = groups
    else:
        raise ShapeError(
            f"groups must be a membership matrix (n, G) or integer labels (n,); got "
            f"{describe(groups)}."
        )
    mt = group_major(m, like.dtype).to(like.device)
    return torch.cat([mt, ones])


def _prepare(
    logits: Tensor,
    labels: Tensor | None,
    groups: Tensor | None,
    *,
    num_groups: int | None,
    proxy: str,
    temperature: float,
    what: str,
    targets: tuple[Tensor | None, Tensor] | None = None,
) -> _Prepared:
    _check_options(proxy, temperature)
    scores, multiclass = _scores(logits, what)
    n = scores.shape[0]
    if targets is None:
        y = None if labels is None else _label_indicator(labels, scores, multiclass, what)
        mt = _membership(groups, n, num_groups, scores)
    else:
        y, mt = targets
    detached = scores.detach()
    if multiclass:
        hard = F.one_hot(detached.argmax(1), scores.shape[1]).to(scores.dtype)
    else:
        hard = (detached > 0).to(scores.dtype)
    if proxy == "sigmoid":
        soft = (
            torch.softmax(scores / temperature, 1)
            if multiclass
            else torch.sigmoid(scores / temperature)
        )
        neg = 1.0 - soft
        return _Prepared(hard, soft, soft, neg, neg, y, mt, multiclass)
    if multiclass:
        top = scores.topk(2, dim=1).values
        best_other = torch.where(hard.bool(), top[:, 1:2], top[:, 0:1])
        margin = scores - best_other
    else:
        margin = scores
    up = torch.relu(1.0 + margin / temperature)
    neg_up = torch.relu(1.0 - margin / temperature)
    return _Prepared(hard, up, 1.0 - neg_up, neg_up, 1.0 - up, y, mt, multiclass)


# -- linear expressions in the indicators ------------------------------------------------
@dataclass
class _Linear:
    """Entries ``e``: ``sum_i coef[e, i] * u[i, column[e]]`` of a counted indicator ``u``.

    Every constrained quantity of this module is of this form (the denominators count
    labels and groups, not predictions, once ratios are linearised), which gives the exact
    value and a proxy that bounds it from above: ``sum_i coef+ * upper + coef- * lower``.
    """

    coef: Tensor  # (E, n)
    column: Tensor  # (E,) long
    counted: str
    observed: Tensor  # (E,) bool

    def scaled(self, factor: float) -> _Linear:
        return _Linear(factor * self.coef, self.column, self.counted, self.observed)

    def evaluate(self, prep: _Prepared) -> tuple[Tensor, Tensor]:
        exact, up, low = prep.indicator(self.counted)
        pick = self.column[:, None]
        value = (self.coef @ exact).gather(1, pick)[:, 0]
        if up is low:  # sigmoid: no bound to orient
            proxy = (self.coef @ up).gather(1, pick)[:, 0]
        else:
            bound = self.coef.clamp_min(0) @ up + self.coef.clamp_max(0) @ low
            proxy = bound.gather(1, pick)[:, 0]
        return value.detach(), proxy


_CONDITION_AND_COUNT: dict[str, tuple[str, str]] = {
    "positive_prediction_rate": ("all", "positive"),
    "true_positive_rate": ("positive", "positive"),
    "false_positive_rate": ("negative", "positive"),
    "false_negative_rate": ("positive", "negative"),
    "true_negative_rate": ("negative", "negative"),
    "error_rate": ("all", "mistake"),
}


def _condition(prep: _Prepared, kind: str, columns: int, what: str) -> Tensor:
    n = prep.hard.shape[0]
    if kind == "all":
        return torch.ones(n, columns, dtype=prep.hard.dtype, device=prep.hard.device)
    y = prep.labels(what)
    return y if kind == "positive" else 1.0 - y


def _rate_linear(prep: _Prepared, name: str) -> tuple[_Linear, _Linear]:
    """Per-group rates (rows ``g * K + k``) and overall rates (rows ``k``) as linear forms."""
    cond_kind, counted = _CONDITION_AND_COUNT[name]
    columns = 1 if counted == "mistake" else prep.num_columns
    w = _condition(prep, cond_kind, columns, name)  # (n, K')
    mt = prep.mt  # (G + 1, n)
    counts = mt @ w  # (G + 1, K')
    weights = mt[:, None, :] * w.T[None, :, :]  # (G + 1, K', n)
    coef = weights / counts.clamp_min(1.0)[:, :, None]
    observed = counts > 0
    g1 = mt.shape[0]
    column = torch.arange(columns, device=w.device).repeat(g1)
    coef = coef.reshape(g1 * columns, -1)
    observed = observed.reshape(-1)
    split = (g1 - 1) * columns
    groups = _Linear(coef[:split], column[:split], counted, observed[:split])
    overall = _Linear(coef[split:], column[split:], counted, observed[split:])
    return groups, overall


def _precision_linear(prep: _Prepared, target: float) -> tuple[_Linear, _Linear]:
    """``mean_g(y * yhat) - target * mean_g(yhat)`` per group and overall."""
    y = prep.labels("precision")
    mt = prep.mt
    sizes = mt.sum(1)  # (G + 1,)
    columns = prep.num_columns
    weights = mt[:, None, :] * (y - target).T[None, :, :]  # (G + 1, K, n)
    coef = weights / sizes.clamp_min(1.0)[:, None, None]
    observed = (sizes > 0)[:, None].expand(-1, columns)
    g1 = mt.shape[0]
    column = torch.arange(columns, device=y.device).repeat(g1)
    coef = coef.reshape(g1 * columns, -1)
    observed = observed.reshape(-1)
    split = (g1 - 1) * columns
    return (
        _Linear(coef[:split], column[:split], "positive", observed[:split]),
        _Linear(coef[split:], column[split:], "positive", observed[split:]),
    )


# -- the rate functions -------------------------------------------------------------------
def rate(
    name: str,
    logits: Tensor,
    labels: Tensor | None,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """The rate ``name`` of every group (see the module docstring for the definitions).

    Args:
        name: A :data:`RateName` or an alias (``"ppr"``, ``"tpr"``, ``"fpr"``, ``"fnr"``,
            ``"tnr"``, ``"error"``, ``"recall"``).
        logits: Binary logits ``(n,)``/``(n, 1)`` or multi-class logits ``(n, C)``.
        labels: Binary labels in {0, 1} or integer classes ``(n,)``; ``None`` only for the
            positive prediction rate.
        groups: Membership matrix ``(n, G)`` (0/1 or fractional weights), integer group
            labels ``(n,)``, or ``None`` for one group of all samples.
        num_groups: ``G`` for integer group labels (default: largest label + 1).
        proxy: ``"sigmoid"`` or ``"hinge"`` (upper bound of the counted indicator).
        temperature: ``T > 0`` scaling the scores inside the proxy.

    Returns:
        ``ConstraintValue`` with the exact rates (detached) and the proxy rates, shape
        ``(G,)`` (binary, and the error rate) or ``(G * C,)`` (multi-class, entry
        ``g * C + c``). Entries without evidence are 0. For ``precision`` the proxy is the
        ratio of the proxies of ``TP`` and ``PP``.

    Raises:
        ConfigError: For an unknown rate or proxy, a bad temperature, missing labels, or
            labels out of range.
        ShapeError: For logits, labels or groups of the wrong shape.
    """
    key = _canonical(name)
    prep = _prepare(
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
        what=key,
    )
    if key == "precision":
        return _precision_ratio(prep)
    per_group, _ = _rate_linear(prep, key)
    value, soft = per_group.evaluate(prep)
    zero = torch.zeros((), dtype=value.dtype, device=value.device)
    observed = per_group.observed
    return ConstraintValue(
        torch.where(observed, value, zero), torch.where(observed, soft, zero), observed=observed
    )


def _precision_ratio(prep: _Prepared) -> ConstraintValue:
    y = prep.labels("precision")
    mt = prep.mt[:-1]
    tp, pp = mt @ (y * prep.hard), mt @ prep.hard
    tp_soft, pp_soft = mt @ (y * prep.up), mt @ prep.up
    tiny = torch.finfo(tp.dtype).tiny
    value = torch.where(pp > 0, tp / pp.clamp_min(1.0), 0.0)
    soft = torch.where(pp_soft > 0, tp_soft / pp_soft.clamp_min(tiny), 0.0)
    return ConstraintValue(
        value.reshape(-1).detach(), soft.reshape(-1), observed=(pp > 0).reshape(-1)
    )


def positive_prediction_rate(
    logits: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """``P(yhat = 1 | g)`` per group (per group and class for multi-class logits).

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "positive_prediction_rate",
        logits,
        None,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


def true_positive_rate(
    logits: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """``TPR_g = P(yhat = 1 | y = 1, g)`` per group (recall).

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "true_positive_rate",
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


def false_positive_rate(
    logits: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """``FPR_g = P(yhat = 1 | y = 0, g)`` per group.

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "false_positive_rate",
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


def false_negative_rate(
    logits: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """``FNR_g = P(yhat = 0 | y = 1, g)`` per group.

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "false_negative_rate",
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


def true_negative_rate(
    logits: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """``TNR_g = P(yhat = 0 | y = 0, g)`` per group.

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "true_negative_rate",
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


def error_rate(
    logits: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """``P(prediction != y | g)`` per group (one entry per group, also for multi-class
    logits).

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "error_rate",
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


def precision(
    logits: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """``P(y = 1 | yhat = 1, g) = TP_g / PP_g`` per group (0 without predicted positives).

    Bound it with :func:`rate_constraint`, which linearises the ratio.

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "precision",
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


def recall(
    logits: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    *,
    num_groups: int | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
) -> ConstraintValue:
    """Recall: the true positive rate ``P(yhat = 1 | y = 1, g)`` per group.

    See :func:`rate` for the arguments, shapes and errors.
    """
    return rate(
        "true_positive_rate",
        logits,
        labels,
        groups,
        num_groups=num_groups,
        proxy=proxy,
        temperature=temperature,
    )


# -- constraints built from rates ---------------------------------------------------------
Inputs: TypeAlias = Callable[[Any, Any], tuple[Tensor, Tensor | None, Tensor | None]]
"""``inputs(model, batch) -> (logits, labels, groups)``."""


@dataclass(frozen=True)
class RateConstraint:
    """A declared rate constraint ``lhs(logits, labels, groups) <sense> rhs``.

    Built by :func:`rate_constraint`, :func:`rate_gap_constraint`,
    :func:`rate_parity_constraint`, :func:`equalized_odds_constraint` or
    :func:`demographic_parity_constraint`; use it in a :class:`RateProblem`, or turn it into
    a plain :class:`~constrain.Constraint` with :meth:`declare`.

    Attributes:
        name: Constraint name.
        sense: ``"<="`` or ``">="``.
        rhs: Right-hand side.
        description: Readable statement (``"fpr(g) <= fpr(all) + 0.05 for each group"``).
        proxy: Surrogate of the indicators.
        temperature: Scale of the scores inside the proxy.
        num_groups: ``G`` for integer group labels (``None``: inferred, or from the matrix).
        key: Identifies the form of the left-hand side (builder, rates, group selection,
            precision target; not the right-hand side), so that :class:`RateProblem` can reuse
            its coefficients while the batch stays the same; ``()``: never reused.
    """

    name: str
    sense: Literal["<=", ">="]
    rhs: float
    description: str
    build: Callable[[_Prepared], list[_Linear]] = field(repr=False, compare=False)
    needs_labels: bool = True
    proxy: Proxy = "sigmoid"
    temperature: float = 1.0
    num_groups: int | None = None
    key: tuple[Any, ...] = ()

    @property
    def sign(self) -> float:
        """+1 for ``<=``, -1 for ``>=`` (standard form ``sign * (lhs - rhs) <= 0``)."""
        return 1.0 if self.sense == "<=" else -1.0

    def _prepare(self, logits: Tensor, labels: Tensor | None, groups: Tensor | None) -> _Prepared:
        if self.needs_labels and labels is None:
            raise ConfigError(f"rate constraint {self.name!r} needs labels; got labels=None.")
        return _prepare(
            logits,
            labels,
            groups,
            num_groups=self.num_groups,
            proxy=self.proxy,
            temperature=self.temperature,
            what=f"rate constraint {self.name!r}",
        )

    def _parts(self, prep: _Prepared) -> list[_Linear]:
        """The left-hand side's linear forms in standard-form orientation (``sign * lhs``);
        they depend on the labels and groups only, not on the predictions."""
        return [part.scaled(self.sign) for part in self.build(prep)]

    def _standard(
        self, prep: _Prepared, parts: list[_Linear] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Standard-form value, proxy (an upper bound for the hinge proxy) and observed."""
        values, proxies, observed = [], [], []
        rhs = self.sign * self.rhs
        for std in self._parts(prep) if parts is None else parts:
            value, proxy = std.evaluate(prep)
            values.append(value - rhs)
            proxies.append(proxy - rhs)
            observed.append(std.observed)
        value, proxy, mask = torch.cat(values), torch.cat(proxies), torch.cat(observed)
        zero = torch.zeros((), dtype=value.dtype, device=value.device)
        return torch.where(mask, value, zero), torch.where(mask, proxy, zero), mask

    def evaluate(
        self, logits: Tensor, labels: Tensor | None, groups: Tensor | None = None
    ) -> ConstraintValue:
        """The left-hand side: exact value (detached), proxy and the ``observed`` mask, one
        entry per constrained quantity. Entries without evidence are unobserved and equal
        ``rhs`` (standard-form violation 0)."""
        value, proxy, mask = self._standard(self._prepare(logits, labels, groups))
        return ConstraintValue(
            self.sign * value + self.rhs, self.sign * proxy + self.rhs, observed=mask
        )

    def standard_form(
        self, logits: Tensor, labels: Tensor | None, groups: Tensor | None = None
    ) -> ConstraintValue:
        """``sign * (lhs - rhs)`` (``<= 0`` when met); entries without evidence are 0 and
        unobserved.

        With ``proxy="hinge"`` the proxy is an upper bound of the value, entry by entry.
        """
        value, proxy, mask = self._standard(self._prepare(logits, labels, groups))
        return ConstraintValue(value, proxy, observed=mask)

    def declare(self, inputs: Inputs) -> Constraint:
        """A :class:`~constrain.Constraint` evaluating ``inputs(model, batch)`` and then
        this constraint (one forward pass per constraint; :class:`RateProblem` shares one)."""

        def fn(model: Any, batch: Any) -> ConstraintValue:
            return self.evaluate(*inputs(model, batch))

        return Constraint(
            name=self.name, sense=self.sense, rhs=self.rhs, fn=fn, description=self.description
        )


def _select(part: _Linear, groups: GroupSelection, columns: int, overall: _Linear) -> _Linear:
    if isinstance(groups, str):
        if groups == "overall":
            return overall
        if groups == "each":
            return part
        raise ConfigError(f"groups must be 'overall', 'each' or a list of indices; got {groups!r}.")
    num_groups = part.coef.shape[0] // columns
    indices = list(groups)
    bad = [g for g in indices if not 0 <= g < num_groups]
    if bad:
        raise ConfigError(
            f"group indices {bad} are out of range: the batch has {num_groups} groups."
        )
    rows = torch.tensor(
        [g * columns + k for g in indices for k in range(columns)],
        dtype=torch.long,
        device=part.coef.device,
    )
    return _Linear(part.coef[rows], part.column[rows], part.counted, part.observed[rows])


def _gap(part: _Linear, overall: _Linear, columns: int) -> _Linear:
    """``rate_gk - rate_k`` for every group: overall coefficients subtracted row-wise."""
    num_groups = part.coef.shape[0] // columns
    coef = part.coef - overall.coef.repeat(num_groups, 1)
    observed = part.observed & overall.observed.repeat(num_groups)
    return _Linear(coef, part.column, part.counted, observed)


def _check_groups_arg(groups: object) -> GroupSelection:
    if isinstance(groups, str):
        if groups not in ("overall", "each"):
            raise ConfigError(
                f"groups must be 'overall', 'each' or a list of indices; got {groups!r}."
            )
        return groups  # type: ignore[return-value]
    if isinstance(groups, Sequence) and all(
        isinstance(g, int) and not isinstance(g, bool) for g in groups
    ):
        if not groups:
            raise ConfigError("groups: the list of group indices is empty.")
        return tuple(groups)
    raise ConfigError(f"groups must be 'overall', 'each' or a list of indices; got {groups!r}.")


def _check_number(value: float, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{what} must be a finite number; got {value!r}.")
    if value in (float("inf"), float("-inf")):
        raise ConfigError(f"{what} must be a finite number; got {value!r}.")
    if positive and value < 0:
        raise ConfigError(f"{what} must be >= 0; got {value!r}.")
    return float(value)


def _describe_groups(groups: GroupSelection) -> str:
    if groups == "overall":
        return "overall"
    if groups == "each":
        return "for each group"
    return f"for groups {list(groups)}"


def rate_constraint(
    rate_name: str,
    sense: Literal["<=", ">="],
    bound: float,
    *,
    groups: GroupSelection = "overall",
    name: str | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
    num_groups: int | None = None,
) -> RateConstraint:
    """``rate <= bound`` or ``rate >= bound``, overall or per group ("recall >= 0.9").

    ``precision`` is linearised (module docstring): ``precision_g >= p`` becomes
    ``mean_g(y * yhat) - p * mean_g(yhat) >= 0`` (``rhs`` 0).

    Args:
        rate_name: A rate name or alias (see :func:`rate`).
        sense: ``"<="`` or ``">="``.
        bound: The bound ``b`` (for precision: the target ``p`` in ``[0, 1]``).
        groups: ``"overall"`` (one entry per class), ``"each"`` (every group) or group indices.
        name: Constraint name (default ``"{rate}_{le|ge}"``).
        proxy: Surrogate of the indicators (see :func:`rate`).
        temperature: Temperature of the surrogate (see :func:`rate`).
        num_groups: ``G`` when groups are integer labels.

    Raises:
        ConfigError: For an unknown rate, a bad sense, bound or group selection.
    """
    key = _canonical(rate_name)
    _check_options(proxy, temperature)
    if sense not in ("<=", ">="):
        raise ConfigError(f"sense must be '<=' or '>='; got {sense!r}.")
    bound = _check_number(bound, "bound")
    selection = _check_groups_arg(groups)
    default_name = f"{_SHORT[key]}_{'le' if sense == '<=' else 'ge'}"
    if key == "precision":
        if not 0.0 <= bound <= 1.0:
            raise ConfigError(f"a precision target must lie in [0, 1]; got {bound!r}.")

        def build_precision(prep: _Prepared) -> list[_Linear]:
            per_group, overall = _precision_linear(prep, bound)
            return [_select(per_group, selection, prep.num_columns, overall)]

        return RateConstraint(
            name=name or default_name,
            sense=sense,
            rhs=0.0,
            description=(
                f"precision {sense} {bound} {_describe_groups(selection)}, linearised: "
                f"mean(y * yhat) - {bound} * mean(yhat) {sense} 0"
            ),
            build=build_precision,
            proxy=proxy,
            temperature=temperature,
            num_groups=num_groups,
            key=("precision", bound, selection),
        )

    def build(prep: _Prepared) -> list[_Linear]:
        per_group, overall = _rate_linear(prep, key)
        columns = 1 if key == "error_rate" else prep.num_columns
        return [_select(per_group, selection, columns, overall)]

    return RateConstraint(
        name=name or default_name,
        sense=sense,
        rhs=bound,
        description=f"{_SHORT[key]} {sense} {bound} {_describe_groups(selection)}",
        build=build,
        needs_labels=key != "positive_prediction_rate",
        proxy=proxy,
        temperature=temperature,
        num_groups=num_groups,
        key=("rate", key, selection),
    )


def _gap_rate(rate_name: str, what: str) -> str:
    key = _canonical(rate_name)
    if key == "precision":
        raise ConfigError(
            f"{what}: precision gaps are ratios of predictions, not linear in them; bound each "
            "group's precision with rate_constraint('precision', '>=', p, groups='each')."
        )
    return key


def rate_gap_constraint(
    rate_name: str,
    slack: float,
    *,
    sense: Literal["<=", ">="] = "<=",
    groups: GroupSelection = "each",
    name: str | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
    num_groups: int | None = None,
) -> RateConstraint:
    """``rate_g <= rate_all + slack`` (or ``rate_g >= rate_all + slack``) per group.

    "FPR(group) <= FPR(all) + 0.05" is ``rate_gap_constraint("fpr", 0.05)``: the left-hand
    side is the gap ``rate_g - rate_all``, the right-hand side ``slack``.

    Args:
        rate_name: A rate name or alias except precision.
        slack: The right-hand side.
        sense: ``"<="`` (at most ``slack`` above the overall rate) or ``">="``.
        groups: ``"each"`` or a list of group indices.
        name: Constraint name (default ``"{rate}_gap"``).
        proxy: See :func:`rate_constraint`.
        temperature: See :func:`rate_constraint`.
        num_groups: See :func:`rate_constraint`.

    Raises:
        ConfigError: For precision, an unknown rate, a bad slack or group selection.
    """
    key = _gap_rate(rate_name, "rate_gap_constraint")
    _check_options(proxy, temperature)
    if sense not in ("<=", ">="):
        raise ConfigError(f"sense must be '<=' or '>='; got {sense!r}.")
    slack = _check_number(slack, "slack")
    selection = _check_groups_arg(groups)
    if selection == "overall":
        raise ConfigError(
            "rate_gap_constraint compares groups with the overall rate: pass 'each' "
            "or group indices, not 'overall'."
        )

    def build(prep: _Prepared) -> list[_Linear]:
        per_group, overall = _rate_linear(prep, key)
        columns = 1 if key == "error_rate" else prep.num_columns
        gaps = _gap(per_group, overall, columns)
        return [_select(gaps, selection, columns, overall)]

    short = _SHORT[key]
    return RateConstraint(
        name=name or f"{short}_gap",
        sense=sense,
        rhs=slack,
        description=f"{short}(g) - {short}(all) {sense} {slack} {_describe_groups(selection)}",
        build=build,
        needs_labels=key != "positive_prediction_rate",
        proxy=proxy,
        temperature=temperature,
        num_groups=num_groups,
        key=("gap", key, selection),
    )


def _parity_parts(
    keys: Sequence[str], selection: GroupSelection
) -> Callable[[_Prepared], list[_Linear]]:
    def build(prep: _Prepared) -> list[_Linear]:
        upper: list[_Linear] = []
        for key in keys:
            per_group, overall = _rate_linear(prep, key)
            columns = 1 if key == "error_rate" else prep.num_columns
            upper.append(_select(_gap(per_group, overall, columns), selection, columns, overall))
        return upper + [part.scaled(-1.0) for part in upper]

    return build


def rate_parity_constraint(
    rate_name: str,
    tolerance: float,
    *,
    groups: GroupSelection = "each",
    name: str | None = None,
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
    num_groups: int | None = None,
) -> RateConstraint:
    """``|rate_g - rate_all| <= tolerance`` as the entries ``[gap; -gap] <= tolerance``.

    Args:
        rate_name: A rate name or alias except precision.
        tolerance: ``>= 0``.
        groups: ``"each"`` or a list of group indices.
        name: Constraint name (default ``"{rate}_parity"``).
        proxy: See :func:`rate_constraint`.
        temperature: See :func:`rate_constraint`.
        num_groups: See :func:`rate_constraint`.

    Returns:
        A ``<=`` constraint with ``2 * G`` entries (``2 * G * C`` for multi-class).

    Raises:
        ConfigError: For precision, an unknown rate, a negative tolerance or bad groups.
    """
    key = _gap_rate(rate_name, "rate_parity_constraint")
    _check_options(proxy, temperature)
    tolerance = _check_number(tolerance, "tolerance", positive=True)
    selection = _check_groups_arg(groups)
    if selection == "overall":
        raise ConfigError(
            "rate_parity_constraint compares groups with the overall rate: pass "
            "'each' or group indices, not 'overall'."
        )
    short = _SHORT[key]
    return RateConstraint(
        name=name or f"{short}_parity",
        sense="<=",
        rhs=tolerance,
        description=f"|{short}(g) - {short}(all)| <= {tolerance} {_describe_groups(selection)}",
        build=_parity_parts([key], selection),
        needs_labels=key != "positive_prediction_rate",
        proxy=proxy,
        temperature=temperature,
        num_groups=num_groups,
        key=("parity", (key,), selection),
    )


def equalized_odds_constraint(
    tolerance: float,
    *,
    groups: GroupSelection = "each",
    name: str = "equalized_odds",
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
    num_groups: int | None = None,
) -> RateConstraint:
    """Equalized odds within a tolerance (Hardt, Price, Srebro, NeurIPS 2016):
    ``|TPR_g - TPR| <= tol`` and ``|FPR_g - FPR| <= tol`` for every group.

    Entries, in order: ``[TPR_g - TPR]_g, [FPR_g - FPR]_g, [TPR - TPR_g]_g, [FPR - FPR_g]_g``
    (``4 G`` entries; per class for multi-class models, ``4 G C``).

    Raises:
        ConfigError: For a negative tolerance or bad group selection.
    """
    _check_options(proxy, temperature)
    tolerance = _check_number(tolerance, "tolerance", positive=True)
    selection = _check_groups_arg(groups)
    if selection == "overall":
        raise ConfigError(
            "equalized_odds_constraint compares groups with the overall rates: "
            "pass 'each' or group indices, not 'overall'."
        )
    return RateConstraint(
        name=name,
        sense="<=",
        rhs=tolerance,
        description=(
            f"|tpr(g) - tpr(all)| <= {tolerance} and |fpr(g) - fpr(all)| <= {tolerance} "
            f"{_describe_groups(selection)}"
        ),
        build=_parity_parts(["true_positive_rate", "false_positive_rate"], selection),
        proxy=proxy,
        temperature=temperature,
        num_groups=num_groups,
        key=("parity", ("true_positive_rate", "false_positive_rate"), selection),
    )


def demographic_parity_constraint(
    tolerance: float,
    *,
    groups: GroupSelection = "each",
    name: str = "demographic_parity",
    proxy: Proxy = "sigmoid",
    temperature: float = 1.0,
    num_groups: int | None = None,
) -> RateConstraint:
    """Demographic parity, per class for multi-class predictions:
    ``|P(yhat = c | g) - P(yhat = c)| <= tol`` for every group ``g`` and class ``c``.

    Entries ``[gap_gc; -gap_gc]`` with ``gap`` flattened group-major (``2 G C`` entries;
    ``2 G`` for binary logits). Needs no labels.

    Raises:
        ConfigError: For a negative tolerance or bad group selection.
    """
    return rate_parity_constraint(
        "positive_prediction_rate",
        tolerance,
        groups=groups,
        name=name,
        proxy=proxy,
        temperature=temperature,
        num_groups=num_groups,
    )


_BUILDERS: dict[str, Callable[..., RateConstraint]] = {
    "rate": rate_constraint,
    "gap": rate_gap_constraint,
    "parity": rate_parity_constraint,
    "equalized_odds": equalized_odds_constraint,
    "demographic_parity": demographic_parity_constraint,
}


def rate_constraint_from_spec(spec: Mapping[str, Any]) -> RateConstraint:
    """Build a rate constraint from a configuration mapping.

    ``spec["type"]`` names the builder: ``"rate"`` (:func:`rate_constraint`), ``"gap"``
    (:func:`rate_gap_constraint`), ``"parity"`` (:func:`rate_parity_constraint`),
    ``"equalized_odds"`` or ``"demographic_parity"``; ``"rate"`` gives the rate name and the
    other keys are the builder's keyword arguments, e.g.
    ``{"type": "gap", "rate": "fpr", "slack": 0.05}`` or
    ``{"type": "rate", "rate": "recall", "sense": ">=", "bound": 0.9}``.

    Raises:
        ConfigError: For a missing or unknown type, or keys the builder does not take
            (naming them and the accepted ones).
    """
    import inspect

    if not isinstance(spec, Mapping):
        raise ConfigError(f"a rate-constraint spec must be a mapping; got {describe(spec)}.")
    options = dict(spec)
    kind = options.pop("type", None)
    if kind not in _BUILDERS:
        raise ConfigError(
            f"rate-constraint spec {dict(spec)!r}: 'type' must be one of {sorted(_BUILDERS)}; "
            f"got {kind!r}."
        )
    builder = _BUILDERS[kind]
    if "rate" in options:
        options["rate_name"] = options.pop("rate")
    accepted = list(inspect.signature(builder).parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        shown = ["rate" if a == "rate_name" else a for a in accepted]
        raise ConfigError(
            f"rate-constraint spec of type {kind!r}: unknown keys {unknown}; accepted: {shown}."
        )
    try:
        return builder(**options)
    except TypeError as exc:
        raise ConfigError(f"rate-constraint spec of type {kind!r}: {exc}.") from None


# -- a problem built from rate constraints ------------------------------------------------
class RateProblem(ConstrainedProblem):
    """A classifier trained under rate constraints, with one forward pass per step.

    ::

        minimize   mean loss(s_i, y_i)        (s = model(x); BCE or cross-entropy)
        subject to every RateConstraint in rate_constraints

    The batch is ``(x, labels, groups, *rest)``: features, labels (binary in {0, 1} or
    integer classes) and the groups of the batch's samples (membership matrix or integer
    labels; extra entries such as sample indices are ignored). Metrics: the batch's
    ``accuracy``.

    Subclasses may override :meth:`rates` to build the constraints from their own fields
    (e.g. a tolerance); changing a field re-declares them, and the solver reads the new
    right-hand sides at its next step (a tolerance schedule is a fit callback that sets the
    field).

    Attributes:
        rate_constraints: The constraints: :class:`RateConstraint` objects (see the builders
            of this module) or configuration mappings (see :func:`rate_constraint_from_spec`).
        num_groups: ``G`` when the batch gives integer group labels (needed with minibatches,
            which may miss the last group).
    """

    rate_constraints: list[Any] = Field(default_factory=list, exclude=True)
    num_groups: int | None = Field(default=None, ge=1)

    _rates: dict[str, RateConstraint] = PrivateAttr(default_factory=dict)
    _cache: dict[Any, Any] = PrivateAttr(default_factory=dict)
    _batch: tuple[Any, ...] = PrivateAttr(default=())

    def rates(self) -> list[RateConstraint]:
        """The rate constraints (default: ``rate_constraints``, mappings built with
        :func:`rate_constraint_from_spec`)."""
        return [
            rate_constraint_from_spec(rc) if isinstance(rc, Mapping) else rc
            for rc in self.rate_constraints
        ]

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        rates = self.rates()
        for rc in rates:
            if not isinstance(rc, RateConstraint):
                raise ConfigError(
                    f"{type(self).__name__}: rate_constraints must hold RateConstraint objects "
                    f"(from rate_constraint(), equalized_odds_constraint(), ...); got "
                    f"{describe(rc)}."
                )
        declared = list(self._declared)
        names = {c.name for c in declared}
        for rc in rates:
            if rc.name in names:
                raise ConfigError(
                    f"duplicate constraint name {rc.name!r} in {type(self).__name__}; pass "
                    "name= to the builder to tell them apart."
                )
            names.add(rc.name)
            declared.append(
                Constraint(
                    name=rc.name,
                    sense=rc.sense,
                    rhs=rc.rhs,
                    fn=self._single(rc),
                    description=rc.description,
                )
            )
        self._declared = declared
        self._rates = {rc.name: rc for rc in rates}

    def _single(self, rc: RateConstraint) -> Callable[[Any, Any], ConstraintValue]:
        def fn(model: Any, batch: Any) -> ConstraintValue:
            x, y, g = self._unpack(batch)
            return self._value(rc, model(x), y, g)

        return fn

    def _value(
        self,
        rc: RateConstraint,
        logits: Tensor,
        labels: Tensor,
        groups: Tensor,
        memo: dict[Any, _Prepared] | None = None,
    ) -> ConstraintValue:
        if rc.num_groups is None and self.num_groups is not None:
            rc = replace(rc, num_groups=self.num_groups)
        prep, parts = self._prepared(rc, logits, labels, groups, {} if memo is None else memo)
        value, proxy, mask = rc._standard(prep, parts)
        return ConstraintValue(rc.sign * value + rc.rhs, rc.sign * proxy + rc.rhs, observed=mask)

    def _prepared(
        self,
        rc: RateConstraint,
        logits: Tensor,
        labels: Tensor,
        groups: Tensor,
        memo: dict[Any, _Prepared],
    ) -> tuple[_Prepared, list[_Linear] | None]:
        """Indicators of this batch, reusing what depends on the labels and groups only
        (label indicators, membership, the constraints' coefficients) while the batch is the
        same tensors, unmodified (a full-batch run)."""
        if rc.needs_labels and labels is None:
            raise ConfigError(f"rate constraint {rc.name!r} needs labels; got labels=None.")
        batch = (
            labels,
            groups,
            getattr(labels, "_version", None),
            getattr(groups, "_version", None),
        )
        old = self._batch
        if not (old and old[0] is labels and old[1] is groups and old[2:] == batch[2:]):
            self._cache.clear()
            self._batch = batch
        shape = (rc.num_groups, tuple(logits.shape[1:]), logits.dtype, logits.device)
        key = (rc.proxy, rc.temperature, shape)
        prep = memo.get(key)
        if prep is None:
            targets = self._cache.get(("targets", shape))
            prep = _prepare(
                logits,
                labels,
                groups,
                num_groups=rc.num_groups,
                proxy=rc.proxy,
                temperature=rc.temperature,
                what=f"rate constraint {rc.name!r}",
                targets=targets,
            )
            self._cache[("targets", shape)] = (prep.y, prep.mt)
            memo[key] = prep
        if not rc.key:
            return prep, None
        parts_key = ("parts", rc.key, rc.sense, shape)
        parts = self._cache.get(parts_key)
        if parts is None:
            parts = self._cache[parts_key] = rc._parts(prep)
        return prep, parts

    def violations(self, logits: Tensor, labels: Tensor, groups: Tensor) -> Tensor:
        """Exact standard-form values ``sign * (lhs - rhs)`` of every rate constraint,
        concatenated in declaration order (detached; ``<= 0`` when met), e.g. to score
        snapshots of a run (:class:`constrain.Snapshots`)."""
        memo: dict[Any, _Prepared] = {}
        parts = []
        for rc in self._rates.values():
            if rc.num_groups is None and self.num_groups is not None:
                rc = replace(rc, num_groups=self.num_groups)
            prep, linear = self._prepared(rc, logits, labels, groups, memo)
            parts.append(rc._standard(prep, linear)[0])
        if not parts:
            return torch.zeros(0, dtype=logits.dtype, device=logits.device)
        return torch.cat(parts).detach()

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ConfigError(
                f"RateProblem expects batches (x, labels, groups, ...); got {describe(batch)}."
            )
        return batch[0], batch[1], batch[2]

    @staticmethod
    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        """Mean binary cross-entropy (binary logits) or cross-entropy (multi-class)."""
        scores, multiclass = _scores(logits, "RateProblem")
        if multiclass:
            return F.cross_entropy(scores, labels.reshape(-1).long())
        return F.binary_cross_entropy_with_logits(scores[:, 0], labels.reshape(-1).to(scores.dtype))

    def objective(self, model: Any, batch: Any) -> Tensor:
        """:meth:`loss` of ``model(x)``."""
        x, y, _ = self._unpack(batch)
        return self.loss(model(x), y)

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        """One forward pass for the objective and every rate constraint."""
        x, y, g = self._unpack(batch)
        logits = model(x)
        values: dict[str, Tensor | ConstraintValue] = {}
        memo: dict[Any, _Prepared] = {}
        for c in self.all_constraints:
            rc = self._rates.get(c.name)
            if rc is None:
                if c.fn is None:
                    raise ConfigError(f"constraint {c.name!r} has no value function.")
                values[c.name] = c.fn(model, batch)
            else:
                values[c.name] = self._value(rc, logits, y, g, memo)
        scores, multiclass = _scores(logits.detach(), "RateProblem")
        if multiclass:
            correct = scores.argmax(1) == y.reshape(-1).long()
        else:
            correct = (scores[:, 0] > 0) == (y.reshape(-1) > 0.5)
        return ProblemState(
            objective=self.loss(logits, y),
            constraints=values,
            metrics={"accuracy": correct.to(scores.dtype).mean()},
        )
