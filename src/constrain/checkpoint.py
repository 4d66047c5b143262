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
instead of silently yielding wrong numbers, and the whole solver state is checked against
its schema (:mod:`constrain._state_schema`): a crafted or damaged value anywhere is reported
naming its field, before any of it is used.

A run folder holds ``checkpoints/step-000001000.pt`` files; the newest ``keep`` (default 2)
*of the run that owns the folder* are kept (see :mod:`constrain._run_folder`; files of
other runs are never deleted). :func:`load_latest` loads the newest readable one and falls
back to the one before it if the newest is corrupt.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from ._errors import CheckpointError, ConfigError
from ._io import atomic_write
from ._run_folder import RunFolder, deferred_signals
from ._state_schema import check_checkpoint_meta, check_solver_state
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


def _odd_member(archive: zipfile.ZipFile) -> str | None:
    """What is wrong with the first member that ``torch.save`` would not have written:
    a folder entry (by name, or by the MS-DOS folder attribute, which torch's reader
    honours and then reads no data), a compressed member, or one whose sizes disagree.
    Such an entry means the central directory was damaged; its CRC-32 may still pass."""
    for info in archive.infolist():
        if info.filename.endswith("/") or info.external_attr & 0x10:
            return f"member {info.filename!r} is marked as a folder"
        if info.compress_type != zipfile.ZIP_STORED:
            return f"member {info.filename!r} has compression method {info.compress_type}"
        if info.file_size != info.compress_size:
            return f"member {info.filename!r} has inconsistent sizes"
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(..., weights_only=True)`` after verifying it.

    Returns:
        The payload: ``{"format", "version", "meta", "solver"}``; tensors on the CPU.

    Raises:
        CheckpointError: If the file is missing, truncated, corrupt (a CRC-32 mismatch or
            any damage to the archive's structure), holds objects other than tensors and
            plain containers, is not a constrain checkpoint of a supported version, or
            holds a solver state or metadata that does not fit their schema (naming the
            field).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a file).")
    try:
        with zipfile.ZipFile(path) as archive:
            odd = _odd_member(archive)
            bad = None if odd else archive.testzip()
    except Exception as exc:  # the loader boundary: damage surfaces as many error types
        # (BadZipFile, NotImplementedError for a flipped compression method, EOFError,
        # zlib.error, UnicodeDecodeError, struct.error, OverflowError, ...)
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated (expected a complete torch.save "
            f"archive; reading it failed: {type(exc).__name__}: {exc})."
        ) from None
    if odd is not None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its zip directory is damaged ({odd}; "
            "expected the uncompressed files torch.save writes)."
        )
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
    try:
        check_solver_state(payload["solver"])
        check_checkpoint_meta(payload["meta"], payload["solver"]["step_count"])
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from None
    except RecursionError:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is nested too deeply to be a solver state."
        ) from None
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


def _folder_of(path: Path) -> Path:
    """The run folder of ``path``: a run folder, its ``checkpoints/`` folder or a file in it."""
    if path.is_file():
        path = path.parent
    return path.parent if path.name == "checkpoints" else path


