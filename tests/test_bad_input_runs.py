"""The bad-input table, continued: command-line and configuration values, run folders,
corrupt or crafted checkpoints and configuration files (the same table style as
``tests/test_bad_input.py``; these rows need temporary folders and whole runs).

A row either fails with a library error whose message names what is wrong, what was
expected and what was received (CLI rows: exit status 2 and the message on stderr), or,
where the input is meaningful, is accepted with the right result (``error=None``; the
row's ``check`` asserts it).

``python tests/test_bad_input_runs.py`` prints the table with the actual outcomes (the
source of the last sections of ``docs/bad_inputs.md``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from constrain import (
    CheckpointError,
    ConfigError,
    ConstrainedProblem,
    ConstrainError,
    Constraint,
    ProblemSpec,
    RunConfig,
    Setup,
    Solver,
    Variables,
    blocks,
    get_problem,
    load_config,
    solve,
    validate,
)
from constrain._run_folder import RUN_FILE, RunFolder, RunInterrupted
from constrain.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest,
    run_with_checkpoints,
)
from constrain.runner import execute

NAN = float("nan")


@dataclass(frozen=True)
class Row:
    """One bad input.

    Attributes:
        id: Short name.
        kind: The section of the table (the kind of fault).
        what: The input in words (for the docs).
        trigger: ``trigger(tmp)`` performs the call; for CLI rows it returns the argv.
        error: Expected exception type (CLI rows: the error the message comes from);
            ``None`` if the input is accepted with the right result.
        contains: Substrings the message must contain (the offending name, the expected
            and the received value).
        cli: True if ``trigger`` returns command-line arguments for ``constrain.cli.main``.
        check: For accepted inputs: ``check(result, tmp)`` asserts the right result
            (``result``: the trigger's value, or the CLI's stdout).
        skip: A reason to skip the row here, if it cannot run on this system.
        status: Exit status of an accepted CLI row (``validate`` exits 1 when a check fails).
        right: For accepted inputs: the right result, in words (for the docs).
    """

    id: str
    kind: str
    what: str
    trigger: Callable[[Path], Any]
    error: type[BaseException] | None
    contains: tuple[str, ...] = ()
    cli: bool = False
    check: Callable[[Any, Path], None] | None = None
    skip: str | None = None
    status: int = 0
    right: str = ""


# -- helpers -------------------------------------------------------------------------------------
def _folder(tmp: Path, name: str) -> Path:
    """A fresh folder path for one row (removed if a previous call left it)."""
    import shutil

    path = tmp / name
    if path.exists():
        shutil.rmtree(path)
    return path


def _simplex(steps: int, **changes: Any) -> RunConfig:
    data = get_problem("simplex").default_config().model_dump()
    data.update(steps=steps, **changes)
    return RunConfig.parse(data)


def _write(tmp: Path, name: str, data: str | bytes) -> Path:
    path = tmp / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _strict_json(path: Path) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{path} holds the non-JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _checkpointed(tmp: Path) -> Path:
    """A finished 4-step simplex run with checkpoints at 2 and 4 (built once per tmp)."""
    folder = tmp / "simplex-run"
    if not (folder / "checkpoints").is_dir():
        run_with_checkpoints(_simplex(4), out=folder, every=2, figures=False)
    return folder


def _newest(tmp: Path) -> Path:
    return _checkpointed(tmp) / "checkpoints" / "step-000000004.pt"


def _central_entries(data: bytes) -> list[int]:
    """Offsets of the central-directory entries of a zip archive."""
    offsets, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        offsets.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return offsets


def _flipped(tmp: Path, name: str, field_offset: int, bit: int, entry: int = 0) -> Path:
    """The newest checkpoint with one bit flipped in a central-directory field of one
    entry (10: compression method, 38: external attributes, 42: local-header offset)."""
    data = bytearray(_newest(tmp).read_bytes())
    at = _central_entries(bytes(data))[entry] + field_offset
    data[at] ^= 1 << bit
    return _write(tmp, name, bytes(data))


def _fallback(tmp: Path) -> int:
    """A run folder whose newest checkpoint has a flipped compression-method bit: the
    previous checkpoint is loaded."""
    folder = _folder(tmp, "fallback")
    (folder / "checkpoints").mkdir(parents=True)
    for _, path in list_checkpoints(_checkpointed(tmp)):
        (folder / "checkpoints" / path.name).write_bytes(path.read_bytes())
    bad = _flipped(tmp, "flip-fallback.pt", 10, 0)
    (folder / "checkpoints" / "step-000000004.pt").write_bytes(bad.read_bytes())
    path, payload = load_latest(folder)
    return int(payload["solver"]["step_count"])


def _crafted(tmp: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """The newest checkpoint, loaded, changed and saved again (still weights_only-safe)."""
    payload = load_checkpoint(_newest(tmp))
    change(payload)
    path = tmp / name
    torch.save(payload, path)
    return path


def _set_solver(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        payload["solver"][key] = value

    return change


def _old_state(payload: dict[str, Any]) -> None:
    """The payload as a version-2 solver state (records embedded instead of the stream
    position), so that its records can be crafted."""
    solver = payload["solver"]
    solver["version"] = 2
    del solver["history_position"], solver["schedules"]
    record = {
        "step": 0,
        "objective": 1.0,
        "max_violation": 0.0,
        "violation": [],
        "multipliers": [],
        "per_sample": {},
        "metrics": {},
        "clusters": {},
        "penalty": None,
        "seconds": 0.0,
        "skipped": False,
    }
    solver["history"] = {"labels": [], "records": [dict(record), {**record, "step": 1}]}


def _old_history(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        _old_state(payload)
        payload["solver"]["history"] = value

    return change


def _extra_record_key(payload: dict[str, Any]) -> None:
    _old_state(payload)
    payload["solver"]["history"]["records"][0]["extra"] = 1.0


def _lr(value: float) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        payload["solver"]["optimizer"]["param_groups"][0]["lr"] = value

    return change


def _swap_records(payload: dict[str, Any]) -> None:
    _old_state(payload)
    records = payload["solver"]["history"]["records"]
    records[0], records[1] = records[1], records[0]


def _nan_multipliers(payload: dict[str, Any]) -> None:
    dense = payload["solver"]["multipliers"]["dense"]
    payload["solver"]["multipliers"]["dense"] = torch.full_like(dense, NAN)


def _alias_bomb(levels: int = 9) -> str:
    """A ~600-byte YAML whose anchors each alias the previous one nine times."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join([*lines, f"problem: *a{levels}", ""])


