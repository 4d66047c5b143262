"""Checkpoints: save the whole run state atomically, load it safely, resume bit-for-bit.

A checkpoint file is a ``torch.save`` archive of

    {"format": "constrain-checkpoint", "version": 1,
     "meta": {"problem", "controller", "step", "every", "config", "world_size", ...},
     "solver": Solver.state_dict()}

made only of tensors and plain containers, so it loads with
``torch.load(..., weights_only=True)`` (no arbitrary code runs on load). Files are written
to a temporary file in the same folder and renamed (:func:`constrain._io.atomic_write`):
a process killed at any moment leaves either the previous file set or the new complete
file, never a partial one under the final name. Before loading, the archive's CRC-32
checksums are verified, so a truncated or bit-flipped file is reported as corrupt
instead of silently yielding wrong numbers.

A run folder holds ``checkpoints/step-000001000.pt`` files; the newest ``keep`` (default 2)
are kept. :func:`load_latest` loads the newest readable one and falls back to the one
before it if the newest is corrupt.
"""

from __future__ import annotations

import logging
import re
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ._errors import CheckpointError, ConfigError
from ._io import atomic_write
from .config import RunConfig
from .solver import Solver

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "run_with_checkpoints",
    "save_checkpoint",
]

logger = logging.getLogger("constrain")

CHECKPOINT_FORMAT = "constrain-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """``DIRECTORY/checkpoints/step-{step:09d}.pt``."""
    return Path(directory) / "checkpoints" / f"step-{step:09d}.pt"


def _checkpoint_folder(path: Path) -> Path:
    """The folder holding ``step-*.pt`` files for a run folder or a checkpoints folder."""
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint under ``directory``, oldest first.

    ``directory`` is a run folder (holding ``checkpoints/``) or the checkpoints folder.
    """
    folder = _checkpoint_folder(Path(directory))
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    path: str | Path, solver: Solver, meta: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write ``solver``'s whole state to ``path``.

    Args:
        path: Destination file (its folder is created).
        solver: The solver (model, optimizer, multipliers, controller and formulation
            state, history, RNG states and data position are saved).
        meta: Extra JSON-like metadata (problem name, config, ...), stored under ``meta``.

    Returns:
        ``path``.
    """
    path = Path(path)
    state = solver.state_dict()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "meta": {"step": solver.step_count, "saved_at": time.time(), **dict(meta or {})},
        "solver": state,
    }

    def write(handle: IO[bytes]) -> None:
        torch.save(payload, handle)

    atomic_write(path, write)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(..., weights_only=True)`` after verifying it.

    Returns:
        The payload: ``{"format", "version", "meta", "solver"}``; tensors on the CPU.

    Raises:
        CheckpointError: If the file is missing, truncated, corrupt (a CRC-32 mismatch),
            holds objects other than tensors and plain containers, or is not a constrain
            checkpoint of a supported version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a file).")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated (expected a complete torch.save "
            f"archive; reading it failed: {type(exc).__name__}: {exc})."
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: member {bad!r} fails its CRC-32 check "
            "(expected intact data; the file was damaged after it was written)."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, ...)
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be loaded safely (expected only tensors and plain "
            f"containers, readable with weights_only=True): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a constrain checkpoint (expected format "
            f"{CHECKPOINT_FORMAT!r}; got {got!r})."
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {payload.get('version')!r}; this "
            f"constrain reads version {CHECKPOINT_VERSION}."
        )
    if not isinstance(payload.get("meta"), dict) or not isinstance(payload.get("solver"), dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks its 'meta' or 'solver' section (expected both)."
        )
    return payload


def load_latest(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """Load the newest readable checkpoint under ``directory``.

    ``directory`` may be a run folder, its ``checkpoints/`` folder or a checkpoint file.
    A corrupt newest file is reported in the log and the previous one is tried.

    Raises:
        CheckpointError: If there is no checkpoint, or none can be read (each failure is
            listed).
    """
    directory = Path(directory)
    if directory.is_file():
        return directory, load_checkpoint(directory)
    found = list_checkpoints(directory)
    if not found:
        raise CheckpointError(
            f"no checkpoint in {str(directory)!r} (expected files checkpoints/step-*.pt written "
            "by `constrain run ... --checkpoint-every K --out DIR`)."
        )
    failures = []
    for _, path in reversed(found):
        try:
            payload = load_checkpoint(path)
        except CheckpointError as exc:
            logger.warning("%s; trying the previous checkpoint", exc)
            failures.append(str(exc))
            continue
        return path, payload
    raise CheckpointError(
        f"no readable checkpoint in {str(directory)!r}:\n  " + "\n  ".join(failures)
    )


def _run_folder(path: Path) -> Path:
    """The run folder of ``path``: a run folder, its ``checkpoints/`` folder or a file in it."""
    if path.is_file():
        path = path.parent
    return path.parent if path.name == "checkpoints" else path


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints and stale temporary files."""
    for _, path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)
    for stale in folder.glob(".step-*.tmp"):
        stale.unlink(missing_ok=True)


