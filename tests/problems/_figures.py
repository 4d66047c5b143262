"""Checks that a study's figures can be read: every panel with data has labelled axes,
every image has a colour scale, and every labelled series appears in a legend.

:func:`record_figures` keeps every figure the code under test saves through
:func:`constrain.plots.save_figure`; :func:`unreadable` lists what a reader could not tell
from one figure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.category import StrCategoryFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FuncFormatter

import constrain.plots


def record_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """A mapping file name -> figure, filled as the code under test saves figures."""
    drawn: dict[str, Figure] = {}
    save = constrain.plots.save_figure

    def keep(fig: Figure, path: Path) -> Path:
        written = save(fig, path)
        drawn[Path(path).name] = fig
        return written

    monkeypatch.setattr(constrain.plots, "save_figure", keep)
    return drawn


def _is_colorbar(ax: Axes) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def _categorical(axis: Axis) -> bool:
    """Ticks labelled with names (``set_xticks(x, names)`` or string categories), not a
    number scale (whose axis needs a label)."""
    formatter = axis.get_major_formatter()
    return isinstance(formatter, (FixedFormatter, FuncFormatter, StrCategoryFormatter))


def _xlabelled(ax: Axes) -> bool:
    siblings = ax.get_shared_x_axes().get_siblings(ax)
    return any(a.get_xlabel() for a in siblings) or _categorical(ax.xaxis)


def _ylabelled(ax: Axes) -> bool:
    siblings = ax.get_shared_y_axes().get_siblings(ax)
    return any(a.get_ylabel() for a in siblings) or _categorical(ax.yaxis)


def unreadable(fig: Figure, name: str) -> list[str]:
    """What is missing: ``"name, panel 'title': no y label"`` and the like."""
    problems = []
    colorbars = [ax for ax in fig.axes if _is_colorbar(ax)]
    legends = bool(fig.legends) or any(ax.get_legend() for ax in fig.axes)
    for ax in fig.axes:
        if _is_colorbar(ax) or not ax.axison:
            continue
        where = f"{name}, panel {ax.get_title() or ax.get_label()!r}"
        if ax.images:
            if not colorbars:
                problems.append(f"{where}: an image without a colour bar")
            if not any(bar.get_ylabel() or bar.get_xlabel() for bar in colorbars):
                problems.append(f"{where}: the colour bar says not what it shows")
            continue
        if not (ax.lines or ax.patches or ax.collections):
            continue
        if not _ylabelled(ax):
            problems.append(f"{where}: no y label")
        if not _xlabelled(ax):
            problems.append(f"{where}: no x label")
        labelled = [label for label in ax.get_legend_handles_labels()[1] if label]
        if len(labelled) > 1 and not legends:
            problems.append(f"{where}: series {labelled} named but no legend")
    return problems