_HELD: list[RunFolder] = []  # folders kept locked, as by a run still going


def _locked(tmp: Path) -> list[str]:
    folder = _folder(tmp, "busy")
    _HELD.append(RunFolder.claim(folder, info={"problem": "simplex"}))
    return ["run", "simplex", "--steps", "2", "--out", str(folder)]


def _occupied(tmp: Path, compare: bool = False) -> list[str]:
    folder = _folder(tmp, "used")
    from constrain.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        first = ["compare", "simplex", "--controllers", "gda"] if compare else ["run", "simplex"]
        assert main([*first, "--steps", "2", "--out", str(folder), "--no-progress"]) == 0
    return [*first, "--steps", "3", "--out", str(folder)]


def _read_only(tmp: Path) -> list[str]:
    folder = _folder(tmp, "read-only")
    folder.mkdir(mode=0o555)
    return ["run", "simplex", "--steps", "2", "--out", str(folder / "run")]


def _empty_group_validation(tmp: Path) -> Any:
    x = blocks.Variable("x", 3)
    none = np.zeros((0, 3))
    problem = ConstrainedProblem(
        objective=blocks.quad_form(x, np.eye(3)) - np.array([1.0, 2.0, 3.0]) @ x,
        constraints=[
            Constraint("budget", "<=", rhs=1.0, fn=blocks.sum(x)),
            Constraint("nothing", "<=", fn=none @ x),
            Constraint("nothing_eq", "==", fn=none @ x),
        ],
    )
    result = solve(problem, Variables(x=torch.zeros(3, dtype=torch.float64)), steps=3000, lr=0.1)
    return validate(problem, result)


class _Spec(ProblemSpec):
    name = "interrupt-demo"


