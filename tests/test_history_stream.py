"""The bounded, streamed history: scalars at every step, vectors at a cadence, a bounded
window in memory, a JSON Lines stream that a resumed run continues byte for byte, and
checkpoints whose size does not grow with the run."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from constrain import (
    CheckpointError,
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    History,
    ProblemState,
    Solver,
    StepRecord,
    Variables,
)

DTYPE = torch.float64
N, SAMPLES = 300, 12


class Wide(ConstrainedProblem):
    """min ||x - 1||^2 s.t. x_i <= b_i (300 entries in three groups of 100) and one
    per-sample group over 12 samples (noisy objective: the RNG must resume too)."""

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        x = model.x
        bound = torch.linspace(-0.5, 0.5, N, dtype=DTYPE)
        g = x - bound
        idx = torch.randint(0, SAMPLES, (4,))
        noise = 1 + 0.01 * torch.randn((), dtype=DTYPE)
        return ProblemState(
            noise * (x - 1).pow(2).sum(),
            {
                "a": g[:100],
                "b": g[100:200],
                "c": g[200:],
                "s": ConstraintValue(x[idx] - 0.2, indices=idx),
            },
            metrics={"norm": x.detach().norm()},
        )


def _problem() -> Wide:
    return Wide(
        constraints=[
            Constraint("a", "<=", size=100),
            Constraint("b", "<=", size=100),
            Constraint("c", "<=", size=100),
            Constraint("s", "<=", size=SAMPLES, per_sample=True),
        ]
    )


def _solver(**options: Any) -> Solver:
    torch.manual_seed(0)
    model = Variables(x=torch.zeros(N, dtype=DTYPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    return Solver(
        _problem(), model, optimizer, controller={"name": "nupi", "lr": 0.2, "kp": 0.5}, **options
    )


def test_scalars_every_step_vectors_at_a_cadence() -> None:
    """300 dense entries: vectors every ceil(300 / 128) = 3 steps; per-group scalars at
    every step, equal to the group maxima and multiplier norms of the vectors."""
    solver = _solver()
    history = solver.fit(steps=10)
    assert history.steps().tolist() == list(range(10))
    assert history.vector_steps().tolist() == [0, 3, 6, 9]
    assert history.violation().shape == (4, N) and history.multipliers().shape == (4, N)
    assert history.groups == ["a", "b", "c"]
    assert history.group_violation().shape == (10, 3)
    for record in history:
        if record.violation is None:
            assert record.multipliers is None
            continue
        assert record.multipliers is not None
        g = torch.tensor(record.violation, dtype=DTYPE)
        lam = torch.tensor(record.multipliers, dtype=DTYPE)
        assert record.group_violation == [g[k * 100 : (k + 1) * 100].max().item() for k in range(3)]
        norms = [lam[k * 100 : (k + 1) * 100].norm().item() for k in range(3)]
        assert record.group_multiplier_norm == pytest.approx(norms, rel=1e-12)
        assert record.metrics["norm"] >= 0 and set(record.per_sample) == {"s"}
    assert _solver(vectors_every=1).fit(steps=4).vector_steps().tolist() == [0, 1, 2, 3]


def test_the_window_is_bounded_and_the_arrays_cover_every_step(tmp_path: Path) -> None:
    """A window of 4 records: memory holds 4, the arrays still have all 25 steps (read
    back from the stream, or from the spill file without one)."""
    reference = _solver(history=History(window=1000)).fit(steps=25)
    for stream in (None, tmp_path / "h.jsonl"):
        history = _solver(history=History(window=4, stream=stream)).fit(steps=25)
        assert len(history.records) == 4 and len(history) == 25
        assert history.steps().tolist() == list(range(25))
        assert history.objective().tolist() == reference.objective().tolist()
        assert history.violation().tolist() == reference.violation().tolist()
        assert history.group_violation().tolist() == reference.group_violation().tolist()
        # Wall times are not streamed: compare the rest.
        assert replace(history[3], seconds=0.0) == replace(reference[3], seconds=0.0)
        assert history[-1].seconds > 0  # in the window: the wall time is kept
        assert [replace(r, seconds=0.0) for r in history] == [
            replace(r, seconds=0.0) for r in reference
        ]


def test_the_stream_is_json_lines_with_a_header(tmp_path: Path) -> None:
    path = tmp_path / "run" / "history.jsonl"
    solver = _solver(history=History(stream=path))
    history = solver.fit(steps=6)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "constrain-history" and header["groups"] == ["a", "b", "c"]
    assert len(header["labels"]) == N and len(lines) == 7
    assert "seconds" not in json.loads(lines[1])  # wall times are not streamed
    again = History.read(path)
    assert [r.step for r in again] == list(range(6))
    assert again.objective().tolist() == history.objective().tolist()
    assert again.labels == history.labels


@pytest.mark.parametrize("record_every", [1, 4])
def test_a_resumed_stream_equals_an_uninterrupted_one(tmp_path: Path, record_every: int) -> None:
    """Checkpoint at step 7, let the interrupted run write 5 more steps, resume from the
    checkpoint: the stream is cut back to step 7 and continued; the file equals the
    uninterrupted run's byte for byte (also when the first fit's last record exists only
    because that fit ended there)."""
    whole = tmp_path / "whole.jsonl"
    _solver(history=History(stream=whole), record_every=record_every).fit(steps=16)

    path = tmp_path / "cut.jsonl"
    first = _solver(history=History(stream=path), record_every=record_every)
    first.fit(steps=7)
    state = first.state_dict()
    first.fit(steps=5)
    assert path.stat().st_size > state["history_position"]["bytes"]
    del first

    torch.manual_seed(99)
    resumed = _solver(history=History(stream=path, window=3), record_every=record_every)
    resumed.load_state_dict(state)
    assert len(resumed.history) == state["history_position"]["records"]
    resumed.fit(steps=9)
    assert path.read_bytes() == whole.read_bytes()
    expected = [s for s in range(16) if s % record_every == 0 or s == 15]
    assert resumed.history.steps().tolist() == expected


def test_resume_refuses_a_stream_shorter_than_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    solver = _solver(history=History(stream=path))
    solver.fit(steps=5)
    state = solver.state_dict()
    path.write_text(path.read_text()[:50])
    other = _solver(history=History(stream=path))
    with pytest.raises(
        CheckpointError, match=r"history stream .* holds 50 bytes but the checkpoint"
    ):
        other.load_state_dict(state)


def test_checkpoints_do_not_grow_with_the_run(tmp_path: Path) -> None:
    """The checkpoint stores the stream position, not the records."""

    def size(steps: int) -> int:
        solver = _solver(history=History(stream=tmp_path / f"{steps}.jsonl"))
        solver.fit(steps=steps)
        buffer = io.BytesIO()
        torch.save(solver.state_dict(), buffer)
        return len(buffer.getvalue())

    small, large = size(10), size(300)
    assert abs(large - small) <= 0.1 * small


def test_version_2_states_load_and_replay_their_records(tmp_path: Path) -> None:
    """A version-2 state (history embedded) loads: its records go to the new history and
    its stream; an unknown version is refused by number."""
    solver = _solver()
    solver.fit(steps=5)
    state = dict(solver.state_dict())
    old = {k: v for k, v in state.items() if k not in ("history_position", "schedules")}
    old["version"] = 2
    old["history"] = solver.history.to_dict()
    resumed = _solver(history=History(stream=tmp_path / "h.jsonl"))
    resumed.load_state_dict(old)
    assert resumed.history.steps().tolist() == [0, 1, 2, 3, 4]
    resumed.fit(steps=2)
    assert History.read(tmp_path / "h.jsonl").steps().tolist() == list(range(7))
    with pytest.raises(CheckpointError, match="unsupported solver state version 7"):
        _solver().load_state_dict({**state, "version": 7})


def test_history_arrays_without_vectors() -> None:
    history = History(["g"])

    def record(step: int, vectors: bool) -> Any:
        from constrain import StepRecord

        return StepRecord(step, 1.0, 0.0, [0.5] if vectors else None, [1.0] if vectors else None)

    for step in range(4):
        history.append(record(step, step % 2 == 0))
    assert history.vector_steps().tolist() == [0, 2]
    assert history.multipliers().tolist() == [[1.0], [1.0]]
    rows = history.to_csv().splitlines()
    assert rows[2].split(",")[6:8] == ["", ""]  # no vectors at step 1


def test_window_must_be_positive() -> None:
    from constrain import ConfigError

    with pytest.raises(ConfigError, match="window must be a positive integer"):
        History(window=0)


def test_the_spill_reads_back_every_record_across_its_chunks() -> None:
    """Without a stream file, records leaving the window are spilled in chunks (by count
    and by vector size); every record reads back in order, the last ones still buffered."""
    history = History(window=3)
    sent = []
    for step in range(700):
        vectors = [float(step)] * 30_000 if step % 97 == 0 else None
        record = StepRecord(step, float(step), 0.5, violation=vectors, multipliers=vectors)
        history.append(record)
        sent.append(record)
    assert len(history.records) == 3 and len(history) == 700
    assert list(history) == sent
    assert history[0] == sent[0] and history[500] == sent[500] and history[-1] == sent[-1]
    assert history.steps().tolist() == list(range(700))
    assert history.vector_steps().tolist() == list(range(0, 700, 97))


def test_one_history_records_one_solver_at_a_time() -> None:
    """A second live solver given the same History is refused (the two would interleave
    their records); a history handed over with ``solver.history = ...`` is free again."""
    shared = History()
    first = _solver(history=shared)
    first.fit(steps=2)
    with pytest.raises(ConfigError, match=r"already records the steps of another Solver"):
        _solver(history=shared)
    with pytest.raises(ConfigError, match=r"already records the steps of another Solver"):
        _solver().history = shared
    first.history = History()
    second = _solver(history=shared)
    assert second.history is shared and len(shared) == 2
