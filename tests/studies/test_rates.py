"""Rate constraints: exact rates against numpy counts, proxies, builders' standard forms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import Tensor, nn

from constrain import ConfigError, ConstraintValue, ShapeError, Solver
from constrain.studies import (
    RateProblem,
    demographic_parity_constraint,
    equalized_odds_constraint,
    error_rate,
    false_negative_rate,
    false_positive_rate,
    membership_from_labels,
    positive_prediction_rate,
    precision,
    rate,
    rate_constraint,
    rate_constraint_from_spec,
    rate_gap_constraint,
    rate_parity_constraint,
    recall,
    true_negative_rate,
    true_positive_rate,
)

DTYPE = torch.float64
RATES = [
    "positive_prediction_rate",
    "true_positive_rate",
    "false_positive_rate",
    "false_negative_rate",
    "true_negative_rate",
    "error_rate",
    "precision",
]


# -- an independent numpy reference by counting --------------------------------------------
def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def numpy_rates(
    name: str, logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_groups: int
) -> np.ndarray:
    """Per group (and class) rates by counting: binary ``(G,)``, multi-class ``(G * C,)``."""
    multiclass = logits.ndim == 2
    if name == "error_rate":
        pred = logits.argmax(1) if multiclass else (logits > 0).astype(int)
        return np.array(
            [_mean((pred != labels)[groups == g]) for g in range(num_groups)], dtype=np.float64
        )
    if multiclass:
        pred = logits.argmax(1)
        columns = [(pred == c, labels == c) for c in range(logits.shape[1])]
    else:
        columns = [(logits > 0, labels == 1)]
    out = []
    for g in range(num_groups):
        member = groups == g
        for yhat, y in columns:
            if name == "positive_prediction_rate":
                out.append(_mean(yhat[member].astype(float)))
            elif name == "true_positive_rate":
                out.append(_mean(yhat[member & y].astype(float)))
            elif name == "false_positive_rate":
                out.append(_mean(yhat[member & ~y].astype(float)))
            elif name == "false_negative_rate":
                out.append(_mean((~yhat)[member & y].astype(float)))
            elif name == "true_negative_rate":
                out.append(_mean((~yhat)[member & ~y].astype(float)))
            elif name == "precision":
                out.append(_mean(y[member & yhat].astype(float)))
    return np.array(out, dtype=np.float64)


@st.composite
def batches(draw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n = draw(st.integers(1, 40))
    num_groups = draw(st.integers(1, 4))
    classes = draw(st.sampled_from([0, 2, 3, 5]))  # 0: binary
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if classes == 0:
        logits = rng.normal(size=n)
        logits[rng.random(n) < 0.1] = 0.0  # ties at the threshold predict negative
        labels = (rng.random(n) < rng.random()).astype(np.int64)
    else:
        logits = rng.normal(size=(n, classes))
        labels = rng.integers(0, classes, size=n)
    groups = rng.integers(0, num_groups, size=n)
    return logits, labels, groups, num_groups


@settings(max_examples=60, deadline=None)
@given(batch=batches(), name=st.sampled_from(RATES))
def test_exact_rates_equal_numpy_counts(
    batch: tuple[np.ndarray, np.ndarray, np.ndarray, int], name: str
) -> None:
    logits, labels, groups, num_groups = batch
    expected = numpy_rates(name, logits, labels, groups, num_groups)
    s = torch.as_tensor(logits, dtype=DTYPE)
    y = torch.as_tensor(labels)
    if logits.ndim == 1:
        y = y.to(DTYPE)
    g = torch.as_tensor(groups)
    by_labels = rate(name, s, y, g, num_groups=num_groups)
    membership = membership_from_labels(g, num_groups, dtype=DTYPE)
    by_matrix = rate(name, s, y, membership)
    np.testing.assert_allclose(by_labels.value.numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(by_matrix.value.numpy(), by_labels.value.numpy())
    assert by_labels.proxy is not None and by_labels.proxy.shape == by_labels.value.shape


def test_named_functions_and_aliases_agree_with_rate() -> None:
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(30, generator=gen, dtype=DTYPE)
    y = (torch.rand(30, generator=gen) < 0.5).to(DTYPE)
    g = torch.randint(0, 3, (30,), generator=gen)
    pairs = [
        (true_positive_rate, "tpr"),
        (false_positive_rate, "fpr"),
        (false_negative_rate, "fnr"),
        (true_negative_rate, "tnr"),
        (error_rate, "error"),
        (precision, "precision"),
        (recall, "recall"),
    ]
    for fn, alias in pairs:
        a, b = fn(s, y, g), rate(alias, s, y, g)
        assert torch.equal(a.value, b.value), alias
    assert torch.equal(positive_prediction_rate(s, g).value, rate("ppr", s, None, g).value)
    # complements: FNR = 1 - TPR and TNR = 1 - FPR where defined
    tpr, fnr = rate("tpr", s, y, g), rate("fnr", s, y, g)
    assert torch.allclose(tpr.value + fnr.value, torch.ones(3, dtype=DTYPE))
    assert fnr.proxy is not None and tpr.proxy is not None
    assert torch.allclose(tpr.proxy + fnr.proxy, torch.ones(3, dtype=DTYPE))


def test_sigmoid_proxy_is_the_mean_of_sigmoids_and_softmaxes() -> None:
    s = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, -0.2], dtype=DTYPE)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0], dtype=DTYPE)
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    t = 0.7
    sig = torch.sigmoid(s / t)
    tpr = true_positive_rate(s, y, g, temperature=t)
    assert tpr.proxy is not None
    expected = [float(sig[[0, 2]].mean()), float(sig[[3, 4]].mean())]
    assert tpr.proxy.tolist() == pytest.approx(expected, abs=1e-15)
    assert tpr.value.tolist() == pytest.approx([1.0, 0.5], abs=1e-15)
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2]], dtype=DTYPE)
    ppr = positive_prediction_rate(scores, None)  # one group: all samples
    soft = torch.softmax(scores, 1).mean(0)
    assert ppr.proxy is not None
    assert torch.allclose(ppr.proxy, soft, atol=1e-15)
    assert ppr.value.tolist() == [0.5, 0.5, 0.0]


def test_hinge_proxy_bounds_the_counted_indicators() -> None:
    s = torch.tensor([2.0, -1.0, 0.0, -0.5], dtype=DTYPE)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=DTYPE)
    ppr = positive_prediction_rate(s, proxy="hinge")
    assert ppr.proxy is not None
    assert ppr.proxy.item() == pytest.approx((3.0 + 0.0 + 1.0 + 0.5) / 4, abs=1e-15)
    fnr = false_negative_rate(s, y, proxy="hinge")  # relu(1 - s) over y = 1
    assert fnr.proxy is not None and fnr.proxy.item() == pytest.approx((0.0 + 2.0) / 2)
    scores = torch.tensor([[2.0, 0.5, -1.0]], dtype=DTYPE)
    multi = positive_prediction_rate(scores, proxy="hinge")  # margins 1.5, -1.5, -3.0
    assert multi.proxy is not None
    assert multi.proxy.tolist() == pytest.approx([2.5, 0.0, 0.0], abs=1e-15)


@pytest.mark.parametrize("name", RATES)
@pytest.mark.parametrize("classes", [0, 3])
def test_sigmoid_proxies_are_differentiable(name: str, classes: int) -> None:
    gen = torch.Generator().manual_seed(1)
    shape = (12,) if classes == 0 else (12, classes)
    s = torch.randn(*shape, generator=gen, dtype=DTYPE, requires_grad=True)
    y = torch.tensor([1.0, 0.0] * 6, dtype=DTYPE) if classes == 0 else torch.arange(12) % classes
    g = torch.arange(12) % 2

    def proxy(x: Tensor) -> Tensor:
        out = rate(name, x, y, g, temperature=0.8).proxy
        assert out is not None
        return out

    assert torch.autograd.gradcheck(proxy, (s,), eps=1e-6, atol=1e-8)
    assert not rate(name, s, y, g).value.requires_grad
    hinge = rate(name, s, y, g, proxy="hinge").proxy
    assert hinge is not None and hinge.requires_grad
    (grad,) = torch.autograd.grad(hinge.sum(), s)
    assert torch.isfinite(grad).all()


@settings(max_examples=40, deadline=None)
@given(batch=batches(), tolerance=st.floats(0.0, 0.3), target=st.floats(0.05, 0.95))
def test_hinge_standard_forms_bound_the_exact_ones_from_above(
    batch: tuple[np.ndarray, np.ndarray, np.ndarray, int], tolerance: float, target: float
) -> None:
    logits, labels, groups, num_groups = batch
    s = torch.as_tensor(logits, dtype=DTYPE)
    y = torch.as_tensor(labels)
    if logits.ndim == 1:
        y = y.to(DTYPE)
    g = torch.as_tensor(groups)
    options: dict[str, Any] = {"proxy": "hinge", "num_groups": num_groups}
    built = [
        equalized_odds_constraint(tolerance, **options),
        demographic_parity_constraint(tolerance, **options),
        rate_gap_constraint("fpr", tolerance, **options),
        rate_gap_constraint("tnr", -tolerance, sense=">=", **options),
        rate_constraint("recall", ">=", target, groups="each", **options),
        rate_constraint("error", "<=", target, **options),
        rate_constraint("precision", ">=", target, groups="each", **options),
        rate_constraint("precision", "<=", target, **options),
    ]
    for rc in built:
        std = rc.standard_form(s, y, g)
        assert std.proxy is not None
        assert bool((std.proxy >= std.value - 1e-12).all()), rc.name


# -- builders --------------------------------------------------------------------------------
# Group 0: samples 0-3, group 1: samples 4-7, group 2: absent.
S = torch.tensor([2.0, -1.0, 0.5, 1.5, -3.0, 1.0, -0.2, 0.3], dtype=DTYPE)
Y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=DTYPE)
G = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
# yhat = [1, 0, 1, 1, 0, 1, 0, 1]
# TPR: g0 {0, 3} -> 1, g1 {4, 5} -> 1/2, all 3/4; FPR: g0 {1, 2} -> 1/2, g1 {6, 7} -> 1/2, all 1/2


def test_fpr_of_a_group_below_the_overall_fpr_plus_slack() -> None:
    rc = rate_gap_constraint("fpr", 0.05, num_groups=3)
    assert (rc.name, rc.sense, rc.rhs) == ("fpr_gap", "<=", 0.05)
    value = rc.evaluate(S, Y, G)
    assert value.value.tolist() == pytest.approx([0.0, 0.0, 0.05], abs=1e-15)
    assert value.observed is not None and value.observed.tolist() == [True, True, False]
    constraint = rc.declare(lambda model, batch: (model(batch[0]), batch[1], batch[2]))
    assert (constraint.name, constraint.sense, constraint.rhs) == ("fpr_gap", "<=", 0.05)
    std = constraint.violation(value.value)
    assert std.tolist() == pytest.approx([-0.05, -0.05, 0.0], abs=1e-15)
    assert torch.equal(std, rc.standard_form(S, Y, G).value)


def test_recall_at_least() -> None:
    rc = rate_constraint("recall", ">=", 0.9)
    assert (rc.name, rc.sense, rc.rhs) == ("tpr_ge", ">=", 0.9)
    assert rc.evaluate(S, Y, G).value.tolist() == pytest.approx([0.75])
    assert rc.standard_form(S, Y, G).value.tolist() == pytest.approx([0.15])  # 0.9 - 0.75
    per_group = rate_constraint("recall", ">=", 0.9, groups=[1, 0], num_groups=3)
    assert per_group.standard_form(S, Y, G).value.tolist() == pytest.approx([0.4, -0.1])


def test_precision_bound_is_linearised() -> None:
    """precision_g >= p  <=>  mean_g(y yhat) - p mean_g(yhat) >= 0."""
    rc = rate_constraint("precision", ">=", 0.6, groups="each", num_groups=2)
    assert (rc.sense, rc.rhs) == (">=", 0.0)
    # g0: y*yhat = [1,0,0,1] -> 1/2, yhat -> 3/4; g1: y*yhat = [0,1,0,0] -> 1/4, yhat 1/2
    lhs = rc.evaluate(S, Y, G).value
    assert lhs.tolist() == pytest.approx([0.5 - 0.6 * 0.75, 0.25 - 0.6 * 0.5], abs=1e-15)
    ratio = precision(S, Y, G).value  # 2/3 and 1/2: the sign of lhs matches precision - p
    assert ratio.tolist() == pytest.approx([2 / 3, 1 / 2])
    assert ((ratio - 0.6) * lhs > 0).all()
    with pytest.raises(ConfigError, match="not linear"):
        rate_gap_constraint("precision", 0.1)


def test_equalized_odds_entries_and_order() -> None:
    rc = equalized_odds_constraint(0.05, num_groups=3)
    value = rc.evaluate(S, Y, G)
    observed = value.observed
    assert observed is not None
    tpr = [0.25, -0.25, 0.05]  # group 2 absent: filled with the rhs
    fpr = [0.0, 0.0, 0.05]
    expected = tpr + fpr + [-0.25, 0.25, 0.05] + [0.0, 0.0, 0.05]
    assert value.value.tolist() == pytest.approx(expected, abs=1e-15)
    assert observed.tolist() == [True, True, False] * 4
    std = rc.standard_form(S, Y, G).value
    assert std[~observed].tolist() == [0.0] * 4


def test_multiclass_demographic_parity_is_per_class() -> None:
    scores = torch.tensor(
        [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0]], dtype=DTYPE
    )
    groups = torch.tensor([0, 0, 1, 1])
    rc = demographic_parity_constraint(0.1)
    assert rc.evaluate(scores, None, groups).value.numel() == 2 * 2 * 3
    # P(c | g0) = [1/2, 1/2, 0], P(c | g1) = [1/2, 0, 1/2], overall [1/2, 1/4, 1/4]
    gaps = [0.0, 0.25, -0.25, 0.0, -0.25, 0.25]
    value = rc.evaluate(scores, None, groups).value
    assert value.tolist() == pytest.approx(gaps + [-v for v in gaps], abs=1e-15)
    parity = rate_parity_constraint("tpr", 0.1)
    labels = torch.tensor([0, 1, 2, 1])
    assert parity.evaluate(scores, labels, groups).value.numel() == 12


def test_rate_problem_violations_match_the_standard_form() -> None:
    torch.manual_seed(0)
    x = torch.randn(40, 3, dtype=DTYPE)
    y = (x[:, 0] > 0).to(DTYPE)
    g = (x[:, 1] > 0).long()
    model = nn.Linear(3, 1).double()
    rates = [equalized_odds_constraint(0.05), rate_constraint("recall", ">=", 0.9)]
    with torch.no_grad():
        logits = model(x)[:, 0]
        expected = torch.cat([rc.standard_form(logits, y, g).value for rc in rates])
    problem = RateProblem(rate_constraints=rates)
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.0))
    record = solver.step((x, y, g))
    assert record is not None
    assert record.violation == pytest.approx(expected.tolist(), abs=1e-14)


def test_absent_groups_are_unobserved_and_keep_their_multipliers() -> None:
    """A minibatch without group 2: its entries are unobserved, so even nuPI with a
    proportional term (which moves on a zero signal) leaves their multipliers alone."""
    torch.manual_seed(0)
    x = torch.randn(60, 2, dtype=DTYPE)
    y = (x[:, 0] > 0).to(DTYPE)
    g = torch.arange(60) % 3
    model = nn.Linear(2, 1).double()
    rates = [rate_gap_constraint("fpr", 0.0, num_groups=3)]
    plain = false_positive_rate(x[g < 2, 0], y[g < 2], g[g < 2], num_groups=3)
    assert plain.observed is not None and plain.observed.tolist() == [True, True, False]
    solver = Solver(
        RateProblem(rate_constraints=rates),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        controller={"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 5.0, "nu": 0.5},
    )
    for _ in range(3):
        solver.step((x, y, g))  # every group present
    before = solver.multipliers["fpr_gap"].clone()
    for _ in range(3):
        solver.step((x[g < 2], y[g < 2], g[g < 2]))  # group 2 absent
    after = solver.multipliers["fpr_gap"]
    assert after[2] == before[2]
    assert not torch.equal(after[:2], before[:2])


def test_rate_problem_reuses_coefficients_only_while_the_batch_is_unchanged() -> None:
    torch.manual_seed(1)
    x = torch.randn(30, 2, dtype=DTYPE)
    y = (x[:, 0] > 0).to(DTYPE)
    g = torch.arange(30) % 3
    model = nn.Linear(2, 1).double()
    rc = equalized_odds_constraint(0.05, num_groups=3)
    problem = RateProblem(rate_constraints=[rc])

    def fresh() -> Tensor:
        with torch.no_grad():
            return rc.evaluate(model(x)[:, 0], y, g).value

    for _ in range(2):
        value = problem.evaluate(model, (x, y, g)).constraints["equalized_odds"]
        assert isinstance(value, ConstraintValue)
        assert torch.equal(value.value, fresh())
        with torch.no_grad():
            model.weight.add_(0.5)  # new predictions, same batch
    y[:10] = 1.0 - y[:10]  # labels changed in place: the cache must not be used
    value = problem.evaluate(model, (x, y, g)).constraints["equalized_odds"]
    assert isinstance(value, ConstraintValue)
    assert torch.equal(value.value, fresh())
    assert torch.equal(problem.violations(model(x).detach(), y, g), fresh() - 0.05)


def test_rate_problem_trains_towards_the_constraint() -> None:
    torch.manual_seed(0)
    n = 400
    x = torch.randn(n, 2, dtype=DTYPE)
    g = (torch.rand(n) < 0.3).long()
    y = ((x[:, 0] + 0.8 * g - 0.3 + 0.3 * torch.randn(n, dtype=DTYPE)) > 0).to(DTYPE)
    model = nn.Linear(2, 1).double()
    problem = RateProblem(rate_constraints=[rate_constraint("recall", ">=", 0.95)])
    solver = Solver(
        problem,
        model,
        torch.optim.Adam(model.parameters(), lr=0.05),
        controller={"name": "gda", "lr": 1.0},
    )
    solver.fit(None, 300, batch=(x, y, g), progress=False)
    with torch.no_grad():
        achieved = recall(model(x)[:, 0], y).value.item()
    assert achieved >= 0.93


def test_constraints_declared_from_config_mappings() -> None:
    specs = [
        {"type": "equalized_odds", "tolerance": 0.05, "num_groups": 3},
        {"type": "rate", "rate": "recall", "sense": ">=", "bound": 0.9},
        {"type": "gap", "rate": "fpr", "slack": 0.05, "groups": [1], "name": "fpr_g1"},
        {"type": "parity", "rate": "fnr", "tolerance": 0.1, "proxy": "hinge"},
        {"type": "demographic_parity", "tolerance": 0.1},
    ]
    problem = RateProblem(rate_constraints=specs, num_groups=3)
    built = problem.rates()
    assert [rc.name for rc in built] == [
        "equalized_odds",
        "tpr_ge",
        "fpr_g1",
        "fnr_parity",
        "demographic_parity",
    ]
    direct = rate_gap_constraint("fpr", 0.05, groups=[1], name="fpr_g1", num_groups=3)
    assert torch.equal(built[2].evaluate(S, Y, G).value, direct.evaluate(S, Y, G).value)
    assert built[3].proxy == "hinge"
    with pytest.raises(ConfigError, match=r"'type' must be one of"):
        rate_constraint_from_spec({"rate": "fpr", "slack": 0.1})
    with pytest.raises(ConfigError, match=r"unknown keys \['slak'\]; accepted: \['rate', 'slack'"):
        rate_constraint_from_spec({"type": "gap", "rate": "fpr", "slak": 0.1})
    with pytest.raises(ConfigError, match="missing"):
        rate_constraint_from_spec({"type": "gap", "rate": "fpr"})


def test_bad_inputs_name_the_problem() -> None:
    s, y = torch.zeros(4, dtype=DTYPE), torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=DTYPE)
    with pytest.raises(ConfigError, match="unknown rate 'tpn'"):
        rate("tpn", s, y)
    with pytest.raises(ConfigError, match="needs labels"):
        rate("tpr", s, None)
    with pytest.raises(ConfigError, match="0 or 1"):
        rate("tpr", s, torch.tensor([0.0, 2.0, 1.0, 0.0], dtype=DTYPE))
    with pytest.raises(ShapeError, match="4 labels"):
        rate("tpr", s, y[:3])
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        rate("tpr", torch.zeros(4, 3, dtype=DTYPE), torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ShapeError, match="integer class"):
        rate("tpr", torch.zeros(4, 3, dtype=DTYPE), y)
    with pytest.raises(ShapeError, match="membership matrix"):
        rate("tpr", s, y, torch.zeros(3, 2))
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        rate("tpr", s, y, torch.tensor([0, 1, 2, 0]), num_groups=2)
    with pytest.raises(ConfigError, match="proxy"):
        rate("tpr", s, y, proxy="relu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="temperature"):
        rate("tpr", s, y, temperature=0.0)
    with pytest.raises(ConfigError, match="tolerance must be >= 0"):
        equalized_odds_constraint(-0.1)
    with pytest.raises(ConfigError, match="'overall'"):
        rate_parity_constraint("fpr", 0.1, groups="overall")
    with pytest.raises(ConfigError, match="out of range"):
        rate_constraint("fpr", "<=", 0.1, groups=[5]).evaluate(s, y, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="sense"):
        rate_constraint("fpr", "==", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        rate_constraint("precision", ">=", 1.5)
    with pytest.raises(ValidationError, match="duplicate constraint name"):
        RateProblem(rate_constraints=[rate_constraint("fpr", "<=", 0.1)] * 2)
    with pytest.raises(ValidationError, match="RateConstraint"):
        RateProblem(rate_constraints=["fpr <= 0.1"])
