"""Turn one step's tensors into a :class:`~constrain.history.StepRecord`.

The recorder only collects what each stage reports: the stacked constraints (problem and
layout), the multipliers (dual side), the stage diagnostics (a formulation's penalty, a
prox's cluster counts) and the problem's metrics. It reads no stage's internals.
Everything it needs from the device is packed into one tensor and copied to the host once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ._errors import ShapeError, describe
from .history import StepRecord
from .layout import ConstraintLayout, StackedConstraints
from .multipliers import Multipliers

__all__ = ["record_step"]


def record_step(
    step: int,
    layout: ConstraintLayout,
    objective: Tensor,
    stacked: StackedConstraints,
    multipliers: Multipliers,
    diagnostics: Mapping[str, Tensor],
    metrics: Mapping[str, Tensor | float],
    *,
    skipped: bool,
) -> StepRecord:
    """The record of one step.

    ``max_violation`` is ``max(max_i g_i, max_k |h_k|, 0)`` over the dense entries and the
    observed per-sample entries; it is NaN when any of them is not finite (a skipped step
    never reads as feasible).

    Args:
        step: Step index.
        layout: The constraint layout.
        objective: The step's objective value (scalar).
        stacked: The step's standard-form constraints.
        multipliers: The multipliers after the step.
        diagnostics: Stage reports by name: ``"penalty"`` (formulation) and
            ``"clusters/<parameter>"`` (prox).
        metrics: The problem's metrics.
        skipped: Whether a stage skipped its update because of a non-finite value.
    """
    v = stacked.violation
    n = v.numel()
    scalars: list[Tensor] = [objective.detach().reshape(1).to(v.dtype)]
    names: list[str] = []
    for name, value in diagnostics.items():
        names.append(name)
        scalars.append(value.detach().reshape(1).to(v.dtype))
    for name, metric in metrics.items():
        names.append("metric/" + name)
        scalars.append(_metric_scalar(name, metric, v))
    per_sample_parts: list[Tensor] = []
    for name, iv in stacked.per_sample.items():
        g = iv.violation.abs() if iv.equality else iv.violation
        observed = multipliers.per_sample[name][iv.indices].to(v.dtype)
        if g.numel():
            per_sample_parts.append(
                torch.stack(
                    [
                        g.max(),  # NaN if any entry is NaN
                        (g <= 0).to(v.dtype).mean(),
                        observed.mean(),
                        observed.max(),
                    ]
                )
            )
        else:
            per_sample_parts.append(torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=v.dtype))
    packed = torch.cat(
        [s.to(v.device) for s in scalars]
        + [v, multipliers.dense.to(v.dtype)]
        + [p.to(v.device) for p in per_sample_parts]
    ).cpu()
    values = packed.tolist()
    k = len(scalars)
    head, violation = values[:k], values[k : k + n]
    dense_multipliers = values[k + n : k + 2 * n]
    tail = values[k + 2 * n :]
    equality = layout.equality.cpu().tolist()
    positive = [abs(x) if eq else x for x, eq in zip(violation, equality, strict=True)]
    max_violation = _max_with_nan([0.0, *positive])
    per_sample: dict[str, dict[str, float]] = {}
    for j, name in enumerate(stacked.per_sample):
        worst, feasible, mean_lam, max_lam = tail[4 * j : 4 * j + 4]
        per_sample[name] = {
            "max_violation": worst,
            "feasible_fraction": feasible,
            "mean_multiplier": mean_lam,
            "max_multiplier": max_lam,
        }
        max_violation = _max_with_nan([max_violation, worst])
    reported = dict(zip(names, head[1:], strict=True))
    return StepRecord(
        step=step,
        objective=head[0],
        max_violation=max_violation,
        violation=violation,
        multipliers=dense_multipliers,
        per_sample=per_sample,
        metrics={k[len("metric/") :]: x for k, x in reported.items() if k.startswith("metric/")},
        clusters={
            k[len("clusters/") :]: int(x) for k, x in reported.items() if k.startswith("clusters/")
        },
        penalty=reported.get("penalty"),
        skipped=skipped,
    )


def _metric_scalar(name: str, metric: object, like: Tensor) -> Tensor:
    """A metric as a one-element tensor on ``like``'s device.

    Raises:
        ShapeError: If the metric is not a real scalar (a vector, a string, ...).
    """
    if isinstance(metric, Tensor) and metric.numel() == 1 and not metric.is_complex():
        return metric.detach().reshape(1).to(like.dtype).to(like.device)
    if isinstance(metric, (int, float)) and not isinstance(metric, bool):
        return torch.tensor([float(metric)], dtype=like.dtype, device=like.device)
    raise ShapeError(
        f"metric {name!r} must be a real scalar (a number or a one-element tensor); got "
        f"{describe(metric)}. Reduce it (e.g. .mean()) or return one metric per entry."
    )


def _max_with_nan(values: list[float]) -> float:
    """``max`` that returns NaN if any value is NaN (Python's ``max`` may drop it)."""
    if any(math.isnan(x) for x in values):
        return math.nan
    return max(values)
