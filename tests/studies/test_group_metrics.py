"""Per-group report: point values equal plain counts, bootstrap intervals are sound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from constrain import ConfigError, ShapeError
from constrain.studies import format_group_metrics, group_metrics


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    yhat = np.where(rng.random(n) < 0.8, y, 1 - y)
    group = rng.integers(0, 3, n)
    membership = np.eye(3)[group]
    return yhat, y, membership


def _count(yhat: np.ndarray, y: np.ndarray, member: np.ndarray) -> dict[str, float]:
    """The same statistics by counting with boolean masks."""
    g = member.astype(bool)
    pos, neg = g & (y == 1), g & (y == 0)
    return {
        "size": g.sum(),
        "positives": pos.sum(),
        "positive_rate": (yhat[g] == 1).sum() / g.sum(),
        "base_rate": pos.sum() / g.sum(),
        "accuracy": (yhat[g] == y[g]).sum() / g.sum(),
        "tpr": (yhat[pos] == 1).sum() / pos.sum(),
        "fpr": (yhat[neg] == 1).sum() / neg.sum(),
        "parity_gap": (yhat[g] == 1).sum() / g.sum() - (yhat == 1).sum() / len(yhat),
    }


def test_point_values_equal_counts() -> None:
    yhat, y, m = _data()
    report = group_metrics(yhat, y, m, ["a", "b", "c"], n_boot=0)
    assert report["n"] == 600
    assert report["positive_rate"] == pytest.approx(yhat.mean(), abs=1e-15)
    assert report["accuracy"] == pytest.approx((yhat == y).mean(), abs=1e-15)
    assert [r["name"] for r in report["groups"]] == ["a", "b", "c"]
    for k, row in enumerate(report["groups"]):
        expected = _count(yhat, y, m[:, k])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-14), key
        assert "positive_rate_ci" not in row
    gaps = [abs(r["parity_gap"]) for r in report["groups"]]
    assert report["max_abs_parity_gap"] == pytest.approx(max(gaps), abs=1e-15)


def test_overlapping_groups_and_tensor_inputs() -> None:
    yhat, y, m = _data()
    marginal = np.concatenate([m[:, :2].sum(axis=1, keepdims=True), m], axis=1)  # overlaps
    report = group_metrics(torch.tensor(yhat), torch.tensor(y), torch.tensor(marginal), n_boot=0)
    assert report["groups"][0]["size"] == int(marginal[:, 0].sum())
    expected = _count(yhat, y, marginal[:, 0])
    assert report["groups"][0]["positive_rate"] == pytest.approx(expected["positive_rate"])


def test_undefined_rates_are_none() -> None:
    yhat = np.array([1.0, 0.0, 1.0, 1.0])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    m = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=float)  # group 2 empty
    report = group_metrics(yhat, y, m, n_boot=50)
    first, second, empty = report["groups"]
    assert second["tpr"] is None and second["fpr"] == 1.0  # no positive label in group 1
    assert first["fpr"] is None and first["tpr"] == 0.5
    assert empty["size"] == 0 and empty["positive_rate"] is None
    assert empty["positive_rate_ci"] == [None, None]


def test_bootstrap_intervals_cover_the_point_and_shrink_with_n() -> None:
    small = group_metrics(*_data(300), n_boot=400, seed=1)
    large = group_metrics(*_data(30_000), n_boot=400, seed=1)
    for report in (small, large):
        for row in report["groups"]:
            for key in ("positive_rate", "accuracy", "tpr", "fpr", "parity_gap", "base_rate"):
                low, high = row[f"{key}_ci"]
                assert low <= row[key] <= high, key
        low, high = report["max_abs_parity_gap_ci"]
        assert low <= high
    width = lambda r: r["groups"][0]["positive_rate_ci"][1] - r["groups"][0]["positive_rate_ci"][0]  # noqa: E731
    # sqrt(100) = 10 times more data: intervals about 10 times narrower.
    assert 5 < width(small) / width(large) < 20
    # Binomial standard error of the first group's rate: a 95% interval is about 4 SE wide.
    row = large["groups"][0]
    se = np.sqrt(row["positive_rate"] * (1 - row["positive_rate"]) / row["size"])
    assert 3.0 < width(large) / se < 5.0


def test_report_is_deterministic_and_formats() -> None:
    data = _data()
    first = group_metrics(*data, names=["a", "b", "c"], n_boot=100, seed=3)
    assert first == group_metrics(*data, names=["a", "b", "c"], n_boot=100, seed=3)
    text = format_group_metrics(first, "test set")
    assert text.splitlines()[0] == "test set" and "parity gap" in text and "95% bootstrap" in text
    table = format_group_metrics(first, markdown=True)
    assert "| group | size | positive rate |" in table
    assert len([line for line in table.splitlines() if line.startswith("| a ")]) == 1


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((np.zeros(3), np.zeros(4), np.ones((3, 1))), ShapeError, "same n"),
        ((np.full(3, 0.5), np.zeros(3), np.ones((3, 1))), ConfigError, "must be 0 or 1"),
        ((np.zeros(3), np.zeros(3), np.ones((3, 2)), ["only one"]), ShapeError, "2 groups"),
    ],
)
def test_bad_input(args: tuple[object, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        group_metrics(*args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="confidence"):
        group_metrics(np.zeros(3), np.zeros(3), np.ones((3, 1)), confidence=1.5)
