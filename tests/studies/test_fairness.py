"""Fairness constraints: exact counting values, sigmoid proxies and their gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from constrain import ConfigError, ShapeError, Solver
from constrain.studies import (
    FairClassification,
    correctness,
    demographic_parity,
    equalized_odds,
    group_accuracy,
    group_loss,
    max_parity_gap,
    negate,
    positive_rates,
    true_positive_rate_parity,
)

DTYPE = torch.float64

# Samples 0-2 in group A, 3-5 in group B; predictions [1, 0, 1, 0, 1, 0].
LOGITS = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, -0.2], dtype=DTYPE)
LABELS = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0], dtype=DTYPE)
M = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=DTYPE)


def test_positive_rates_and_demographic_parity_by_hand() -> None:
    rates = positive_rates(LOGITS, M)
    assert rates.value.tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-15)
    sig = torch.sigmoid(LOGITS)
    assert rates.proxy is not None
    assert rates.proxy.tolist() == pytest.approx(
        [float(sig[:3].mean()), float(sig[3:].mean())], abs=1e-15
    )

    gaps = demographic_parity(LOGITS, M)
    assert gaps.value.tolist() == pytest.approx([1 / 6, -1 / 6], abs=1e-15)
    assert gaps.proxy is not None
    expected = [float(sig[:3].mean() - sig.mean()), float(sig[3:].mean() - sig.mean())]
    assert gaps.proxy.tolist() == pytest.approx(expected, abs=1e-15)
    assert max_parity_gap(LOGITS, M) == pytest.approx(1 / 6, abs=1e-15)


def test_demographic_parity_proxy_gradient_matches_the_formula() -> None:
    """d gap_g / d s_i = (1[i in g] / n_g - 1 / n) * sigmoid'(s_i / T) / T."""
    temperature = 0.7
    s = LOGITS.clone().requires_grad_(True)
    gaps = demographic_parity(s, M, temperature=temperature)
    assert gaps.proxy is not None
    (grad,) = torch.autograd.grad(gaps.proxy[0], s)
    sig = torch.sigmoid(LOGITS / temperature)
    expected = (M[:, 0] / 3 - 1 / 6) * sig * (1 - sig) / temperature
    assert torch.allclose(grad, expected, atol=1e-14)
    assert not gaps.value.requires_grad


def test_true_positive_rate_parity_and_equalized_odds_by_hand() -> None:
    # Positives: A = {0, 2} predicted (1, 1); B = {3, 4} predicted (0, 1); overall 3/4.
    tpr = true_positive_rate_parity(LOGITS, LABELS, M)
    assert tpr.value.tolist() == pytest.approx([0.25, -0.25], abs=1e-15)
    # Negatives: A = {1}, B = {5}, both predicted 0: no FPR gap.
    eo = equalized_odds(LOGITS, LABELS, M)
    assert eo.value.tolist() == pytest.approx([0.25, -0.25, 0.0, 0.0], abs=1e-15)
    assert eo.proxy is not None and eo.proxy.shape == (4,)


def test_groups_without_evidence_get_zero_gap() -> None:
    m = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [1, 0]], dtype=DTYPE)
    gaps = demographic_parity(LOGITS, m)
    assert gaps.value[1].item() == 0.0
    assert gaps.proxy is not None and gaps.proxy[1].item() == 0.0
    labels = torch.zeros(6, dtype=DTYPE)
    tpr = true_positive_rate_parity(LOGITS, labels, M)  # no positive sample at all
    assert tpr.value.tolist() == [0.0, 0.0]


def test_group_accuracy_binary_and_multiclass() -> None:
    acc = group_accuracy(LOGITS, LABELS, M)
    assert acc.value.tolist() == pytest.approx([1.0, 2 / 3], abs=1e-15)
    soft = torch.sigmoid((2 * LABELS - 1) * LOGITS)
    assert acc.proxy is not None
    assert acc.proxy.tolist() == pytest.approx(
        [float(soft[:3].mean()), float(soft[3:].mean())], abs=1e-15
    )

    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 5.0, 0.0]], dtype=DTYPE)
    labels = torch.tensor([0, 1, 1])
    c = correctness(logits, labels)
    assert c.value.tolist() == [1.0, 0.0, 1.0]
    assert c.proxy is not None
    expected = torch.softmax(logits, dim=1)[torch.arange(3), labels]
    assert torch.allclose(c.proxy, expected)


