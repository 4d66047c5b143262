"""Hard-concrete gates, gated layers and density measures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from constrain import ConfigError
from constrain.studies import (
    HardConcreteGate,
    L0Linear,
    achieved_density,
    expected_density,
    gated_layers,
    l0_density,
    magnitude_density,
)

DTYPE = torch.float64


def _gate(log_alpha: list[float], **options: float) -> HardConcreteGate:
    gate = HardConcreteGate(len(log_alpha), **options).to(DTYPE)  # type: ignore[arg-type]
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(log_alpha, dtype=DTYPE))
    return gate


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 2.0])
def test_prob_nonzero_matches_monte_carlo(log_alpha: float) -> None:
    """P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))."""
    torch.manual_seed(0)
    gate = _gate([log_alpha] * 200_000)
    z = gate.sample().detach()
    p = float(gate.prob_nonzero()[0].detach())
    assert p == pytest.approx(1 / (1 + math.exp(-(log_alpha - 2 / 3 * math.log(0.1 / 1.1)))))
    frequency = float((z > 0).double().mean())
    assert abs(frequency - p) < 4 * math.sqrt(p * (1 - p) / z.numel())
    # The stretched, clamped distribution puts mass exactly at 0 and at 1.
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 0.99))
def test_init_density_sets_the_initial_probability(init: float) -> None:
    gate = HardConcreteGate(5, init_density=init)
    assert torch.allclose(gate.prob_nonzero(), torch.full((5,), init), atol=1e-6)


def test_deterministic_gate_formula_and_threshold() -> None:
    """z = clamp(sigmoid(a) (zeta - gamma) + gamma, 0, 1); non-zero iff a > log(-gamma/zeta)."""
    threshold = math.log(0.1 / 1.1)
    gate = _gate([threshold - 1e-6, threshold + 1e-3, 0.0, 10.0])
    z = gate.deterministic()
    assert z[0].item() == 0.0 and z[1].item() > 0.0
    assert z[2].item() == pytest.approx(0.5 * 1.2 - 0.1)
    assert z[3].item() == 1.0
    gate.eval()
    assert torch.equal(gate(), z)


def test_expected_density_weights_layers_by_their_number_of_weights() -> None:
    model = nn.Sequential(
        L0Linear(4, 3, structure="weight"),  # 12 gates of 1 weight
        nn.ReLU(),
        L0Linear(3, 2, structure="input"),  # 3 gates of 2 weights
    ).to(DTYPE)
    first, second = (g for _, g in gated_layers(model))
    with torch.no_grad():
        first.log_alpha.fill_(0.0)
        second.log_alpha.copy_(torch.tensor([-10.0, 0.0, 10.0], dtype=DTYPE))
    p1, p2 = first.prob_nonzero(), second.prob_nonzero()
    total = 12 + 6
    expected = (p1.sum() + 2 * p2.sum()) / total
    assert expected_density(model).item() == pytest.approx(expected.item(), abs=1e-14)
    per_layer = expected_density(model, per_layer=True)
    assert per_layer.tolist() == pytest.approx([p1.mean().item(), p2.mean().item()], abs=1e-14)
    # Deterministic gates: all 12 of the first layer and 2 of 3 input gates (4 weights) are on.
    assert achieved_density(model).item() == pytest.approx((12 + 4) / total)
    assert achieved_density(model, per_layer=True).tolist() == pytest.approx([1.0, 2 / 3])


def test_expected_density_gradient() -> None:
    """d density / d a_k = sigmoid'(a_k - shift) * weights_per_gate / total weights."""
    gate = _gate([-1.0, 0.5, 2.0], weights_per_gate=4)
    model = nn.ModuleDict({"g": gate})
    density = expected_density(model)
    (grad,) = torch.autograd.grad(density, gate.log_alpha)
    p = gate.prob_nonzero().detach()
    assert torch.allclose(grad, p * (1 - p) * 4 / 12, atol=1e-15)


def test_l0_density_value_and_proxy() -> None:
    model = nn.Sequential(L0Linear(3, 2)).to(DTYPE)
    default = l0_density(model)
    assert default.proxy is None and default.value.requires_grad
    exact = l0_density(model, exact=True)
    assert exact.proxy is not None
    assert exact.value.item() == achieved_density(model).item()
    assert exact.proxy.item() == pytest.approx(expected_density(model).item())


@pytest.mark.parametrize("structure", ["weight", "input", "output"])
def test_l0_linear_eval_uses_the_effective_weight(structure: str) -> None:
    torch.manual_seed(0)
    layer = L0Linear(5, 3, structure=structure).to(DTYPE)  # type: ignore[arg-type]
    shapes = {"weight": (3, 5), "input": (5,), "output": (3,)}
    assert layer.gate.log_alpha.shape == shapes[structure]
    assert layer.gate.num_weights == 15
    x = torch.randn(7, 5, dtype=DTYPE)
    layer.eval()
    expected = F.linear(x, layer.effective_weight(), layer.linear.bias)
    assert torch.allclose(layer(x), expected)
    layer.train()
    out = layer(x)
    out.sum().backward()
    assert layer.gate.log_alpha.grad is not None


def test_magnitude_density() -> None:
    params = [torch.tensor([0.0, 1e-4, -2.0]), torch.tensor([[0.5, 0.0]])]
    assert magnitude_density(params) == pytest.approx(3 / 5)
    assert magnitude_density(params, threshold=1e-3) == pytest.approx(2 / 5)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="init_density"):
        HardConcreteGate(3, init_density=1.0)
    with pytest.raises(ConfigError, match="gamma < 0 < 1 < zeta"):
        HardConcreteGate(3, gamma=0.1)
    with pytest.raises(ConfigError, match="structure must be one of"):
        L0Linear(2, 2, structure="row")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="has no HardConcreteGate"):
        l0_density(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="threshold"):
        magnitude_density([torch.zeros(2)], threshold=-1.0)
    with pytest.raises(ConfigError, match="no parameter entries"):
        magnitude_density([])
