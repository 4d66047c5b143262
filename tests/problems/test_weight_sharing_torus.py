"""weight-sharing-torus: the torus shifts, the conv-likeness score (exactly 1 for circular
convolutions, invariant to unit order and to an undone input permutation, near its chance
level at initialization), the options' proxes, and a smoke run of the study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _figures import record_figures, unreadable
from constrain_problems.weight_sharing_torus import (
    PIXELS,
    CircularCNN,
    TorusBatches,
    TwoFC,
    all_shifts,
    conv_score,
    first_layer_matrix,
    locality_score,
    partial_weight_sharing,
    shift_table,
    tie_to_clusters,
)

from constrain import ConfigError, RunConfig, get_problem, run
from constrain.cli import _summary_table
from constrain.prox import count_clusters, weight_sharing


def test_shift_table_is_torch_roll() -> None:
    image = torch.arange(64.0).reshape(8, 8)
    table = shift_table()
    for dy, dx in ((0, 0), (1, 0), (0, 3), (5, 7)):
        rolled = image.reshape(-1)[table[dy * 8 + dx]].reshape(8, 8)
        torch.testing.assert_close(rolled, torch.roll(image, (dy, dx), (0, 1)))
    shifted = all_shifts(image.reshape(1, -1))
    assert shifted.shape == (64, 64)
    assert sorted(shifted[:, 0].tolist()) == list(range(64))  # pixel 0 visits every value


def test_torus_batches_roll_then_permute_reproducibly() -> None:
    images = torch.rand(20, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    first = list(TorusBatches(images, labels, 5, seed=3, permutation=perm))
    again = list(TorusBatches(images, labels, 5, seed=3, permutation=perm))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    table = shift_table()
    for x, y, idx in first:
        assert torch.equal(y, labels[idx])
        for row, i in zip(x, idx, strict=True):
            natural = torch.empty(64)
            natural[perm] = row  # undo the permutation
            assert any(torch.equal(natural, images[i][table[s]]) for s in range(64))
    plain = next(iter(TorusBatches(images, labels, 5, seed=3, shifts=False)))
    assert torch.equal(plain[0], images[plain[2]])


def _circular_conv_matrix(channels: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return first_layer_matrix(CircularCNN(channels, 2).double())


@pytest.mark.parametrize("channels", [1, 3])
def test_score_is_one_for_circular_convolutions(channels: int) -> None:
    matrix = _circular_conv_matrix(channels, 0)
    assert matrix.shape == (channels * PIXELS, PIXELS)
    assert conv_score(matrix) == pytest.approx(1.0, abs=1e-12)
    assert locality_score(matrix) == pytest.approx(1.0, abs=1e-12)
    # Invariant to the order of the units.
    shuffled = matrix[torch.randperm(len(matrix), generator=torch.Generator().manual_seed(2))]
    assert conv_score(shuffled) == pytest.approx(conv_score(matrix), abs=1e-12)
    # A layer seeing permuted inputs is scored after the permutation is undone.
    perm = torch.randperm(PIXELS, generator=torch.Generator().manual_seed(3))
    seen = matrix[:, perm]  # the same layer, expressed on permuted inputs x[perm]
    assert conv_score(seen, perm) == pytest.approx(1.0, abs=1e-12)
    assert conv_score(seen) < 0.9  # ... and not before


def test_score_of_random_initialization_is_near_its_chance_level() -> None:
    scores = []
    for seed in range(3):
        torch.manual_seed(seed)
        scores.append(conv_score(first_layer_matrix(TwoFC(4, 8))))
    assert all(0.30 < s < 0.42 for s in scores), scores
    torch.manual_seed(0)
    assert locality_score(first_layer_matrix(TwoFC(4, 8))) < 0.3


def test_score_errors() -> None:
    with pytest.raises(ConfigError, match="units, 64"):
        conv_score(torch.zeros(4, 10))
    with pytest.raises(ConfigError, match="constant"):
        conv_score(torch.ones(4, 64))


def test_partial_prox_step_and_cluster_tying() -> None:
    x = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    strength = 5.0
    full = weight_sharing(x, strength)
    torch.testing.assert_close(partial_weight_sharing(x, strength, 0.0), full)
    half = partial_weight_sharing(x, strength, 0.5)
    assert count_clusters(half) == count_clusters(full)  # the same clusters, still tied
    _, cluster = torch.unique(full, return_inverse=True)
    for c in range(int(cluster.max()) + 1):
        members = cluster == c
        mean_x = x[members].mean()
        expected = mean_x + 0.5 * (full[members][0] - mean_x)
        torch.testing.assert_close(half[members], expected.expand(int(members.sum())))
    tie = tie_to_clusters(cluster)
    tied = tie(x, 0.0)
    torch.testing.assert_close(tie(tied, 0.0), tied)  # a projection
    assert count_clusters(tied) <= count_clusters(full)
    torch.testing.assert_close(tied.mean(), x.mean())


def _smoke_config(**problem: object) -> RunConfig:
    data = get_problem("weight-sharing-torus").default_config().model_dump()
    data["steps"] = 6
    data["batch_size"] = 32
    data["problem"] = {**data["problem"], "seeds": 2, "test_shifts": False, **problem}
    return RunConfig.parse(data)


def test_study_smoke_with_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = record_figures(monkeypatch)
    result = run(_smoke_config(rho=0.3, retrain_steps=3), out=tmp_path, progress=False)
    summary = result.summary
    for model in ("ws", "fc", "cnn"):
        for suffix in ("", "_natural"):
            assert 0.0 <= summary[f"accuracy_{model}{suffix}"] <= 1.0
            assert 0.0 < summary[f"conv_score_{model}{suffix}"] <= 1.0 + 1e-9
    assert summary["conv_score_cnn_natural"] == pytest.approx(1.0, abs=1e-9)
    assert 0.3 < summary["conv_score_chance"] < 0.42
    table = summary["table"]["ws"]["permuted"]
    assert len(table["conv_score"]["values"]) == 2 and "retrained" in table
    assert "accuracy_ws_retrained" in summary
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["conv_score_ws"] == summary["conv_score_ws"]
    assert (tmp_path / "torus_filters.png").is_file() and (tmp_path / "torus_summary.png").is_file()

    # The printed summary compares 2FC + WS with both baselines, on both views.
    rows = dict(get_problem("weight-sharing-torus").summary_rows(summary))
    assert rows["test acc, permuted px"] == (
        f"2FC+WS {summary['accuracy_ws']:.4f}  2FC {summary['accuracy_fc']:.4f}  "
        f"CNN {summary['accuracy_cnn']:.4f}"
    )
    assert rows["conv score, natural px"].startswith(
        f"2FC+WS {summary['conv_score_ws_natural']:.3f}  2FC "
        f"{summary['conv_score_fc_natural']:.3f}  CNN 1.000"
    )
    assert f"random init {summary['conv_score_chance']:.3f}" in rows["conv score, permuted px"]
    assert "2FC+WS retrained, natural" in rows
    printed = _summary_table(summary)
    assert all(label in printed and text in printed for label, text in rows.items())
    interrupted = {k: v for k, v in summary.items() if k not in ("seeds", "table")}
    assert get_problem("weight-sharing-torus").summary_rows(interrupted) == []

    # Labelled axes, and one colour bar per row of filters.
    assert all(ax.get_ylabel() for ax in drawn["torus_summary.png"].axes)
    bars = [ax for ax in drawn["torus_filters.png"].axes if ax.get_ylabel() == "weight"]
    assert len(bars) == 3
    assert not [p for name, fig in drawn.items() for p in unreadable(fig, name)]


@pytest.mark.slow
def test_default_study_reproduces_the_conv_likeness_claim() -> None:
    """The default study (3 seeds, 1500 steps): weight sharing makes fc1 far more conv-like
    than plain 2FC on both pixel orders, and the CNN fails on shuffled pixels."""
    config = get_problem("weight-sharing-torus").default_config()
    summary = run(config, progress=False, figures=False).summary
    for suffix in ("", "_natural"):
        assert summary[f"conv_score_ws{suffix}"] > summary[f"conv_score_fc{suffix}"] + 0.2
        assert summary[f"conv_score_fc{suffix}"] < summary["conv_score_chance"] + 0.15
    assert summary["accuracy_cnn"] < summary["accuracy_fc"] - 0.2
    assert summary["accuracy_cnn_natural"] > summary["accuracy_cnn"] + 0.2