def test_group_loss_is_the_masked_mean() -> None:
    losses = torch.arange(6, dtype=DTYPE)
    assert group_loss(losses, M).tolist() == [1.0, 4.0]


def test_proxy_tends_to_the_exact_value_at_low_temperature() -> None:
    gaps = demographic_parity(LOGITS, M, temperature=1e-3)
    assert gaps.proxy is not None
    assert torch.allclose(gaps.proxy, gaps.value, atol=1e-12)


def test_negate_flips_value_and_proxy() -> None:
    gaps = demographic_parity(LOGITS, M)
    lower = negate(gaps)
    assert torch.equal(lower.value, -gaps.value)
    assert gaps.proxy is not None and lower.proxy is not None
    assert torch.equal(lower.proxy, -gaps.proxy)


@settings(max_examples=50, deadline=None)
@given(
    groups=st.lists(st.integers(0, 3), min_size=2, max_size=30),
    seed=st.integers(0, 10_000),
    temperature=st.floats(0.1, 5.0),
)
def test_size_weighted_gaps_sum_to_zero(groups: list[int], seed: int, temperature: float) -> None:
    """For disjoint groups covering all samples, sum_g n_g (rate_g - rate) = 0."""
    n = len(groups)
    logits = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    m = torch.nn.functional.one_hot(torch.tensor(groups), 4).to(DTYPE)
    gaps = demographic_parity(logits, m, temperature=temperature)
    counts = m.sum(dim=0)
    assert abs(float(counts @ gaps.value)) < 1e-12
    assert gaps.proxy is not None
    assert abs(float(counts @ gaps.proxy)) < 1e-12


def test_errors_name_the_problem() -> None:
    with pytest.raises(ShapeError, match=r"shape \(n,\) or \(n, 1\)"):
        demographic_parity(torch.zeros(6, 2, dtype=DTYPE), M)
    with pytest.raises(ShapeError, match="membership must have shape"):
        demographic_parity(torch.zeros(5, dtype=DTYPE), M)
    with pytest.raises(ShapeError, match="expected 6 labels"):
        true_positive_rate_parity(LOGITS, torch.zeros(4), M)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        demographic_parity(LOGITS, M, temperature=0.0)
    with pytest.raises(ConfigError, match=r"batches \(x, y, membership"):
        FairClassification().evaluate(nn.Linear(2, 1), torch.zeros(3))


def _biased_data(n: int = 400) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    group = (torch.rand(n, generator=g) < 0.4).long()
    x = torch.randn(n, 2, generator=g, dtype=DTYPE) + 1.2 * group[:, None].to(DTYPE)
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=g, dtype=DTYPE) > 0.6).to(DTYPE)
    features = torch.cat([x, group[:, None].to(DTYPE)], dim=1)
    return features, y, torch.nn.functional.one_hot(group, 2).to(DTYPE)


def _train(problem: FairClassification, controller: dict[str, object] | str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(3, 1).to(DTYPE)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    solver = Solver(problem, model, optimizer, controller=controller, order="dual_primal")
    solver.fit(None, 400, batch=_biased_data())
    return model


def test_fair_classification_meets_its_tolerance_and_beats_the_unconstrained_gap() -> None:
    x, _, m = _biased_data()
    problem = FairClassification(tolerance=0.05)
    assert sorted(c.name for c in problem.all_constraints) == ["parity_lower", "parity_upper"]
    fair = _train(problem, {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 5.0})
    loose = _train(FairClassification(tolerance=0.99), "gda")  # never active
    with torch.no_grad():
        fair_gap = max_parity_gap(fair(x), m)
        loose_gap = max_parity_gap(loose(x), m)
    assert loose_gap > 0.2
    assert fair_gap <= 0.05 + 0.01


def test_fair_classification_state_has_one_forward_pass_worth_of_values() -> None:
    x, y, m = _biased_data(50)
    model = nn.Linear(3, 1).to(DTYPE)
    state = FairClassification(criterion="equalized_odds").evaluate(model, (x, y, m))
    upper = state.constraints["parity_upper"]
    lower = state.constraints["parity_lower"]
    assert not isinstance(upper, torch.Tensor) and not isinstance(lower, torch.Tensor)
    assert upper.value.shape == (4,)
    assert torch.equal(lower.value, -upper.value)
    assert set(state.metrics) == {"accuracy", "max_gap"}