def _interrupted(tmp: Path, signals: int) -> dict[str, Any]:
    """50 steps of a run whose objective sends SIGTERM(s) at its 40th evaluation (a user's
    Ctrl-C or a scheduler's SIGTERM, arriving inside a step); returns summary.json."""
    calls = {"n": 0}

    def objective(model: Any, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 40:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return (model.x - 1.0).pow(2).sum()

    problem = ConstrainedProblem(
        objective=objective, constraints=[Constraint("c", "<=", fn=lambda m, b: m.x.sum())]
    )
    model = Variables(x=torch.zeros(2, dtype=torch.float64))
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    config = RunConfig.parse({"problem": "interrupt-demo", "steps": 50})
    out = _folder(tmp, f"interrupted-{signals}")
    with RunFolder.claim(out) as folder, pytest.raises(RunInterrupted):
        execute(_Spec(), config, Setup(problem, model), solver, folder, 50)
    summary: dict[str, Any] = _strict_json(out / "summary.json")
    summary["history_rows"] = len((out / "history.csv").read_text().splitlines()) - 1
    summary["status"] = json.loads((out / RUN_FILE).read_text())["status"]
    return summary


def _modes(tmp: Path) -> set[int]:
    old = os.umask(0o022)
    try:
        out = _folder(tmp, "modes")
        run_with_checkpoints(_simplex(2), out=out, every=1, figures=False)
    finally:
        os.umask(old)
    return {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}


def _a_then_b(tmp: Path) -> tuple[list[int], str]:
    out = _folder(tmp, "a-then-b")
    run_with_checkpoints(_simplex(20), out=out, every=10, figures=False)
    gda = get_problem("simplex").default_config("gda").model_dump()
    gda["steps"] = 6
    run_with_checkpoints(RunConfig.parse(gda), out=out, every=3, figures=False, overwrite=True)
    controller = json.loads((out / "summary.json").read_text())["controller"]
    return [s for s, _ in list_checkpoints(out)], controller


def _escaping_manifest(tmp: Path) -> str:
    outside = _write(tmp, "precious.txt", "keep")
    out = _folder(tmp, "escaping")
    out.mkdir()
    (out / RUN_FILE).write_text(json.dumps({"run_id": "x", "files": ["../precious.txt"]}))
    with RunFolder.claim(out, overwrite=True):
        pass
    return outside.read_text()


def _summary(tmp: Path, name: str) -> Any:
    return _strict_json(tmp / name / "summary.json")


def _out(tmp: Path, name: str) -> str:
    return str(_folder(tmp, name))


def _is_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


CLI = "command line and configuration values"
FOLDERS = "run folders"
CHECKPOINTS = "corrupt or crafted checkpoints"
CONFIGS = "configuration files"
RHS = "right-hand sides and sizes"

ROWS: list[Row] = [
    # -- command line and configuration values ---------------------------------------------
    Row(
        "cli-steps-true",
        CLI,
        "--set steps=true (was run as 1 step)",
        lambda t: ["run", "simplex", "--set", "steps=true"],
        ConfigError,
        ("steps:", "expected an integer, not a bool", "received True"),
        cli=True,
    ),
    Row(
        "config-steps-true",
        CLI,
        "RunConfig with steps=True",
        lambda t: RunConfig.parse({"problem": "simplex", "steps": True}),
        ConfigError,
        ("steps:", "not a bool", "received True"),
    ),
    Row(
        "cli-batch-size-true",
        CLI,
        "new: --set batch_size=true",
        lambda t: ["run", "simplex", "--set", "batch_size=true"],
        ConfigError,
        ("batch_size:", "not a bool", "received True"),
        cli=True,
    ),
    Row(
        "cli-controller-lr-true",
        CLI,
        "new: --set controller.lr=true (a controller option)",
        lambda t: ["run", "simplex", "--set", "controller.lr=true"],
        ConfigError,
        ("controller 'nupi'", "lr: expected a number, not a bool", "received True"),
        cli=True,
    ),
    Row(
        "cli-optimizer-momentum-true",
        CLI,
        "new: --set optimizer.momentum=true (an optimizer option)",
        lambda t: ["run", "simplex", "--set", "optimizer.momentum=true"],
        ConfigError,
        ("optimizer 'sgd'", "'momentum' takes a number", "received True"),
        cli=True,
    ),
    Row(
        "cli-problem-option-true",
        CLI,
        "new: --set problem.dimension=true (a problem hyperparameter)",
        lambda t: ["run", "simplex", "--set", "problem.dimension=true"],
        ConfigError,
        ("problem 'simplex'", "dimension: expected a number, not a bool", "received True"),
        cli=True,
    ),
    Row(
        "cli-problem-name",
        CLI,
        "run simplex --set problem.name=iris-svm (ran iris-svm)",
        lambda t: ["run", "simplex", "--set", "problem.name=iris-svm", "--steps", "2"],
        ConfigError,
        (
            "--set problem.name='iris-svm'",
            "named on the command line ('simplex')",
            "constrain run iris-svm",
        ),
        cli=True,
    ),
    Row(
        "cli-problem-section",
        CLI,
        "new: run simplex --set problem=iris-svm",
        lambda t: ["run", "simplex", "--set", "problem=iris-svm", "--steps", "2"],
        ConfigError,
        ("'iris-svm'", "expected the same name", "'simplex'"),
        cli=True,
    ),
    Row(
        "cli-config-other-problem",
        CLI,
        "new: run simplex --config FILE where FILE names problem iris-svm",
        lambda t: [
            "run",
            "simplex",
            "--config",
            str(_write(t, "iris.yaml", "problem: iris-svm\n")),
        ],
        ConfigError,
        ("iris.yaml", "is for problem 'iris-svm'", "names 'simplex'"),
        cli=True,
    ),
    Row(
        "cli-seed-31-digits",
        CLI,
        "--seed with 31 digits (raw OverflowError)",
        lambda t: ["run", "simplex", "--steps", "2", "--seed", "1" * 31],
        ConfigError,
        (
            "seed:",
            "less than or equal to 9223372036854775807",
            "received 1111111111111111111111111111111",
        ),
        cli=True,
    ),
    Row(
        "cli-seed-negative",
        CLI,
        "new: --seed -1",
        lambda t: ["run", "simplex", "--steps", "2", "--seed", "-1"],
        ConfigError,
        ("seed:", "greater than or equal to 0", "received -1"),
        cli=True,
    ),
    Row(
        "cli-seed-float",
        CLI,
        "new: --set seed=1e30",
        lambda t: ["run", "simplex", "--steps", "2", "--set", "seed=1e30"],
        ConfigError,
        ("seed:", "exceeded maximum size", "received 1e+30"),
        cli=True,
    ),
    Row(
        "cli-nan-lr",
        CLI,
        "--set optimizer.lr=nan --set on_nonfinite=skip (ran, 'max violation 0')",
        lambda t: ["run", "simplex", "--set", "optimizer.lr=nan", "--set", "on_nonfinite=skip"],
        ConfigError,
        ("optimizer.lr must be a finite number", "got nan"),
        cli=True,
    ),
    Row(
        "cli-inf-lr",
        CLI,
        "an infinite optimizer lr (--set optimizer.lr=.inf)",
        lambda t: ["run", "simplex", "--set", "optimizer.lr=.inf"],
        ConfigError,
        ("optimizer.lr must be a finite number", "got inf"),
        cli=True,
    ),
    Row(
        "config-nan-weight-decay",
        CLI,
        "new: RunConfig with optimizer weight_decay=nan",
        lambda t: RunConfig.parse(
            {"problem": "simplex", "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": NAN}}
        ),
        ConfigError,
        ("optimizer.weight_decay must be a finite number", "got nan"),
    ),
    Row(
        "cli-nan-beta",
        CLI,
        "new: --set optimizer.betas=[0.9, .nan] with adam",
        lambda t: [
            "run",
            "simplex",
            "--set",
            "optimizer.name=adam",
            "--set",
            "optimizer.betas=[0.9, .nan]",
        ],
        ConfigError,
        ("optimizer.betas[1] must be a finite number", "got nan"),
        cli=True,
    ),
    Row(
        "cli-summary-nonfinite",
        CLI,
        "a run whose numbers overflow (lr=1e300, on_nonfinite=skip): summary.json had a bare NaN",
        lambda t: [
            "run",
            "simplex",
            "--steps",
            "5",
            "--set",
            "optimizer.lr=1e300",
            "--set",
            "on_nonfinite=skip",
            "--out",
            _out(t, "nonfinite"),
        ],
        None,
        cli=True,
        check=lambda out, t: _check_nonfinite(t),
        right='summary.json and history.json are strict JSON: the non-finite objective is null and listed under "nonfinite"',
    ),
    Row(
        "cli-json-nonfinite",
        CLI,
        "new: the same with --json (printed the string 'nan')",
        lambda t: [
            "run",
            "simplex",
            "--steps",
            "5",
            "--set",
            "optimizer.lr=1e300",
            "--set",
            "on_nonfinite=skip",
            "--json",
        ],
        None,
        cli=True,
        check=lambda out, t: _check_json_line(out),
        right='one strict JSON line: null plus the "nonfinite" list',
    ),
    Row(
        "cli-steps-0",
        CLI,
        "--steps 0 ('the reference gives multipliers for [...], which are not constraints')",
        lambda t: ["run", "simplex", "--steps", "0", "--out", _out(t, "zero")],
        None,
        cli=True,
        check=lambda out, t: _check_zero(t),
        right="a report of the initial point: steps 0, objective null, no history rows, the reference distance measured from the initial multipliers",
    ),
    Row(
        "cli-compare-steps-0",
        CLI,
        "new: compare --steps 0 (the table crashed on the missing objective)",
        lambda t: [
            "compare",
            "simplex",
            "--controllers",
            "gda",
            "--steps",
            "0",
            "--out",
            _out(t, "cmp0"),
        ],
        None,
        cli=True,
        check=lambda out, t: _check_text(out, "gda", "-"),
        right="the table shows '-' for the missing values",
    ),
    Row(
        "cli-validate-steps-0",
        CLI,
        "new: validate --steps 0 ('no multiplier for constraint')",
        lambda t: ["validate", "simplex", "--steps", "0", "--json"],
        None,
        cli=True,
        check=lambda out, t: _check_validate_zero(out),
        right="the initial point is validated: the report lists the failed checks (exit 1)",
        status=1,
    ),
    Row(
        "validate-empty-group",
        CLI,
        "validate a problem with an empty (0-row) constraint group (raw RuntimeError)",
        _empty_group_validation,
        None,
        check=lambda report, t: _check_empty_group(report),
        right="an empty group adds no condition; the report passes",
    ),
    # -- right-hand sides and sizes --------------------------------------------------------
    Row(
        "rhs-nan-string",
        RHS,
        "rhs='nan'",
        lambda t: Constraint("c", rhs="nan"),
        ValidationError,
        ("rhs must be a number, not a string", "'nan' (str)"),
    ),
    Row(
        "rhs-float32-nan",
        RHS,
        "rhs=np.float32('nan')",
        lambda t: Constraint("c", rhs=np.float32("nan")),
        ValidationError,
        ("rhs must be finite", "got nan"),
    ),
    Row(
        "rhs-array-nan",
        RHS,
        "rhs=np.array([1., nan])",
        lambda t: Constraint("c", size=2, rhs=np.array([1.0, NAN])),
        ValidationError,
        ("rhs entry 1 must be finite", "got nan"),
    ),
    Row(
        "rhs-decimal-nan",
        RHS,
        "rhs=Decimal('NaN')",
        lambda t: Constraint("c", rhs=Decimal("NaN")),
        ValidationError,
        ("rhs must be finite", "got nan"),
    ),
    Row(
        "rhs-1e400",
        RHS,
        "rhs='1e400' (read as inf)",
        lambda t: Constraint("c", rhs="1e400"),
        ValidationError,
        ("rhs must be a number, not a string", "'1e400' (str)"),
    ),
    Row(
        "rhs-bool-tuple",
        RHS,
        "rhs=(True, 1.0) (read as (1.0, 1.0))",
        lambda t: Constraint("c", rhs=(True, 1.0)),
        ValidationError,
        ("rhs entry 0 must be a number, not a bool", "got True"),
    ),
    Row(
        "size-true",
        RHS,
        "size=True (read as 1)",
        lambda t: Constraint("c", size=True),
        ValidationError,
        ("size must be an integer", "True (bool)"),
    ),
    Row(
        "rhs-decimal-snan",
        RHS,
        "new: rhs=Decimal('sNaN') (float() raises)",
        lambda t: Constraint("c", rhs=Decimal("sNaN")),
        ValidationError,
        ("rhs must be a finite number", "Decimal('sNaN')"),
    ),
    Row(
        "rhs-huge-int",
        RHS,
        "new: rhs=2**2000 (float() overflows)",
        lambda t: Constraint("c", rhs=2**2000),
        ValidationError,
        ("rhs must be a finite number", "(int)"),
    ),
    Row(
        "rhs-tensor-inf",
        RHS,
        "new: rhs=torch.tensor([1., inf])",
        lambda t: Constraint("c", size=2, rhs=torch.tensor([1.0, math.inf])),
        ValidationError,
        ("rhs entry 1 must be finite", "got inf"),
    ),
    Row(
        "rhs-bool-array",
        RHS,
        "new: rhs=np.array([True, False])",
        lambda t: Constraint("c", size=2, rhs=np.array([True, False])),
        ValidationError,
        ("rhs must hold real numbers", "dtype bool"),
    ),
    Row(
        "size-float",
        RHS,
        "new: size=3.0",
        lambda t: Constraint("c", size=3.0),
        ValidationError,
        ("size must be an integer", "3.0 (float)"),
    ),
    # -- run folders -----------------------------------------------------------------------
    Row(
        "out-empty",
        FOLDERS,
        "--out '' (wrote into the working folder)",
        lambda t: ["run", "simplex", "--steps", "2", "--out", ""],
        ConfigError,
        ("--out ''", "is empty", "expected a folder path", "--out ."),
        cli=True,
    ),
    Row(
        "out-file",
        FOLDERS,
        "--out naming an existing file (traceback after the run)",
        lambda t: ["run", "simplex", "--steps", "2", "--out", str(_write(t, "a-file", "x"))],
        ConfigError,
        ("a-file", "is an existing file, not a folder", "Choose another path"),
        cli=True,
    ),
    Row(
        "out-below-file",
        FOLDERS,
        "--out below a file (traceback after the run)",
        lambda t: [
            "run",
            "simplex",
            "--steps",
            "2",
            "--out",
            str(_write(t, "b-file", "x") / "run"),
        ],
        ConfigError,
        (
            "b-file/run",
            "lies below",
            "which is a file",
            "expected a path whose parents are folders",
        ),
        cli=True,
    ),
    Row(
        "out-read-only",
        FOLDERS,
        "--out in a read-only folder (traceback after the run)",
        _read_only,
        ConfigError,
        ("read-only", "is not writable", "permission denied", "choose a writable folder"),
        cli=True,
        skip="root may write anywhere" if _is_root() else None,
    ),
    Row(
        "out-occupied",
        FOLDERS,
        "a second run into a folder holding a previous run's report (silently replaced it)",
        _occupied,
        ConfigError,
        ("already holds a run", "summary.json", "--overwrite", "choose another --out"),
        cli=True,
    ),
    Row(
        "out-occupied-compare",
        FOLDERS,
        "new: compare into a folder holding a previous comparison",
        lambda t: _occupied(t, compare=True),
        ConfigError,
        ("already holds a run", "compare.png", "--overwrite"),
        cli=True,
    ),
    Row(
        "out-locked",
        FOLDERS,
        "two runs into one folder at once (FileNotFoundError; deleted each other's checkpoints)",
        _locked,
        ConfigError,
        ("busy", "is in use by another run (pid", "choose another --out"),
        cli=True,
    ),
    Row(
        "overwrite-without-out",
        FOLDERS,
        "new: --overwrite without --out",
        lambda t: ["run", "simplex", "--steps", "2", "--overwrite"],
        ConfigError,
        ("--overwrite needs --out DIR",),
        cli=True,
    ),
    Row(
        "resume-empty-string",
        FOLDERS,
        "new: --resume ''",
        lambda t: ["run", "simplex", "--resume", ""],
        ConfigError,
        ("--resume ''", "is empty", "expected the run folder"),
        cli=True,
    ),
    Row(
        "a-then-b",
        FOLDERS,
        "run A (checkpoints every 10 of 20), then run B (gda, every 3 of 6) with --overwrite: B's checkpoints were deleted",
        _a_then_b,
        None,
        check=lambda value, t: _check_equal(value, ([3, 6], "gda")),
        right="without --overwrite B is refused; with it A's files go first and B's checkpoints 3 and 6 stay",
    ),
    Row(
        "sigterm",
        FOLDERS,
        "SIGTERM (or Ctrl-C) during a run without checkpoints (the folder stayed empty)",
        lambda t: _interrupted(t, 1),
        None,
        check=lambda s, t: _check_equal(
            (s["interrupted"], s["steps"], s["history_rows"], s["status"]),
            (True, 40, 40, "interrupted"),
        ),
        right='the run stops after that step; summary.json ("interrupted": true), history and run.json are written; exit status 128 + signal',
    ),
    Row(
        "sigterm-twice",
        FOLDERS,
        "new: a second SIGTERM inside the step (stops at once; the steps taken are written)",
        lambda t: _interrupted(t, 2),
        None,
        check=lambda s, t: _check_equal(
            (s["interrupted"], s["steps"], s["history_rows"]), (True, 39, 39)
        ),
        right="stops inside the step; the 39 whole steps are written (no checkpoint of a half step)",
    ),
    Row(
        "modes",
        FOLDERS,
        "files written with mode 0600 whatever the umask (umask 022 here)",
        _modes,
        None,
        check=lambda modes, t: _check_equal(modes, {0o644}),
        right="every file 0644 (0666 minus the umask), checkpoints and run.json included",
        skip=None if os.name == "posix" else "POSIX modes",
    ),
    Row(
        "overwrite-escaping-manifest",
        FOLDERS,
        "new: --overwrite of a folder whose run.json lists '../precious.txt'",
        _escaping_manifest,
        None,
        check=lambda text, t: _check_equal(text, "keep"),
        right="only files inside the folder are ever deleted",
    ),
    # -- corrupt or crafted checkpoints ---------------------------------------------------
    Row(
        "flipped-compression-method",
        CHECKPOINTS,
        "one flipped bit in the central directory's compression-method field (NotImplementedError)",
        lambda t: load_checkpoint(_flipped(t, "method.pt", 10, 0)),
        CheckpointError,
        (
            "method.pt",
            "zip directory is damaged",
            "'archive/data.pkl' has compression method 1",
            "expected the uncompressed files",
        ),
    ),
    Row(
        "flipped-fallback",
        CHECKPOINTS,
        "the same in the newest checkpoint of a run folder: the previous one is loaded",
        _fallback,
        None,
        check=lambda step, t: _check_equal(step, 2),
        right="the previous checkpoint (step 2) is loaded, with a warning",
    ),
    Row(
        "flipped-folder-attribute",
        CHECKPOINTS,
        "new: one flipped bit in an entry's external attributes (MS-DOS folder bit: loaded other numbers, silently)",
        lambda t: load_checkpoint(_flipped(t, "attribute.pt", 38, 4, entry=4)),
        CheckpointError,
        ("attribute.pt", "zip directory is damaged", "is marked as a folder"),
    ),
    Row(
        "flipped-header-offset",
        CHECKPOINTS,
        "new: one flipped bit in an entry's local-header offset",
        lambda t: load_checkpoint(_flipped(t, "offset.pt", 42, 2, entry=4)),
        CheckpointError,
        (
            "offset.pt",
            "is corrupt",
            "'archive/data/0' fails its CRC-32 check",
            "expected intact data",
        ),
    ),
    Row(
        "crafted-extra-record-key",
        CHECKPOINTS,
        "an extra key in a history record (TypeError)",
        lambda t: load_checkpoint(_crafted(t, "extra.pt", _extra_record_key)),
        CheckpointError,
        ("extra.pt", "'history.records[0]'", "unexpected entry 'extra'", "expected only ["),
    ),
    Row(
        "crafted-step-count-string",
        CHECKPOINTS,
        "step_count='abc' (ValueError)",
        lambda t: load_checkpoint(_crafted(t, "abc.pt", _set_solver("step_count", "abc"))),
        CheckpointError,
        ("abc.pt", "'step_count'", "expected an integer >= 0", "got 'abc' (str)"),
    ),
    Row(
        "crafted-history-string",
        CHECKPOINTS,
        "history='x' (AttributeError)",
        lambda t: load_checkpoint(_crafted(t, "history.pt", _old_history("x"))),
        CheckpointError,
        ("history.pt", "'history'", "expected a mapping", "got 'x' (str)"),
    ),
    Row(
        "crafted-negative-step-count",
        CHECKPOINTS,
        "step_count=-5 (accepted)",
        lambda t: load_checkpoint(_crafted(t, "minus5.pt", _set_solver("step_count", -5))),
        CheckpointError,
        ("minus5.pt", "'step_count'", "expected an integer >= 0", "got -5"),
    ),
    Row(
        "crafted-negative-lr",
        CHECKPOINTS,
        "an optimizer state with lr -1 (accepted)",
        lambda t: load_checkpoint(_crafted(t, "lr.pt", _lr(-1.0))),
        CheckpointError,
        ("lr.pt", "'optimizer.param_groups[0].lr'", "a finite number >= 0.0", "got -1.0"),
    ),
    Row(
        "crafted-nan-multipliers",
        CHECKPOINTS,
        "new: NaN multipliers",
        lambda t: load_checkpoint(_crafted(t, "nan.pt", _nan_multipliers)),
        CheckpointError,
        ("nan.pt", "'multipliers.dense'", "expected finite multipliers", "tensor(shape="),
    ),
    Row(
        "crafted-records-out-of-order",
        CHECKPOINTS,
        "new: history records out of step order",
        lambda t: load_checkpoint(_crafted(t, "order.pt", _swap_records)),
        CheckpointError,
        (
            "order.pt",
            "'history.records[1].step'",
            "a step after the previous record's (1)",
            "got 0",
        ),
    ),
    # -- configuration files -----------------------------------------------------------------
    Row(
        "config-alias-bomb",
        CONFIGS,
        "a 600-byte YAML whose anchors alias each other nine deep (hung, or exhausted memory)",
        lambda t: load_config(_write(t, "bomb.yaml", _alias_bomb())),
        ConfigError,
        ("bomb.yaml", "expands to more than 100000 values", "YAML aliases", "write the values out"),
    ),
    Row(
        "config-recursive-alias",
        CONFIGS,
        "new: a YAML alias that contains itself (problem: &x [*x])",
        lambda t: load_config(_write(t, "recursive.yaml", "problem: &x [*x]\n")),
        ConfigError,
        ("recursive.yaml", "contains itself", "expected a finite configuration"),
    ),
    Row(
        "config-deep-nesting",
        CONFIGS,
        "new: a value nested 2000 lists deep (RecursionError)",
        lambda t: load_config(_write(t, "deep.yaml", "steps: " + "[" * 2000 + "]" * 2000 + "\n")),
        ConfigError,
        ("deep.yaml", "nested too deeply", "a few levels deep"),
    ),
    Row(
        "cli-set-alias-bomb",
        CONFIGS,
        "new: an alias bomb in a --set value",
        lambda t: ["run", "simplex", "--set", _bomb_override()],
        ConfigError,
        ("--set problem.x", "expands to more than 100000 values"),
        cli=True,
    ),
    Row(
        "config-utf16",
        CONFIGS,
        "a config file starting with bytes ff fe (UTF-16; UnicodeDecodeError)",
        lambda t: load_config(
            _write(t, "utf16.yaml", "problem: simplex\nsteps: 6\n".encode("utf-16"))
        ),
        None,
        check=lambda config, t: _check_equal(config.steps, 6),
        right="decoded as UTF-16 (byte-order mark); steps 6",
    ),
    Row(
        "config-ff-fe-garbage",
        CONFIGS,
        "bytes ff fe followed by no valid UTF-16",
        lambda t: load_config(_write(t, "fffe.yaml", b"\xff\xfe\x00a\xd8")),
        ConfigError,
        ("fffe.yaml", "is not valid UTF-16 text", "offset", "Save it as UTF-8"),
    ),
    Row(
        "config-utf8-bom",
        CONFIGS,
        "new: a UTF-8 byte-order mark",
        lambda t: load_config(_write(t, "bom.yaml", b"\xef\xbb\xbfproblem: simplex\nsteps: 4\n")),
        None,
        check=lambda config, t: _check_equal(config.steps, 4),
        right="decoded; steps 4",
    ),
    Row(
        "config-latin1",
        CONFIGS,
        "new: a Latin-1 byte (not UTF-8)",
        lambda t: load_config(_write(t, "latin.yaml", b"problem: simplex\nnote: caf\xe9\n")),
        ConfigError,
        ("latin.yaml", "is not valid UTF-8 text", "byte b'\\xe9' at offset 26", "Save it as UTF-8"),
    ),
    Row(
        "cli-config-empty",
        CONFIGS,
        "--config holding {} with the problem named on the command line ('problem: Field required')",
        lambda t: [
            "run",
            "simplex",
            "--config",
            str(_write(t, "empty.json", "{}")),
            "--json",
            "--steps",
            "3",
        ],
        None,
        cli=True,
        check=lambda out, t: _check_equal(json.loads(out)["steps"], 3),
        right="merged over the problem's defaults, then validated",
    ),
    Row(
        "cli-config-steps",
        CONFIGS,
        "--config holding {\"steps\": 5} ('problem: Field required')",
        lambda t: [
            "run",
            "simplex",
            "--config",
            str(_write(t, "steps.json", '{"steps": 5}')),
            "--json",
        ],
        None,
        cli=True,
        check=lambda out, t: _check_equal(
            (json.loads(out)["steps"], json.loads(out)["controller"]), (5, "nupi")
        ),
        right="merged over the problem's defaults: 5 steps, the problem's controller",
    ),
    Row(
        "cli-config-controller-only",
        CONFIGS,
        "new: --config holding only a controller (merged over the problem's defaults)",
        lambda t: [
            "run",
            "simplex",
            "--config",
            str(_write(t, "gda.yaml", "controller: {name: gda, lr: 0.3}\nsteps: 2\n")),
            "--json",
        ],
        None,
        cli=True,
        check=lambda out, t: _check_equal(
            json.loads(out)["controller_config"], {"name": "gda", "lr": 0.3}
        ),
        right="the file's controller and options, the problem's other defaults",
    ),
    Row(
        "cli-config-problem-options",
        CONFIGS,
        "new: --config holding only problem options",
        lambda t: [
            "run",
            "simplex",
            "--config",
            str(_write(t, "dim.yaml", "problem: {dimension: 4}\nsteps: 2\n")),
            "--json",
        ],
        None,
        cli=True,
        check=lambda out, t: _check_equal(len(json.loads(out)["multipliers"]), 5),
        right="the file's options merged into the problem's (dimension 4: 5 multipliers)",
    ),
]


