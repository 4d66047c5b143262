"""Run folders: the one place that checks, claims, locks and records a run's output folder.

A run folder belongs to one run:

* **checked before the first step**: ``--out`` must name a folder that is, or can be
  created, writable: not ``''``, not an existing file, not a path below a file
  (:func:`check_out_path`);
* **locked**: a lock file (``.constrain.lock``, an advisory ``flock`` held for the whole
  run) refuses a second run into the same folder while the first is alive;
* **owned**: ``run.json`` records the run id, its status and every file the run wrote.
  The run deletes only files it wrote (checkpoint clean-up is among its own checkpoints);
* **never silently reused**: a folder holding a previous run (its ``run.json``, report or
  checkpoints) is refused unless the caller passes ``overwrite`` (the previous run's files,
  and only those, are deleted first) or ``resume`` (the run continues in the folder and
  takes over its files);
* **written on interruption**: a first SIGINT (Ctrl-C) or SIGTERM stops the run after the
  current step (see :func:`deferred_signals`); what exists is then written and marked
  interrupted. A second signal stops at once.

Files are written atomically (:mod:`constrain._io`) with modes that follow the umask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from ._errors import ConfigError
from ._io import atomic_write_text, file_mode

__all__ = [
    "LOCK_FILE",
    "REPORT_FILES",
    "RUN_FILE",
    "RunFolder",
    "RunInterrupted",
    "StopFlag",
    "check_out_path",
    "deferred_signals",
    "is_writer",
]

logger = logging.getLogger("constrain")

RUN_FILE = "run.json"
"""The manifest of the run that owns the folder."""

LOCK_FILE = ".constrain.lock"
"""Held (``flock``) by the live run writing into the folder; removed when it ends."""

REPORT_FILES = ("summary.json", "config.yaml", "history.csv", "history.json")
"""Report files every run writes (also what marks a folder of an older version as used)."""

RUN_FORMAT = "constrain-run"

Status = Literal["running", "finished", "interrupted", "failed"]
Mode = Literal["new", "overwrite", "resume"]


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM after writing what existed.

    Attributes:
        signum: The signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: Steps completed when the run stopped (``-1``: stopped inside a step).
        folder: The run folder written (``None`` if the run had none).
    """

    def __init__(self, signum: int, step: int = -1, folder: Path | None = None) -> None:
        super().__init__(signum, step, folder)
        self.signum = int(signum)
        self.step = step
        self.folder = folder

    @property
    def exit_status(self) -> int:
        """The conventional exit status of a process ended by the signal (128 + signum)."""
        return 128 + self.signum


def is_writer() -> bool:
    """True in the process that writes files: rank 0 of a distributed run (already
    started, or described by ``torchrun``'s environment), and any plain process."""
    from . import distributed

    if distributed.is_distributed() or distributed.launched_distributed():
        if distributed.is_distributed():
            return distributed.is_main_process()
        return os.environ.get("RANK", "0").strip() in ("", "0")
    return True


def check_out_path(out: str | os.PathLike[str], what: str = "--out") -> Path:
    """Check that ``out`` names a folder this process can create or write into.

    Nothing is created. ``what`` names the option in messages.

    Raises:
        ConfigError: For ``''``, an existing file, a path below a file, or a folder
            (or the nearest existing parent) that is not writable; the message names the
            path and the fix.
    """
    if isinstance(out, str) and not out.strip():
        raise ConfigError(
            f"{what} {out!r} is empty; expected a folder path such as {what} runs/simplex "
            f"(to write into the current folder, say {what} . explicitly)."
        )
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{what} {str(path)!r} is an existing file, not a folder; expected a folder "
            "(it is created if missing). Choose another path."
        )
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and existing.exists() and not existing.is_dir():
        raise ConfigError(
            f"{what} {str(path)!r} lies below {str(existing)!r}, which is a file, so the "
            "folder cannot be created; expected a path whose parents are folders."
        )
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {str(path)!r}: the folder {str(existing)!r} is not writable (permission "
            "denied); choose a writable folder or change its permissions."
        )
    return path