def _check_compatible(meta: Mapping[str, Any], config: RunConfig, where: Path) -> None:
    """The checkpoint must come from the same problem and the same settings (all but
    ``steps``)."""
    name = config.problem["name"]
    if meta.get("problem") != name:
        raise CheckpointError(
            f"checkpoint {str(where)!r} belongs to problem {meta.get('problem')!r}; this run is "
            f"{name!r}. Resume with `constrain run {meta.get('problem')} --resume ...` or start "
            "a new run."
        )
    saved = dict(meta.get("config") or {})
    current = config.model_dump(mode="json")
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, this run {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if key != "steps" and saved.get(key) != current.get(key)
    ]
    if differences:
        raise CheckpointError(
            f"checkpoint {str(where)!r} was written with other settings; expected the same "
            "configuration (only --steps may change):\n  " + "\n  ".join(differences)
        )


def run_with_checkpoints(
    config: RunConfig,
    *,
    out: str | Path | None = None,
    every: int | None = None,
    resume: str | Path | None = None,
    progress: bool | None = None,
    keep: int = 2,
    figures: bool = True,
) -> Any:
    """Run a registered problem, saving a checkpoint every ``every`` steps and at the end.

    ``config.steps`` is the *total* number of steps: resuming a run stopped at step 1000
    with ``steps=2000`` runs 1000 more, and the result is bit-for-bit that of an
    uninterrupted 2000-step run.

    Args:
        config: The run configuration.
        out: Run folder (checkpoints go to ``out/checkpoints``, the report to ``out``);
            defaults to ``resume``.
        every: Checkpoint interval in steps; ``None`` on resume reuses the saved interval.
        resume: Run folder (or checkpoint file) to continue from.
        progress: Progress bar.
        keep: Number of checkpoints kept (>= 1); older ones are deleted after a new one is
            written, so with 2 a damaged newest file still leaves a good one.
        figures: Write figures with the report.

    Returns:
        A :class:`constrain.runner.RunResult`.

    Raises:
        ConfigError: For a non-positive ``every`` or ``keep``, no folder to write to, or
            fewer total steps than the checkpoint already has.
        CheckpointError: If the checkpoint is unreadable or belongs to another problem or
            configuration.
    """
    from .distributed import is_main_process, world_size
    from .runner import RunResult, build_solver, get_problem, summarize, write_report

    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"--checkpoint-every must be a positive integer; got {every!r}.")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"keep must be a positive integer; got {keep!r}.")
    if out is None and resume is None:
        raise ConfigError(
            "--checkpoint-every needs --out DIR (the folder the checkpoints are written to)."
        )
    folder = Path(out) if out is not None else _run_folder(Path(resume))  # type: ignore[arg-type]
    spec = get_problem(config.problem["name"])
    setup, solver = build_solver(spec, config)
    if resume is not None:
        path, payload = load_latest(Path(resume))
        _check_compatible(payload["meta"], config, path)
        solver.initialise(setup.batch, setup.data)
        solver.load_state_dict(payload["solver"])
        if every is None:
            saved_every = payload["meta"].get("every")
            every = saved_every if isinstance(saved_every, int) and saved_every > 0 else None
        logger.info("resumed %s from %s at step %d", spec.name, path, solver.step_count)
    remaining = config.steps - solver.step_count
    if remaining < 0:
        raise ConfigError(
            f"steps={config.steps} but the checkpoint is already at step {solver.step_count}; "
            f"--steps is the total number of steps: give at least {solver.step_count}."
        )
    meta = {
        "problem": spec.name,
        "controller": config.controller_label,
        "every": every,
        "config": config.model_dump(mode="json"),
        "world_size": world_size(),
    }
    saved_at = solver.step_count if resume is not None else -1

    def save() -> None:
        nonlocal saved_at
        saved_at = solver.step_count
        if not is_main_process():
            return
        target = checkpoint_path(folder, solver.step_count)
        save_checkpoint(target, solver, meta)
        _prune(target.parent, keep)
        logger.info("checkpoint written: %s", target)

    def callback(current: Solver, record: Any) -> None:
        if every is not None and current.step_count % every == 0:
            save()

    start = time.perf_counter()
    solver.fit(setup.data, remaining, batch=setup.batch, progress=progress, callback=callback)
    seconds = time.perf_counter() - start
    if every is not None and solver.step_count != saved_at:
        save()
    summary = summarize(spec, config, setup, solver, seconds)
    if is_main_process():
        write_report(folder, spec, config, setup, solver, summary, figures=figures)
    return RunResult(summary, solver, setup, config)