def _prune(folder: RunFolder, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints *of this run* (never another run's)."""
    for _, path in folder.own_checkpoints()[:-keep]:
        folder.forget(path)


def _carry_stream(source: Path, folder: Path) -> None:
    """Resuming into another folder: start its history stream from the resumed run's (the
    checkpoint then cuts it back to its own position)."""
    from .runner import HISTORY_STREAM

    old, new = source / HISTORY_STREAM, folder / HISTORY_STREAM
    if old.is_file() and old.resolve() != new.resolve() and not new.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old, new)


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
    overwrite: bool = False,
    loggers: Sequence[Any] = (),
) -> Any:
    """Run a registered problem, saving a checkpoint every ``every`` steps and at the end.

    ``config.steps`` is the *total* number of steps: resuming a run stopped at step 1000
    with ``steps=2000`` runs 1000 more, and the result is bit-for-bit that of an
    uninterrupted 2000-step run.

    The run folder is checked and locked before the first step
    (:mod:`constrain._run_folder`): a folder holding a previous run is refused unless
    ``overwrite`` (the previous run's files are deleted, and only those) or ``resume``
    names it (the run continues there and owns its checkpoints). A first SIGINT/SIGTERM
    stops the run after the current step, writes a checkpoint and the report (marked
    ``"interrupted": true``) and raises :class:`constrain._run_folder.RunInterrupted`.

    Args:
        config: The run configuration.
        out: Run folder (checkpoints go to ``out/checkpoints``, the report to ``out``);
            defaults to the folder of ``resume``.
        every: Checkpoint interval in steps; ``None`` on resume reuses the saved interval.
        resume: Run folder (or checkpoint file) to continue from.
        progress: Progress bar.
        keep: Number of this run's checkpoints kept (>= 1); older ones are deleted after a
            new one is written, so with 2 a damaged newest file still leaves a good one.
        figures: Write figures with the report.
        overwrite: Replace a previous run in ``out`` (not with ``resume`` of that folder).
        loggers: Receive every record (e.g. a :class:`constrain.TensorBoardLogger`).

    Returns:
        A :class:`constrain.runner.RunResult`.

    Raises:
        ConfigError: For a non-positive ``every`` or ``keep``, no folder to write to, a
            folder that is unusable, in use or holds another run, or fewer total steps
            than the checkpoint already has.
        CheckpointError: If the checkpoint is unreadable or belongs to another problem or
            configuration.
    """
    from .runner import _single_process, check_optimizer, claim_folder, get_problem

    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"--checkpoint-every must be a positive integer; got {every!r}.")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"keep must be a positive integer; got {keep!r}.")
    if out is None and resume is None:
        raise ConfigError(
            "--checkpoint-every needs --out DIR (the folder the checkpoints are written to)."
        )
    if resume is not None:
        if isinstance(resume, str) and not resume.strip():
            raise ConfigError(
                "--resume '' is empty; expected the run folder (or checkpoint file) to "
                "continue, e.g. --resume runs/simplex."
            )
        source = Path(resume)
        if not source.is_file() and not list_checkpoints(source):
            raise CheckpointError(
                f"no checkpoint in {str(source)!r} (expected files checkpoints/step-*.pt "
                "written by `constrain run ... --checkpoint-every K --out DIR`)."
            )
        home = _folder_of(source)
        target = Path(out) if out is not None else home
        same = target.resolve() == home.resolve()
    else:
        target, same = Path(out), False  # type: ignore[arg-type]
    spec = get_problem(config.problem["name"])
    check_optimizer(config.optimizer)
    with deferred_signals(enabled=_single_process()) as stop:
        folder = claim_folder(
            out if out is not None else target, config, overwrite=overwrite, resume=same
        )
        try:
            return _run_in(
                folder, spec, config, resume, every, keep, progress, figures, stop, loggers
            )
        finally:
            if folder is not None:
                folder.release()


def _run_in(
    folder: RunFolder | None,
    spec: Any,
    config: RunConfig,
    resume: str | Path | None,
    every: int | None,
    keep: int,
    progress: bool | None,
    figures: bool,
    stop: Any,
    loggers: Sequence[Any] = (),
) -> Any:
    """The body of :func:`run_with_checkpoints` once the folder is claimed."""
    from .distributed import is_main_process, world_size
    from .runner import build_solver, execute, stream_history

    setup, solver = build_solver(spec, config)
    if resume is not None and folder is not None:
        _carry_stream(_folder_of(Path(resume)), folder.path)
    stream_history(solver, folder)
    solver.loggers += list(loggers)
    if resume is not None:
        path, payload = load_latest(Path(resume))
        _check_compatible(payload["meta"], config, path)
        solver.initialise(setup.batch, setup.data)
        solver.load_state_dict(payload["solver"])
        if every is None:
            saved_every = payload["meta"].get("every")
            every = saved_every if isinstance(saved_every, int) and saved_every > 0 else None
        if folder is not None:
            folder.note_resume(solver.step_count, path)
        logger.info("resumed %s from %s at step %d", spec.name, path, solver.step_count)
    remaining = config.steps - solver.step_count
    if remaining < 0:
        raise ConfigError(
            f"steps={config.steps} but the checkpoint is already at step "
            f"{solver.step_count}; --steps is the total number of steps: give at least "
            f"{solver.step_count}."
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
        if folder is None or not is_main_process():
            return
        written = save_checkpoint(checkpoint_path(folder.path, solver.step_count), solver, meta)
        folder.record(written)
        _prune(folder, keep)
        logger.info("checkpoint written: %s", written)

    def callback(current: Solver, record: Any) -> None:
        if every is not None and current.step_count % every == 0:
            save()

    def at_end(interrupted: bool) -> None:
        if (every is not None or interrupted) and solver.step_count != saved_at:
            save()

    return execute(
        spec,
        config,
        setup,
        solver,
        folder,
        remaining,
        progress=progress,
        figures=figures,
        callback=callback,
        at_end=at_end,
        stop=stop,
    )