def _inside(folder: Path, relative: object) -> Path | None:
    """``folder / relative`` if ``relative`` is a plain relative path inside ``folder``."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        return None
    parts = Path(relative).parts
    if any(part in ("..", "") for part in parts):
        return None
    return folder / relative


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {"run_id": "?", "status": "unreadable run.json", "files": []}
    return data if isinstance(data, dict) else {"run_id": "?", "files": []}


def _previous_files(folder: Path, manifest: dict[str, Any] | None) -> list[str]:
    """Files of the previous run in ``folder``: those its manifest lists, or (a folder of
    a version without manifests) the report files and checkpoints by name."""
    found: list[str] = []
    if manifest is not None:
        listed = manifest.get("files")
        for relative in listed if isinstance(listed, list) else []:
            path = _inside(folder, relative)
            if path is not None and path.is_file():
                found.append(str(relative))
        return found
    for name in REPORT_FILES:
        if (folder / name).is_file():
            found.append(name)
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir():
        from .checkpoint import list_checkpoints

        found += [f"checkpoints/{p.name}" for _, p in list_checkpoints(checkpoints)]
    return found


class RunFolder:
    """A run's claim on its output folder (see the module docstring).

    Use :meth:`claim`; then :meth:`record` every file written, :meth:`finish` with the
    outcome, and :meth:`release` (also a context manager exit) to drop the lock.

    Attributes:
        path: The folder.
        run_id: The run's id (kept across resumes of the run in this folder).
        mode: ``"new"``, ``"overwrite"`` or ``"resume"``.
        files: Files of the run, relative to ``path``, in the order written.
    """

    def __init__(self, path: Path, run_id: str, mode: Mode) -> None:
        self.path = path
        self.run_id = run_id
        self.mode: Mode = mode
        self.files: list[str] = []
        self.info: dict[str, Any] = {}
        self.status: Status = "running"
        self._lock_fd: int | None = None
        self._created: list[Path] = []
        self._wrote = False
        self._started = time.time()
        self._resumes: list[dict[str, Any]] = []

    # -- claiming ----------------------------------------------------------------------
    @classmethod
    def claim(
        cls,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        resume: bool = False,
        what: str = "--out",
        info: dict[str, Any] | None = None,
    ) -> RunFolder:
        """Check, create and lock ``out`` for this run.

        Args:
            out: The folder.
            overwrite: Delete the files of a previous run in the folder (only those).
            resume: Continue the run in the folder (its files become this run's).
            what: The option named in messages.
            info: Extra fields for ``run.json`` (problem, controller, ...).

        Raises:
            ConfigError: For a bad path (:func:`check_out_path`), a folder in use by a live
                run, or a folder holding a previous run when neither ``overwrite`` nor
                ``resume`` is given.
        """
        if overwrite and resume:
            raise ConfigError(
                f"{what} {str(out)!r}: overwrite and resume exclude each other (resume "
                "continues the run in the folder, overwrite deletes it); pass one."
            )
        path = check_out_path(out, what)
        mode: Mode = "resume" if resume else "overwrite" if overwrite else "new"
        folder = cls(path, secrets.token_hex(6), mode)
        folder.info = dict(info or {})
        folder._make_dirs()
        try:
            folder._lock(what)
            folder._take_over(what)
        except BaseException:
            folder.release()
            raise
        return folder

    def _make_dirs(self) -> None:
        missing = []
        current = self.path
        while not current.exists():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the run folder {str(self.path)!r}: {exc.strerror or exc}; "
                "choose a writable path."
            ) from None
        self._created = missing  # deepest first

    def _lock(self, what: str) -> None:
        path = self.path / LOCK_FILE
        for _ in range(10):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
            except OSError as exc:
                raise ConfigError(
                    f"{what} {str(self.path)!r} is not writable ({exc.strerror or exc}); "
                    "choose a writable folder or change its permissions."
                ) from None
            if not _try_lock(fd):
                owner = _read_lock(fd)
                os.close(fd)
                raise ConfigError(
                    f"{what} {str(self.path)!r} is in use by another run ({owner}); two runs "
                    "cannot write into one folder. Wait for it to end, or choose another "
                    f"{what}."
                )
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file that its previous holder removed meanwhile
                self._lock_fd = fd
                text = json.dumps(
                    {"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id}
                )
                os.ftruncate(fd, 0)
                os.write(fd, text.encode())
                return
            os.close(fd)
        raise ConfigError(f"could not lock the run folder {str(self.path)!r}; try again.")

    def _take_over(self, what: str) -> None:
        manifest = _read_manifest(self.path)
        previous = _previous_files(self.path, manifest)
        occupied = manifest is not None or bool(previous)
        if not occupied:
            if self.mode == "resume":
                self.mode = "new"
            return
        if self.mode == "new":
            run_id = (manifest or {}).get("run_id", "unknown")
            status = (manifest or {}).get("status", "finished")
            shown = ", ".join(previous[:4]) + (", ..." if len(previous) > 4 else "")
            resumable = any(p.startswith("checkpoints/") for p in previous)
            again = f", --resume {str(self.path)!r} to continue it" if resumable else ""
            raise ConfigError(
                f"{what} {str(self.path)!r} already holds a run (run id {run_id}, {status}; "
                f"files: {shown or RUN_FILE}). Refusing to mix two runs in one folder: pass "
                f"--overwrite to replace that run's files{again}, or choose another {what}."
            )
        if self.mode == "overwrite":
            for relative in previous:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / relative).unlink()
                    logger.info("overwrite: deleted %s of the previous run", relative)
            with contextlib.suppress(FileNotFoundError):
                (self.path / RUN_FILE).unlink()
            return
        # resume: this run continues the folder's run and takes over its files
        if manifest is not None and isinstance(manifest.get("run_id"), str):
            self.run_id = manifest["run_id"]
            started = manifest.get("started")
            self._started = float(started) if isinstance(started, (int, float)) else time.time()
            resumes = manifest.get("resumes")
            self._resumes = [r for r in resumes if isinstance(r, dict)] if resumes else []
        self.files = list(previous)
        for stale in (self.path / "checkpoints").glob(".step-*.tmp"):
            stale.unlink(missing_ok=True)  # left by this run when it was killed mid-write

    # -- recording ----------------------------------------------------------------------
    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the folder (``path`` must lie inside it)."""
        return Path(path).resolve().relative_to(self.path.resolve()).as_posix()

    def record(self, *paths: str | os.PathLike[str]) -> None:
        """Note files this run wrote (kept in ``run.json``)."""
        for path in paths:
            relative = self.relative(path)
            if relative not in self.files:
                self.files.append(relative)
        self._wrote = True
        self._write_manifest()

    def forget(self, path: str | os.PathLike[str]) -> None:
        """Delete a file of this run (refused for any other file) and drop it from the
        record."""
        relative = self.relative(path)
        if relative not in self.files:
            raise ConfigError(
                f"refusing to delete {str(path)!r}: it was not written by this run "
                f"({self.run_id}) of {str(self.path)!r}."
            )
        (self.path / relative).unlink(missing_ok=True)
        self.files.remove(relative)
        self._write_manifest()

    def own_checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of this run's checkpoints, oldest first."""
        from .checkpoint import list_checkpoints

        own = set(self.files)
        return [
            (step, path)
            for step, path in list_checkpoints(self.path / "checkpoints")
            if f"checkpoints/{path.name}" in own
        ]

    def note_resume(self, step: int, source: str | os.PathLike[str]) -> None:
        """Record that the run resumed at ``step`` from ``source``."""
        self._resumes.append({"at": time.time(), "step": int(step), "from": str(source)})

    def finish(self, status: Status, **extra: Any) -> None:
        """Record the outcome (``run.json``) if the run wrote anything."""
        self.status = status
        self.info.update(extra)
        if self._wrote or self.files:
            self._wrote = True
            self._write_manifest()

    def _write_manifest(self) -> None:
        manifest = {
            "format": RUN_FORMAT,
            "version": 1,
            "run_id": self.run_id,
            "status": self.status,
            **self.info,
            "started": self._started,
            "updated": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "resumes": self._resumes,
            "files": self.files,
        }
        atomic_write_text(self.path / RUN_FILE, json.dumps(manifest, indent=2, default=str))

    # -- release ------------------------------------------------------------------------
    def release(self) -> None:
        """Drop the lock; if this run wrote nothing, remove the folders it created."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.path / LOCK_FILE).unlink()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
        if not self._wrote:
            for folder in self._created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
            self._created = []

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_lock(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError, RecursionError):
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        if isinstance(data, dict) and data:
            return f"pid {data.get('pid')} on {data.get('host')}, run id {data.get('run_id')}"
    return "owner unknown"


class StopFlag:
    """Set by the first SIGINT/SIGTERM while :func:`deferred_signals` is active."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self, step: int) -> None:
        """Raise :class:`RunInterrupted` if a signal arrived (call between steps)."""
        if self.signum is not None:
            raise RunInterrupted(self.signum, step)


@contextlib.contextmanager
def deferred_signals(enabled: bool = True) -> Iterator[StopFlag]:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current step.

    Inside the block, the first signal sets the yielded :class:`StopFlag` (the caller
    checks it between steps, so that the state at the stop is a whole number of steps);
    a second one raises :class:`RunInterrupted` at once. Outside the main thread, or with
    ``enabled=False``, nothing changes (Ctrl-C raises ``KeyboardInterrupt`` as usual).
    """
    flag = StopFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.signum is not None:
            raise RunInterrupted(signum)
        flag.signum = signum
        logger.warning(
            "%s received: stopping after this step and writing what exists (send it again "
            "to stop at once)",
            signal.Signals(signum).name,
        )

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, handler)
    except ValueError:  # pragma: no cover - not the main interpreter
        yield flag
        return
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
