"""The prox registry contract and the soft-thresholding proxes."""

from __future__ import annotations

import pytest
import torch

import constrain.prox as prox
from constrain import ConfigError, ShapeError, UnknownNameError
from constrain.prox import (
    PROX,
    get,
    group_l1,
    l1,
    names,
    register,
    weight_sharing,
    weight_sharing_l1,
)

BUILTIN = ["group_l1", "l1", "weight_sharing", "weight_sharing_l1"]


def test_builtin_names_registered() -> None:
    assert set(BUILTIN) <= set(names())
    assert get("weight_sharing") is weight_sharing
    assert get("weight-sharing") is weight_sharing
    assert get("l1") is l1 and get("group_l1") is group_l1
    assert get("weight_sharing_l1") is weight_sharing_l1
    assert PROX.kind == "prox"


def test_unknown_prox_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        get("weight_sharring")
    assert "Did you mean 'weight_sharing'" in str(info.value)
    for name in BUILTIN:
        assert name in str(info.value)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_registered_prox_contract(name: str, dtype: torch.dtype) -> None:
    fn = get(name)
    x = torch.randn(6, 4, dtype=dtype)
    before = x.clone()
    options = {"l1_strength": 0.01} if name == "weight_sharing_l1" else {}
    out = fn(x, 0.05, **options)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    torch.testing.assert_close(fn(x, 0.0, **{k: 0.0 for k in options}), x)


def test_register_custom_prox() -> None:
    @register("test-shrink", overwrite=True)
    def shrink(x: torch.Tensor, strength: float) -> torch.Tensor:
        return x / (1.0 + strength)

    assert get("test-shrink") is shrink
    with pytest.raises(ConfigError, match="already registered"):
        register("test-shrink")(lambda x, strength: x)
    with pytest.raises(ConfigError, match="fn"):
        register("test-bad", overwrite=True)(42)  # type: ignore[type-var]


def test_exports() -> None:
    for name in (
        "weight_sharing",
        "weight_sharing_",
        "l1",
        "group_l1",
        "weight_sharing_l1",
        "PROX",
        "register",
        "get",
        "names",
        "count_clusters",
        "WeightSharingStats",
    ):
        assert name in prox.__all__ and hasattr(prox, name)


def test_l1_soft_threshold() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    torch.testing.assert_close(l1(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]))
    torch.testing.assert_close(l1(x, 0.0), x)


def test_group_l1_rows_default() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = group_l1(x, 1.0)
    torch.testing.assert_close(out, torch.tensor([[2.4, 3.2], [0.0, 0.0], [0.0, 0.0]]))


def test_group_l1_dims() -> None:
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    out = group_l1(x, 0.7, dim=0)  # groups are columns x[:, j, k]
    norms = torch.linalg.vector_norm(x, dim=0, keepdim=True)
    torch.testing.assert_close(out, x * torch.clamp(1 - 0.7 / norms, min=0))
    out2 = group_l1(x, 0.7, dim=(1, -1))  # groups x[i]
    norms2 = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out2, x * torch.clamp(1 - 0.7 / norms2, min=0))
    torch.testing.assert_close(group_l1(x, 0.7), out2)
    v = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(group_l1(v, 1.0), torch.tensor([2.4, 3.2]))
    assert group_l1(torch.empty(0, 3), 1.0).shape == (0, 3)
    torch.testing.assert_close(group_l1(torch.tensor(-2.0), 0.5), torch.tensor(-1.5))
    for bad in (3, (0, 0), 1.5):
        with pytest.raises(ShapeError, match="dim"):
            group_l1(x, 0.1, dim=bad)  # type: ignore[arg-type]


def test_group_l1_is_prox_of_group_norm() -> None:
    """Optimality: for a nonzero group, x - w = lam * w/||w||; for a zero group ||x|| <= lam."""
    x = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lam = 2.0
    w = group_l1(x, lam)
    for row_x, row_w in zip(x, w, strict=True):
        nw = torch.linalg.vector_norm(row_w)
        if nw > 0:
            torch.testing.assert_close(row_x - row_w, lam * row_w / nw)
        else:
            assert torch.linalg.vector_norm(row_x) <= lam


def test_weight_sharing_l1_arguments() -> None:
    x = torch.randn(20, dtype=torch.float64)
    a = weight_sharing_l1(x, 2.0, 0.5)
    b = weight_sharing_l1(x, 2.0, l1_ratio=0.25)
    torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="exactly one"):
        weight_sharing_l1(x, 2.0)
    with pytest.raises(ConfigError, match="exactly one"):
        weight_sharing_l1(x, 2.0, 0.5, l1_ratio=0.1)
    with pytest.raises(ConfigError, match="l1_ratio"):
        weight_sharing_l1(x, 2.0, l1_ratio=-1.0)
