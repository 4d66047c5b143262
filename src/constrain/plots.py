"""Matplotlib figures of a run and of a comparison of runs.

Every figure is drawn on a :class:`matplotlib.figure.Figure` directly: this module never
imports ``matplotlib.pyplot`` and never chooses a backend, so importing it changes nothing
for a notebook or an application (PNG files are written with the Agg renderer whatever the
backend). The figures follow one set of conventions, so that they read without a caption:

* the x axis is the optimizer step; every y axis names its quantity and unit;
* the *late window*, the last 10% of the steps (:data:`constrain.history.LATE_FRACTION`),
  is shaded grey: the ``late_*`` figures of summaries and comparison tables come from it;
* a violation is drawn as its positive part ``max(v, 0)`` on a log axis; a value of zero
  (feasible) sits at the bottom of the axis, inside a green *feasible* band;
* a curve that oscillates is drawn as its running maximum (the envelope that the
  ``late_max_violation`` figure summarises) over a thin line of the raw values, so a
  method that jumps between feasible and infeasible every step reads as an envelope, not
  as a solid block of vertical lines;
* standard-form constraint values come with the feasibility line ``g = 0`` (feasible
  below), and exact references (objective, multipliers) are drawn dashed where known;
* legends sit outside the axes;
* a comparison over several seeds draws the median and a min-max band.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._io import atomic_write
from .history import LATE_FRACTION, History
from .layout import ConstraintLayout

__all__ = [
    "clip_transient",
    "compare_figure",
    "finish_violation_axis",
    "legend_outside",
    "mark_late_window",
    "new_figure",
    "plot_history",
    "plot_violation",
    "run_figures",
    "running_max",
    "save_figure",
    "violation_floor",
]

_MAX_LINES = 12
"""Constraint entries drawn one line each; more are drawn as a max/median/min envelope."""

_RAW_WIDTH, _RAW_ALPHA = 0.5, 0.25
"""Style of the thin raw line under a running-max envelope."""

_LATE_COLOR = "0.88"
_FEASIBLE_COLOR = "#d6f0d6"
_MIN_FLOOR = 1e-12
_MAX_SHOWN = 1e200


def new_figure(width: float, height: float) -> Figure:
    """A :class:`~matplotlib.figure.Figure` with constrained layout (no pyplot)."""
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG atomically (the file appears complete or not at all).

    A figure made with ``matplotlib.pyplot`` is also closed, so that scripts that draw
    many figures with pyplot do not accumulate them.
    """
    atomic_write(
        Path(path), lambda handle: fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    )
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return Path(path)


def _colors(n: int) -> list[Any]:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]


def mark_late_window(
    ax: Axes, steps: np.ndarray, fraction: float = LATE_FRACTION, *, label: bool = True
) -> None:
    """Shade the last ``fraction`` of the steps (the late window) in grey."""
    steps = np.asarray(steps)
    if steps.size == 0:
        return
    total = int(steps[-1]) + 1
    start = total - max(1, round(fraction * total))
    ax.axvspan(
        start - 0.5,
        total - 0.5,
        color=_LATE_COLOR,
        zorder=0,
        lw=0,
        label=f"late window (last {fraction:.0%} of steps)" if label else None,
    )


