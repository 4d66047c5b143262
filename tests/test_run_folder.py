"""Run folders: checked before the first step, locked, owned (a run deletes only its own
files), never silently reused, written on interruption, with modes that follow the umask."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from constrain import (
    ConfigError,
    ConstrainedProblem,
    Constraint,
    NonFiniteError,
    ProblemSpec,
    RunConfig,
    Setup,
    Solver,
    Variables,
    get_problem,
)
from constrain._run_folder import (
    LOCK_FILE,
    RUN_FILE,
    RunFolder,
    RunInterrupted,
    check_out_path,
    deferred_signals,
)
from constrain.checkpoint import _prune, checkpoint_path, list_checkpoints, run_with_checkpoints
from constrain.cli import main
from constrain.runner import execute, run


def _simplex(steps: int, controller: str | None = None) -> RunConfig:
    data = get_problem("simplex").default_config(controller).model_dump()
    data["steps"] = steps
    return RunConfig.parse(data)


def _manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / RUN_FILE).read_text())
    return data


# -- the path is checked before anything is created ------------------------------------------
def test_bad_out_paths_are_refused_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    afile = tmp_path / "report.txt"
    afile.write_text("mine")
    cases = [
        ("", ("--out ''", "is empty", "--out .")),
        (str(afile), (str(afile), "is an existing file", "Choose another path")),
        (str(afile / "sub"), ("lies below", str(afile), "which is a file")),
    ]
    for out, parts in cases:
        with pytest.raises(ConfigError) as info:
            check_out_path(out)
        assert all(p in str(info.value) for p in parts), str(info.value)
    assert afile.read_text() == "mine"
    assert check_out_path(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing created by the check


def test_a_read_only_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    with pytest.raises(ConfigError, match=r"is not writable .*permission"):
        check_out_path(locked / "run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores modes")
def test_a_read_only_folder_is_refused_for_real(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match="not writable"):
        RunFolder.claim(locked)


def test_a_failed_claim_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "new" / "run"
    with RunFolder.claim(out):
        assert (out / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()  # nothing was written: created folders removed


# -- one live run per folder ------------------------------------------------------------------
def test_a_second_run_into_a_locked_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with RunFolder.claim(out, info={"problem": "simplex"}):
        with pytest.raises(ConfigError, match=r"in use by another run \(pid \d+"):
            RunFolder.claim(out)
        status = main(["run", "simplex", "--steps", "3", "--out", str(out), "--no-progress"])
        assert status == 2 and "in use by another run" in capsys.readouterr().err
    with RunFolder.claim(out):  # released: usable again
        pass


# -- a previous run is never silently replaced ------------------------------------------------
def test_a_folder_with_a_previous_run_needs_overwrite_or_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    run(_simplex(5), out=out, figures=False)
    first_id = _manifest(out)["run_id"]
    (out / "notes.txt").write_text("my notes")  # not the run's: never deleted
    before = (out / "summary.json").read_text()
    status = main(["run", "simplex", "--steps", "3", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "already holds a run" in err and "--overwrite" in err
    assert (out / "summary.json").read_text() == before
    second = run(_simplex(3, "gda"), out=out, figures=False, overwrite=True)
    manifest = _manifest(out)
    assert manifest["run_id"] != first_id and manifest["status"] == "finished"
    assert json.loads((out / "summary.json").read_text())["controller"] == "gda"
    assert (out / "notes.txt").read_text() == "my notes"
    assert set(manifest["files"]) == {
        "summary.json",
        "config.yaml",
        "history.csv",
        "history.json",
        "history.jsonl",
    }
    assert second.summary["steps"] == 3


def test_the_issue_scenario_keeps_each_runs_checkpoints(tmp_path: Path) -> None:
    """Run A (nupi, checkpoints every 10 of 20 steps), then run B (gda, every 3 of 6) into
    the same folder: B is refused without --overwrite; with it, A's checkpoints go and B's
    stay (clean-up used to keep the highest step numbers across runs)."""
    out = tmp_path / "run"
    run_with_checkpoints(_simplex(20), out=out, every=10, figures=False)
    assert [s for s, _ in list_checkpoints(out)] == [10, 20]
    with pytest.raises(ConfigError, match="already holds a run"):
        run_with_checkpoints(_simplex(6, "gda"), out=out, every=3, figures=False)
    run_with_checkpoints(_simplex(6, "gda"), out=out, every=3, figures=False, overwrite=True)
    assert [s for s, _ in list_checkpoints(out)] == [3, 6]
    assert json.loads((out / "summary.json").read_text())["controller"] == "gda"
    # resuming continues the same run in its folder; its own old checkpoints are pruned
    run_id = _manifest(out)["run_id"]
    run_with_checkpoints(_simplex(12, "gda"), resume=out, figures=False)
    manifest = _manifest(out)
    assert manifest["run_id"] == run_id and manifest["resumes"][0]["step"] == 6
    assert [s for s, _ in list_checkpoints(out)] == [9, 12]
    with pytest.raises(ConfigError, match="exclude each other"):
        run_with_checkpoints(_simplex(12, "gda"), resume=out, overwrite=True)


def test_clean_up_never_deletes_checkpoints_of_another_run(tmp_path: Path) -> None:
    with RunFolder.claim(tmp_path / "run") as folder:
        foreign = checkpoint_path(folder.path, 100)
        foreign.parent.mkdir()
        foreign.write_bytes(b"someone else's")
        for step in (1, 2, 3):
            own = checkpoint_path(folder.path, step)
            own.write_bytes(b"mine")
            folder.record(own)
        _prune(folder, keep=1)
        assert [s for s, _ in list_checkpoints(folder.path)] == [3, 100]
        with pytest.raises(ConfigError, match="not written by this run"):
            folder.forget(foreign)
    assert foreign.read_bytes() == b"someone else's"


def test_overwrite_deletes_only_files_inside_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_FILE).write_text(json.dumps({"run_id": "x", "files": ["../precious.txt", "/etc/x"]}))
    with RunFolder.claim(out, overwrite=True):
        pass
    assert outside.read_text() == "keep"


def test_a_folder_written_by_an_older_version_counts_as_used(tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run .*summary\.json"):
        RunFolder.claim(out)


# -- modes follow the umask -------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_get_the_modes_of_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        run_with_checkpoints(_simplex(4), out=out, every=2, figures=False)
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"summary.json", RUN_FILE, "step-000000004.pt"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# -- interruption -----------------------------------------------------------------------------
class _Unregistered(ProblemSpec):
    name = "interrupt-test"


def _interrupting(at: int, signals: int) -> tuple[Setup, Solver]:
    """A solver whose objective sends ``signals`` SIGTERMs to this process at evaluation
    ``at`` (deterministic: the signal arrives inside that step)."""
    calls = {"n": 0}

    def objective(model: Any, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == at:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return (model.x - 1.0).pow(2).sum()

    problem = ConstrainedProblem(
        objective=objective, constraints=[Constraint("c", "<=", fn=lambda m, b: m.x.sum())]
    )
    model = Variables(x=torch.zeros(2, dtype=torch.float64))
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    return Setup(problem, model), solver


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_a_signal_stops_after_the_step_and_writes_what_exists(tmp_path: Path) -> None:
    setup, solver = _interrupting(at=7, signals=1)
    config = RunConfig.parse({"problem": "interrupt-test", "steps": 1000})
    ends: list[tuple[bool, int]] = []
    with RunFolder.claim(tmp_path / "run") as folder, pytest.raises(RunInterrupted) as info:
        execute(
            _Unregistered(),
            config,
            setup,
            solver,
            folder,
            1000,
            at_end=lambda interrupted: ends.append((interrupted, solver.step_count)),
        )
    assert info.value.step == 7 and info.value.exit_status == 128 + signal.SIGTERM
    assert ends == [(True, 7)]  # e.g. a checkpoint at a whole number of steps
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 7
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 1 + 7
    assert _manifest(tmp_path / "run")["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    setup, solver = _interrupting(at=4, signals=2)
    config = RunConfig.parse({"problem": "interrupt-test", "steps": 1000})
    ends: list[bool] = []
    with RunFolder.claim(tmp_path / "run") as folder, pytest.raises(RunInterrupted) as info:
        execute(_Unregistered(), config, setup, solver, folder, 1000, at_end=ends.append)
    assert info.value.step == 3 and ends == []  # inside step 4: no checkpoint of a half step
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 3


def test_an_error_writes_the_steps_taken_and_marks_the_run_failed(tmp_path: Path) -> None:
    calls = {"n": 0}

    def objective(model: Any, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        return model.x.sum() * (float("nan") if calls["n"] == 5 else 1.0)

    problem = ConstrainedProblem(objective=objective)
    model = Variables(x=torch.zeros(2, dtype=torch.float64))
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    config = RunConfig.parse({"problem": "interrupt-test", "steps": 10})
    with RunFolder.claim(tmp_path / "run") as folder, pytest.raises(NonFiniteError):
        execute(_Unregistered(), config, Setup(problem, model), solver, folder, 10)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["error"].startswith("NonFiniteError")
    assert _manifest(tmp_path / "run")["status"] == "failed"


def test_signals_outside_a_run_are_left_alone() -> None:
    before = signal.getsignal(signal.SIGINT)
    with deferred_signals(enabled=False) as flag:
        assert signal.getsignal(signal.SIGINT) == before
    flag.check(0)  # nothing arrived: no exception


@pytest.mark.slow  # three Python processes
@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_ctrl_c_on_the_command_line(tmp_path: Path) -> None:
    """A real process: a second run into the same folder is refused while the first is
    alive; Ctrl-C then stops the first with status 130 and a report marked interrupted."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "constrain.cli", "run", "simplex", "--no-progress"]
    first = subprocess.Popen(
        [*command, "--steps", "100000000", "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_FILE).exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(
            [*command, "--steps", "3", "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2 and "in use by another run" in second.stderr
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "interrupted after" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    rows = len((out / "history.csv").read_text().splitlines()) - 1
    assert summary["interrupted"] is True and rows == summary["steps"]
    assert not (out / LOCK_FILE).exists()
