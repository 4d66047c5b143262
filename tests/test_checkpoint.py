"""Checkpoint/resume: a resumed run is bit-for-bit an uninterrupted one, for every
controller; files are written atomically, read safely and checked for corruption."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from constrain import (
    CheckpointError,
    ConfigError,
    ConstrainedProblem,
    ConstraintValue,
    History,
    Solver,
    Variables,
    constraint,
    controllers,
)
from constrain.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    run_with_checkpoints,
    save_checkpoint,
)
from constrain.cli import main
from constrain.runner import get_problem

DTYPE = torch.float64
NUM_POINTS = 40


class NoisyRegression(ConstrainedProblem):
    """Minibatch least squares with a norm bound and per-sample residual bounds.

    The objective draws from the global torch RNG (multiplicative noise), the data loader
    shuffles with it, so a resume is only exact if RNG states and the data position are
    restored. Only inequality constraints, so that every controller applies.
    """

    num_points: int = NUM_POINTS

    def objective(self, model: Any, batch: Any) -> Tensor:
        X, y, _ = batch
        noise = 1.0 + 0.01 * torch.randn(X.shape[0], dtype=X.dtype)
        return (noise * (X @ model.w + model.b - y).pow(2)).mean()

    @constraint("<=", rhs=1.0)
    def norm(self, model: Any, batch: Any) -> Tensor:
        return model.w.pow(2).sum()

    @constraint("<=", rhs=0.5, size="num_points", per_sample=True)
    def residual(self, model: Any, batch: Any) -> ConstraintValue:
        X, y, idx = batch
        return ConstraintValue((X @ model.w + model.b - y).abs(), indices=idx)


def _data() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(NUM_POINTS, 3, generator=generator, dtype=DTYPE)
    y = X @ torch.tensor([2.0, -1.0, 0.5], dtype=DTYPE) + 0.3
    dataset = TensorDataset(X, y, torch.arange(NUM_POINTS))
    return DataLoader(dataset, batch_size=8, shuffle=True)


def _solver(
    controller: Any = "gda", stream: Path | None = None, **options: Any
) -> tuple[Solver, DataLoader[Any]]:
    """A fresh solver; ``stream`` gives its history a JSON Lines file (the checkpoint keeps
    only the stream position: without a stream a resumed history restarts empty)."""
    torch.manual_seed(0)
    options["history"] = History(stream=stream)
    model = Variables(w=torch.zeros(3, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    spec = {"name": controller, **_CONTROLLER_OPTIONS.get(controller, {})}
    return Solver(NoisyRegression(), model, optimizer, controller=spec, **options), _data()


_CONTROLLER_OPTIONS: dict[str, dict[str, Any]] = {
    "gda": {"lr": 0.1},
    "momentum": {"lr": 0.1, "beta": 0.5},
    "nesterov": {"lr": 0.1, "beta": 0.5},
    "adam": {"lr": 0.05},
    "nupi": {"lr": 1.0, "ki": 0.2, "kp": 1.0, "nu": 0.3},
    "pid": {"ki": 0.2, "kp": 0.5, "kd": 0.5, "delay": 3},
    "optimistic": {"lr": 0.1},
    "extragradient": {"lr": 0.1},
    "multiplicative": {"lr": 0.1},
    "group_dro": {"lr": 0.1},
}


def _snapshot(solver: Solver) -> dict[str, Any]:
    """Everything that must agree bit-for-bit (wall times excluded)."""
    state = solver.state_dict()
    history = solver.history.to_dict()["records"]
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    return {
        "model": state["model"],
        "optimizer": state["optimizer"],
        "multipliers": state["multipliers"],
        "controller_state": state["controller_state"],
        "indexed_state": state["indexed_state"],
        "formulation_state": state["formulation_state"],
        "step_count": state["step_count"],
        "history": records,
        "torch_rng": state["rng"]["torch"],
    }


def _assert_identical(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs: max |diff| {(a - b).abs().max()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a)} != {set(b)}"
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{k}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


STOP, TOTAL = 7, 16  # stop mid-epoch (5 batches per epoch)


@pytest.mark.parametrize("controller", controllers.names())
def test_resume_is_bit_exact_for_every_controller(controller: str, tmp_path: Path) -> None:
    """Save at step 7 (mid-epoch), load into a fresh solver, run to 16: every tensor of
    the state and every history record equals the uninterrupted run's, bit for bit. A
    controller without settings in ``_CONTROLLER_OPTIONS`` runs with its defaults."""
    reference, data = _solver(controller, tmp_path / "reference.jsonl")
    reference.fit(data, TOTAL)

    first, data = _solver(controller, tmp_path / "run.jsonl")
    first.fit(data, STOP)
    path = save_checkpoint(tmp_path / "ckpt.pt", first)
    first.fit(data, 3)  # the interrupted run got further than its checkpoint
    del first

    torch.manual_seed(12345)  # a different process state must not matter
    resumed, data = _solver(controller, tmp_path / "run.jsonl")
    resumed.load_state_dict(load_checkpoint(path)["solver"])
    assert resumed.step_count == STOP
    resumed.fit(data, TOTAL - STOP)
    _assert_identical(_snapshot(reference), _snapshot(resumed))
    # The stream was cut back to the checkpoint and continued: byte for byte the same.
    assert (tmp_path / "run.jsonl").read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


@pytest.mark.parametrize("order", ["simultaneous", "dual_primal", "primal_dual"])
@pytest.mark.parametrize(
    "formulation",
    [
        "lagrangian",
        {"name": "augmented_lagrangian", "penalty": 0.5, "schedule": {"growth": 2.0}},
        {"name": "quadratic_penalty", "penalty": 2.0, "schedule": {"growth": 1.5, "every": 2}},
    ],
    ids=["lagrangian", "augmented", "penalty"],
)
def test_resume_is_bit_exact_for_orders_and_formulations(
    order: str, formulation: Any, tmp_path: Path
) -> None:
    """Penalty schedules (formulation state) and every update order resume exactly."""
    reference, data = _solver("nupi", tmp_path / "a.jsonl", order=order, formulation=formulation)
    reference.fit(data, TOTAL)
    first, data = _solver("nupi", tmp_path / "b.jsonl", order=order, formulation=formulation)
    first.fit(data, STOP)
    path = save_checkpoint(tmp_path / "ckpt.pt", first)
    resumed, data = _solver("nupi", tmp_path / "b.jsonl", order=order, formulation=formulation)
    resumed.initialise(data=data)  # layout known: the checkpoint is checked at once
    resumed.load_state_dict(load_checkpoint(path)["solver"])
    resumed.fit(data, TOTAL - STOP)
    _assert_identical(_snapshot(reference), _snapshot(resumed))


def test_consecutive_fits_continue_the_data_stream() -> None:
    """fit(7); fit(9) equals fit(16): the data position persists between fit() calls."""
    reference, data = _solver("nupi")
    reference.fit(data, TOTAL)
    split, data = _solver("nupi")
    split.fit(data, STOP)
    split.fit(data, TOTAL - STOP)
    a, b = _snapshot(reference), _snapshot(split)
    # fit(7) always records its last step; with record_every=1 that changes nothing.
    _assert_identical(a, b)


def test_record_forced_by_the_end_of_fit_is_dropped_on_resume(tmp_path: Path) -> None:
    """With record_every=5 the first run records step 6 only because its fit() ended
    there; the resumed history equals the uninterrupted one."""
    reference, data = _solver("gda", tmp_path / "a.jsonl", record_every=5)
    reference.fit(data, TOTAL)
    first, data = _solver("gda", tmp_path / "b.jsonl", record_every=5)
    first.fit(data, STOP)
    assert [r.step for r in first.history] == [0, 5, 6]
    resumed, data = _solver("gda", tmp_path / "b.jsonl", record_every=5)
    resumed.load_state_dict(first.state_dict())
    resumed.fit(data, TOTAL - STOP)
    assert [r.step for r in resumed.history] == [r.step for r in reference.history]
    assert [r.step for r in reference.history] == [0, 5, 10, 15]


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    """The file holds only tensors and plain containers: weights_only=True reads it."""
    solver, data = _solver("adam")
    solver.fit(data, 3)
    path = save_checkpoint(tmp_path / "c.pt", solver, {"problem": "noisy"})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "constrain-checkpoint"
    assert payload["meta"]["problem"] == "noisy" and payload["meta"]["step"] == 3
    assert set(payload["solver"]) >= {
        "model",
        "optimizer",
        "multipliers",
        "controller_state",
        "indexed_state",
        "formulation_state",
        "step_count",
        "history_position",
        "rng",
        "data",
        "layout",
    }


# -- the command line ------------------------------------------------------------------------
def _cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(args) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.parametrize(
    "controller",
    [
        pytest.param(name, marks=[] if name == "nupi" else [pytest.mark.slow])
        for name in [
            "gda",
            "momentum",
            "nesterov",
            "adam",
            "nupi",
            "pid",
            "optimistic",
            "extragradient",
            "multiplicative",
        ]
    ],
)
def test_cli_resume_gives_the_same_multipliers(
    controller: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run --steps 2N --checkpoint-every N` versus a run stopped at N and `--resume`d to
    2N (iris-svm): the final --json multipliers agree to the last bit."""
    pytest.importorskip("sklearn")
    from constrain import plots

    monkeypatch.setattr(plots, "run_figures", lambda *args, **kwargs: [])  # speed only
    n = "150"
    base = ["run", "iris-svm", "--controller", controller, "--json", "--no-progress"]
    whole = _cli_json(
        [*base, "--steps", "300", "--checkpoint-every", n, "--out", str(tmp_path / "A")], capsys
    )
    _cli_json([*base, "--steps", n, "--checkpoint-every", n, "--out", str(tmp_path / "B")], capsys)
    resumed = _cli_json([*base, "--steps", "300", "--resume", str(tmp_path / "B")], capsys)
    assert resumed["steps"] == whole["steps"] == 300
    assert resumed["multipliers"] == whole["multipliers"]  # exact float equality
    assert resumed["objective"] == whole["objective"]
    assert [s for s, _ in list_checkpoints(tmp_path / "A")] == [150, 300]
    history_a = json.loads((tmp_path / "A" / "history.json").read_text())["records"]
    history_b = json.loads((tmp_path / "B" / "history.json").read_text())["records"]
    for record in history_a + history_b:
        record.pop("seconds")
    assert history_a == history_b


