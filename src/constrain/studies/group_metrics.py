"""Per-group report of a binary classifier with bootstrap confidence intervals.

For hard predictions ``yhat_i in {0, 1}``, labels ``y_i in {0, 1}`` and a membership
matrix ``M`` (``(n, G)``, see :mod:`constrain.studies.groups`), every group ``g`` gets

* ``size`` ``n_g = sum_i M[i, g]`` and ``positives`` ``sum_i M[i, g] y_i``;
* ``positive_rate`` ``P(yhat = 1 | g)``, ``base_rate`` ``P(y = 1 | g)``, ``accuracy``
  ``P(yhat = y | g)``, ``tpr`` ``P(yhat = 1 | y = 1, g)`` and ``fpr``
  ``P(yhat = 1 | y = 0, g)`` (NaN when the group has no positive, or no negative, sample);
* ``parity_gap`` ``positive_rate_g - P(yhat = 1)`` (the demographic-parity gap of
  :func:`constrain.studies.demographic_parity`, against the overall rate);

and, for each of these rates and the gap, a percentile bootstrap interval (rows drawn with
replacement ``n_boot`` times; the overall rate is recomputed in every draw, so the gap's
interval accounts for its uncertainty too). Groups may overlap (marginal groups): every
statistic is a masked mean.

fairlearn's ``MetricFrame`` computes per-group metrics and bootstrap intervals too, but for
one categorical sensitive feature (disjoint groups) and without intervals for each
group's difference to the overall rate; this module works on the membership matrices the
constraints use.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .._errors import ConfigError, ShapeError

__all__ = ["RATES", "format_group_metrics", "group_metrics"]

RATES = ("positive_rate", "base_rate", "accuracy", "tpr", "fpr", "parity_gap")
"""The per-group statistics of :func:`group_metrics` (each with a ``*_ci`` interval)."""


def _array(value: Tensor | np.ndarray | Sequence[float], what: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _columns(yhat: np.ndarray, y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The per-sample columns whose weighted sums give every statistic, ``(n, 6G + 3)``."""
    correct = (yhat == y).astype(np.float64)
    return np.concatenate(
        [
            m,
            m * yhat[:, None],
            m * y[:, None],
            m * correct[:, None],
            m * (yhat * y)[:, None],
            m * (yhat * (1 - y))[:, None],
            np.stack([yhat, correct, np.ones_like(yhat)], axis=1),
        ],
        axis=1,
    )


