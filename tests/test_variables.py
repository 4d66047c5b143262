"""Plain tensors as primal variables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from constrain import ConfigError, Variables


def test_named_parameters_from_tensors_arrays_lists_and_numbers() -> None:
    source = torch.tensor([1.0, 2.0], dtype=torch.float64)
    model = Variables(w=source, b=0.5, m=np.eye(2), n=[1, 2, 3])
    assert [name for name, _ in model.named_parameters()] == ["w", "b", "m", "n"]
    assert model.w.dtype == torch.float64 and model.w.requires_grad
    assert model.b.shape == () and model.b.item() == 0.5
    assert model.m.shape == (2, 2)
    assert model.n.dtype == torch.get_default_dtype()  # integers become floating point
    model.w.data.add_(1.0)
    assert source.tolist() == [1.0, 2.0]  # copied, not shared


def test_dtype_applies_to_non_tensor_values_only() -> None:
    model = Variables(dtype=torch.float64, a=[1.0, 2.0], b=torch.zeros(2, dtype=torch.float32), c=3)
    assert model.a.dtype == torch.float64
    assert model.b.dtype == torch.float32
    assert model.c.dtype == torch.float64


def test_zeros() -> None:
    model = Variables.zeros(dtype=torch.float64, w=4, b=(), m=(2, 3))
    assert model.w.shape == (4,) and model.b.shape == () and model.m.shape == (2, 3)
    assert all(p.dtype == torch.float64 and not p.any() for p in model.parameters())


def test_as_dict_returns_detached_copies() -> None:
    model = Variables(x=torch.ones(2))
    values = model.as_dict()
    values["x"] += 1
    assert model.x.tolist() == [1.0, 1.0] and not values["x"].requires_grad


def test_moves_with_the_module() -> None:
    model = Variables(x=torch.ones(2)).to(torch.float64)
    assert model.x.dtype == torch.float64


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "needs at least one named initial value"),
        ({"x": "abc"}, "variable 'x': expected a tensor, array or number"),
        ({"x": [1.0, float("nan")]}, "variable 'x': initial value is not finite"),
        ({"x": torch.tensor([float("inf")])}, "not finite"),
    ],
)
def test_bad_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Variables(**values)
