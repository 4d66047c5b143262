"""Figures: the run report's PNGs and the comparison, drawn without pyplot.

Each figure must read without a caption: every axes names its quantity, the late window is
shaded, violations are drawn on a log axis above a feasible band, legends sit outside the
data and the exact reference is drawn where one is known.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from constrain import History, StepRecord, plots

PNG = b"\x89PNG\r\n\x1a\n"


def _history(n: int, steps: int = 6, scale: float = 1.0) -> History:
    history = History([f"g[{i}]" for i in range(n)])
    for t in range(steps):
        history.append(
            StepRecord(
                step=t,
                objective=1.0 / (t + 1),
                max_violation=0.5**t if t % 2 else 0.0,
                violation=[scale * (i - t) / 10 for i in range(n)],
                multipliers=[scale * (t + i) / 10 for i in range(n)],
            )
        )
    return history


def _capture(monkeypatch: pytest.MonkeyPatch, *, render: bool = False) -> list[Figure]:
    """Collect the figures instead of (or, with ``render``, as well as) writing PNGs."""
    figures: list[Figure] = []
    original = plots.save_figure

    def save(fig: Figure, path: Path) -> Path:
        figures.append(fig)
        return original(fig, path) if render else Path(path)

    monkeypatch.setattr(plots, "save_figure", save)
    return figures


def _readable(fig: Figure) -> None:
    """Every data axes has a title, an x label and a y label; a legend exists and sits outside
    every axes (a figure legend, or an axes legend anchored right of its axes)."""
    data_axes = [ax for ax in fig.axes if ax.get_lines() or ax.collections or ax.patches]
    assert data_axes
    for ax in data_axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel(), f"axes {ax.get_title()!r} has no x label"
        assert ax.get_ylabel() or ax.get_shared_y_axes().get_siblings(ax) != [ax], (
            f"axes {ax.get_title()!r} has no y label"
        )
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "no legend"
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1


def test_importing_plots_neither_imports_pyplot_nor_sets_a_backend() -> None:
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import constrain.plots\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("n", [0, 3, 40], ids=["no-constraints", "few", "many"])
def test_run_figures_writes_readable_pngs(
    tmp_path: Path, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    render = n == 3  # writing PNGs is slow: once is enough
    figures = _capture(monkeypatch, render=render)
    written = plots.run_figures(_history(n), None, tmp_path, title="demo")
    names = [p.name for p in written]
    expected = ["overview.png", "objective.png", "constraints.png", "multipliers.png"]
    assert names == (expected if n else expected[:2])  # no constraints: nothing else to draw
    if render:
        for path in written:
            assert path.parent == tmp_path and path.read_bytes()[:8] == PNG
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporaries
    for fig in figures:
        _readable(fig)


def test_run_figures_of_an_empty_history(tmp_path: Path) -> None:
    assert plots.run_figures(History(["a"]), None, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_run_figures_show_the_feasibility_line_late_window_and_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _capture(monkeypatch)
    history = _history(3, steps=50)
    reference = {"objective": 0.25, "multipliers": [0.1, 0.2, 0.3]}
    plots.run_figures(history, None, tmp_path, title="demo", reference=reference)
    overview, objective, constraints, multipliers = figures
    labels = {text for ax in overview.axes for text in ax.get_legend_handles_labels()[1]}
    assert "late window (last 10% of steps)" in labels
    assert "exact optimum f* (reference)" in labels
    assert "exact value (reference)" in labels
    # The late window spans the last 10% of the 50 steps: steps 45..49.
    spans = [p for p in objective.axes[0].patches if p.get_label().startswith("late window")]
    (span,) = spans
    x0, x1 = span.get_x(), span.get_x() + span.get_width()
    assert (x0, x1) == (44.5, 49.5)
    # Standard-form constraints come with the line g = 0.
    bound = [
        line for line in constraints.axes[0].get_lines() if line.get_label().startswith("bound")
    ]
    assert bound and list(bound[0].get_ydata()) == [0.0, 0.0]
    # Max violation: log axis, zero drawn at the floor inside the feasible band.
    violation_ax = constraints.axes[1]
    assert violation_ax.get_yscale() == "log"
    floor = plots.violation_floor(history.max_violation())
    ydata = np.concatenate([line.get_ydata() for line in violation_ax.get_lines()])
    assert ydata.min() == pytest.approx(floor)
    assert any(p.get_label().startswith("feasible") for p in violation_ax.patches)
    # Multipliers: each entry with its exact value dashed.
    dashed = [line for line in multipliers.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert sorted(float(line.get_ydata()[0]) for line in dashed if len(set(line.get_ydata())) == 1)[
        :3
    ] == pytest.approx([0.1, 0.2, 0.3])


def test_running_max_and_violation_floor() -> None:
    values = np.array([0.0, 3.0, 1.0, 0.0, 0.0, 2.0])
    np.testing.assert_array_equal(plots.running_max(values, 1), values)
    np.testing.assert_array_equal(plots.running_max(values, 2), [0, 3, 3, 1, 0, 2])
    np.testing.assert_array_equal(plots.running_max(values, 3), [0, 3, 3, 3, 1, 2])
    two = np.stack([values, -values], axis=1)
    np.testing.assert_array_equal(plots.running_max(two, 2)[:, 1], [0, 0, -1, 0, 0, 0])
    assert plots.violation_floor(np.array([0.0, 2e-4, 1.0])) == pytest.approx(10**-4.5)
    assert plots.violation_floor(np.zeros(3)) == 1e-6
    assert plots.violation_floor(np.array([1e-30])) == 1e-12


def test_an_oscillating_violation_is_drawn_as_its_envelope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feasible and infeasible every other step: the labelled line is the running max, which
    stays at the infeasible level instead of touching zero 500 times."""
    history = History(["g"])
    for t in range(1000):
        v = 0.5 if t % 2 else 0.0
        history.append(StepRecord(t, 1.0, v, [v], [0.0]))
    figures = _capture(monkeypatch)
    plots.run_figures(history, None, tmp_path)
    ax = figures[2].axes[1]
    (envelope,) = [line for line in ax.get_lines() if "running max" in line.get_label()]
    assert np.all(envelope.get_ydata()[1:] == 0.5)