def _statistics(sums: np.ndarray, num_groups: int) -> dict[str, np.ndarray]:
    """The statistics from weighted column sums ``(B, 6G + 3)``; arrays ``(B, G)``."""
    size, predicted, positives, correct, true_pos, false_pos = (
        sums[:, k * num_groups : (k + 1) * num_groups] for k in range(6)
    )
    total = sums[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = sums[:, -3] / total
        rate = predicted / size
        return {
            "size": size,
            "positives": positives,
            "positive_rate": rate,
            "base_rate": positives / size,
            "accuracy": correct / size,
            "tpr": true_pos / positives,
            "fpr": false_pos / (size - positives),
            "parity_gap": rate - overall[:, None],
            "overall_positive_rate": overall,
            "overall_accuracy": sums[:, -2] / total,
        }


def _float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def group_metrics(
    predictions: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    membership: Tensor | np.ndarray,
    names: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-group sizes, rates and parity gaps with percentile bootstrap intervals.

    Args:
        predictions: Hard predictions in {0, 1}, shape ``(n,)`` (e.g. ``logits > 0``).
        labels: Labels in {0, 1}, shape ``(n,)``.
        membership: Membership matrix ``(n, G)`` with 0/1 entries.
        names: One name per group (default ``group 0``, ``group 1``, ...).
        n_boot: Bootstrap draws (``0``: no intervals).
        confidence: Coverage of the intervals, in ``(0, 1)``.
        seed: Seed of the draws (the report is deterministic).

    Returns:
        ``{"n", "positive_rate", "accuracy", "max_abs_parity_gap", "n_boot", "confidence",
        "groups"}`` (with ``n_boot > 0`` also ``accuracy_ci`` and ``max_abs_parity_gap_ci``,
        the intervals of the overall accuracy and of ``max_g |parity_gap_g|``; a maximum of
        noisy gaps is biased upwards under resampling, so the point value can sit near the
        low end of its interval) where ``groups`` holds one dict per group: ``name``, ``size``, ``positives``, the
        statistics of :data:`RATES` and, with ``n_boot > 0``, ``<statistic>_ci`` as
        ``[low, high]``. Undefined values (an empty group, a TPR without positives) are
        ``None``.

    Raises:
        ShapeError: If the shapes disagree.
        ConfigError: If predictions or labels are not 0/1, ``n_boot < 0`` or
            ``confidence`` is not in ``(0, 1)``.
    """
    yhat = _array(predictions, "predictions").reshape(-1)
    y = _array(labels, "labels").reshape(-1)
    m = _array(membership, "membership")
    if m.ndim != 2 or m.shape[0] != yhat.size or y.size != yhat.size:
        raise ShapeError(
            f"group_metrics: expected predictions (n,), labels (n,) and membership (n, G) with "
            f"the same n; got shapes {yhat.shape}, {y.shape} and {m.shape}."
        )
    for what, values in (("predictions", yhat), ("labels", y)):
        if not np.isin(values, (0.0, 1.0)).all():
            raise ConfigError(
                f"group_metrics: {what} must be 0 or 1 (hard predictions, e.g. logits > 0); got "
                f"values {np.unique(values)[:5].tolist()}."
            )
    if n_boot < 0 or not 0 < confidence < 1:
        raise ConfigError(
            f"group_metrics: need n_boot >= 0 and 0 < confidence < 1; got n_boot={n_boot}, "
            f"confidence={confidence}."
        )
    num_groups = m.shape[1]
    names = list(names) if names is not None else [f"group {g}" for g in range(num_groups)]
    if len(names) != num_groups:
        raise ShapeError(f"group_metrics: {num_groups} groups but {len(names)} names.")
    n = yhat.size
    columns = _columns(yhat, y, m)
    point = _statistics(columns.sum(axis=0, keepdims=True), num_groups)
    draws: dict[str, list[np.ndarray]] = {key: [] for key in RATES}
    overall_accuracy: list[np.ndarray] = []
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
        done = 0
        while done < n_boot:
            count = min(chunk, n_boot - done)
            # Row counts of `count` resamples of n rows drawn with replacement.
            weights = np.stack(
                [np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(count)]
            ).astype(np.float64)
            stats = _statistics(weights @ columns, num_groups)
            for key in RATES:
                draws[key].append(stats[key])
            overall_accuracy.append(stats["overall_accuracy"])
            done += count
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():  # all-NaN columns (e.g. a TPR without positives) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return _assemble(point, draws, overall_accuracy, names, n, alpha, n_boot, confidence)


def _assemble(
    point: dict[str, np.ndarray],
    draws: dict[str, list[np.ndarray]],
    overall_accuracy: list[np.ndarray],
    names: list[str],
    n: int,
    alpha: float,
    n_boot: int,
    confidence: float,
) -> dict[str, Any]:
    num_groups = len(names)
    intervals = (
        {
            key: np.nanquantile(np.concatenate(draws[key]), [alpha, 1 - alpha], axis=0)
            for key in RATES
            if draws[key]
        }
        if n_boot > 0
        else {}
    )
    summary: dict[str, Any] = {}
    point_gap = float(np.nanmax(np.abs(point["parity_gap"][0]))) if num_groups else 0.0
    summary["max_abs_parity_gap"] = point_gap
    if n_boot > 0 and num_groups:
        largest = np.nanmax(np.abs(np.concatenate(draws["parity_gap"])), axis=1)
        low, high = np.quantile(largest, [alpha, 1 - alpha])
        summary["max_abs_parity_gap_ci"] = [float(low), float(high)]
        low, high = np.quantile(np.concatenate(overall_accuracy), [alpha, 1 - alpha])
        summary["accuracy_ci"] = [float(low), float(high)]
    groups = []
    for g, name in enumerate(names):
        row: dict[str, Any] = {
            "name": name,
            "size": int(np.rint(point["size"][0, g])),
            "positives": int(np.rint(point["positives"][0, g])),
        }
        for key in RATES:
            row[key] = _float(point[key][0, g])
            if key in intervals:
                low, high = intervals[key][:, g]
                row[f"{key}_ci"] = [_float(low), _float(high)]
        groups.append(row)
    return {
        "n": n,
        "positive_rate": float(point["overall_positive_rate"][0]),
        "accuracy": float(point["overall_accuracy"][0]),
        **summary,
        "n_boot": n_boot,
        "confidence": confidence,
        "groups": groups,
    }


def format_group_metrics(report: dict[str, Any], title: str = "", *, markdown: bool = False) -> str:
    """A table of :func:`group_metrics`: one row per group, rates with their intervals.

    Args:
        report: The output of :func:`group_metrics`.
        title: A line above the table.
        markdown: A Markdown table instead of aligned text.
    """

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        text = f"{value:+.3f}" if key == "parity_gap" else f"{value:.3f}"
        interval = row.get(f"{key}_ci")
        if interval and None not in interval:
            text += (
                f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
                if key == "parity_gap"
                else (f" [{interval[0]:.3f}, {interval[1]:.3f}]")
            )
        return text

    header = ["group", "size", "positive rate", "parity gap", "accuracy", "TPR", "FPR", "base rate"]
    keys = ["positive_rate", "parity_gap", "accuracy", "tpr", "fpr", "base_rate"]
    rows = [[r["name"], str(r["size"]), *(cell(r, k) for k in keys)] for r in report["groups"]]
    ci = (
        f"; [{report['confidence']:.0%} bootstrap interval, {report['n_boot']} draws]"
        if report.get("n_boot")
        else ""
    )
    note = (
        f"n = {report['n']}, overall positive rate {report['positive_rate']:.3f}, accuracy "
        f"{report['accuracy']:.3f}{ci}; parity gap = positive rate - overall positive rate"
    )
    lines = [title] if title else []
    if markdown:
        lines += [
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
            note,
        ]
        return "\n".join(lines)
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  "
            + row[0].ljust(widths[0])
            + "".join("  " + c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
        )
    lines.append("  " + note)
    return "\n".join(lines)
