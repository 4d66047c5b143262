"""The fairness-adult-rates study: schedule, snapshots, report fields and (slow) the full run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _figures import record_figures, unreadable
from constrain_problems.fairness_adult_rates import AdultRates, ToleranceSchedule, _rates

from constrain import ConfigError, RunConfig, get_problem, run
from constrain.cli import main

SOLUTION_KEYS = {
    "test_accuracy",
    "test_tpr_gap",
    "test_fpr_gap",
    "test_equalized_odds_gap",
    "test_smallest_group_fpr",
    "train_accuracy",
    "train_equalized_odds_gap",
}


def _config(**problem: Any) -> RunConfig:
    data = get_problem("fairness-adult-rates").default_config().model_dump()
    data["steps"] = 40
    data["problem"] = {**data["problem"], "max_train_samples": 3000, "snapshot_every": 4, **problem}
    return RunConfig.parse(data)


def test_schedule_tightens_linearly_then_stays() -> None:
    problem = AdultRates(tolerance=0.1, fpr_bound=0.03, num_groups=2)
    schedule = ToleranceSchedule(problem, 0.1, 0.05, 10)
    assert [round(schedule.value(t), 10) for t in (0, 5, 10, 20)] == [0.1, 0.075, 0.05, 0.05]
    eo = problem.rates()[0]
    assert eo.rhs == 0.1
    problem.tolerance = 0.07  # re-declares the constraints with the new tolerance
    assert problem.rates()[0].rhs == 0.07
    assert [c.rhs for c in problem.all_constraints] == [0.07, 0.03]


def test_smoke_run_reports_every_solution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = record_figures(monkeypatch)
    result = run(_config(), out=tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 40
    assert set(summary) >= SOLUTION_KEYS
    for solution in ("last_iterate", "best_iterate", "unconstrained"):
        assert set(summary[solution]) >= SOLUTION_KEYS, solution
    assert [k for k in summary if k.startswith("test_") and k.endswith("_gap")] == [
        "test_tpr_gap",
        "test_fpr_gap",
        "test_equalized_odds_gap",
    ]
    randomized = summary["randomized"]
    assert randomized["num_snapshots"] == 10
    m = len(summary["multipliers"])  # 4 G equalized-odds entries + 1 FPR bound
    assert m == 4 * len(summary["groups"]) + 1
    assert 1 <= len(randomized["steps"]) <= m + 1
    assert sum(randomized["probabilities"]) == pytest.approx(1.0, abs=1e-9)
    assert summary["final_schedule_tolerance"] == pytest.approx(0.05)
    assert summary["smallest_group"] == "sex=Female & race=other"
    assert (tmp_path / "fairness_rates_test.png").stat().st_size > 5000
    assert "fairness_rates_test.png" in drawn
    assert not [p for name, fig in drawn.items() for p in unreadable(fig, name)]

    # The randomized accuracy is sum_j p_j accuracy_j (rates are linear in p).
    snapshots = result.setup.extras["snapshots"]
    dist = snapshots.distribution()
    model = result.setup.extras["factory"]()
    accuracies = []
    for j in dist.support:
        model.load_state_dict(snapshots.snapshots[j].state)
        accuracies.append(float(_rates(model, result.setup.extras["test"])["accuracy"]))
    expected = sum(p * a for p, a in zip(dist.probabilities[dist.support], accuracies, strict=True))
    assert summary["test_accuracy"] == pytest.approx(expected, abs=1e-9)


def test_bad_parameters_name_the_key() -> None:
    with pytest.raises(ConfigError, match="initial_tolerance"):
        run(_config(initial_tolerance=0.01), progress=False)
    with pytest.raises(ConfigError, match="snapshot_evry"):
        run(_config(snapshot_evry=3), progress=False)


@pytest.mark.slow
def test_full_run_meets_equalized_odds_on_train_and_narrows_the_test_gaps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "fairness-adult-rates", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["randomized"]["feasible_on_train"]
    assert summary["train_equalized_odds_gap"] <= summary["tolerance"] + 1e-6
    assert summary["train_smallest_group_fpr"] <= summary["fpr_bound"] + 1e-6
    base = summary["unconstrained"]
    assert base["test_tpr_gap"] > 0.1
    for solution in (summary, summary["best_iterate"]):
        assert solution["test_tpr_gap"] < base["test_tpr_gap"] - 0.05
        assert solution["test_accuracy"] > base["test_accuracy"] - 0.01
