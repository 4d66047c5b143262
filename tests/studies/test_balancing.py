"""Per-group accuracy-gap constraints between a dense and a sparse model."""

from __future__ import annotations

import pytest
import torch

from constrain import ShapeError
from constrain.studies import DenseAccuracy, accuracy_gap, dense_accuracy

DTYPE = torch.float64

LABELS = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=DTYPE)
M = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=DTYPE)
# Dense model: all correct in A, 2/3 in B; overall 5/6.
DENSE = torch.tensor([3.0, -3.0, 3.0, 3.0, -3.0, 3.0], dtype=DTYPE)
# Sparse model: 1/3 correct in A, 2/3 in B; overall 1/2.
SPARSE = torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0, 1.0], dtype=DTYPE)


def test_dense_reference_by_hand() -> None:
    ref = dense_accuracy(DENSE, LABELS, M)
    assert ref.group.tolist() == pytest.approx([1.0, 2 / 3])
    assert ref.overall == pytest.approx(5 / 6)


def test_absolute_and_relative_gaps_by_hand() -> None:
    ref = dense_accuracy(DENSE, LABELS, M)
    drop = accuracy_gap(SPARSE, LABELS, M, ref, relative=False)
    assert drop.value.tolist() == pytest.approx([2 / 3, 0.0], abs=1e-15)
    # Overall drop 5/6 - 1/2 = 1/3: psi = drop_g - 1/3.
    psi = accuracy_gap(SPARSE, LABELS, M, ref)
    assert psi.value.tolist() == pytest.approx([1 / 3, -1 / 3], abs=1e-15)
    soft = torch.sigmoid((2 * LABELS - 1) * SPARSE)
    assert psi.proxy is not None
    expected_a = (1.0 - soft[:3].mean()) - (5 / 6 - soft.mean())
    assert psi.proxy[0].item() == pytest.approx(expected_a.item(), abs=1e-15)


def test_proxy_is_differentiable_and_absent_groups_are_zero() -> None:
    ref = dense_accuracy(DENSE, LABELS, M)
    logits = SPARSE[:3].clone().requires_grad_(True)
    gaps = accuracy_gap(logits, LABELS[:3], M[:3], ref)
    assert gaps.value[1].item() == 0.0
    assert gaps.proxy is not None and gaps.proxy[1].item() == 0.0
    gaps.proxy[0].backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_multiclass_gap() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], dtype=DTYPE)
    labels = torch.tensor([0, 0, 0])
    m = torch.tensor([[1.0], [1.0], [1.0]], dtype=DTYPE)
    ref = DenseAccuracy(torch.tensor([1.0], dtype=DTYPE), 1.0)
    gap = accuracy_gap(logits, labels, m, ref, relative=False)
    assert gap.value.tolist() == pytest.approx([1 / 3])


def test_reference_with_other_groups_is_rejected() -> None:
    ref = DenseAccuracy(torch.ones(3, dtype=DTYPE), 1.0)
    with pytest.raises(ShapeError, match="same Groups definition"):
        accuracy_gap(SPARSE, LABELS, M, ref)
