"""Loggers: a logger receives every record; the TensorBoard logger's event file, read back
with TensorBoard's EventAccumulator, holds the objective, the per-group violation and
multiplier norm, the multipliers and the metrics; ``--tensorboard DIR`` on the command
line writes one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from constrain import (
    ConstrainedProblem,
    Constraint,
    History,
    Logger,
    Solver,
    StepRecord,
    Variables,
)

DTYPE = torch.float64


def _solver(**options: Any) -> Solver:
    problem = ConstrainedProblem(
        objective=lambda m, b: (m.x - 2).pow(2).sum(),
        constraints=[
            Constraint("budget", "<=", rhs=1.0, fn=lambda m, b: m.x.sum()),
            Constraint("caps", "<=", rhs=0.8, fn=lambda m, b: m.x),
        ],
    )
    model = Variables(x=torch.zeros(3, dtype=DTYPE))
    return Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        controller={"name": "nupi", "lr": 0.2, "kp": 0.5},
        **options,
    )


class Collect:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.flushes = 0

    def log(self, record: StepRecord, history: History) -> None:
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1


def test_a_logger_gets_every_record_at_the_checks() -> None:
    sink = Collect()
    assert isinstance(sink, Logger)
    solver = _solver(loggers=[sink], check_every=4)
    solver.fit(steps=10)
    assert [r.step for r in sink.records] == list(range(10))
    assert sink.records == solver.history.records and sink.flushes == 1


def test_tensorboard_event_file_reads_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from constrain import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tb")
    solver = _solver(loggers=[logger])
    history = solver.fit(steps=12)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "objective",
        "max_violation",
        "violation/budget",
        "violation/caps",
        "multiplier_norm/budget",
        "multiplier_norm/caps",
        "multiplier/budget",
        "multiplier/caps[2]",
    } <= tags
    objective = [e.value for e in events.Scalars("objective")]
    assert [e.step for e in events.Scalars("objective")] == list(range(12))
    assert objective == pytest.approx(history.objective().tolist(), rel=1e-6)
    caps = [e.value for e in events.Scalars("violation/caps")]
    assert caps == pytest.approx(history.group_violation()[:, 1].tolist(), rel=1e-6, abs=1e-7)
    last = history.multipliers()[-1]
    assert events.Scalars("multiplier/caps[2]")[-1].value == pytest.approx(last[3], rel=1e-6)
    assert "multipliers" in events.Tags()["histograms"]


def test_cli_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("sklearn")
    from constrain import plots
    from constrain.cli import main

    monkeypatch.setattr(plots, "run_figures", lambda *args, **kwargs: [])
    tb = tmp_path / "tb"
    args = ["run", "iris-svm", "--steps", "20", "--no-progress", "--json"]
    assert main([*args, "--out", str(tmp_path / "run"), "--tensorboard", str(tb)]) == 0
    assert list(tb.glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "history.jsonl").is_file()


def test_tensorboard_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from constrain import ConfigError, TensorBoardLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install constrain\[tensorboard\]"):
        TensorBoardLogger("unused")
