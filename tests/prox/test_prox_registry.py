"""The prox registry, the contract every registered prox meets (parametrized from the
registry through tests/prox/_prox_db.py: shapes and dtypes, bad strengths, inputs and
options refused, non-expansiveness, optimality for its penalty) and the soft-thresholding
proxes."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from _prox_db import PROX_DB, parametrize
from _prox_db import info as row_of

import constrain.prox as prox
from constrain import ConfigError, NonFiniteError, ShapeError, UnknownNameError
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

pytest_generate_tests = parametrize

DTYPES = [torch.float32, torch.float64]


def call(name: str, x: torch.Tensor, strength: float, **options: Any) -> torch.Tensor:
    return get(name)(x, strength, **{**row_of(name).options, **options})


def sample(seed: int, shape: tuple[int, ...] = (6, 4), dtype: torch.dtype = torch.float64) -> Any:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype)


def test_the_table_covers_exactly_the_registered_proxes() -> None:
    registered, rows = set(names()), set(PROX_DB)
    assert not registered - rows, f"registered proxes without a row: {registered - rows}"
    assert not rows - registered, f"rows without a registered prox: {rows - registered}"


def test_builtin_names_registered() -> None:
    assert get("weight_sharing") is weight_sharing
    assert get("weight-sharing") is weight_sharing
    assert get("l1") is l1 and get("group_l1") is group_l1
    assert get("weight_sharing_l1") is weight_sharing_l1
    assert PROX.kind == "prox"


def test_unknown_prox_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        get("weight_sharring")
    assert "Did you mean 'weight_sharing'" in str(info.value)
    for name in names():
        assert name in str(info.value)


# -- generic: every registered prox -----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_registered_prox_contract(prox_name: str, dtype: torch.dtype) -> None:
    """A new tensor of x's shape, dtype and device; x untouched; strength 0 is the identity."""
    x = sample(0, dtype=dtype)
    before = x.clone()
    out = call(prox_name, x, 0.05)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    torch.testing.assert_close(call(prox_name, x, 0.0), x)


@pytest.mark.parametrize("strength", [-1.0, float("nan"), float("inf"), "0.1", None])
def test_bad_strength_is_refused_naming_it(prox_name: str, strength: Any) -> None:
    with pytest.raises(ConfigError, match="strength"):
        call(prox_name, sample(1), strength)


def test_bad_input_tensors_are_refused(prox_name: str) -> None:
    with pytest.raises(ShapeError, match="float32 or float64"):
        call(prox_name, torch.ones(3, 2, dtype=torch.int64), 0.1)
    with pytest.raises(ShapeError, match=r"torch\.Tensor"):
        call(prox_name, [[1.0, 2.0]], 0.1)
    bad = sample(2)
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        call(prox_name, bad, 0.1)


def test_bad_options_are_refused(bad_prox_options: tuple[str, dict[str, Any], type, str]) -> None:
    name, options, error, text = bad_prox_options
    with pytest.raises(error, match=re.escape(text)):
        get(name)(sample(3), 0.1, **options)


def test_prox_is_nonexpansive(prox_name: str) -> None:
    """||prox(x) - prox(y)|| <= ||x - y||, as for the prox of any convex function."""
    if not row_of(prox_name).convex:
        pytest.skip(f"{prox_name} is the prox of a non-convex penalty")
    for seed in range(5):
        x, y = sample(10 + seed), sample(20 + seed)
        if seed % 2:
            y = x + 1e-3 * y  # nearby points too
        gap = torch.linalg.vector_norm(call(prox_name, x, 0.7) - call(prox_name, y, 0.7))
        assert float(gap) <= float(torch.linalg.vector_norm(x - y)) * (1 + 1e-12) + 1e-15


@pytest.mark.parametrize("strength", [0.05, 0.7, 3.0])
def test_prox_is_optimal_for_its_penalty(exact_prox: str, strength: float) -> None:
    """p = prox(x) iff x - p is a subgradient of phi at p, i.e. for every y
    phi(y) >= phi(p) + <x - p, y - p>; checked for far, near, coordinate-wise and special
    points y."""
    row = row_of(exact_prox)
    assert row.penalty is not None
    options = dict(row.options)
    for seed in range(4):
        x = sample(30 + seed, shape=(5, 4)) * (1 + seed)
        p = call(exact_prox, x, strength).numpy()
        xn = x.numpy()
        phi_p = row.penalty(p, strength, options)
        gen = np.random.default_rng(seed)
        candidates = [np.zeros_like(p), xn, p.mean() + 0 * p]
        candidates += [gen.standard_normal(p.shape) * 2 for _ in range(10)]
        candidates += [p + 1e-4 * gen.standard_normal(p.shape) for _ in range(20)]
        candidates += [p + t * (xn - p) for t in (-0.5, 0.5, 2.0)]
        for i in range(p.size):  # one coordinate at a time, both ways
            step = np.zeros(p.size)
            step[i] = 1e-3
            candidates += [p + step.reshape(p.shape), p - step.reshape(p.shape)]
        for y in candidates:
            gap = row.penalty(y, strength, options) - phi_p - float(((xn - p) * (y - p)).sum())
            scale = 1.0 + abs(phi_p) + float(np.abs(xn).sum())
            assert gap >= -1e-12 * scale, (seed, gap)


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
