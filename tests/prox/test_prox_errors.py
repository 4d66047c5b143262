"""Edge cases and error messages of the proximal operators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from constrain import ConfigError, NonFiniteError, ShapeError, UnknownNameError
from constrain.prox import (
    group_l1,
    isotonic_regression,
    l1,
    weight_sharing,
    weight_sharing_,
    weight_sharing_l1,
)

METHODS = ["sort_pava", "parallel_pav", "divide_conquer", "auto"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0, 4)])
def test_empty_returns_empty_copy(method: str, shape: tuple[int, ...]) -> None:
    x = torch.empty(shape)
    out = weight_sharing(x, 1.0, method)
    assert out.shape == x.shape and out.dtype == x.dtype and out.numel() == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1,), (), (1, 1, 1)])
def test_one_element_is_copied(method: str, shape: tuple[int, ...]) -> None:
    x = torch.full(shape, 3.5, dtype=torch.float64)
    out = weight_sharing(x, 100.0, method)
    assert out.shape == x.shape and torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -math.nan])
def test_non_finite_input_is_reported(method: str, dtype: torch.dtype, bad: float) -> None:
    x = torch.randn(4, 5, dtype=dtype)
    x[2, 3] = bad
    x[3, 1] = bad
    with pytest.raises(NonFiniteError) as info:
        weight_sharing(x, 1.0, method)
    message = str(info.value)
    assert "2 non-finite" in message and "x[2, 3]" in message and "flat index 13" in message
    # also when nothing would be computed
    with pytest.raises(NonFiniteError):
        weight_sharing(x, 0.0, method)
    with pytest.raises(NonFiniteError):
        weight_sharing(x[2, 3:4], 1.0, method)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: l1(x, 0.1),
        lambda x: group_l1(x, 0.1),
        lambda x: weight_sharing_l1(x, 0.1, 0.1),
        lambda x: isotonic_regression(x.reshape(-1)),
    ],
)
def test_non_finite_input_other_proxes(fn: object) -> None:
    x = torch.randn(3, 3)
    x[1, 1] = math.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        fn(x)  # type: ignore[operator]


@pytest.mark.parametrize("strength", [-1.0, -1e-12, math.nan, math.inf, -math.inf])
def test_bad_strength(strength: float) -> None:
    x = torch.randn(5)
    for fn in (weight_sharing, weight_sharing_, l1, group_l1):
        with pytest.raises(ConfigError) as info:
            fn(x, strength)  # type: ignore[operator]
        message = str(info.value)
        assert "strength" in message and ">= 0" in message and "received" in message
    with pytest.raises(ConfigError, match="l1_strength"):
        weight_sharing_l1(x, 1.0, strength)


@pytest.mark.parametrize("strength", ["1.0", None, True, [1.0], torch.ones(2)])
def test_strength_of_wrong_type(strength: object) -> None:
    with pytest.raises(ConfigError, match="strength"):
        weight_sharing(torch.randn(5), strength)  # type: ignore[arg-type]


def test_strength_accepts_numpy_and_tensor_scalars() -> None:
    x = torch.randn(10, dtype=torch.float64)
    ref = weight_sharing(x, 0.5)
    for s in (np.float64(0.5), np.float32(0.5), torch.tensor(0.5), torch.tensor([0.5])):
        torch.testing.assert_close(weight_sharing(x, s), ref)  # type: ignore[arg-type]
    torch.testing.assert_close(weight_sharing(x, 1), weight_sharing(x, 1.0))


def test_unknown_method_lists_methods() -> None:
    with pytest.raises(UnknownNameError) as info:
        weight_sharing(torch.randn(5), 1.0, "sort-pav")
    message = str(info.value)
    assert "Did you mean 'sort_pava'" in message
    for name in ("auto", "sort_pava", "parallel_pav", "divide_conquer"):
        assert name in message
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ConfigError, match="method"):
        weight_sharing(torch.randn(5), 1.0, 3)  # type: ignore[arg-type]


def test_options_are_checked() -> None:
    x = torch.randn(9)
    with pytest.raises(ConfigError, match="unknown option"):
        weight_sharing(x, 1.0, "divide_conquer", probe_budgte=3)
    with pytest.raises(ConfigError, match="do not apply"):
        weight_sharing(x, 1.0, "sort_pava", probe_budget=3)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="probe_budget"):
            weight_sharing(x, 1.0, "divide_conquer", probe_budget=bad)
    # with "auto" an option for another method is ignored (one config for CPU and GPU)
    torch.testing.assert_close(
        weight_sharing(x, 1.0, "auto", probe_budget=8), weight_sharing(x, 1.0)
    )


@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.bool, torch.float16, torch.complex64]
)
def test_wrong_dtype(dtype: torch.dtype) -> None:
    x = torch.zeros(5, dtype=dtype)
    for fn in (weight_sharing, l1, group_l1):
        with pytest.raises(ShapeError) as info:
            fn(x, 1.0)  # type: ignore[operator]
        assert "float32 or float64" in str(info.value) and str(dtype) in str(info.value)


def test_not_a_tensor() -> None:
    with pytest.raises(ShapeError, match=r"torch\.Tensor"):
        weight_sharing(np.zeros(3), 1.0)  # type: ignore[arg-type]


def test_isotonic_regression_wants_1d() -> None:
    with pytest.raises(ShapeError, match="1-D"):
        isotonic_regression(torch.zeros(2, 2))