def running_max(values: np.ndarray, window: int) -> np.ndarray:
    """Maximum over the last ``window`` entries (fewer at the start) along axis 0.

    Args:
        values: Shape ``(T,)`` or ``(T, k)``.
        window: Number of entries ``>= 1``.

    Returns:
        Same shape as ``values``.
    """
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.shape[0] == 0:
        return values.copy()
    pad = np.full((window - 1, *values.shape[1:]), -np.inf)
    padded = np.concatenate([pad, values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)
    return np.asarray(np.fmax.reduce(windows, axis=-1))  # NaN (a gap) only if all are NaN


def _window(length: int) -> int:
    """Running-max window: about 1% of the records (1 for short runs)."""
    return max(1, length // 100)


def violation_floor(*arrays: np.ndarray) -> float:
    """The value at which zero violations are drawn on a log axis.

    Half a decade below the smallest positive value of ``arrays``, so that only zeros are
    drawn there, but at least ``1e-12`` (smaller values are drawn at ``1e-12`` too, and the
    band's label says so); ``1e-6`` if no value is positive.
    """
    flat = (np.asarray(x, dtype=np.float64).ravel() for x in arrays)
    positive = [a[(a > 0) & np.isfinite(a)] for a in flat]
    smallest = min((float(p.min()) for p in positive if p.size), default=None)
    if smallest is None:
        return 1e-6
    return max(_MIN_FLOOR, float(10 ** (np.floor(np.log10(smallest)) - 0.5)))


def plot_violation(
    ax: Axes,
    steps: np.ndarray,
    values: np.ndarray,
    *,
    floor: float,
    color: Any = "k",
    label: str | None = None,
    envelope: bool = True,
) -> None:
    """Draw ``max(values, 0)`` on a log axis, values ``<= floor`` at ``floor``.

    With ``envelope`` and at least 200 points, the line is the running maximum over about
    1% of the points (the label says over how many steps), over a thin line of the raw
    values.

    Args:
        values: Shape ``(T,)`` (one curve) or ``(T, S)`` (seeds: the median and a
            min-max band are drawn).
    """
    values = np.asarray(values, dtype=np.float64)
    # Non-finite values are gaps; near 1e308 a log axis overflows while autoscaling.
    values = np.where(np.isfinite(values), np.clip(values, 0.0, _MAX_SHOWN), np.nan)
    window = _window(len(steps)) if envelope else 1
    shown = np.maximum(running_max(values, window), floor)
    if values.ndim == 2:
        ax.fill_between(steps, shown.min(axis=1), shown.max(axis=1), color=color, alpha=0.2, lw=0)
        line = np.median(shown, axis=1)
    else:
        if window > 1:
            ax.plot(steps, np.maximum(values, floor), color=color, lw=_RAW_WIDTH, alpha=_RAW_ALPHA)
        line = shown
    suffix = f" (running max over {window} steps)" if window > 1 and label else ""
    ax.plot(steps, line, color=color, lw=1.4, label=None if label is None else label + suffix)


def finish_violation_axis(ax: Axes, floor: float, *, what: str = "max violation") -> None:
    """Log scale, the green feasible band below ``floor`` and the axis label."""
    ax.set_yscale("log")
    bottom = floor / 3
    # The top from the data drawn (autoscaling a log axis over huge values overflows).
    drawn = [np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()]
    drawn += [
        np.asarray(c.get_paths()[0].vertices, dtype=np.float64)[:, 1]
        for c in ax.collections
        if c.get_paths()
    ]
    finite = np.concatenate([d[np.isfinite(d)] for d in drawn]) if drawn else np.zeros(0)
    top = 3 * float(finite.max()) if finite.size else floor * 10
    ax.axhspan(
        bottom,
        floor * 1.15,
        color=_FEASIBLE_COLOR,
        zorder=0,
        lw=0,
        label=(
            f"feasible: violation 0 (or below {floor:.0e}), drawn at {floor:.0e}"
            if floor <= _MIN_FLOOR
            else f"feasible: violation 0, drawn at {floor:.0e}"
        ),
    )
    ax.set_ylim(bottom, max(top, floor * 10))
    ax.set_ylabel(f"{what}, max(g, 0) (constraint units, log)")


def legend_outside(owner: Figure | Axes, axes: Sequence[Axes] | None = None) -> None:
    """One legend of the labelled artists of ``axes`` (duplicates merged), outside the data:
    below the panels of a figure (which needs the constrained layout of
    :func:`new_figure`), or right of a single axes."""
    axes_list = list(axes) if axes is not None else ([owner] if isinstance(owner, Axes) else [])
    handles: dict[str, Any] = {}
    for ax in axes_list:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    if not handles:
        return
    if isinstance(owner, Figure):
        owner.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=min(3, len(handles)),
            fontsize=8,
            frameon=False,
        )
    else:
        owner.legend(
            list(handles.values()),
            list(handles),
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
        )


def _entry_lines(
    ax: Axes,
    steps: np.ndarray,
    values: np.ndarray,
    labels: Sequence[str],
    reference: np.ndarray | None = None,
) -> None:
    """Every column if few (with its reference value dashed), else a max/median/min
    envelope."""
    n = values.shape[1]
    if n == 0:
        ax.text(0.5, 0.5, "no constraints", ha="center", va="center", transform=ax.transAxes)
        return
    if n <= _MAX_LINES:
        colors = _colors(n)
        for k in range(n):
            ax.plot(
                steps,
                values[:, k],
                lw=1.2,
                color=colors[k],
                label=labels[k] if k < len(labels) else str(k),
            )
            if reference is not None and reference.size == n:
                ax.axhline(reference[k], color=colors[k], lw=0.9, ls="--")
        if reference is not None and reference.size == n:
            ax.plot([], [], color="0.3", lw=0.9, ls="--", label="exact value (reference)")
        return
    ax.fill_between(
        steps,
        values.min(axis=1),
        values.max(axis=1),
        color="tab:blue",
        alpha=0.2,
        lw=0,
        label=f"range of the {n} entries",
    )
    ax.plot(steps, values.max(axis=1), lw=1.2, color="tab:blue", label="max entry")
    ax.plot(steps, np.median(values, axis=1), lw=1.2, color="tab:orange", label="median entry")
    if reference is not None and reference.size == n:
        ax.axhline(
            float(np.max(reference)),
            color="tab:blue",
            lw=0.9,
            ls="--",
            label="largest exact value (reference)",
        )


def _reference_arrays(
    reference: Mapping[str, Any] | None,
) -> tuple[float | None, np.ndarray | None]:
    if not reference:
        return None, None
    objective = reference.get("objective")
    multipliers = reference.get("multipliers")
    return (
        None if objective is None else float(objective),
        None if multipliers is None else np.asarray(multipliers, dtype=np.float64),
    )


def clip_transient(
    ax: Axes, values: Sequence[np.ndarray], *, skip: float = 0.05, keep: Sequence[float] = ()
) -> None:
    """Limit the y axis to the range of ``values`` after the first ``skip`` of the records
    (widened to show the levels ``keep``, e.g. a reference) when an early transient is more
    than 5 times wider than that range; says so on the axes.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in values if np.size(v)]
    if not arrays:
        return
    start = [max(1, int(skip * a.size)) for a in arrays]
    later = np.concatenate([a[k:] for a, k in zip(arrays, start, strict=True)])
    whole = np.concatenate(arrays)
    later, whole = later[np.isfinite(later)], whole[np.isfinite(whole)]
    if later.size == 0 or whole.size == 0:
        return
    later = np.concatenate([later, np.asarray(keep, dtype=np.float64)])
    low, high = float(later.min()), float(later.max())
    span = max(high - low, 1e-12 * max(1.0, abs(high)))
    if float(whole.max()) - float(whole.min()) <= 5 * span:
        return
    ax.set_ylim(low - 0.1 * span, high + 0.1 * span)
    beyond = []
    if float(whole.max()) > high + 0.1 * span:
        beyond.append(f"up to {float(whole.max()):.3g}")
    if float(whole.min()) < low - 0.1 * span:
        beyond.append(f"down to {float(whole.min()):.3g}")
    ax.text(
        0.99,
        0.98,
        f"y axis clipped: the first {skip:.0%} of the steps reach " + " and ".join(beyond),
        ha="right",
        va="top",
        fontsize=7,
        color="0.3",
        transform=ax.transAxes,
    )


def _objective_panel(
    ax: Axes, history: History, reference_objective: float | None, title: str = "objective"
) -> None:
    steps = history.steps()
    mark_late_window(ax, steps)
    ax.plot(steps, history.objective(), lw=1.2, color="tab:blue", label="objective f(x_t)")
    if reference_objective is not None:
        ax.axhline(
            reference_objective, color="k", lw=0.9, ls="--", label="exact optimum f* (reference)"
        )
    ax.set(title=title, xlabel="step", ylabel="objective f(x) (problem units)")
    keep = [] if reference_objective is None else [reference_objective]
    clip_transient(ax, [history.objective()], keep=keep)


def _max_violation_panel(ax: Axes, history: History) -> None:
    steps = history.steps()
    values = history.max_violation()
    floor = violation_floor(values)
    mark_late_window(ax, steps)
    plot_violation(ax, steps, values, floor=floor, label="max violation")
    finish_violation_axis(ax, floor)
    ax.set(title="max violation (0 = feasible)", xlabel="step")


def _per_sample(history: History) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample groups' recorded statistics: group -> statistic -> values per record."""
    groups = sorted({g for r in history for g in r.per_sample})
    return {
        g: {
            stat: np.array([r.per_sample.get(g, {}).get(stat, np.nan) for r in history])
            for stat in ("feasible_fraction", "mean_multiplier", "max_multiplier")
        }
        for g in groups
    }


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over the last ``window`` values (fewer at the start), NaN ignored."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    valid = np.isfinite(values)
    sums = np.cumsum(np.where(valid, values, 0.0))
    counts = np.cumsum(valid)
    sums[window:] = sums[window:] - sums[:-window].copy()
    counts[window:] = counts[window:] - counts[:-window].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _has_constraints(history: History) -> bool:
    return bool(history.labels) or any(r.per_sample for r in history)


def _multiplier_panel(
    ax: Axes, history: History, reference: np.ndarray | None, title: str = "multipliers"
) -> None:
    """Dense multipliers (each entry, or an envelope), else the per-sample groups' mean and
    max multiplier over the batch."""
    steps = history.steps()
    mark_late_window(ax, steps)
    if history.labels:
        # the vectors may be recorded at a cadence: drawn at the steps that have them
        _entry_lines(ax, history.vector_steps(), history.multipliers(), history.labels, reference)
    groups = _per_sample(history)
    window = _window(len(steps))
    smooth = f" (moving average over {window} steps)" if window > 1 else ""
    for color, (group, stats) in zip(_colors(max(1, len(groups))), groups.items(), strict=False):
        ax.plot(steps, stats["mean_multiplier"], color=color, lw=_RAW_WIDTH, alpha=_RAW_ALPHA)
        ax.plot(
            steps,
            _moving_average(stats["mean_multiplier"], window),
            color=color,
            lw=1.3,
            label=f"{group}: mean multiplier of the batch{smooth}",
        )
        ax.plot(
            steps,
            _moving_average(stats["max_multiplier"], window),
            color=color,
            lw=1.0,
            ls="--",
            label=f"{group}: max multiplier of the batch{smooth}",
        )
    ax.set(title=title, xlabel="step", ylabel="multiplier lambda (objective / constraint units)")


def plot_history(
    history: History, title: str = "", reference: Mapping[str, Any] | None = None
) -> Figure:
    """One figure: objective, max violation and multipliers, plus the distance to the exact
    multipliers when ``reference`` gives them.

    Args:
        history: The run's history.
        title: Figure title.
        reference: The summary's ``reference`` mapping (``objective``, dense
            ``multipliers``), drawn dashed when given.
    """
    ref_objective, ref_multipliers = _reference_arrays(reference)
    lam = history.multipliers()
    if not _has_constraints(history):  # only the objective has something to show
        fig = new_figure(7.5, 4.6)
        ax = fig.subplots()
        _objective_panel(ax, history, ref_objective, title="objective (no constraints)")
        if title:
            fig.suptitle(title)
        legend_outside(fig, [ax])
        return fig
    with_distance = ref_multipliers is not None and ref_multipliers.size == lam.shape[1] > 0
    fig = new_figure(21 if with_distance else 16, 4.8)
    axes = fig.subplots(1, 4 if with_distance else 3)
    _objective_panel(axes[0], history, ref_objective)
    _max_violation_panel(axes[1], history)
    steps = history.steps()
    _multiplier_panel(axes[2], history, ref_multipliers)
    if with_distance:
        assert ref_multipliers is not None
        mark_late_window(axes[3], steps)
        distance = np.linalg.norm(lam - ref_multipliers[None, :], axis=1)
        axes[3].semilogy(
            history.vector_steps(),
            np.clip(distance, 1e-16, _MAX_SHOWN),
            color="tab:purple",
            lw=1.2,
            label="||lambda - lambda*||",
        )
        axes[3].set(
            title="distance to the exact multipliers",
            xlabel="step",
            ylabel="||lambda - lambda*|| (2-norm, log)",
        )
    if title:
        fig.suptitle(title)
    legend_outside(fig, axes)
    return fig


def run_figures(
    history: History,
    layout: ConstraintLayout | None,
    out: Path,
    title: str = "",
    reference: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``overview.png``, ``objective.png``, ``constraints.png`` and ``multipliers.png``
    (the last two only for a problem with constraints).

    Args:
        history: The run's history (nothing is written if it is empty).
        layout: The solver's constraint layout (unused by the figures; kept for callers).
        out: Folder of the PNGs.
        title: Prefix of the figure titles (the problem's name).
        reference: The summary's ``reference`` mapping, drawn where it applies.

    Returns:
        The paths written.
    """
    if len(history) == 0:
        return []
    out = Path(out)
    steps = history.steps()
    ref_objective, ref_multipliers = _reference_arrays(reference)
    prefix = f"{title}: " if title else ""
    written = [save_figure(plot_history(history, title, reference), out / "overview.png")]

    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    _objective_panel(ax, history, ref_objective, title=f"{prefix}objective")
    legend_outside(fig, [ax])
    written.append(save_figure(fig, out / "objective.png"))
    if not _has_constraints(history):
        return written  # no constraints, no multipliers: nothing more to draw

    fig = new_figure(14, 4.8)
    axes = fig.subplots(1, 2)
    mark_late_window(axes[0], steps)
    if history.labels:
        _entry_lines(axes[0], history.vector_steps(), history.violation(), history.labels)
        axes[0].axhline(0.0, color="k", lw=1.0, ls="--", label="bound g = 0 (feasible below)")
        axes[0].set(
            title="constraints in standard form g = value - bound",
            xlabel="step",
            ylabel="g (constraint units; feasible: g <= 0, equalities g = 0)",
        )
    else:  # per-sample groups only: the share of the batch that meets its constraint
        groups = _per_sample(history)
        for color, (group, stats) in zip(_colors(len(groups)), groups.items(), strict=True):
            axes[0].plot(steps, stats["feasible_fraction"], color=color, lw=1.0, label=group)
        axes[0].axhline(1.0, color="k", lw=1.0, ls="--", label="every sample feasible")
        axes[0].set(
            title="per-sample constraints: feasible share of the batch",
            xlabel="step",
            ylabel="fraction of the batch with g_i <= 0",
            ylim=(0, 1.05),
        )
    _max_violation_panel(axes[1], history)
    if title:
        fig.suptitle(title)
    legend_outside(fig, axes)
    written.append(save_figure(fig, out / "constraints.png"))

    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    _multiplier_panel(ax, history, ref_multipliers, title=f"{prefix}multipliers")
    legend_outside(fig, [ax])
    written.append(save_figure(fig, out / "multipliers.png"))
    return written


def _stack(histories: Sequence[History]) -> tuple[np.ndarray, list[History]]:
    """Steps shared by ``histories`` (truncated to the shortest) and the non-empty ones."""
    kept = [h for h in histories if len(h)]
    if not kept:
        return np.zeros(0, dtype=np.int64), []
    length = min(len(h) for h in kept)
    return kept[0].steps()[:length], kept


def _seed_matrix(values: Sequence[np.ndarray], length: int) -> np.ndarray:
    return np.stack([v[:length] for v in values], axis=1)


def _draw_seeds(
    ax: Axes, steps: np.ndarray, matrix: np.ndarray, *, color: Any, label: str, log: bool
) -> None:
    """One line for one seed; median line and min-max band for several."""
    if log:
        matrix = np.maximum(matrix, 1e-16)
    if matrix.shape[1] == 1:
        ax.plot(steps, matrix[:, 0], lw=1.3, color=color, label=label)
        return
    ax.fill_between(steps, matrix.min(axis=1), matrix.max(axis=1), color=color, alpha=0.2, lw=0)
    ax.plot(
        steps,
        np.median(matrix, axis=1),
        lw=1.3,
        color=color,
        label=f"{label} (median of {matrix.shape[1]} seeds, band: min-max)",
    )


def compare_figure(
    histories: Mapping[str, History | Sequence[History]],
    path: Path,
    *,
    reference: Sequence[float] | None = None,
    reference_objective: float | None = None,
    title: str = "",
) -> Path:
    """One figure comparing runs: multiplier error (or norm), max violation, objective.

    Args:
        histories: Label -> history, or label -> histories of several seeds (drawn as the
            median with a min-max band).
        path: Output PNG.
        reference: Exact dense multipliers; when given (and of the runs' size), the first
            panel shows ``||lam_t - lam*||_2`` on a log axis, else ``||lam_t||_2``.
        reference_objective: Exact optimum, drawn dashed on the objective panel.
        title: Figure title.

    Returns:
        ``path``.
    """
    fig = new_figure(17, 5.2)
    axes = fig.subplots(1, 3)
    colors = _colors(len(histories))
    exact = None if reference is None else np.asarray(reference, dtype=np.float64)
    groups: list[tuple[str, Any, np.ndarray, list[History]]] = []
    for (label, value), color in zip(histories.items(), colors, strict=True):
        runs = [value] if isinstance(value, History) else list(value)
        steps, kept = _stack(runs)
        if kept:
            groups.append((label, color, steps, kept))
    longest = max(groups, key=lambda g: int(g[2][-1]) if g[2].size else 0, default=None)
    if longest is not None:
        for ax in axes:
            mark_late_window(ax, longest[2])
    with_reference = exact is not None and all(
        h.multipliers().shape[1] == exact.size for _, _, _, kept in groups for h in kept
    )
    all_violations = [h.max_violation() for _, _, _, kept in groups for h in kept]
    floor = violation_floor(*all_violations) if all_violations else 1e-6
    objective_curves: list[np.ndarray] = []
    for label, color, steps, kept in groups:
        length = steps.size
        lam = [h.multipliers() for h in kept]
        # multiplier vectors may be recorded at a cadence: their own steps
        rows = min(m.shape[0] for m in lam)
        lam_steps = kept[0].vector_steps()[:rows]
        if with_reference:
            assert exact is not None
            dist = [np.linalg.norm(m - exact[None, :], axis=1) for m in lam]
            _draw_seeds(
                axes[0], lam_steps, _seed_matrix(dist, rows), color=color, label=label, log=True
            )
        else:
            norms = [np.linalg.norm(m, axis=1) for m in lam]
            _draw_seeds(
                axes[0], lam_steps, _seed_matrix(norms, rows), color=color, label=label, log=False
            )
        violations = _seed_matrix([h.max_violation() for h in kept], length)
        plot_violation(
            axes[1],
            steps,
            violations[:, 0] if violations.shape[1] == 1 else violations,
            floor=floor,
            color=color,
            label=None,
        )
        objectives = _seed_matrix([h.objective() for h in kept], length)
        if reference_objective is not None:
            gaps = np.abs(objectives - reference_objective)
            _draw_seeds(axes[2], steps, gaps, color=color, label=label, log=True)
        else:
            _draw_seeds(axes[2], steps, objectives, color=color, label=label, log=False)
            objective_curves.extend(objectives.T)
    if with_reference:
        axes[0].set_yscale("log")
        axes[0].set(
            title="||lambda - lambda*||",
            xlabel="step",
            ylabel="distance to the exact multipliers (2-norm, log)",
        )
    else:
        axes[0].set(title="||lambda||", xlabel="step", ylabel="multiplier norm (2-norm)")
    window = _window(longest[2].size) if longest is not None else 1
    what = "max violation" if window == 1 else f"max violation, running max over {window} steps"
    finish_violation_axis(axes[1], floor)
    axes[1].set(title="max violation (0 = feasible)", xlabel="step")
    axes[1].set_ylabel(f"{what} (constraint units, log)")
    if reference_objective is not None:
        axes[2].set_yscale("log")
        axes[2].set(
            title=f"objective gap to the exact optimum f* = {reference_objective:.6g}",
            xlabel="step",
            ylabel="|f(x) - f*| (problem units, log)",
        )
    else:
        axes[2].set(title="objective", xlabel="step", ylabel="objective f(x) (problem units)")
        clip_transient(axes[2], objective_curves)
    if title:
        fig.suptitle(title)
    legend_outside(fig, axes)
    return save_figure(fig, Path(path))