def _bomb_override() -> str:
    anchors = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 7):
        anchors.append(f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "problem.x=[" + ", ".join(anchors) + "]"


# -- checks of accepted inputs -------------------------------------------------------------------
def _check_equal(value: Any, expected: Any) -> None:
    assert value == expected, f"got {value!r}, expected {expected!r}"


def _check_text(out: str, *parts: str) -> None:
    assert all(part in out for part in parts), out


def _check_nonfinite(tmp: Path) -> None:
    summary = _summary(tmp, "nonfinite")  # strict JSON: no NaN or Infinity tokens
    assert summary["objective"] is None and "objective" in summary["nonfinite"]
    _strict_json(tmp / "nonfinite" / "history.json")


def _check_json_line(out: str) -> None:
    summary = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert summary["objective"] is None and "objective" in summary["nonfinite"]


def _check_zero(tmp: Path) -> None:
    summary = _summary(tmp, "zero")
    assert summary["steps"] == 0 and summary["objective"] is None
    assert summary["reference"]["multiplier_error"] > 0  # measured from the initial zeros
    assert len((tmp / "zero" / "history.csv").read_text().splitlines()) == 1  # header only


def _check_validate_zero(out: str) -> None:
    report = json.loads(out)
    assert report["steps"] == 0 and report["passed"] is False and report["failures"]


def _check_empty_group(report: Any) -> None:
    assert report.passed, report.failures
    assert report.multiplier_errors["nothing"] == 0.0


# -- the tests -------------------------------------------------------------------------------------
def test_every_row_is_unique_and_listed_by_kind() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS)
    assert {row.kind for row in ROWS} == {CLI, RHS, FOLDERS, CHECKPOINTS, CONFIGS}
    assert all(row.right and row.check for row in ROWS if row.error is None)


