"""Loggers: where a run's records go besides its :class:`~constrain.history.History`.

A logger is any object with ``log(record, history)`` and ``flush()`` (the
:class:`Logger` protocol). The solver hands it every record when the record is flushed to
the host (every step by default; every ``check_every`` steps otherwise) and calls
``flush()`` at the end of each ``fit``. :class:`TensorBoardLogger` writes TensorBoard
event files through ``torch.utils.tensorboard`` (``pip install constrain[tensorboard]``).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._errors import ConfigError
from .history import History, StepRecord

__all__ = ["Logger", "TensorBoardLogger"]


@runtime_checkable
class Logger(Protocol):
    """Receives each record of a run (after it is flushed to the host)."""

    def log(self, record: StepRecord, history: History) -> None:
        """Take one record; ``history`` gives the labels and group names."""
        ...

    def flush(self) -> None:
        """Write what is buffered (end of a ``fit``)."""
        ...


class TensorBoardLogger:
    """Write a run's records as TensorBoard scalars (and histograms).

    Tags, at every recorded step: ``objective``, ``max_violation``, ``penalty`` (penalty
    formulations), ``violation/<group>`` (largest violation of each dense group),
    ``multiplier_norm/<group>`` (its multipliers' 2-norm), ``metric/<name>``,
    ``per_sample/<group>/<statistic>`` and ``clusters/<parameter>``; at steps that record
    the vectors, ``multiplier/<label>`` for groups of up to ``max_entries`` entries and the
    histograms ``multipliers`` and ``violation``.

    Args:
        log_dir: Folder of the event files (``tensorboard --logdir`` it).
        max_entries: Largest group whose multipliers are logged one scalar each.
        **writer_options: Passed to ``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        ConfigError: If ``tensorboard`` is not installed.
    """

    def __init__(
        self, log_dir: str | Path, *, max_entries: int = 16, **writer_options: Any
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "TensorBoardLogger needs the tensorboard package: pip install "
                "constrain[tensorboard] (or pip install tensorboard)."
            ) from None
        self.log_dir = Path(log_dir)
        self.max_entries = max_entries
        self.writer = SummaryWriter(log_dir=str(self.log_dir), **writer_options)
        self._labels: list[str] | None = None
        self._small: list[tuple[int, str]] | None = None

    def log(self, record: StepRecord, history: History) -> None:
        """Write ``record``'s scalars (and, at vector steps, histograms)."""
        add, step = self.writer.add_scalar, record.step
        add("objective", record.objective, step)
        add("max_violation", record.max_violation, step)
        if record.penalty is not None:
            add("penalty", record.penalty, step)
        for name, value in zip(history.groups, record.group_violation, strict=False):
            add(f"violation/{name}", value, step)
        for name, value in zip(history.groups, record.group_multiplier_norm, strict=False):
            add(f"multiplier_norm/{name}", value, step)
        for name, value in record.metrics.items():
            add(f"metric/{name}", value, step)
        for group, stats in record.per_sample.items():
            for stat, value in stats.items():
                add(f"per_sample/{group}/{stat}", value, step)
        for name, count in record.clusters.items():
            add(f"clusters/{name}", count, step)
        if record.multipliers is not None and record.violation is not None:
            self._vectors(record, history)

    def _vectors(self, record: StepRecord, history: History) -> None:
        import numpy as np

        assert record.multipliers is not None and record.violation is not None
        labels = history.labels
        if self._small is None or self._labels is not labels:
            groups = [label.split("[", 1)[0] for label in labels]
            counts = Counter(groups)
            self._labels = labels
            self._small = [
                (k, label)
                for k, (label, g) in enumerate(zip(labels, groups, strict=True))
                if counts[g] <= self.max_entries
            ]
        for k, label in self._small:
            if k < len(record.multipliers):
                self.writer.add_scalar(f"multiplier/{label}", record.multipliers[k], record.step)
        for tag, values in (("multipliers", record.multipliers), ("violation", record.violation)):
            finite = [x for x in values if math.isfinite(x)]
            if finite:
                self.writer.add_histogram(tag, np.asarray(finite), record.step)

    def flush(self) -> None:
        """Write the pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
