"""Per-step records of a run and their export (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_text

__all__ = ["LATE_FRACTION", "History", "StepRecord"]

LATE_FRACTION = 0.1
"""Share of the steps that forms the *late window* (the last 10% of the steps) of
:meth:`History.late_summary`, the figures and the comparison tables."""


@dataclass
class StepRecord:
    """What happened at one step.

    Attributes:
        step: Step index (0-based: the step that moved ``x_t`` to ``x_{t+1}``).
        objective: ``f(x_t)`` on the step's batch.
        max_violation: Largest standard-form violation: ``max(max_i g_i, max_k |h_k|, 0)``.
        violation: Dense standard-form constraint values ``g(x_t)`` (``<= 0`` when met).
        multipliers: Dense multipliers after the step's update.
        per_sample: Per-sample groups: summary of the observed entries
            (``max_violation``, ``mean_multiplier``, ``max_multiplier``, ``feasible_fraction``).
        metrics: Extra metrics returned by the problem (accuracy, density, ...).
        clusters: Number of distinct values per regularized parameter (weight sharing).
        penalty: Current penalty coefficient of penalty-based formulations.
        seconds: Wall time of the step.
        skipped: True if the step was skipped because of a non-finite value.
    """

    step: int
    objective: float
    max_violation: float
    violation: list[float]
    multipliers: list[float]
    per_sample: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    clusters: dict[str, int] = field(default_factory=dict)
    penalty: float | None = None
    seconds: float = 0.0
    skipped: bool = False


class History:
    """The sequence of :class:`StepRecord` of a run, with array views and exports.

    Args:
        labels: One label per dense constraint entry (``name`` or ``name[i]``).
    """

    def __init__(self, labels: list[str] | None = None) -> None:
        self.labels: list[str] = list(labels or [])
        self.records: list[StepRecord] = []

    # -- container protocol -------------------------------------------------------------
    def append(self, record: StepRecord) -> None:
        """Add a record."""
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> StepRecord:
        return self.records[index]

    @property
    def last(self) -> StepRecord:
        """The most recent record.

        Raises:
            IndexError: If the history is empty.
        """
        if not self.records:
            raise IndexError("the history is empty: no step has been recorded yet")
        return self.records[-1]

    # -- array views --------------------------------------------------------------------
    def steps(self) -> np.ndarray:
        """Step indices, shape ``(T,)``."""
        return np.array([r.step for r in self.records], dtype=np.int64)

    def objective(self) -> np.ndarray:
        """Objective per step, shape ``(T,)``."""
        return np.array([r.objective for r in self.records], dtype=np.float64)

    def max_violation(self) -> np.ndarray:
        """Max violation per step, shape ``(T,)``."""
        return np.array([r.max_violation for r in self.records], dtype=np.float64)

    def violation(self) -> np.ndarray:
        """Dense violations, shape ``(T, n)`` (``(0, len(labels))`` when empty)."""
        return self._matrix([r.violation for r in self.records])

    def multipliers(self) -> np.ndarray:
        """Dense multipliers, shape ``(T, n)`` (``(0, len(labels))`` when empty)."""
        return self._matrix([r.multipliers for r in self.records])

    def _matrix(self, rows: list[list[float]]) -> np.ndarray:
        if not rows:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return np.array(rows, dtype=np.float64).reshape(len(rows), -1)

    def late_mask(self, fraction: float = LATE_FRACTION) -> np.ndarray:
        """Which records lie in the late window, the last ``fraction`` of the steps.

        With ``T = last step + 1`` the window holds the records of steps
        ``>= T - max(1, round(fraction * T))``; it always holds the last record.

        Returns:
            Boolean array of shape ``(len(self),)`` (empty for an empty history).

        Raises:
            ValueError: If ``fraction`` is not in ``(0, 1]``.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"the late-window fraction must lie in (0, 1]; got {fraction!r}.")
        steps = self.steps()
        if steps.size == 0:
            return np.zeros(0, dtype=bool)
        total = int(steps[-1]) + 1
        start = total - max(1, round(fraction * total))
        mask = steps >= start
        mask[-1] = True
        return mask

    def late_summary(
        self,
        fraction: float = LATE_FRACTION,
        reference_multipliers: np.ndarray | list[float] | None = None,
    ) -> dict[str, Any]:
        """Statistics over the late window (the last ``fraction`` of the steps).

        The last step alone misleads for oscillating multipliers: an iterate can be
        feasible by chance while its neighbours are not. Keys:

        * ``late_window``: ``{"fraction", "first_step", "last_step", "records"}``;
        * ``late_max_violation`` / ``late_mean_violation``: max and mean over the window of
          the per-step max violation ``max(max_i g_i, max_k |h_k|, 0)``;
        * ``late_mean_objective``: mean objective over the window;
        * with ``reference_multipliers`` (dense, in the history's column order):
          ``late_max_multiplier_error`` / ``late_mean_multiplier_error``, the max and mean
          of ``||lam_t - lam*||_2`` over the window.

        Returns:
            The dict above; ``{}`` for an empty history.

        Raises:
            ValueError: If ``fraction`` is not in ``(0, 1]``.
        """
        mask = self.late_mask(fraction)
        if mask.size == 0:
            return {}
        steps = self.steps()[mask]
        violation = self.max_violation()[mask]
        out: dict[str, Any] = {
            "late_window": {
                "fraction": fraction,
                "first_step": int(steps[0]),
                "last_step": int(steps[-1]),
                "records": int(mask.sum()),
            },
            "late_max_violation": float(violation.max()),
            "late_mean_violation": float(violation.mean()),
            "late_mean_objective": float(self.objective()[mask].mean()),
        }
        if reference_multipliers is not None:
            exact = np.asarray(reference_multipliers, dtype=np.float64).reshape(-1)
            lam = self.multipliers()[mask]
            if lam.shape[1] == exact.size:
                with np.errstate(over="ignore", invalid="ignore"):  # non-finite runs: inf/nan
                    error = np.linalg.norm(lam - exact[None, :], axis=1)
                out["late_max_multiplier_error"] = float(error.max())
                out["late_mean_multiplier_error"] = float(error.mean())
        return out

    def metric(self, name: str) -> np.ndarray:
        """One metric per step (NaN where it was not recorded)."""
        return np.array([r.metrics.get(name, math.nan) for r in self.records], dtype=np.float64)

    # -- export -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict ``{"labels": [...], "records": [...]}``."""
        return {"labels": self.labels, "records": [asdict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        history = cls(list(data.get("labels", [])))
        for row in data.get("records", []):
            history.append(StepRecord(**row))
        return history

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON; also write it atomically to ``path`` if given."""
        text = json.dumps(self.to_dict(), allow_nan=True)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per step: step, objective, max_violation, seconds, metrics, then one
        ``g:LABEL`` and one ``lambda:LABEL`` column per dense constraint entry, then
        per-sample summaries and cluster counts. Also written atomically to ``path``.
        """
        metric_names = sorted({k for r in self.records for k in r.metrics})
        ps_names = sorted(
            {f"{g}:{k}" for r in self.records for g, d in r.per_sample.items() for k in d}
        )
        cluster_names = sorted({k for r in self.records for k in r.clusters})
        header = ["step", "objective", "max_violation", "penalty", "seconds", "skipped"]
        header += metric_names + [f"g:{lab}" for lab in self.labels]
        header += [f"lambda:{lab}" for lab in self.labels] + ps_names
        header += [f"clusters:{c}" for c in cluster_names]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for r in self.records:
            row: list[Any] = [
                r.step,
                r.objective,
                r.max_violation,
                "" if r.penalty is None else r.penalty,
                r.seconds,
                int(r.skipped),
            ]
            row += [r.metrics.get(m, "") for m in metric_names]
            row += list(r.violation) + list(r.multipliers)
            for key in ps_names:
                group, stat = key.split(":", 1)
                row.append(r.per_sample.get(group, {}).get(stat, ""))
            row += [r.clusters.get(c, "") for c in cluster_names]
            writer.writerow(row)
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def summary(self) -> dict[str, Any]:
        """Final values: steps, objective, max violation, multipliers, metrics."""
        if not self.records:
            return {"steps": 0}
        last = self.records[-1]
        return {
            "steps": last.step + 1,
            "objective": last.objective,
            "max_violation": last.max_violation,
            "multipliers": list(last.multipliers),
            "metrics": dict(last.metrics),
            "clusters": dict(last.clusters),
            "per_sample": dict(last.per_sample),
            "seconds_per_step": float(np.mean([r.seconds for r in self.records])),
        }
