"""Atomic file writes (a temporary file in the same folder, then a rename) with modes that
follow the umask, and strict JSON (non-finite numbers written as ``null``)."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_mode",
    "finite_json",
    "strict_json_dumps",
]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux's
    ``/proc/self/status``), otherwise set and restored at once under a lock."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically: readers see the old file or the complete new one.

    The data goes to a temporary file beside ``path``, is flushed and fsynced, gets the
    mode a plain ``open()`` would give it (``0o666 & ~umask``, not ``mkstemp``'s 0600), and
    then replaces ``path`` with ``os.replace`` (atomic on POSIX and Windows). On error the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` made strictly JSON-serialisable, and the paths of its non-finite numbers.

    Non-finite floats (NaN, +-Inf) become ``None`` (JSON ``null``); numpy scalars and
    arrays and torch tensors become Python numbers and lists; mapping keys become strings.
    The second element lists where a non-finite number was replaced, as dotted paths with
    list indices (``"reference.multipliers[3]"``), so that a reader can tell a missing
    value from a non-finite one.
    """
    replaced: list[str] = []

    def convert(item: Any, path: str) -> Any:
        if item is None or isinstance(item, (bool, str)):
            return item
        if isinstance(item, numbers.Integral):
            return int(item)
        if isinstance(item, numbers.Real):
            number = float(item)
            if math.isfinite(number):
                return number
            replaced.append(path or "(root)")
            return None
        if isinstance(item, Mapping):
            return {str(k): convert(v, f"{path}.{k}" if path else str(k)) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [convert(v, f"{path}[{i}]") for i, v in enumerate(item)]
        tolist = getattr(item, "tolist", None)  # numpy arrays and scalars, torch tensors
        if callable(tolist):
            return convert(tolist(), path)
        return convert(float(item), path)

    return convert(value, where), replaced


def strict_json_dumps(value: Any, *, indent: int | None = None, flag: str | None = None) -> str:
    """Strict JSON text of ``value`` (never a bare ``NaN`` or ``Infinity``).

    Non-finite numbers are written as ``null`` (see :func:`finite_json`). If ``flag`` is
    given and ``value`` is a mapping, the key ``flag`` is set to the list of replaced paths
    (empty when every number was finite), so the file says which nulls were non-finite.
    """
    converted, replaced = finite_json(value)
    if flag is not None and isinstance(converted, dict):
        converted[flag] = replaced
    return json.dumps(converted, indent=indent, allow_nan=False)
