"""Matplotlib figures of a run: objective, constraints against their bounds, multipliers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ._io import atomic_write
from .history import History
from .layout import ConstraintLayout

__all__ = ["compare_figure", "plot_history", "run_figures", "save_figure"]

_MAX_LINES = 12
_VIOLATION_LINTHRESH = 1e-6
"""Max-violation axes are logarithmic above this value and linear below (0 = feasible)."""


def save_figure(fig: Any, path: Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    atomic_write(
        Path(path), lambda handle: fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    )
    plt.close(fig)
    return Path(path)


def _entry_lines(ax: Any, steps: np.ndarray, values: np.ndarray, labels: Sequence[str]) -> None:
    """Plot every column if few, else the max/median/min envelope and a few entries."""
    n = values.shape[1]
    if n == 0:
        return
    if n <= _MAX_LINES:
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        for k in range(n):
            ax.plot(
                steps,
                values[:, k],
                lw=1.2,
                color=cmap(k % cmap.N),
                label=labels[k] if k < len(labels) else str(k),
            )
        ax.legend(fontsize=7, ncol=2)
        return
    ax.fill_between(steps, values.min(axis=1), values.max(axis=1), alpha=0.2, label=f"range of {n}")
    ax.plot(steps, values.max(axis=1), lw=1.2, label="max")
    ax.plot(steps, np.median(values, axis=1), lw=1.2, label="median")
    ax.legend(fontsize=7)


def plot_history(history: History, title: str = "") -> Any:
    """One figure with three panels: objective, standard-form constraints, multipliers."""
    steps = history.steps()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, history.objective(), lw=1.2)
    axes[0].set_title("objective")
    axes[0].set_xlabel("step")
    vector_steps = history.vector_steps()  # the vectors are recorded at a cadence
    _entry_lines(axes[1], vector_steps, history.violation(), history.labels)
    axes[1].axhline(0.0, color="k", lw=0.8, ls="--")
    axes[1].set_title("constraints (standard form, feasible <= 0)")
    axes[1].set_xlabel("step")
    _entry_lines(axes[2], vector_steps, history.multipliers(), history.labels)
    axes[2].set_title("multipliers")
    axes[2].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def run_figures(
    history: History, layout: ConstraintLayout | None, out: Path, title: str = ""
) -> list[Path]:
    """Write ``objective.png``, ``constraints.png``, ``multipliers.png`` and ``overview.png``."""
    if len(history) == 0:
        return []
    out = Path(out)
    steps = history.steps()
    written = [save_figure(plot_history(history, title), out / "overview.png")]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, history.objective(), lw=1.2)
    ax.set(title=f"{title}: objective", xlabel="step", ylabel="f(x)")
    written.append(save_figure(fig, out / "objective.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    vector_steps = history.vector_steps()
    _entry_lines(axes[0], vector_steps, history.violation(), history.labels)
    axes[0].axhline(0.0, color="k", lw=0.8, ls="--", label="bound")
    axes[0].set(title="constraint values minus bounds (<= 0 is feasible)", xlabel="step")
    axes[1].plot(steps, history.max_violation(), lw=1.2)
    axes[1].set_yscale("symlog", linthresh=_VIOLATION_LINTHRESH)
    axes[1].set(title="max violation", xlabel="step")
    fig.suptitle(title)
    written.append(save_figure(fig, out / "constraints.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    _entry_lines(ax, vector_steps, history.multipliers(), history.labels)
    ax.set(title=f"{title}: multipliers", xlabel="step", ylabel="lambda")
    written.append(save_figure(fig, out / "multipliers.png"))
    return written


def compare_figure(
    histories: Mapping[str, History],
    path: Path,
    *,
    reference: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """One figure comparing runs: multiplier error (or norm), max violation, objective.

    Args:
        histories: Label -> history (e.g. one per controller).
        path: Output PNG.
        reference: Exact dense multipliers; when given, the first panel shows
            ``||lam_t - lam*||`` (the oscillation plot), else ``||lam_t||``.
        title: Figure title.
    """
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for label, history in histories.items():
        if len(history) == 0:
            continue
        steps = history.steps()
        lam_steps, lam = history.vector_steps(), history.multipliers()
        if reference is not None and lam.shape[1] == len(reference):
            dist = np.linalg.norm(lam - np.asarray(reference)[None, :], axis=1)
            axes[0].semilogy(lam_steps, np.maximum(dist, 1e-16), lw=1.2, label=label)
        else:
            axes[0].plot(lam_steps, np.linalg.norm(lam, axis=1), lw=1.2, label=label)
        axes[1].plot(steps, history.max_violation(), lw=1.2, label=label)
        axes[2].plot(steps, history.objective(), lw=1.2, label=label)
    axes[0].set(
        title="||lambda - lambda*||" if reference is not None else "||lambda||", xlabel="step"
    )
    axes[1].set(title="max violation", xlabel="step")
    axes[1].set_yscale("symlog", linthresh=_VIOLATION_LINTHRESH)
    axes[2].set(title="objective", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, Path(path))
