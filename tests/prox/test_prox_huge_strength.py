"""The weight-sharing prox keeps the mean at any strength (fact 1), also when the strength
dwarfs the weights and the shifted values would round it away."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from constrain.prox import weight_sharing

METHODS = ["sort_pava", "parallel_pav", "divide_conquer"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("strength", [1e16, 1e17, 1e300])
def test_issue_example(method: str, strength: float) -> None:
    x = torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64)
    out = weight_sharing(x, strength, method=method)
    torch.testing.assert_close(out, torch.full((3,), 2.0 / 3.0, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=40),
    exponent=st.floats(6, 300),
    method=st.sampled_from(METHODS),
)
def test_huge_strength_gives_the_mean(values: list[float], exponent: float, method: str) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    out = weight_sharing(x, 10.0**exponent * max(1.0, len(values)), method=method)
    mean = x.mean()
    assert torch.allclose(out, mean.expand_as(out), rtol=0, atol=1e-12 * (1 + float(x.abs().max())))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-10, 10), min_size=2, max_size=30), scale=st.floats(0.5, 3.0))
def test_methods_agree_around_the_merge_threshold(values: list[float], scale: float) -> None:
    """Near lam = (d-1)(max-min), where the shortcut starts, all methods agree and keep
    the mean."""
    x = torch.tensor(values, dtype=torch.float64)
    lam = scale * (len(values) - 1) * float(x.max() - x.min()) / 2
    outs = [weight_sharing(x, lam, method=m) for m in METHODS]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-9)
    assert abs(float(outs[0].mean() - x.mean())) <= 1e-9