def test_compare_figure_with_a_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _capture(monkeypatch, render=True)
    histories = {"gda": _history(3), "nupi": _history(3, scale=0.5)}
    reference = [0.2, 0.1, 0.4]
    path = plots.compare_figure(
        histories,
        tmp_path / "compare.png",
        reference=reference,
        reference_objective=0.1,
        title="demo",
    )
    assert path == tmp_path / "compare.png" and path.read_bytes()[:8] == PNG
    (fig,) = figures
    _readable(fig)
    first = fig.axes[0]
    assert first.get_title() == "||lambda - lambda*||" and first.get_yscale() == "log"
    lines = [line for line in first.get_lines() if line.get_label() in histories]
    assert [line.get_label() for line in lines] == ["gda", "nupi"]
    for line, history in zip(lines, histories.values(), strict=True):
        expected = np.linalg.norm(history.multipliers() - np.array(reference), axis=1)
        np.testing.assert_allclose(line.get_ydata(), np.maximum(expected, 1e-16))
        np.testing.assert_array_equal(line.get_xdata(), history.steps())
    objective = fig.axes[2]
    assert objective.get_yscale() == "log" and "f* = 0.1" in objective.get_title()
    (gda,) = [line for line in objective.get_lines() if line.get_label() == "gda"]
    np.testing.assert_allclose(gda.get_ydata(), np.abs(histories["gda"].objective() - 0.1))


def test_compare_figure_without_a_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _capture(monkeypatch)
    histories = {"a": _history(2), "empty": History(["x", "y"])}
    path = plots.compare_figure(histories, tmp_path / "c.png")
    assert path == tmp_path / "c.png"
    (fig,) = figures
    first = fig.axes[0]
    assert first.get_title() == "||lambda||"
    (line,) = [line for line in first.get_lines() if line.get_label() == "a"]  # empty skipped
    np.testing.assert_allclose(
        line.get_ydata(), np.linalg.norm(histories["a"].multipliers(), axis=1)
    )
    assert [ax.get_title() for ax in fig.axes] == [
        "||lambda||",
        "max violation (0 = feasible)",
        "objective",
    ]


def test_compare_figure_ignores_a_reference_of_another_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _capture(monkeypatch)
    history = _history(3)
    plots.compare_figure({"a": history}, tmp_path / "c.png", reference=[1.0])
    (line,) = [line for line in figures[0].axes[0].get_lines() if line.get_label() == "a"]
    np.testing.assert_allclose(line.get_ydata(), np.linalg.norm(history.multipliers(), axis=1))


def test_compare_figure_draws_seeds_as_median_and_band(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _capture(monkeypatch)
    seeds = [_history(2, scale=s) for s in (0.5, 1.0, 2.0)]
    plots.compare_figure({"gda": seeds}, tmp_path / "c.png")
    ax: Any = figures[0].axes[0]
    (median,) = [line for line in ax.get_lines() if line.get_label().startswith("gda")]
    assert "median of 3 seeds" in median.get_label()
    norms = np.stack([np.linalg.norm(h.multipliers(), axis=1) for h in seeds], axis=1)
    np.testing.assert_allclose(median.get_ydata(), np.median(norms, axis=1))
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    assert vertices[:, 1].max() == pytest.approx(norms.max())


def test_clip_transient_limits_the_axis_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    fig = plots.new_figure(4, 3)
    ax = fig.subplots()
    values = np.concatenate([[1000.0], np.linspace(1.0, 2.0, 99)])
    ax.plot(values)
    plots.clip_transient(ax, [values])
    low, high = ax.get_ylim()
    assert 0.8 < low < 1.0 and 2.0 < high < 2.2
    (note,) = ax.texts
    assert note.get_text() == "y axis clipped: the first 5% of the steps reach up to 1e+03"
    fig2 = plots.new_figure(4, 3)
    ax2 = fig2.subplots()
    ax2.plot(np.linspace(1.0, 2.0, 100))
    before = ax2.get_ylim()
    plots.clip_transient(ax2, [np.linspace(1.0, 2.0, 100)])
    assert ax2.get_ylim() == before and not ax2.texts


def test_per_sample_constraints_are_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A problem with per-sample constraints only (no dense labels) still gets its violation,
    feasible share and multiplier figures."""
    history = History([])
    for t in range(20):
        stats = {"max_violation": 0.5 / (t + 1), "feasible_fraction": t / 20,
                 "mean_multiplier": 0.1 * t, "max_multiplier": 0.2 * t}  # fmt: skip
        history.append(StepRecord(t, 1.0, 0.5 / (t + 1), [], [], per_sample={"sample_loss": stats}))
    figures = _capture(monkeypatch)
    written = plots.run_figures(history, None, tmp_path)
    assert [p.name for p in written] == [
        "overview.png",
        "objective.png",
        "constraints.png",
        "multipliers.png",
    ]
    labels = [line.get_label() for line in figures[3].axes[0].get_lines()]
    assert "sample_loss: mean multiplier of the batch" in labels
    (share,) = [
        line for line in figures[2].axes[0].get_lines() if line.get_label() == "sample_loss"
    ]
    np.testing.assert_allclose(share.get_ydata(), np.arange(20) / 20)
