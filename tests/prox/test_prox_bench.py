"""Smoke test of the prox benchmark (the real run is `constrain bench prox`)."""

from __future__ import annotations

import pytest
import torch

from constrain.prox import weight_sharing
from constrain.prox._bench import estimate_seconds, format_table, main, naive_numpy_scipy, run
from constrain.prox._inputs import make_input


def test_run_and_table() -> None:
    rows = run([300, 2000], kinds=["random", "worst"], min_run_time=0.001, pav_worst_max_d=500)
    methods = {r.method for r in rows}
    assert {"torch.sort", "np.sort (values)", "naive numpy+scipy"} <= methods
    assert {"sort_pava", "parallel_pav", "divide_conquer"} <= methods
    skipped = [r for r in rows if r.ms is None]
    assert [(r.d, r.kind, r.method) for r in skipped] == [(2000, "worst", "parallel_pav")]
    for r in rows:
        if r.method == "torch.sort":
            assert r.ratio == 1.0
        if r.method == "divide_conquer":
            assert r.rounds is not None and r.rounds > 0
        if r.method == "parallel_pav" and r.kind == "worst" and r.ms is not None:
            assert r.rounds == r.d - 1
    table = format_table(rows)
    assert "x torch.sort" in table and "skipped" in table
    assert len(table.splitlines()) == len(rows) + 2


def test_ratios_equal_the_ratios_of_the_times_shown() -> None:
    rows = run([500], kinds=["random", "worst"], min_run_time=0.001, baselines=False)
    by_key = {(r.kind, r.method): r for r in rows}
    for r in rows:
        assert r.ms is not None and r.ratio is not None
        sort = by_key[r.kind, "torch.sort"]
        assert r.sort_ms == sort.ms
        assert r.ratio == r.ms / sort.ms  # the same numbers as the ms column, not a paired median
        if r.kind == "worst":
            random = by_key["random", r.method].ms
            assert random is not None and r.vs_random == r.ms / random


def test_duration_estimate_grows_with_the_sizes() -> None:
    small = estimate_seconds([10**3], min_run_time=0.01)
    large = estimate_seconds([10**6], min_run_time=0.01)
    assert 0 < small < large


def test_main_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sizes", "500", "--min-run-time", "0.001", "--kinds", "random"]) == 0
    out = capsys.readouterr().out
    assert "torch.sort" in out and "divide_conquer" in out
    assert out.startswith("# estimated duration here: about ") and "# took " in out


def test_naive_baseline_is_correct() -> None:
    x, lam = make_input("random", 1000)
    torch.testing.assert_close(naive_numpy_scipy(x, lam), weight_sharing(x, lam))


@pytest.mark.slow
def test_run_suite_quick() -> None:
    from constrain.prox._bench import run_suite

    lines: list[str] = []
    rows = run_suite(quick=True, printer=lines.append, min_run_time=0.01)
    assert lines[0].startswith("# estimated duration of the prox suite here: about")
    assert {r.d for r in rows if r.method == "torch.sort"} >= {10**4, 10**5}
    assert any("worst-case / random" in line for line in lines)
    worst_pav = [r for r in rows if r.method == "parallel_pav" and r.kind == "worst"]
    assert worst_pav[0].rounds == 10**4 - 1
