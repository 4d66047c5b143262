"""Figures: the run report's PNGs and the controller comparison, with and without a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt

from constrain import (
    History,
    StepRecord,
    plots,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _history(n: int, steps: int = 6, scale: float = 1.0) -> History:
    history = History([f"g[{i}]" for i in range(n)])
    for t in range(steps):
        history.append(
            StepRecord(
                step=t,
                objective=1.0 / (t + 1),
                max_violation=0.5**t,
                violation=[scale * (i - t) / 10 for i in range(n)],
                multipliers=[scale * (t + i) / 10 for i in range(n)],
            )
        )
    return history


@pytest.mark.parametrize("n", [0, 3, 40], ids=["no-constraints", "few", "many"])
def test_run_figures_writes_the_pngs(tmp_path: Path, n: int) -> None:
    before = set(plt.get_fignums())
    written = plots.run_figures(_history(n), None, tmp_path, title="demo")
    names = [p.name for p in written]
    assert names == ["overview.png", "objective.png", "constraints.png", "multipliers.png"]
    for path in written:
        assert path.parent == tmp_path and path.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary files
    assert set(plt.get_fignums()) == before  # every figure was closed


def test_run_figures_of_an_empty_history(tmp_path: Path) -> None:
    assert plots.run_figures(History(["a"]), None, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    figures: list[Any] = []
    original = plots.save_figure

    def save(fig: Any, path: Path) -> Path:
        figures.append(fig)
        return original(fig, path)

    monkeypatch.setattr(plots, "save_figure", save)
    return figures


def test_compare_figure_with_a_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _capture(monkeypatch)
    histories = {"gda": _history(3), "nupi": _history(3, scale=0.5)}
    reference = [0.2, 0.1, 0.4]
    path = plots.compare_figure(
        histories, tmp_path / "compare.png", reference=reference, title="demo"
    )
    assert path == tmp_path / "compare.png" and path.read_bytes()[:8] == PNG
    (fig,) = figures
    first = fig.axes[0]
    assert first.get_title() == "||lambda - lambda*||"
    assert [line.get_label() for line in first.get_lines()] == ["gda", "nupi"]
    for line, history in zip(first.get_lines(), histories.values(), strict=True):
        expected = np.linalg.norm(history.multipliers() - np.array(reference), axis=1)
        np.testing.assert_allclose(line.get_ydata(), np.maximum(expected, 1e-16))
        np.testing.assert_array_equal(line.get_xdata(), history.steps())


def test_compare_figure_without_a_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _capture(monkeypatch)
    histories = {"a": _history(2), "empty": History(["x", "y"])}
    path = plots.compare_figure(histories, tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG
    (fig,) = figures
    first = fig.axes[0]
    assert first.get_title() == "||lambda||"
    (line,) = first.get_lines()  # the empty history is skipped
    np.testing.assert_allclose(
        line.get_ydata(), np.linalg.norm(histories["a"].multipliers(), axis=1)
    )
    assert [ax.get_title() for ax in fig.axes] == ["||lambda||", "max violation", "objective"]


def test_compare_figure_ignores_a_reference_of_another_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _capture(monkeypatch)
    history = _history(3)
    plots.compare_figure({"a": history}, tmp_path / "c.png", reference=[1.0])
    (line,) = figures[0].axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), np.linalg.norm(history.multipliers(), axis=1))
