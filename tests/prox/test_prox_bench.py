"""Smoke test of the prox benchmark (the real run is `constrain bench prox`)."""

from __future__ import annotations

import pytest
import torch

from constrain.prox import weight_sharing
from constrain.prox._bench import format_table, main, naive_numpy_scipy, run
from constrain.prox._inputs import make_input


def test_run_and_table() -> None:
    rows = run([300, 2000], kinds=["random", "worst"], repeats=1, warmup=0, pav_worst_max_d=500)
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


def test_main_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sizes", "500", "--repeats", "1", "--warmup", "0", "--kinds", "random"]) == 0
    out = capsys.readouterr().out
    assert "torch.sort" in out and "divide_conquer" in out


def test_naive_baseline_is_correct() -> None:
    x, lam = make_input("random", 1000)
    torch.testing.assert_close(naive_numpy_scipy(x, lam), weight_sharing(x, lam))


@pytest.mark.slow
def test_run_suite_quick() -> None:
    from constrain.prox._bench import run_suite

    lines: list[str] = []
    rows = run_suite(quick=True, printer=lines.append, repeats=1)
    assert {r.d for r in rows if r.method == "torch.sort"} >= {10**4, 10**5}
    assert any("worst-case / random" in line for line in lines)
    worst_pav = [r for r in rows if r.method == "parallel_pav" and r.kind == "worst"]
    assert worst_pav[0].rounds == 10**4 - 1