def _iris_config(**changes: Any) -> Any:
    spec = get_problem("iris-svm")
    data = spec.default_config("nupi").model_dump()
    data.update({"steps": 20, **changes})
    from constrain import RunConfig

    return RunConfig.parse(data)


def test_resume_checks_problem_and_settings(tmp_path: Path) -> None:
    """A checkpoint from another problem or other settings is refused by name; asking for
    fewer total steps than the checkpoint holds is a config error."""
    pytest.importorskip("sklearn")
    run_with_checkpoints(_iris_config(), out=tmp_path, every=10, figures=False)
    simplex = get_problem("simplex").default_config("nupi")
    with pytest.raises(CheckpointError, match=r"belongs to problem 'iris-svm'.*'simplex'"):
        run_with_checkpoints(simplex, resume=tmp_path, figures=False)
    other = _iris_config(optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9})
    with pytest.raises(CheckpointError, match=r"optimizer: checkpoint .*'lr': 0\.001.*'lr': 0\.5"):
        run_with_checkpoints(other, resume=tmp_path, figures=False)
    with pytest.raises(ConfigError, match=r"steps=5 but the checkpoint is already at step 20"):
        run_with_checkpoints(_iris_config(steps=5), resume=tmp_path, figures=False)


def test_keeps_two_checkpoints_and_falls_back_when_the_newest_is_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("sklearn")
    run_with_checkpoints(_iris_config(steps=30), out=tmp_path, every=10, figures=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    newest = checkpoint_path(tmp_path, 30)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"CRC-32"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="constrain"):
        path, payload = load_latest(tmp_path)
    assert path == checkpoint_path(tmp_path, 20) and payload["meta"]["step"] == 20
    assert "trying the previous checkpoint" in caplog.text
    checkpoint_path(tmp_path, 20).write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=r"(?s)no readable checkpoint.*step-000000030.*step-000000020"
    ):
        load_latest(tmp_path)


