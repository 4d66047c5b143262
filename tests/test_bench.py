"""The solver benchmark: ratios equal the times shown; an estimate is printed first."""

from __future__ import annotations

import pytest

from constrain import bench


def test_solver_suite_ratio_is_the_ratio_of_the_times_shown() -> None:
    lines: list[str] = []
    rows = bench.bench_solver(groups=(1, 3), quick=True, printer=lines.append)
    assert [r["groups"] for r in rows] == [1, 3]
    for row in rows:
        assert row["library_ms"] > 0 and row["loop_ms"] > 0
        assert row["ratio"] == pytest.approx(row["library_ms"] / row["loop_ms"], rel=1e-12)
    assert "library ms" in lines[1] and len(lines) == 4


def test_run_suites_prints_an_estimate_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_solver(**kwargs: object) -> list[dict[str, object]]:
        calls.append("ran")
        return []

    monkeypatch.setattr(bench, "bench_solver", fake_solver)
    lines: list[str] = []
    bench.run_suites("solver", quick=True, printer=lines.append)
    assert lines[0].startswith("# constrain bench solver: estimated duration here about ")
    assert calls == ["ran"]
    assert 0 < bench.estimate_seconds("solver", quick=True) < bench.estimate_seconds("solver")
