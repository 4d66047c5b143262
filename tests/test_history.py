"""History: array views, JSON/CSV export, summary and atomic writes."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from constrain import History, StepRecord
from constrain._io import atomic_write, atomic_write_text


def _history(steps: int = 4) -> History:
    history = History(["a", "b[0]", "b[1]"])
    for t in range(steps):
        history.append(
            StepRecord(
                step=2 * t,
                objective=1.0 / (t + 1),
                max_violation=0.5**t,
                violation=[0.1 * t, -0.2, 0.5**t],
                multipliers=[float(t), 0.0, -float(t)],
                per_sample={"s": {"max_violation": 0.1, "mean_multiplier": float(t)}}
                if t % 2
                else {},
                metrics={"accuracy": 0.9 + 0.01 * t} if t else {},
                clusters={"w": 10 - t},
                penalty=2.0**t,
                seconds=0.001,
                skipped=t == 2,
            )
        )
    return history


def test_container_and_arrays() -> None:
    history = _history()
    assert len(history) == 4 and history[1].step == 2 and history.last.step == 6
    assert [r.step for r in history] == [0, 2, 4, 6]
    assert history.steps().tolist() == [0, 2, 4, 6] and history.steps().dtype == np.int64
    assert history.objective().shape == (4,) and history.objective()[1] == 0.5
    assert history.max_violation().tolist() == [1.0, 0.5, 0.25, 0.125]
    assert history.violation().shape == (4, 3)
    assert history.multipliers().shape == (4, 3) and history.multipliers()[3].tolist() == [3, 0, -3]
    accuracy = history.metric("accuracy")
    assert np.isnan(accuracy[0]) and accuracy[3] == pytest.approx(0.93)


def test_empty_history() -> None:
    history = History()
    with pytest.raises(IndexError, match="empty"):
        _ = history.last
    assert history.violation().shape == (0, 0) and history.multipliers().shape == (0, 0)
    assert History(["a", "b"]).multipliers().shape == (0, 2)
    assert history.summary() == {"steps": 0}
    assert history.to_csv() == "step,objective,max_violation,penalty,seconds,skipped\r\n"


def test_no_constraints_gives_empty_columns() -> None:
    history = History([])
    history.append(
        StepRecord(step=0, objective=1.0, max_violation=0.0, violation=[], multipliers=[])
    )
    assert history.violation().shape == (1, 0)


def test_json_round_trip(tmp_path: Path) -> None:
    history = _history()
    text = history.to_json(tmp_path / "h.json")
    assert (tmp_path / "h.json").read_text() == text
    again = History.from_dict(json.loads(text))
    assert again.labels == history.labels
    assert again.records == history.records
    assert History.from_dict(history.to_dict()).records == history.records


def test_csv_header_and_rows(tmp_path: Path) -> None:
    history = _history()
    text = history.to_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_bytes().decode() == text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "step",
        "objective",
        "max_violation",
        "penalty",
        "seconds",
        "skipped",
        "accuracy",
        "g:a",
        "g:b[0]",
        "g:b[1]",
        "lambda:a",
        "lambda:b[0]",
        "lambda:b[1]",
        "s:max_violation",
        "s:mean_multiplier",
        "clusters:w",
    ]
    assert len(rows) == 5
    assert all(len(row) == len(rows[0]) for row in rows)
    first, last = rows[1], rows[4]
    assert first[:6] == ["0", "1.0", "1.0", "1.0", "0.001", "0"]
    assert first[6] == "" and first[13] == "" and first[15] == "10"  # missing values are empty
    assert [float(v) for v in last[7:13]] == pytest.approx([0.3, -0.2, 0.125, 3.0, 0.0, -3.0])
    assert last[13:15] == ["0.1", "3.0"]
    assert rows[3][5] == "1"  # skipped
    header = rows[0]
    assert rows[1][header.index("penalty")] == "1.0"


def test_summary() -> None:
    summary = _history().summary()
    assert summary["steps"] == 7
    assert summary["objective"] == 0.25 and summary["max_violation"] == 0.125
    assert summary["multipliers"] == [3.0, 0.0, -3.0]
    assert summary["metrics"] == {"accuracy": pytest.approx(0.93)}
    assert summary["clusters"] == {"w": 7}
    assert summary["per_sample"] == {"s": {"max_violation": 0.1, "mean_multiplier": 3.0}}
    assert summary["seconds_per_step"] == pytest.approx(0.001)
    json.dumps(summary)  # serialisable


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out" / "history.json"
    _history(1).to_json(path)  # creates the folder
    old_inode = path.stat().st_ino
    _history(3).to_json(path)
    assert len(History.from_dict(json.loads(path.read_text()))) == 3
    assert path.stat().st_ino != old_inode  # replaced by rename, not rewritten in place
    assert os.listdir(path.parent) == ["history.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.txt"
    atomic_write_text(path, "old")

    def broken(handle: object) -> None:
        handle.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def _uniform(steps: int, every: int = 1) -> History:
    history = History(["a", "b"])
    for t in range(0, steps, every):
        history.append(
            StepRecord(
                step=t,
                objective=float(t),
                max_violation=float(t % 3),
                violation=[0.0, 0.0],
                multipliers=[float(t), 1.0],
            )
        )
    return history


def test_late_window_is_the_last_tenth_of_the_steps() -> None:
    history = _uniform(100)
    mask = history.late_mask()
    assert mask.sum() == 10 and mask[-10:].all()
    late = history.late_summary()
    assert late["late_window"] == {
        "fraction": 0.1,
        "first_step": 90,
        "last_step": 99,
        "records": 10,
    }
    window = np.arange(90, 100)
    assert late["late_max_violation"] == float((window % 3).max())
    assert late["late_mean_violation"] == pytest.approx(float((window % 3).mean()))
    assert late["late_mean_objective"] == pytest.approx(float(window.mean()))
    assert "late_max_multiplier_error" not in late


def test_late_window_with_sparse_records_and_short_runs() -> None:
    sparse = _uniform(100, every=7)  # steps 0, 7, ..., 98: the window 90..99 holds 91 and 98
    assert sparse.steps()[sparse.late_mask()].tolist() == [91, 98]
    short = _uniform(3)  # 10% of 3 steps rounds to 0: the window keeps the last step
    assert short.late_mask().tolist() == [False, False, True]
    assert History(["a"]).late_summary() == {}
    with pytest.raises(ValueError, match="fraction"):
        short.late_mask(0.0)


def test_late_multiplier_error_against_a_reference() -> None:
    history = _uniform(20)  # window: steps 18, 19
    late = history.late_summary(reference_multipliers=[18.0, 0.0])
    # ||(t - 18, 1)||: t = 18 -> 1, t = 19 -> sqrt(2)
    assert late["late_max_multiplier_error"] == pytest.approx(np.sqrt(2))
    assert late["late_mean_multiplier_error"] == pytest.approx((1 + np.sqrt(2)) / 2)
    assert "late_max_multiplier_error" not in history.late_summary(reference_multipliers=[1.0])
