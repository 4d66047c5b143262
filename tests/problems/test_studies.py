"""The four studies: data loaders, reproducible minibatches, smoke runs and (slow) full runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _figures import record_figures, unreadable
from constrain_problems._data import Minibatches, load_adult, make_feasible_dataset

from constrain import ConfigError, RunConfig, get_problem, run
from constrain.cli import main

STUDIES = ["fairness-adult", "sparsity-digits", "feasible-learning", "weight-sharing-digits"]


def test_minibatches_are_a_function_of_seed_and_epoch() -> None:
    data = torch.arange(10.0)
    first = [b[1].tolist() for b in Minibatches([data], 3, seed=5)]
    again = [b[1].tolist() for b in Minibatches([data], 3, seed=5)]
    assert first == again
    assert len(first) == 3 and all(len(idx) == 3 for idx in first)  # last partial dropped
    loader = Minibatches([data], 5, seed=5)
    epoch0 = torch.cat([b[1] for b in loader])
    epoch1 = torch.cat([b[1] for b in loader])
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(10))
    assert not torch.equal(epoch0, epoch1)
    x, idx = next(iter(Minibatches([data], 4, seed=0)))
    assert torch.equal(x, data[idx])
    with pytest.raises(ConfigError, match="same length"):
        Minibatches([data, torch.zeros(3)], 2)
    with pytest.raises(ConfigError, match="exceeds the 10 samples"):
        Minibatches([data], 11)


def test_adult_is_the_official_split_preprocessed() -> None:
    data = load_adult()
    assert data.X_train.shape[0] == 32_561 and data.X_test.shape[0] == 16_281
    assert data.X_train.shape[1] == data.X_test.shape[1] == len(data.feature_names)
    assert np.isfinite(data.X_train).all() and np.isfinite(data.X_test).all()
    assert 0.23 < data.y_train.mean() < 0.25 and 0.22 < data.y_test.mean() < 0.25
    numerical = data.X_train[:, :5]
    assert np.allclose(numerical.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(numerical.std(axis=0), 1.0, atol=1e-9)
    onehot = data.X_train[:, 5:]
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    assert set(data.protected_train) == {"sex", "race"}
    without = load_adult(include_protected=False)
    assert not any(n.startswith(("sex=", "race=")) for n in without.feature_names)


def test_feasible_dataset_is_deterministic_and_large_enough() -> None:
    a = make_feasible_dataset(10_000, 100, seed=3)
    b = make_feasible_dataset(10_000, 100, seed=3)
    assert a[0].shape == (10_000, 20)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


SMOKE: dict[str, dict[str, Any]] = {
    "fairness-adult": {"steps": 15, "problem": {"max_train_samples": 2000}},
    "sparsity-digits": {"steps": 15, "problem": {"sweep": [0.5]}},
    "feasible-learning": {"steps": 15, "problem": {"num_samples": 1000, "num_test": 200}},
    "weight-sharing-digits": {"steps": 15},
}


def _config(name: str, controller: str | None = None, **changes: Any) -> RunConfig:
    data = get_problem(name).default_config(controller).model_dump()
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return RunConfig.parse(data)


@pytest.mark.parametrize("name", STUDIES)
def test_study_smoke_run_writes_its_report_and_figures(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = record_figures(monkeypatch)
    result = run(_config(name, **SMOKE[name]), out=tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 15
    spec = get_problem(name)
    figures = spec.figures(result.setup, result.solver, tmp_path / "again")
    pngs = [p for p in figures if p.suffix == ".png"]
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)
    assert all(p.suffix in (".png", ".md") and p.exists() for p in figures)
    assert {p.name for p in pngs} <= set(drawn)
    assert not [p for file, fig in drawn.items() for p in unreadable(fig, file)]
    expected_fields = {
        "fairness-adult": {"test_accuracy", "max_parity_gap", "unconstrained_test_accuracy"},
        "sparsity-digits": {"density", "expected_density", "test_accuracy", "sweep"},
        "feasible-learning": {"train", "erm_train", "test_accuracy"},
        "weight-sharing-digits": {"clusters", "mlp_clusters", "cnn_test_accuracy"},
    }[name]
    assert expected_fields <= set(summary)
    if name == "fairness-adult":  # the per-group table, for both splits, in JSON and Markdown
        tables = summary["group_metrics"]
        assert set(tables) == {"train", "test"}
        assert all("positive_rate_ci" in row for row in tables["test"]["groups"])
        assert (tmp_path / "fairness_groups.md").read_text().count("| group | size |") == 2


def test_study_runs_are_reproducible() -> None:
    config = _config("feasible-learning", **SMOKE["feasible-learning"])
    first = run(config, progress=False).summary
    second = run(config, progress=False).summary
    assert first["objective"] == second["objective"]
    assert first["train"] == second["train"]


def test_bad_study_parameter_names_the_key() -> None:
    with pytest.raises(ConfigError, match="toleranse"):
        run(_config("fairness-adult", steps=1, problem={"toleranse": 0.1}), progress=False)


@pytest.mark.slow
def test_fairness_adult_nupi_meets_the_stated_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "fairness-adult", "--controller", "nupi", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["max_parity_gap"] <= summary["parity_tolerance"] == 0.02
    assert summary["accuracy_drop"] <= summary["accuracy_margin"] == 0.02
    assert summary["unconstrained_max_parity_gap"] > 0.1
    assert summary["meets_parity"] and summary["within_accuracy_margin"]


@pytest.mark.slow
def test_sparsity_digits_meets_every_density_target() -> None:
    summary = run(_config("sparsity-digits"), progress=False).summary
    for entry in [summary, *summary["sweep"]]:
        assert entry["meets_target"], entry
        assert entry["density"] <= entry["target_density"]
        assert entry["test_accuracy"] > 0.93


@pytest.mark.slow
def test_feasible_learning_shortens_the_training_loss_tail() -> None:
    summary = run(_config("feasible-learning"), progress=False).summary
    assert summary["num_samples"] >= 10_000
    assert summary["train"]["max_loss"] < 0.5 * summary["erm_train"]["max_loss"]
    assert summary["train"]["infeasible_fraction"] < summary["erm_train"]["infeasible_fraction"]


@pytest.mark.slow
def test_weight_sharing_reduces_the_number_of_distinct_weights() -> None:
    summary = run(_config("weight-sharing-digits"), progress=False).summary
    assert summary["clusters"] < 0.5 * summary["mlp_clusters"]
    assert summary["test_accuracy"] > summary["mlp_test_accuracy"] - 0.02


def test_study_comparison_figures_show_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fairness: accuracy against parity gap per entry (seed dots, mean and spread) with the
    unconstrained model; sparsity: accuracy against density. Synthetic run summaries."""
    drawn = record_figures(monkeypatch)
    fair_runs = [
        {
            "test_accuracy": 0.83 + 0.001 * k,
            "max_parity_gap": 0.015 + 0.002 * k,
            "unconstrained_test_accuracy": 0.846,
            "unconstrained_max_parity_gap": 0.142,
            "parity_tolerance": 0.02,
            "accuracy_margin": 0.02,
        }
        for k in range(3)
    ]
    entries = [
        {"label": "nupi", "seeds": [0, 1, 2], "runs": fair_runs},
        {"label": "gda", "seeds": [0], "runs": fair_runs[:1]},
    ]
    (path,) = get_problem("fairness-adult").compare_figures(entries, tmp_path)
    assert path.name == "fairness_outcome.png" and path.stat().st_size > 5000
    sparse_runs = [
        {
            "test_accuracy": 0.97,
            "density": 0.1 + 0.01 * k,
            "target_density": 0.1,
            "dense_test_accuracy": 0.969,
            "test_samples": 450,
            "sweep": [{"density": 0.25, "test_accuracy": 0.972, "target_density": 0.3}],
        }
        for k in range(2)
    ]
    (path,) = get_problem("sparsity-digits").compare_figures(
        [{"label": "nupi", "seeds": [0, 1], "runs": sparse_runs}], tmp_path
    )
    assert path.name == "sparsity_tradeoff.png" and path.stat().st_size > 5000
    assert set(drawn) == {"fairness_outcome.png", "sparsity_tradeoff.png"}
    assert not [p for file, fig in drawn.items() for p in unreadable(fig, file)]
    assert (
        get_problem("fairness-adult").compare_figures([{"label": "x", "runs": [{}]}], tmp_path)
        == []
    )