def _shared_tmp(factory: Any) -> Path:
    path: Path = factory.getbasetemp() / "bad-input-runs"
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize("row", [r for r in ROWS if not r.cli], ids=lambda r: r.id)
def test_python_rows(row: Row, tmp_path_factory: Any) -> None:
    if row.skip:
        pytest.skip(row.skip)
    tmp = _shared_tmp(tmp_path_factory)
    if row.error is None:
        assert row.check is not None
        row.check(row.trigger(tmp), tmp)
        return
    with pytest.raises(row.error) as info:
        row.trigger(tmp)
    error = info.value
    if not isinstance(error, ValidationError):
        assert isinstance(error, ConstrainError), f"{type(error)} is not a library error"
    message = str(error)
    for part in row.contains:
        assert part in message, f"{row.id}: {part!r} not in {message!r}"


@pytest.mark.parametrize("row", [r for r in ROWS if r.cli], ids=lambda r: r.id)
def test_command_line_rows(
    row: Row, tmp_path_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from constrain.cli import main

    if row.skip:
        pytest.skip(row.skip)
    tmp = _shared_tmp(tmp_path_factory)
    argv = row.trigger(tmp)
    capsys.readouterr()
    status = main([*argv, "--no-progress"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if row.error is None:
        assert status == row.status, f"{row.id}: exit status {status}; stderr {captured.err!r}"
        assert row.check is not None
        row.check(captured.out, tmp)
        return
    assert status == 2, f"{row.id}: exit status {status}; stderr {captured.err!r}"
    assert captured.err.startswith("constrain: error: ") and captured.out == ""
    for part in row.contains:
        assert part in captured.err, f"{row.id}: {part!r} not in {captured.err!r}"


def _markdown() -> str:  # pragma: no cover - documentation helper
    """The table with the actual outcomes, one section per kind (run this file)."""
    import tempfile

    from constrain.cli import main

    sections: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for row in ROWS:
            if row.skip:
                continue
            if row.cli:
                err, out = io.StringIO(), io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                    status = main([*row.trigger(tmp), "--no-progress"])
                text = err.getvalue()
                message = text[text.find("constrain: error:") :] if row.error else ""
                outcome = (
                    f"exit {status} ({row.error.__name__})"
                    if row.error
                    else f"exit {status}: accepted"
                )
                what = f"CLI: {row.what}"
            else:
                try:
                    row.trigger(tmp)
                    message, outcome = "", "accepted"
                except BaseException as exc:
                    message, outcome = str(exc), type(exc).__name__
                what = row.what
            if row.error is None:
                message = row.right
            message = " ".join(message.replace(str(tmp), "DIR").split())
            if len(message) > 230:
                message = message[:227] + "..."
            message = message.replace("|", "\\|")
            sections.setdefault(row.kind, []).append(f"| {what} | `{outcome}` | {message} |")
    lines = []
    for kind, rows in sections.items():
        lines += [
            f"### {kind}",
            "",
            "| bad input | outcome | message (abridged) |",
            "|---|---|---|",
            *rows,
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(_markdown() + "\n")