def test_failed_write_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in the middle of torch.save (as a crash would) leaves the old file
    intact and no temporary file behind."""
    solver, data = _solver("gda")
    solver.fit(data, 2)
    path = save_checkpoint(tmp_path / "c.pt", solver)
    before = path.read_bytes()
    solver.fit(data, 2)

    def broken_save(obj: Any, handle: Any) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, solver)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_checkpoint(path)["meta"]["step"] == 2


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_loading_never_runs_code(tmp_path: Path) -> None:
    """A file with a pickled callable is refused (weights_only=True), not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "constrain-checkpoint", "version": 1, "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely"):
        load_checkpoint(path)


def test_solver_state_mismatches_are_named() -> None:
    solver, data = _solver("nupi")
    solver.fit(data, 2)
    state = solver.state_dict()
    other, _ = _solver("gda")
    with pytest.raises(CheckpointError, match=r"controller differs.*'gda'.*'nupi'"):
        other.load_state_dict(state)
    reordered, _ = _solver("nupi", order="dual_primal")
    with pytest.raises(CheckpointError, match=r"update order differs.*'dual_primal'.*'simult"):
        reordered.load_state_dict(state)
    wide_model = Variables(w=torch.zeros(4, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
    wide = Solver(
        NoisyRegression(), wide_model, torch.optim.Adam(wide_model.parameters()), controller="nupi"
    )
    with pytest.raises(CheckpointError, match=r"model entry 'w': expected shape \(4,\)"):
        wide.load_state_dict(state)
    model32 = Variables(w=torch.zeros(3), b=torch.zeros(()))
    single = Solver(
        NoisyRegression(), model32, torch.optim.Adam(model32.parameters()), controller="nupi"
    )
    with pytest.raises(
        CheckpointError,
        match=r"model entry 'w'.*dtype torch.float32; the checkpoint holds .*float64",
    ):
        single.load_state_dict(state)
    fewer = Solver(NoisyRegression(num_points=50), *_model_and_adam(), controller="nupi")
    fewer.initialise(data=_data())
    with pytest.raises(CheckpointError, match=r"constraint layout differs"):
        fewer.load_state_dict(state)
    with pytest.raises(CheckpointError, match=r"lacks the entry 'rng'"):
        _solver("nupi")[0].load_state_dict({k: v for k, v in state.items() if k != "rng"})


def _model_and_adam() -> tuple[Variables, torch.optim.Optimizer]:
    model = Variables(w=torch.zeros(3, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
    return model, torch.optim.Adam(model.parameters(), lr=0.05)


@pytest.mark.slow
def test_killing_the_process_leaves_a_readable_checkpoint(tmp_path: Path) -> None:
    """SIGKILL a CLI run that writes a checkpoint every 25 steps at random moments, three
    times (resuming each time): the newest checkpoint always loads and resumes."""
    pytest.importorskip("sklearn")
    exe = Path(sys.executable).with_name("constrain")
    command = [
        str(exe),
        "run",
        "iris-svm",
        "--steps",
        "100000000",
        "--checkpoint-every",
        "25",
        "--set",
        "record_every=100000",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    generator = torch.Generator().manual_seed(0)
    last_step = 0
    for round_ in range(3):
        args = command + (["--resume", str(tmp_path)] if round_ else [])
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = list_checkpoints(tmp_path)
            if found and found[-1][0] > last_step:
                break
            time.sleep(0.05)
        time.sleep(float(torch.rand((), generator=generator)) * 0.5)
        process.send_signal(signal.SIGKILL)
        process.wait()
        path, payload = load_latest(tmp_path)
        assert payload["meta"]["step"] > last_step, (round_, path)
        last_step = payload["meta"]["step"]
        leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
        # keep=2, plus at most one per kill: a SIGKILL between writing a checkpoint and
        # recording it in run.json leaves a file the resumed run cannot prove it wrote, and a
        # run never deletes such files (docs/cli.md, run folders).
        assert len([n for n in leftovers if n.startswith("step-")]) <= 2 + round_ + 1, leftovers


# -- per-group dual settings -------------------------------------------------------------------
_DUAL_SETTINGS: dict[str, dict[str, Any]] = {
    "per-group-controllers-bounds-restarts": {
        "controller": {
            "norm": {"name": "nupi", "lr": 1.0, "ki": 0.2, "kp": 1.0, "nu": 0.3},
            "residual": {"name": "adam", "lr": 0.05},
        },
        "max_multiplier": {"norm": 0.3},
        "restart": True,
    },
    "dual-every-and-rhs-schedule": {
        "controller": {"norm": {"name": "pid", "ki": 0.2, "kp": 0.5}, "resid*": "momentum"},
        "dual_every": {"norm": 3},
        "rhs_schedule": {"norm": {"name": "linear", "start": 2.0, "end": 0.5, "steps": 10}},
    },
    "per-entry-penalties": {
        "controller": {"norm": "gda", "residual": {"name": "nupi", "kp": 0.5}},
        "formulation": {
            "name": "augmented_lagrangian",
            "penalty": {"norm": 0.5, "residual": 2.0},
            "updater": {"name": "multiplicative", "growth": 1.5, "restart": True},
        },
        "restart": {"residual": True},
    },
}


@pytest.mark.parametrize("settings", list(_DUAL_SETTINGS), ids=list(_DUAL_SETTINGS))
def test_resume_is_bit_exact_with_per_group_dual_settings(settings: str, tmp_path: Path) -> None:
    """Each block's controller state (saved under its pattern), the bounds, restarts, update
    cadence, scheduled right-hand sides and per-entry penalties resume bit for bit."""
    options = _DUAL_SETTINGS[settings]

    def build(stream: Path) -> tuple[Solver, DataLoader[Any]]:
        torch.manual_seed(0)
        model = Variables(w=torch.zeros(3, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        history = History(stream=stream)
        return Solver(NoisyRegression(), model, optimizer, history=history, **options), _data()

    reference, data = build(tmp_path / "reference.jsonl")
    reference.fit(data, TOTAL)
    first, data = build(tmp_path / "run.jsonl")
    first.fit(data, STOP)
    path = save_checkpoint(tmp_path / "ckpt.pt", first)
    first.fit(data, 3)  # the interrupted run got further than its checkpoint
    del first
    saved = load_checkpoint(path)["solver"]
    # Dense blocks under their pattern; per-sample groups under their name, as before.
    assert set(saved["controller_state"]) == {"norm"}
    assert set(saved["indexed_state"]) == {"residual"}
    torch.manual_seed(12345)  # a different process state must not matter
    resumed, data = build(tmp_path / "run.jsonl")
    resumed.load_state_dict(saved)
    resumed.fit(data, TOTAL - STOP)
    _assert_identical(_snapshot(reference), _snapshot(resumed))
    assert (tmp_path / "run.jsonl").read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


def test_per_group_state_is_checked_on_resume(tmp_path: Path) -> None:
    """A checkpoint with other patterns names the entries it holds."""
    options: dict[str, Any] = {"controller": {"norm": "nupi", "residual": "nupi"}}

    def build(**changes: Any) -> Solver:
        model = Variables(w=torch.zeros(3, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        return Solver(NoisyRegression(), model, optimizer, **{**options, **changes})

    first = build()
    first.fit(_data(), 2)
    other = build(controller={"no*": "nupi", "residual": "nupi"})
    with pytest.raises(CheckpointError, match="controller"):
        other.load_state_dict(first.state_dict())
        other.fit(_data(), 1)
