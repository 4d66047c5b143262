"""The steps' records on their way to the history.

Each finished step hands its reports to the :class:`~constrain.recording.Recorder`, which
keeps them on the device. Every ``check_every`` steps (and at the end of a ``fit``) the
buffer is copied to the host in one synchronisation, checked for NaN/Inf (raising
:class:`~constrain.NonFiniteError` naming the first problem, or warning with
``on_nonfinite="skip"``), and the kept rows become :class:`~constrain.StepRecord` objects
appended to the :class:`~constrain.History` and handed to the loggers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from torch import Tensor

from ._stepping import StepInProgress
from .history import History, StepRecord
from .layout import ConstraintLayout, StackedConstraints
from .loggers import Logger
from .multipliers import Multipliers
from .recording import FlushedRow, Recorder

__all__ = ["StepLog"]


class StepLog:
    """Buffer, check and record the steps (see the module docstring).

    Args:
        history: The history records go to.
        loggers: Objects receiving every record (the list is shared with the caller).
        record_every: Keep every k-th step's record (and the last step of a ``fit``).
        vectors_every: Keep the full vectors every k-th step (``None``: ``ceil(n / 128)``
            for ``n`` dense entries).
        check_every: Copy, check and record the buffered steps every k-th step.
        on_nonfinite: ``"raise"`` or ``"skip"`` (how non-finite steps are reported).
    """

    def __init__(
        self,
        history: History,
        loggers: list[Logger],
        *,
        record_every: int,
        vectors_every: int | None,
        check_every: int,
        on_nonfinite: str,
    ) -> None:
        self._history = history
        history.claim(self)
        self.loggers = loggers
        self.record_every, self.vectors_every = record_every, vectors_every
        self.check_every, self.on_nonfinite = check_every, on_nonfinite
        self.recorder: Recorder | None = None
        self._vectors_every = 1
        self.last_step = -1
        """The last step of the running ``fit`` (always recorded); -1 outside one."""

    @property
    def history(self) -> History:
        """The history records go to (one step log per history; see
        :meth:`History.claim`)."""
        return self._history

    @history.setter
    def history(self, history: History) -> None:
        history.claim(self)
        if history is not self._history:
            self._history.release(self)
        self._history = history

    def buffered(self) -> bool:
        """Whether steps wait in the device buffer."""
        return self.recorder is not None and len(self.recorder) > 0

    def add(
        self,
        step: int,
        pending: StepInProgress,
        layout: ConstraintLayout,
        multipliers: Multipliers,
        diagnostics: dict[str, Tensor],
        clusters: Callable[[], dict[str, Tensor]] | None,
        controller: str,
        restore: Callable[[], Tensor | None] | None = None,
    ) -> StepRecord | None:
        """Buffer the finished step ``step``; flush when it is due. Returns the step's
        record when it was flushed and kept, else ``None``.

        Args:
            step: The step's number.
            pending: The finished step.
            layout: The constraint layout.
            multipliers: The multipliers after the step.
            diagnostics: What the formulation reports (e.g. the penalty).
            clusters: Cluster counts of the regularized parameters (called only for kept
                records: one sort per parameter); ``None`` when none counts clusters.
            controller: The controller's name (for messages).
            restore: Undoes the step's multiplier update: called when the flush finds its
                proposal non-finite (an update not guarded on the device; see
                ``Duals.step``); returns the dense multipliers put back, if any.

        Raises:
            NonFiniteError: With ``on_nonfinite="raise"``, for a non-finite flushed step.
        """
        if self.recorder is None or self.recorder.layout is not layout:
            self.recorder = Recorder(layout)
            self._vectors_every = self.vectors_every or max(1, math.ceil(layout.num_dense / 128))
        at_end = step == self.last_step
        keep = step % self.record_every == 0 or at_end
        if keep and clusters is not None:
            counts = clusters()
            if counts:
                diagnostics = {**diagnostics, **{f"clusters/{k}": v for k, v in counts.items()}}
        if not diagnostics:
            record = self.add_at_once(step, pending, layout, multipliers)
            if record is not False:
                return record
        due = self.due(step)
        forced = at_end and step % self.record_every != 0
        vectors_every = self._vectors_every
        report = pending.report
        metrics = pending.metrics()
        self.recorder.add(
            step,
            pending.objective(),
            pending.evaluation(layout),
            multipliers,
            proposal=None if report is None or due else report.dense,
            proposals=None if report is None else report.per_sample,
            dual_health=None if report is None else report.health,
            diagnostics=diagnostics,
            metrics=metrics,
            gradients=pending.gradient_facts(screen=False),
            extra=pending.extra,
            keep=keep,
            forced=forced,
            vectors=keep and step % vectors_every == 0,
            skipped=pending.skipped,
            seconds=time.perf_counter() - pending.start,
        )
        if not due:
            return None
        flushed = self.flush(step, pending, controller, restore)
        return flushed[-1] if flushed and flushed[-1].step == step else None

    def add_at_once(
        self,
        step: int,
        pending: StepInProgress,
        layout: ConstraintLayout,
        multipliers: Multipliers,
    ) -> StepRecord | Literal[False] | None:
        """Record the finished step ``step`` at once when it can be: the common case of
        :meth:`add` (no formulation diagnostics or cluster counts, which the caller
        checks), copied and checked in one go without the buffer (see
        :meth:`Recorder.quick_record`).

        Returns:
            The step's record (``None`` if it is not kept), or ``False``, having done
            nothing, when the step must go through :meth:`add`: steps wait in the buffer
            or this one is not flushed, it keeps the full vectors, it has metrics or
            further evaluations, the layout is not one ``quick_record`` takes, or a fact of
            the step is not finite (which :meth:`add` reports).
        """
        recorder = self.recorder
        last = self.last_step
        if (
            recorder is None
            or recorder.layout is not layout
            or not recorder.quick
            or len(recorder)
            or (step != last and (step + 1) % self.check_every)
            or pending.extra
            or pending.report is None
        ):
            return False
        every = self.record_every
        keep = step % every == 0 or step == last
        if keep and step % self._vectors_every == 0:
            return False
        micro = pending.micro
        if len(micro) == 1:
            metrics = micro[0].state.metrics
            if metrics.__class__ is not dict or metrics or pending.rule_metrics:
                return False
            objective, stacked = micro[0].objective, micro[0].stacked
        elif pending.metrics():
            return False
        else:
            objective, stacked = pending.objective(), pending.evaluation(layout)
        finite, record = recorder.quick_record(
            step,
            objective,
            stacked,
            multipliers,
            pending.gradient_facts(screen=True),
            pending.report.health,
            keep,
            pending.skipped,
            time.perf_counter() - pending.start,
        )
        if not finite:
            return False
        if record is not None:
            history = self._history
            history.append(record, forced=step == last and step % every != 0)
            for sink in self.loggers:
                sink.log(record, history)
        return record

    def due(self, step: int) -> bool:
        """Whether step ``step`` is flushed when it is added (every ``check_every``-th
        step and the last step of a ``fit``)."""
        return step == self.last_step or (step + 1) % self.check_every == 0

    def flush(
        self,
        step: int,
        current: StepInProgress | None,
        controller: str,
        restore: Callable[[], Tensor | None] | None = None,
    ) -> list[StepRecord]:
        """Copy the buffered steps to the host, check them and record the kept ones;
        returns the new records. ``current`` is the step ``step`` just buffered (its
        evaluations name the offending constraint in messages; ``restore`` undoes its
        multiplier update if the proposal was not finite).

        Raises:
            NonFiniteError: With ``on_nonfinite="raise"``, for a non-finite step.
        """
        if self.recorder is None:
            return []
        records: list[StepRecord] = []
        rows = self.recorder.flush()
        if restore is not None and rows and rows[-1].step == step and not rows[-1].dual_ok:
            restored = restore()  # before any error is raised: the multipliers stay finite
            if restored is not None:  # the row measured the undone multipliers
                self.recorder.remeasure(rows[-1], restored)
        for row in rows:
            if not row.clean:
                self._check(row, step, current, controller)
            if row.keep:
                record = self.recorder.record(row)
                self._history.append(record, forced=row.forced)
                for sink in self.loggers:
                    sink.log(record, self._history)
                records.append(record)
        return records

    def _check(
        self, row: FlushedRow, step: int, current: StepInProgress | None, controller: str
    ) -> None:
        """Raise (or log) what a flushed row that is not clean calls for (see
        :meth:`Recorder.problem`)."""
        assert self.recorder is not None
        evaluations: list[tuple[Tensor | None, StackedConstraints]] = []
        proposal = None
        if current is not None and row.step == step:
            evaluations = [(m.objective, m.stacked) for m in current.micro]
            evaluations += [(None, extra) for extra in current.extra]
            proposal = None if current.report is None else current.report.dense
        problem = self.recorder.problem(
            row,
            policy=self.on_nonfinite,
            controller=controller,
            evaluations=evaluations,
            proposal=proposal,
        )
        if problem is not None:
            raise problem

    def close(self) -> None:
        """End of a ``fit``: flush the history's stream and the loggers."""
        self.history.flush()
        for sink in self.loggers:
            sink.flush()
