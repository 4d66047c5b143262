"""Turn the steps' tensors into :class:`~constrain.history.StepRecord` objects, with one
host copy per flush.

The recorder only collects what each stage reports: the stacked constraints (problem and
layout), the multipliers and the proposed update (dual side), the gradient norms (primal
side), the stage diagnostics (a formulation's penalty, a prox's cluster counts) and the
problem's metrics. It reads no stage's internals.

Every step adds one *row* to a buffer on the device: the per-step scalars (objective,
the largest violation and the multiplier norm of each dense group, per-sample summaries,
diagnostics, metrics) and the health facts of the step (NaN/Inf per group, gradient
norms, out-of-range sample indices, whether the multiplier proposal was finite), plus the
full violation and multiplier vectors at the steps that record them. Nothing is copied to
the host until :meth:`Recorder.flush`, which concatenates the buffer and copies it with a
single ``tolist()``: the only synchronisation of the steps in between. The health facts
then say exactly which step and which constraint went non-finite first
(:meth:`Recorder.problem`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._errors import ConstrainError, NonFiniteError, ShapeError, describe
from .history import StepRecord
from .layout import NONFINITE_HINT, ConstraintLayout, StackedConstraints, index_message
from .multipliers import Multipliers

__all__ = ["FlushedRow", "Recorder"]

logger = logging.getLogger("constrain")

# Per-sample group: max violation, feasible fraction, mean and max multiplier, health of
# the values and of the proposal (0 or NaN), number of out-of-range indices, lowest and
# highest index.
_PER_SAMPLE_WIDTH = 9
_EMPTY_SAMPLE = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


class _Groups:
    """Reductions over the dense groups (contiguous slices of the stacked vector) with as
    few kernels as their sizes allow: one reduction for one group or equal sizes, a padded
    gather otherwise."""

    def __init__(self, sizes: list[int], device: torch.device) -> None:
        self.sizes = sizes
        n, count = sum(sizes), len(sizes)
        width = max(sizes, default=0)
        self.mode = "none"
        self.index: Tensor | None = None
        self.lengths: Tensor | None = None
        if count == 1 and n > 0:
            self.mode = "one"
        elif count and min(sizes) > 0 and len(set(sizes)) == 1:
            self.mode = "equal"
        elif count and count * width <= 4 * n + 64:
            self.mode = "padded"
            rows = []
            offset = 0
            for size in sizes:
                rows.append(list(range(offset, offset + size)) + [n] * (width - size))
                offset += size
            self.index = torch.tensor(rows, dtype=torch.int64, device=device)
        elif count:
            self.mode = "segment"
            self.lengths = torch.tensor(sizes, dtype=torch.int64, device=device)

    def bad(self, x: Tensor) -> Tensor:
        """Per group: 1.0 if an entry of ``x`` is NaN or Inf, else 0.0 (a float64 sum is
        non-finite exactly then: it cannot overflow for float32 entries)."""
        if self.mode == "one":
            total = x.sum(dtype=torch.float64).reshape(1)
        elif self.mode == "equal":
            total = x.reshape(len(self.sizes), -1).sum(1, dtype=torch.float64)
        else:
            total = self.reduce(x.to(torch.float64), "sum")
        return (~torch.isfinite(total)).to(x.dtype)

    def norm(self, x: Tensor) -> Tensor:
        """Per-group 2-norm."""
        if self.mode == "one":
            out: Tensor = torch.linalg.vector_norm(x).reshape(1)
        elif self.mode == "equal":
            out = torch.linalg.vector_norm(x.reshape(len(self.sizes), -1), dim=1)
        else:
            out = self.reduce(x * x, "sum").sqrt()
        return out

    def reduce(self, x: Tensor, how: str) -> Tensor:
        """Per-group ``"max"`` (NaN-propagating; ``-inf`` for an empty group) or ``"sum"``."""
        fill = -math.inf if how == "max" else 0.0
        if self.mode == "none":
            return x.new_full((len(self.sizes),), fill)
        if self.mode == "one":
            return (x.max() if how == "max" else x.sum()).reshape(1)
        if self.mode == "equal":
            rows = x.reshape(len(self.sizes), -1)
            return rows.amax(1) if how == "max" else rows.sum(1)
        if self.mode == "padded":
            assert self.index is not None
            padded = torch.cat([x, x.new_full((1,), fill)])[self.index]
            return padded.amax(1) if how == "max" else padded.sum(1)
        assert self.lengths is not None
        return torch.segment_reduce(x, how, lengths=self.lengths, initial=fill)


@dataclass(slots=True)
class _Row:
    """What the host needs to decode one buffered row."""

    step: int
    keep: bool
    forced: bool
    vectors: bool
    diagnostics: tuple[str, ...]
    metrics: tuple[str, ...]
    gradients: tuple[str, ...]
    extra: int
    candidate: bool
    skipped: bool
    seconds: float
    size: int


@dataclass(slots=True)
class FlushedRow:
    """One step's facts on the host, as read back by :meth:`Recorder.flush`."""

    step: int
    keep: bool
    forced: bool
    skipped: bool
    seconds: float
    objective: float
    group_violation: list[float]
    dense_max: float
    group_multiplier_norm: list[float]
    group_proposal: list[float] | None
    per_sample: dict[str, list[float]]
    diagnostics: dict[str, float]
    metrics: dict[str, float]
    gradients: dict[str, float]
    extra: list[float]
    dual_ok: bool
    violation: list[float] | None = None
    multipliers: list[float] | None = None
    per_sample_equality: dict[str, bool] = field(default_factory=dict)
    clean: bool = False
    """Nothing to report: every fact finite, no per-sample group (whose index checks
    :meth:`Recorder.problem` reads)."""


