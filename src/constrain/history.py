"""Per-step records of a run: a bounded window in memory, the whole run in a stream.

A :class:`History` keeps the last ``window`` records in memory and writes every record to
a JSON Lines *stream* (one header line, then one line per record, append-only):

* ``History(stream="run/history.jsonl")``: the stream is a file of the run folder; it is
  flushed regularly (every second at most) and at exit, and a checkpoint stores its
  :meth:`History.position` instead of the records, so that a resumed run truncates the
  stream back to that position and continues it (the stream of a resumed run equals an
  uninterrupted one, byte for byte: wall times are never streamed);
* ``History()``: records that leave the window go to an anonymous temporary file, pickled
  in chunks (binary: far cheaper per record than a JSON line).

Either way the array views (:meth:`History.objective`, :meth:`History.violation`, ...)
cover every step, reading the stream back when the window does not hold them all.

Scalars are recorded at every step; the full violation and multiplier vectors only at some
steps (the solver's ``vectors_every``), so ``violation()`` and ``multipliers()`` have one
row per :meth:`History.vector_steps` entry.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import pickle
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._errors import CheckpointError
from ._io import atomic_write, atomic_write_text

__all__ = ["LATE_FRACTION", "History", "StepRecord"]

LATE_FRACTION = 0.1
"""Share of the steps that forms the *late window* (the last 10% of the steps) of
:meth:`History.late_summary`, the figures and the comparison tables."""

STREAM_FORMAT = "constrain-history"
STREAM_VERSION = 1
DEFAULT_WINDOW = 1000
"""Records kept in memory by default (the rest is read back from the stream)."""
_FLUSH_SECONDS = 1.0


@dataclass
class StepRecord:
    """What happened at one step.

    Attributes:
        step: Step index (0-based: the step that moved ``x_t`` to ``x_{t+1}``).
        objective: ``f(x_t)`` on the step's batch.
        max_violation: Largest standard-form violation: ``max(max_i g_i, max_k |h_k|, 0)``
            over the dense entries and the observed per-sample entries (NaN if one is not
            finite).
        violation: Dense standard-form constraint values ``g(x_t)`` (``<= 0`` when met);
            ``None`` at steps where the vectors were not recorded.
        multipliers: Dense multipliers after the step's update (``None`` likewise).
        group_violation: Largest violation of each dense constraint group (order of
            :attr:`History.groups`).
        group_multiplier_norm: 2-norm of each dense group's multipliers after the update.
        per_sample: Per-sample groups: summary of the observed entries
            (``max_violation``, ``mean_multiplier``, ``max_multiplier``, ``feasible_fraction``).
        metrics: Extra metrics returned by the problem (accuracy, density, ...).
        clusters: Number of distinct values per regularized parameter (weight sharing).
        penalty: Current penalty coefficient of penalty-based formulations.
        seconds: Host wall time of the step (not streamed: it differs between runs).
        skipped: True if an update of the step was skipped because of a non-finite value.
    """

    step: int
    objective: float
    max_violation: float
    violation: list[float] | None = None
    multipliers: list[float] | None = None
    group_violation: list[float] = field(default_factory=list)
    group_multiplier_norm: list[float] = field(default_factory=list)
    per_sample: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    clusters: dict[str, int] = field(default_factory=dict)
    penalty: float | None = None
    seconds: float = 0.0
    skipped: bool = False


_FIELDS = {f.name for f in fields(StepRecord)}


_STREAMED = [f.name for f in fields(StepRecord) if f.name != "seconds"]


def _line(record: StepRecord) -> str:
    """One stream line (no copy of the record: ``asdict`` would deep-copy its vectors)."""
    data = {name: getattr(record, name) for name in _STREAMED}
    return json.dumps(data, separators=(",", ":"), allow_nan=True) + "\n"


def _parse(line: str) -> StepRecord | None:
    """The record of a stream line (``None`` for the header)."""
    data = json.loads(line)
    if "format" in data:
        return None
    return StepRecord(**{k: v for k, v in data.items() if k in _FIELDS})


class _Spill:
    """The records that left the window of a :class:`History` without a stream file.

    They are buffered and pickled in chunks (at most ``CHUNK`` records or ``FLOATS``
    vector entries in memory) to an anonymous temporary file, which is read back only
    when a view needs the early steps.
    """

    CHUNK = 256
    FLOATS = 100_000

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._buffer: list[StepRecord] = []
        self._floats = 0

    def add(self, records: list[StepRecord]) -> None:
        self._buffer += records
        for record in records:
            self._floats += len(record.violation or ()) + len(record.multipliers or ())
        if len(self._buffer) >= self.CHUNK or self._floats >= self.FLOATS:
            if self._file is None:
                self._file = tempfile.TemporaryFile("w+b")  # noqa: SIM115
                self._finalizer = weakref.finalize(self, self._file.close)
            pickle.dump(self._buffer, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._buffer, self._floats = [], 0

    def read(self, count: int) -> list[StepRecord]:
        """The first ``count`` spilled records."""
        out: list[StepRecord] = []
        if self._file is not None:
            self._file.seek(0)
            try:
                while len(out) < count:
                    out += pickle.load(self._file)  # our own temporary file
            except EOFError:
                pass
            self._file.seek(0, os.SEEK_END)
        if len(out) < count:
            out += self._buffer
        return out[:count]

    def clear(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the file
        self._file, self._finalizer = None, None
        self._buffer, self._floats = [], 0


class History:
    """The records of a run, with array views and exports.

    Args:
        labels: One label per dense constraint entry (``name`` or ``name[i]``).
        stream: JSON Lines file every record is appended to (see the module docstring);
            ``None`` keeps the records in memory and spills those leaving the window to a
            temporary file.
        window: Number of most recent records kept in memory.

    Attributes:
        labels: Labels of the dense entries (columns of :meth:`violation`).
        groups: Names of the dense constraint groups (columns of :meth:`group_violation`).
        records: The records in memory (the last ``window`` ones).
    """

    def __init__(
        self,
        labels: list[str] | None = None,
        *,
        stream: str | Path | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            from ._errors import ConfigError

            raise ConfigError(f"History window must be a positive integer; got {window!r}.")
        self.labels: list[str] = list(labels or [])
        self.groups: list[str] = []
        self.records: list[StepRecord] = []
        self.window = window
        self.path = Path(stream) if stream is not None else None
        if self.path is not None and self.path.is_dir():
            from ._errors import ConfigError

            raise ConfigError(
                f"History stream {str(self.path)!r} is a folder; expected the path of a JSON "
                "Lines file, e.g. History(stream='run/history.jsonl')."
            )
        self._count = 0  # records appended in total
        self._file: IO[str] | None = None
        self._file_records = 0  # records written to the file
        self._bytes = 0  # bytes written to the file
        self._checkpoint = (0, 0)  # (records, bytes) a checkpoint may resume from
        self._last_flush = 0.0
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._spill = _Spill()
        self._owner: weakref.ref[object] | None = None

    def claim(self, owner: object) -> None:
        """Let ``owner`` (a solver's step log) record into this history; one at a time.

        Raises:
            ConfigError: If another live solver records into it (the two would interleave
                their records and steps in one history and one stream).
        """
        holder = self._owner() if self._owner is not None else None
        if holder is not None and holder is not owner:
            from ._errors import ConfigError

            raise ConfigError(
                "history: this History already records the steps of another Solver; "
                "expected a History of its own for each solver (two solvers writing one "
                "would interleave their records). Pass history=History(...) per solver."
            )
        self._owner = weakref.ref(owner)

    def release(self, owner: object) -> None:
        """``owner`` no longer records into this history."""
        if self._owner is not None and self._owner() is owner:
            self._owner = None

    # -- container protocol -------------------------------------------------------------
    def append(self, record: StepRecord, *, forced: bool = False) -> None:
        """Add a record (written to the stream, kept in the window).

        Args:
            record: The record.
            forced: True for a record an uninterrupted run would not have (the last step of
                a ``fit`` off the recording grid): a checkpoint taken right after it
                resumes from the position before it.
        """
        before = (self._count, self._bytes)
        self.records.append(record)
        self._count += 1
        if self.path is not None:
            self._write(record)
        if len(self.records) > self.window:
            evicted = self.records[: len(self.records) - self.window]
            del self.records[: len(evicted)]
            if self.path is None:
                self._spill.add(evicted)
        self._checkpoint = before if forced else (self._count, self._bytes)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[StepRecord]:
        evicted = self._count - len(self.records)
        if evicted:
            yield from self._read(evicted)
        yield from list(self.records)

    def __getitem__(self, index: int) -> StepRecord:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"record {index} out of range: the history has {self._count}")
        evicted = self._count - len(self.records)
        if index >= evicted:
            return self.records[index - evicted]
        for k, record in enumerate(self._read(index + 1)):
            if k == index:
                return record
        raise IndexError(index)  # pragma: no cover

    @property
    def last(self) -> StepRecord:
        """The most recent record.

        Raises:
            IndexError: If the history is empty.
        """
        if not self.records:
            raise IndexError("the history is empty: no step has been recorded yet")
        return self.records[-1]

    # -- the stream ---------------------------------------------------------------------
    def _open(self) -> IO[str]:
        if self._file is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "r+" if self.path.exists() else "w+", encoding="utf-8")  # noqa: SIM115
            handle.seek(self._bytes)
            handle.truncate()
            self._file = handle
            self._finalizer = weakref.finalize(self, handle.close)
            if self._bytes == 0:
                header = {
                    "format": STREAM_FORMAT,
                    "version": STREAM_VERSION,
                    "labels": self.labels,
                    "groups": self.groups,
                }
                text = json.dumps(header, separators=(",", ":")) + "\n"
                handle.write(text)
                self._bytes += len(text.encode("utf-8"))
        return self._file

    def _write(self, record: StepRecord) -> None:
        handle = self._open()
        text = _line(record)
        handle.write(text)
        self._bytes += len(text.encode("utf-8"))
        self._file_records += 1
        now = time.monotonic()
        if now - self._last_flush > _FLUSH_SECONDS:
            handle.flush()
            self._last_flush = now

    def _read(self, count: int) -> Iterator[StepRecord]:
        """The first ``count`` records (of the stream file, or of the spill)."""
        if self.path is None:
            yield from self._spill.read(count)
            return
        if self._file is None:
            return
        self._file.flush()
        with open(self.path, encoding="utf-8") as handle:
            yield from _records(handle, count)

    def flush(self) -> None:
        """Write buffered lines to the stream file (the solver calls it at the end of
        ``fit`` and before a checkpoint; it also happens every second and at exit)."""
        if self._file is not None:
            self._file.flush()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the stream file (reopened, appending, by the next record)."""
        if self._file is not None:
            self._file.flush()
            if self.path is not None:
                self._file.close()
                self._file = None
                if self._finalizer is not None:
                    self._finalizer.detach()

    def position(self) -> dict[str, int]:
        """Where a run resumed from now continues the stream: ``{"records", "bytes"}``
        (a trailing forced record excluded; see :meth:`append`)."""
        self.flush()
        records, size = self._checkpoint
        return {"records": records, "bytes": size if self.path is not None else 0}

    def resume(self, position: dict[str, int]) -> None:
        """Continue the stream from a checkpoint's :meth:`position`.

        With a stream file, the file is truncated back to the position (dropping what an
        interrupted run wrote after the checkpoint) and the window is read back from it.
        Without one, the history restarts empty (the checkpoint holds no records).

        Raises:
            CheckpointError: If the stream file is missing or shorter than the position.
        """
        records, size = int(position["records"]), int(position["bytes"])
        self.close()
        self.records = []
        if self.path is None:
            self._spill.clear()
            self._count = self._file_records = self._bytes = 0
            self._checkpoint = (0, 0)
            return
        actual = self.path.stat().st_size if self.path.exists() else 0
        if actual < size:
            raise CheckpointError(
                f"the history stream {str(self.path)!r} holds {actual} bytes but the "
                f"checkpoint continues it at byte {size} (record {records}); expected the "
                "stream of the checkpointed run: resume in its run folder."
            )
        if size:
            with open(self.path, "r+", encoding="utf-8") as handle:
                handle.truncate(size)
            with open(self.path, encoding="utf-8") as handle:
                header = json.loads(handle.readline())
                if isinstance(header, dict) and header.get("format") == STREAM_FORMAT:
                    self.labels = list(header.get("labels", self.labels))
                    self.groups = list(header.get("groups", self.groups))
                tail = collections.deque(_records(handle, records), maxlen=self.window)
            self.records = list(tail)
        else:
            self.path.write_text("", encoding="utf-8")
        self._count = self._file_records = records
        self._bytes = size
        self._checkpoint = (records, size)

    @classmethod
    def read(cls, path: str | Path, *, window: int = DEFAULT_WINDOW) -> History:
        """The history of a stream file written by another run (read-only use)."""
        path = Path(path)
        history = cls(window=window)
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
            header = json.loads(first) if first.strip() else {}
            history.labels = list(header.get("labels", []))
            history.groups = list(header.get("groups", []))
            for record in _records(handle, None):
                history.append(record)
        return history

    # -- array views --------------------------------------------------------------------
    def steps(self) -> np.ndarray:
        """Step indices, shape ``(T,)``."""
        return np.array([r.step for r in self], dtype=np.int64)

    def objective(self) -> np.ndarray:
        """Objective per step, shape ``(T,)``."""
        return np.array([r.objective for r in self], dtype=np.float64)

    def max_violation(self) -> np.ndarray:
        """Max violation per step, shape ``(T,)``."""
        return np.array([r.max_violation for r in self], dtype=np.float64)

    def vector_steps(self) -> np.ndarray:
        """The steps whose vectors were recorded (rows of :meth:`violation`), ``(T_v,)``."""
        return np.array([r.step for r in self if r.violation is not None], dtype=np.int64)

    def violation(self) -> np.ndarray:
        """Dense violations at :meth:`vector_steps`, shape ``(T_v, n)``."""
        return self._matrix([r.violation for r in self if r.violation is not None], self.labels)

    def multipliers(self) -> np.ndarray:
        """Dense multipliers at :meth:`vector_steps`, shape ``(T_v, n)``."""
        return self._matrix([r.multipliers for r in self if r.multipliers is not None], self.labels)

    def group_violation(self) -> np.ndarray:
        """Largest violation of each dense group per step, shape ``(T, len(groups))``."""
        return self._matrix([r.group_violation for r in self], self.groups)

    def group_multiplier_norm(self) -> np.ndarray:
        """Multiplier 2-norm of each dense group per step, shape ``(T, len(groups))``."""
        return self._matrix([r.group_multiplier_norm for r in self], self.groups)

    def _matrix(self, rows: list[list[float]], columns: list[str]) -> np.ndarray:
        if not rows:
            return np.zeros((0, len(columns)), dtype=np.float64)
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
            # the vectors may be recorded at a cadence: the window's records that have them
            has_vectors = np.array([r.multipliers is not None for r in self], dtype=bool)
            lam = self.multipliers()[mask[has_vectors]]
            if lam.shape[0] > 0 and lam.shape[1] == exact.size:
                with np.errstate(over="ignore", invalid="ignore"):  # non-finite runs: inf/nan
                    error = np.linalg.norm(lam - exact[None, :], axis=1)
                out["late_max_multiplier_error"] = float(error.max())
                out["late_mean_multiplier_error"] = float(error.mean())
        return out

    def metric(self, name: str) -> np.ndarray:
        """One metric per step (NaN where it was not recorded)."""
        return np.array([r.metrics.get(name, math.nan) for r in self], dtype=np.float64)

    # -- export -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict ``{"labels": [...], "groups": [...], "records": [...]}``."""
        return {
            "labels": self.labels,
            "groups": self.groups,
            "records": [asdict(r) for r in self],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        history = cls(list(data.get("labels", [])))
        history.groups = list(data.get("groups", []))
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
        """One row per step: step, objective, max_violation, penalty, seconds, skipped,
        metrics, then one ``g:LABEL`` and one ``lambda:LABEL`` column per dense entry
        (empty where the vectors were not recorded), per-group summaries, per-sample
        summaries and cluster counts. Also written atomically to ``path``.
        """
        metric_names: set[str] = set()
        ps_names: set[str] = set()
        cluster_names: set[str] = set()
        for r in self:
            metric_names.update(r.metrics)
            ps_names.update(f"{g}:{k}" for g, d in r.per_sample.items() for k in d)
            cluster_names.update(r.clusters)
        metrics, samples, clusters = sorted(metric_names), sorted(ps_names), sorted(cluster_names)
        header = ["step", "objective", "max_violation", "penalty", "seconds", "skipped"]
        header += metrics + [f"g:{lab}" for lab in self.labels]
        header += [f"lambda:{lab}" for lab in self.labels]
        header += [f"group_violation:{g}" for g in self.groups]
        header += [f"group_multiplier_norm:{g}" for g in self.groups] + samples
        header += [f"clusters:{c}" for c in clusters]
        blank = [""] * len(self.labels)

        def write(handle: Any) -> None:
            writer = csv.writer(handle)
            writer.writerow(header)
            for r in self:
                row: list[Any] = [
                    r.step,
                    r.objective,
                    r.max_violation,
                    "" if r.penalty is None else r.penalty,
                    r.seconds,
                    int(r.skipped),
                ]
                row += [r.metrics.get(m, "") for m in metrics]
                row += list(r.violation) if r.violation is not None else blank
                row += list(r.multipliers) if r.multipliers is not None else blank
                row += list(r.group_violation) + list(r.group_multiplier_norm)
                for key in samples:
                    group, stat = key.split(":", 1)
                    row.append(r.per_sample.get(group, {}).get(stat, ""))
                row += [r.clusters.get(c, "") for c in clusters]
                writer.writerow(row)

        if path is None:
            buffer = io.StringIO()
            write(buffer)
            return buffer.getvalue()

        def binary(handle: IO[bytes]) -> None:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            write(text)
            text.flush()
            text.detach()

        atomic_write(Path(path), binary)
        return Path(path).read_bytes().decode("utf-8")

    def summary(self) -> dict[str, Any]:
        """Final values: steps, objective, max violation, multipliers, metrics."""
        if not self.records:
            return {"steps": 0}
        last = self.records[-1]
        return {
            "steps": last.step + 1,
            "objective": last.objective,
            "max_violation": last.max_violation,
            "multipliers": list(last.multipliers or []),
            "metrics": dict(last.metrics),
            "clusters": dict(last.clusters),
            "per_sample": dict(last.per_sample),
            "seconds_per_step": float(np.mean([r.seconds for r in self.records])),
        }


def _records(handle: IO[str], count: int | None) -> Iterator[StepRecord]:
    """Up to ``count`` records from the current position of ``handle`` (all if ``None``)."""
    seen = 0
    for line in handle:
        if count is not None and seen >= count:
            return
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            continue
        seen += 1
        yield record
