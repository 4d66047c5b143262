"""proxsparse-digits: the masks are 2:4 at exactly 50% density, the mask is applied to the
pretrained weights, and a smoke run writes its report and figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from _figures import record_figures, unreadable
from constrain_problems.proxsparse_digits import PRUNED, DigitsMLP, apply_masks

from constrain import RunConfig, get_problem, run
from constrain.prox import is_two_four, two_four_mask


def test_apply_masks_prunes_a_copy_to_two_four() -> None:
    torch.manual_seed(0)
    model = DigitsMLP(8)
    params = dict(model.named_parameters())
    masks = {name: two_four_mask(params[name].detach()) for name in PRUNED}
    pruned = apply_masks(model, masks)
    pruned_params = dict(pruned.named_parameters())
    for name in PRUNED:
        assert is_two_four(pruned_params[name].detach())
        assert not is_two_four(params[name].detach())  # the original is untouched
        kept = masks[name]
        torch.testing.assert_close(pruned_params[name][kept], params[name][kept])
        assert float(kept.double().mean()) == 0.5
    torch.testing.assert_close(pruned.fc3.weight, model.fc3.weight)


def test_hidden_must_be_a_multiple_of_four() -> None:
    data = get_problem("proxsparse-digits").default_config().model_dump()
    data["problem"]["hidden"] = 30
    with pytest.raises(Exception, match="multiple of 4"):
        run(RunConfig.parse(data), progress=False, figures=False)


def test_study_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = record_figures(monkeypatch)
    data = get_problem("proxsparse-digits").default_config().model_dump()
    data["steps"] = 10
    data["problem"] = {**data["problem"], "seeds": 2, "pretrain_steps": 30, "hidden": 8}
    summary = run(RunConfig.parse(data), out=tmp_path, progress=False).summary
    assert summary["density"] == 0.5 and summary["density_std"] == 0.0
    for key in ("dense_accuracy", "magnitude_accuracy", "proxsparse_accuracy"):
        assert 0.0 <= summary[key] <= 1.0 and f"{key}_std" in summary
    assert 0.0 <= summary["two_four_fraction"] <= 1.0
    assert len(summary["per_seed"]) == 2
    assert summary["test_accuracy"] == summary["proxsparse_accuracy"]
    assert (tmp_path / "proxsparse_accuracy.png").is_file()
    assert "proxsparse_accuracy.png" in drawn
    assert not [p for name, fig in drawn.items() for p in unreadable(fig, name)]


@pytest.mark.slow
def test_default_study_learned_masks_beat_magnitude_pruning() -> None:
    """The default study (3 seeds): the ProxSparse mask, applied to the pretrained weights,
    is more accurate on average than one-shot magnitude 2:4 pruning at the same density,
    and mask learning leaves most blocks 2:4 already."""
    config = get_problem("proxsparse-digits").default_config()
    summary = run(config, progress=False, figures=False).summary
    assert summary["proxsparse_accuracy"] > summary["magnitude_accuracy"]
    assert summary["two_four_fraction"] > 0.9
    assert summary["dense_accuracy"] > summary["proxsparse_accuracy"]