class Recorder:
    """Buffers one row per step on the device and reads them back at :meth:`flush`.

    Args:
        layout: The constraint layout (group sizes, names, dtype, device).
    """

    def __init__(self, layout: ConstraintLayout) -> None:
        self.layout = layout
        self.dtype = layout.dtype
        self._groups = _Groups(layout.sizes, layout.device)
        self._count = len(layout.sizes)
        self._samples = [(c.name, int(c.size or 0), c.is_equality) for c in layout.per_sample]
        self._modelled = {c.name for c in layout.per_sample if c.multiplier_model is not None}
        self._rows: list[_Row] = []
        self._tensors: list[Tensor] = []
        self.quick = (
            self._count == 1
            and layout.num_dense > 0
            and not layout.dense_equality
            and not self._samples
        )
        """Whether :meth:`quick_record` may take this layout's steps: one dense inequality
        group, no per-sample group (the common case)."""

    def __len__(self) -> int:
        return len(self._rows)

    def quick_record(
        self,
        step: int,
        objective: Tensor,
        stacked: StackedConstraints,
        multipliers: Multipliers,
        gradients: tuple[tuple[str, ...], Sequence[Tensor]] | None,
        dual_health: Tensor,
        keep: bool,
        skipped: bool,
        seconds: float,
    ) -> tuple[bool, StepRecord | None]:
        """Copy one step to the host at once (empty buffer, :attr:`quick` layout, no
        diagnostics, metrics, further evaluations or vectors) and make its record.

        The row and the record are those of :meth:`add`, :meth:`flush` and :meth:`record`
        (the same reductions, the same copy), without the buffer's bookkeeping. Returns
        ``(True, record or None)`` if every fact of the step is finite; ``(False, None)``
        otherwise, and the caller then takes the step through :meth:`add` and
        :meth:`flush`, which report what is wrong.
        """
        dtype = self.dtype
        v = stacked.violation
        lam = multipliers.dense
        if lam.dtype is not dtype:
            lam = lam.to(dtype)
        scalars = [_scalar(objective, dtype), v.max(), torch.dot(lam, lam)]
        if gradients is not None:
            scalars += [_finiteness(n, dtype) for n in gradients[1]]
        scalars.append(_finiteness(dual_health, dtype))
        values: list[float] = torch.stack(scalars).tolist()
        value, top = values[0], values[1]
        # the sum is finite exactly when every term is (an overflow of it only sends the
        # step to the full check) and the proposal is healthy
        if values[-1] != 0.0 or not math.isfinite(sum(values[:-1])):
            return False, None
        if not keep:
            return True, None
        return True, StepRecord(  # every field by position (no default factories)
            step,
            value,
            top if top > 0.0 else 0.0,
            None,
            None,
            [top],
            [math.sqrt(values[2])],
            {},
            {},
            {},
            None,
            seconds,
            skipped,
        )

    def add(
        self,
        step: int,
        objective: Tensor,
        stacked: StackedConstraints,
        multipliers: Multipliers,
        *,
        proposal: Tensor | None = None,
        proposals: Mapping[str, Tensor] | None = None,
        dual_health: Tensor | None = None,
        diagnostics: Mapping[str, Tensor] | None = None,
        metrics: Mapping[str, Tensor | float] | None = None,
        gradients: tuple[tuple[str, ...], Sequence[Tensor]] | None = None,
        extra: Sequence[StackedConstraints] = (),
        keep: bool = True,
        forced: bool = False,
        vectors: bool = False,
        skipped: bool = False,
        seconds: float = 0.0,
    ) -> None:
        """Buffer the row of one step (device operations only).

        Args:
            step: Step index.
            objective: The step's objective (scalar).
            stacked: The step's standard-form constraints.
            multipliers: The multipliers after the step.
            proposal: The proposed (unprojected) dense multipliers, if an update ran and
                the step is checked later (its per-group health is kept; a step flushed at
                once has its proposal at hand, see :meth:`problem`).
            proposals: The proposed multipliers of each per-sample group's observed entries.
            dual_health: 0-dim: 0 when the multiplier proposals were finite, else NaN.
            diagnostics: Stage reports (``"penalty"``, ``"clusters/<parameter>"``).
            metrics: The problem's metrics.
            gradients: Parameter names and their gradients' max-norms.
            extra: Further evaluations of the step that fed an update (the constraints at
                ``x_{t+1}`` in the ``"primal_dual"`` order, the look-ahead point of
                extragradient); only their health is kept.
            keep: Whether the step becomes a record (else only its health is checked).
            forced: Recorded only because a ``fit`` ended there (see :class:`History`).
            vectors: Whether to keep the full violation and multiplier vectors.
            skipped: Whether the host skipped an update of the step.
            seconds: Host wall time of the step.

        Raises:
            ShapeError: If a metric is not a real scalar.
        """
        dtype, device = self.dtype, self.layout.device
        diagnostics = diagnostics or {}
        metrics = metrics or {}
        # The row: the 0-d facts stacked in one operation, then the per-group and
        # per-sample vectors (see _decode for the order).
        scalars: list[Tensor] = [_scalar(objective, dtype)]
        parts: list[Tensor] = []
        v = stacked.violation
        count = len(self.layout.sizes)
        many = count > 1
        if count:
            positive = (
                torch.where(stacked.equality, v.abs(), v) if self.layout.dense_equality else v
            )
            # NaN or +Inf where an entry is NaN or +Inf (a -Inf entry makes the multiplier
            # proposal non-finite, and the error check then looks at the evaluation).
            lam = multipliers.dense
            lam = lam if lam.dtype is dtype else lam.to(dtype)
            if many:
                group_max = self._groups.reduce(positive, "max")
                scalars.append(group_max.max())  # one number for the host's scan
                parts += [group_max, self._groups.norm(lam)]
                if proposal is not None:
                    parts.append(self._groups.bad(proposal.to(dtype)))
            else:
                # an empty group has no largest entry: -inf, as for empty groups of many;
                # the squared norm as a dot product (the host takes the root)
                top = positive.max() if positive.numel() else positive.new_full((), -math.inf)
                scalars += [top, torch.dot(lam, lam)]
        if diagnostics:
            scalars += [_scalar(value, dtype) for value in diagnostics.values()]
        if metrics:
            scalars += [
                _metric_scalar(name, value, v).reshape(()) for name, value in metrics.items()
            ]
        names: tuple[str, ...] = ()
        if gradients is not None:  # 0-d norms without gradient (PrimalSide.gradient_norms)
            names = gradients[0]
            scalars += [_finiteness(n, dtype) for n in gradients[1]]
        for other in extra:
            health = (other.violation - other.violation).sum()
            for iv in other.per_sample.values():
                health = health + (iv.violation - iv.violation).sum()
            scalars.append(health.to(dtype))
        if dual_health is None:
            scalars.append(torch.zeros((), dtype=dtype, device=device))
        else:
            scalars.append(_finiteness(dual_health, dtype))
        for name, size, equality in self._samples:
            parts.append(self._sample_row(name, size, equality, stacked, multipliers, proposals))
        head = torch.stack(scalars)
        row = torch.cat([head, *parts]) if parts else head
        size = row.numel()
        self._tensors.append(row)
        if vectors:
            self._tensors += [v, multipliers.dense.to(dtype).clone()]
            size += 2 * v.numel()
        self._rows.append(
            _Row(
                step,
                keep,
                forced,
                vectors,
                tuple(diagnostics),
                tuple(metrics),
                names,
                len(extra),
                proposal is not None and many,
                skipped,
                seconds,
                size,
            )
        )

    def _sample_row(
        self,
        name: str,
        size: int,
        equality: bool,
        stacked: StackedConstraints,
        multipliers: Multipliers,
        proposals: Mapping[str, Tensor] | None,
    ) -> Tensor:
        dtype = self.dtype
        iv = stacked.per_sample.get(name)  # absent: an intermittent group not measured
        if iv is None or iv.violation.numel() == 0:
            return torch.tensor(_EMPTY_SAMPLE, dtype=dtype, device=self.layout.device)
        v = iv.violation
        g = (v.abs() if equality else v) + (v - v)
        observed = multipliers.per_sample[name][iv.indices].to(dtype)
        if iv.first is None:
            feasible, mean = (g <= 0).to(dtype).mean(), observed.mean()
        else:
            weight = iv.first.to(dtype)
            count = weight.sum()
            feasible = ((g <= 0).to(dtype) * weight).sum() / count
            mean = (observed * weight).sum() / count
        given = iv.raw_indices if iv.raw_indices is not None else iv.indices
        bad = ((given < 0) | (given >= size)).sum().to(dtype)
        proposal = (proposals or {}).get(name)
        proposal_health = (
            (proposal - proposal).sum().to(dtype) if proposal is not None else g.new_zeros(())
        )
        return torch.stack(
            [
                g.max(),
                feasible,
                mean,
                observed.max(),
                (v - v).sum(),
                proposal_health,
                bad,
                given.min().to(dtype),
                given.max().to(dtype),
            ]
        )

    def flush(self) -> list[FlushedRow]:
        """Copy every buffered row to the host (one ``tolist()``: the only device
        synchronisation) and decode them, oldest first."""
        if not self._rows:
            return []
        flat = torch.cat(self._tensors) if len(self._tensors) > 1 else self._tensors[0]
        values: list[float] = flat.tolist()
        rows, self._rows, self._tensors = self._rows, [], []
        out = []
        at = 0
        for row in rows:
            out.append(self._decode(row, values[at : at + row.size]))
            at += row.size
        return out

    def _decode(self, row: _Row, values: list[float]) -> FlushedRow:
        groups = self._count
        objective = values[0]
        if groups == 1:
            dense_max = values[1]
            group_violation, norms = [dense_max], [math.sqrt(values[2])]
            at = 3
        elif groups:
            dense_max, group_violation, norms = values[1], [], []
            at = 2
        else:
            dense_max, group_violation, norms = -math.inf, [], []
            at = 1
        diagnostics: dict[str, float] = {}
        metrics: dict[str, float] = {}
        gradients: dict[str, float] = {}
        for names, out in (
            (row.diagnostics, diagnostics),
            (row.metrics, metrics),
            (row.gradients, gradients),
        ):
            if names:
                out.update(zip(names, values[at : at + len(names)], strict=True))
                at += len(names)
        extra = values[at : at + row.extra] if row.extra else []
        at += row.extra
        dual_ok = values[at] == 0.0
        at += 1
        proposal = None
        if groups > 1:
            group_violation = values[at : at + groups]
            norms = values[at + groups : at + 2 * groups]
            at += 2 * groups
            if row.candidate:
                proposal = values[at : at + groups]
                at += groups
        per_sample = {}
        for name, _, _ in self._samples:
            per_sample[name] = values[at : at + _PER_SAMPLE_WIDTH]
            at += _PER_SAMPLE_WIDTH
        violation = multipliers = None
        if row.vectors:
            n = self.layout.num_dense
            violation, multipliers = values[at : at + n], values[at + n : at + 2 * n]
        # one sum for the common case: finite exactly when every term is (an overflow of
        # the sum only sends the row to the full check)
        clean = (
            dual_ok
            and not per_sample
            and math.isfinite(objective + dense_max + sum(gradients.values()) + sum(extra))
        )
        return FlushedRow(
            row.step,
            row.keep,
            row.forced,
            row.skipped or not dual_ok,
            row.seconds,
            objective,
            group_violation,
            dense_max,
            norms,
            proposal,
            per_sample,
            diagnostics,
            metrics,
            gradients,
            extra,
            dual_ok,
            violation,
            multipliers,
            clean=clean,
        )

    def remeasure(self, row: FlushedRow, dense: Tensor) -> None:
        """Replace ``row``'s dense multiplier facts (group norms, vector) by those of
        ``dense``: the multipliers put back after the row's update was undone (see
        ``Duals.restore``). One host copy: only on that rare path."""
        lam = dense.detach().to(self.dtype)
        row.group_multiplier_norm = self._groups.norm(lam).tolist()
        if row.multipliers is not None:
            row.multipliers = lam.tolist()

    # -- what the host makes of a row ---------------------------------------------------
    def problem(
        self,
        row: FlushedRow,
        *,
        policy: str,
        controller: str,
        evaluations: Sequence[tuple[Tensor | None, StackedConstraints]] = (),
        proposal: Tensor | None = None,
    ) -> ConstrainError | None:
        """The error a flushed row calls for, or ``None``.

        Bad sample indices are always an error (:class:`ShapeError`). A NaN/Inf objective,
        constraint, gradient or multiplier proposal is a :class:`NonFiniteError` with
        ``policy="raise"``; with ``"skip"`` the host already skipped the step (objective,
        constraints, gradients) and a dropped multiplier proposal is only logged.

        Args:
            row: The flushed row.
            policy: ``"raise"`` or ``"skip"``.
            controller: The controller's name (for the message).
            evaluations: The step's evaluations if they are still at hand (the step being
                flushed is the current one): the message then names the entries.
            proposal: The step's dense multiplier proposal if still at hand (the current
                step, buffered without per-group flags): names the group that overflowed.
        """
        step = row.step
        if row.clean:
            return None  # everything finite (the common case; a sum overflow looks below)
        for name, stats in row.per_sample.items():
            if stats[6] > 0:
                size = next(s for n, s, _ in self._samples if n == name)
                return ShapeError(index_message(name, size, stats[7], stats[8], step))
        if policy == "raise":
            bad_eval = not math.isfinite(row.objective) or _bad(row.dense_max)
            bad_eval |= any(math.isnan(s[4]) for s in row.per_sample.values())
            bad_eval |= any(map(math.isnan, row.extra))
            if bad_eval or not row.dual_ok:  # the evaluation first, where it is at hand
                for objective, stacked in evaluations:
                    try:
                        self.layout.check_finite(objective, stacked, step)
                    except NonFiniteError as exc:
                        return exc
            if bad_eval:
                return NonFiniteError(self._evaluation_message(row))
            bad = [name for name, norm in row.gradients.items() if not math.isfinite(norm)]
            if bad:
                return NonFiniteError(
                    f"the gradient of parameter(s) {bad} is not finite at step {step} "
                    "although the objective and the constraints are finite (e.g. a NaN/Inf "
                    "proxy, sqrt or log at 0, or an overflow in backward); guard the "
                    "offending operation or lower the lr."
                )
        if not row.dual_ok:
            group = self._proposal_group(row, proposal)
            if group in self._modelled:
                message = (
                    f"the multiplier model of per-sample constraint {group!r} predicted "
                    f"non-finite multipliers at step {step} after its ascent step; lower "
                    "its MultiplierModel lr or bound the multipliers (max_multiplier)."
                )
            else:
                message = (
                    f"the multipliers of constraint {group!r} became non-finite at step "
                    f"{step} after the {controller!r} update; lower the controller's lr "
                    "(multiplicative rules overflow for large lr * violation)."
                )
            if policy == "raise":
                return NonFiniteError(message)
            logger.warning("%s Multiplier update skipped.", message)
        return None

    def _evaluation_message(self, row: FlushedRow) -> str:
        """Which quantity of a row is non-finite, without the step's tensors."""
        where = (
            f"at step {row.step} (its entries were not kept: the step was checked after "
            "later steps ran; check_every=1 names them)"
        )
        if not math.isfinite(row.objective):
            return f"the objective is {row.objective} at step {row.step} ({NONFINITE_HINT})."
        for name, value in zip(self.layout.names, row.group_violation, strict=True):
            if _bad(value):
                return f"constraint {name!r} is not finite {where}; {NONFINITE_HINT}."
        for name, stats in row.per_sample.items():
            if math.isnan(stats[4]):
                return f"per-sample constraint {name!r} is not finite {where}; {NONFINITE_HINT}."
        return (
            f"the constraints re-evaluated after the primal step are not finite {where}; "
            f"{NONFINITE_HINT}."
        )

    def _proposal_group(self, row: FlushedRow, proposal: Tensor | None) -> str:
        flags = row.group_proposal
        if flags is None and proposal is not None and self._count > 1:
            flags = self._groups.bad(proposal.to(self.dtype)).tolist()  # an error: may wait
        if flags is not None:
            for name, value in zip(self.layout.names, flags, strict=True):
                if value:
                    return name
        for name, stats in row.per_sample.items():
            if math.isnan(stats[5]):
                return name
        return self.layout.names[0] if self.layout.names else "?"

    def record(self, row: FlushedRow) -> StepRecord:
        """The :class:`StepRecord` of a flushed row.

        ``max_violation`` is ``max(max_i g_i, max_k |h_k|, 0)`` over the dense entries and
        the observed per-sample entries; it is NaN when any of them is not finite (a
        skipped step never reads as feasible).
        """
        worst = [0.0, row.dense_max]
        per_sample: dict[str, dict[str, float]] = {}
        diagnostics = row.diagnostics
        for name, stats in row.per_sample.items():
            per_sample[name] = {
                "max_violation": stats[0],
                "feasible_fraction": stats[1],
                "mean_multiplier": stats[2],
                "max_multiplier": stats[3],
            }
            worst.append(stats[0])
        return StepRecord(
            step=row.step,
            objective=row.objective,
            max_violation=_max_with_nan(worst),
            violation=row.violation,
            multipliers=row.multipliers,
            group_violation=row.group_violation,
            group_multiplier_norm=row.group_multiplier_norm,
            per_sample=per_sample,
            metrics=row.metrics,
            clusters={
                k[len("clusters/") :]: int(x)
                for k, x in diagnostics.items()
                if k.startswith("clusters/")
            }
            if diagnostics
            else {},
            penalty=diagnostics.get("penalty"),
            seconds=row.seconds,
            skipped=row.skipped,
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


def _finiteness(value: Tensor, dtype: torch.dtype) -> Tensor:
    """A 0-d fact read only for its finiteness (a gradient's norm or screen, a proposal's
    health), in ``dtype``: ``value`` itself if it has that dtype, else ``value - value``
    converted (0 if finite, NaN if not), so that a finite value beyond the range of
    ``dtype`` (a float64 gradient of 1e300 in a float32 record) does not read as an
    overflow."""
    return value if value.dtype is dtype else (value - value).to(dtype)


def _scalar(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` as a detached 0-d tensor of ``dtype`` (``value`` itself if it is one)."""
    if value.requires_grad:
        value = value.detach()
    if value.dim():
        value = value.reshape(())
    return value if value.dtype is dtype else value.to(dtype)


def _bad(value: float) -> bool:
    """A group maximum that shows a NaN or +Inf entry (``-inf``: an empty group)."""
    return not math.isfinite(value) and value != -math.inf


def _max_with_nan(values: list[float]) -> float:
    """``max`` that returns NaN if any value is NaN (Python's ``max`` may drop it)."""
    if any(math.isnan(x) for x in values):
        return math.nan
    return max(values)
