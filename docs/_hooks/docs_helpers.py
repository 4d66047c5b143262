"""Helpers for the hidden blocks of the documentation's executed examples.

Each returns a string: markdown-exec captures what a block *prints*, so a block does
``print(figure(fig))`` or ``print(shell("constrain list"))``.
"""

from __future__ import annotations

import base64
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def figure(fig: Any, alt: str = "figure", dpi: int = 90) -> str:
    """The Matplotlib figure ``fig`` as a Markdown image (inline PNG); closes ``fig``."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"


def image(path: str | Path, alt: str = "figure") -> str:
    """A PNG file as a Markdown image (inline)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"


def shell(
    command: str,
    *,
    cwd: str | Path | None = None,
    max_lines: int | None = None,
    expect: int = 0,
    env: dict[str, str] | None = None,
    stderr: bool = False,
) -> str:
    """Run ``command`` and return ``$ command`` plus its output, for a ``console`` block.

    The command runs with this interpreter's ``bin`` folder first on ``PATH`` (so
    ``constrain`` is the command of the environment building the docs). Only standard
    output is shown unless ``stderr`` is true (log messages go to standard error).

    Raises:
        RuntimeError: If the exit status is not ``expect`` (the build then fails).
    """
    full_env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    full_env["PATH"] = bin_dir + os.pathsep + full_env.get("PATH", "")
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    done = subprocess.run(
        shlex.split(command), cwd=cwd, env=full_env, capture_output=True, text=True, check=False
    )
    if done.returncode != expect:
        raise RuntimeError(
            f"`{command}` exited with {done.returncode} (expected {expect}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    text = done.stdout + (done.stderr if stderr else "")
    lines = text.rstrip("\n").splitlines()
    if max_lines is not None and len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join([f"$ {command}", *lines])


def pretty_json(data: Any, digits: int = 6) -> str:
    """``data`` as indented JSON with floats rounded to ``digits`` significant digits and
    lists of numbers kept on one line (for showing ``--json`` outputs)."""
    import json
    import re

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.{digits}g}")
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    text = json.dumps(rounded(data), indent=2)
    scalar = r"(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)"
    flat = re.compile(rf"\[\s*({scalar}(?:,\s*{scalar})*)\s*\]")
    return flat.sub(lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",")) + "]", text)


def cli(command: str, *, expect: int = 0, max_lines: int | None = None, cwd: str | Path | None = None) -> str:
    """Run a ``constrain ...`` command *in this process* and return ``$ command`` plus its
    standard output, for a ``console`` block (faster than :func:`shell`: no new
    interpreter, no second import of torch).

    The command's logging set-up is undone afterwards, so the build's own logging is left
    as it was.

    Raises:
        RuntimeError: If the exit status is not ``expect`` (the build then fails).
    """
    import contextlib
    import logging

    from constrain.cli import main

    args = shlex.split(command)
    if not args or args[0] != "constrain":
        raise ValueError(f"cli() runs `constrain ...` commands; got {command!r}")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(args[1:])
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 0
    finally:
        os.chdir(previous)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    if status != expect:
        raise RuntimeError(
            f"`{command}` exited with {status} (expected {expect}):\n"
            f"{out.getvalue()}\n{err.getvalue()}"
        )
    lines = out.getvalue().rstrip("\n").splitlines()
    if max_lines is not None and len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join([f"$ {command}", *lines])
