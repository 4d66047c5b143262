"""Multiplier models (constrain.multiplier_models): the ascent step by hand, the primal
loss, dropped non-finite steps, bit-exact resume and every refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import constrain
from constrain import (
    CheckpointError,
    ConfigError,
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    MultiplierModel,
    NonFiniteError,
    ShapeError,
    Solver,
)
from constrain.checkpoint import load_checkpoint, save_checkpoint

N, D = 12, 2
DT = torch.float64


def _data(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, 3, generator=g, dtype=DT)
    y = torch.randn(N, generator=g, dtype=DT)
    F = torch.randn(N, D, generator=g, dtype=DT)
    return X, y, F


def _module(seed: int = 1) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, 1).to(DT)


def _problem(
    mm: Any,
    *,
    sense: str = "<=",
    features: Any = "ok",
    per_sample: bool = True,
    rhs: float = 0.5,
) -> tuple[ConstrainedProblem, Tensor, Tensor, Tensor]:
    X, y, F = _data()

    def losses(model: nn.Module, batch: Tensor) -> Tensor:
        return (model(X[batch]).squeeze(1) - y[batch]) ** 2

    def fn(model: nn.Module, batch: Tensor) -> ConstraintValue | Tensor:
        if not per_sample:
            return losses(model, batch)
        feats = F[batch] if isinstance(features, str) else features
        return ConstraintValue(losses(model, batch), indices=batch, features=feats)

    c = Constraint(
        "fit",
        sense,
        rhs=rhs,
        per_sample=per_sample,
        size=N if per_sample else None,
        fn=fn,
        multiplier_model=mm,
    )
    problem = ConstrainedProblem(objective=lambda m, b: losses(m, b).mean(), constraints=[c])
    return problem, X, y, F


def _batches() -> Iterator[Tensor]:
    while True:
        for start in (0, 4, 8):
            yield torch.arange(start, start + 4)


class Cycle:
    """Re-iterable batches of 4 indices (3 per epoch)."""

    def __iter__(self) -> Iterator[Tensor]:
        return iter([torch.arange(s, s + 4) for s in (0, 4, 8)])


def _primal(seed: int = 2) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 1).to(DT)


def _solver(problem: ConstrainedProblem, lr: float, **options: Any) -> Solver:
    model = _primal()
    return Solver(problem, model, torch.optim.SGD(model.parameters(), lr=lr), **options)


def test_one_step_by_hand_float64() -> None:
    """theta <- theta + eta * sum_i softplus'(a_i) g_i [f_i, 1]; the primal step uses the
    multipliers before the update; the store holds the new predictions of the batch."""
    module = _module()
    w0, b0 = module.weight.detach().clone(), module.bias.detach().clone()
    eta, lr = 0.3, 0.05
    mm = MultiplierModel(module, lr=eta, features=D)
    problem, X, y, F = _problem(mm)
    model = _primal()
    pw, pb = model.weight.detach().clone(), model.bias.detach().clone()
    batch = torch.tensor([1, 5, 7, 10])
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=lr))
    solver.step(batch)

    f = F[batch]
    a = f @ w0[0] + b0[0]
    lam = torch.log1p(torch.exp(a))  # softplus
    r = X[batch] @ pw[0] + pb[0] - y[batch]
    g = r**2 - 0.5
    dsig = torch.sigmoid(a)
    w1 = w0[0] + eta * (dsig * g) @ f
    b1 = b0[0] + eta * (dsig * g).sum()
    torch.testing.assert_close(module.weight.detach()[0], w1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.bias.detach()[0], b1, rtol=1e-12, atol=1e-12)
    # primal: mean loss + sum_i lam_i g_i with lam detached (before the ascent step)
    coeff = 2 * r * (1 / len(batch) + lam)
    torch.testing.assert_close(
        model.weight.detach()[0], pw[0] - lr * coeff @ X[batch], rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        model.bias.detach()[0], pb[0] - lr * coeff.sum(), rtol=1e-12, atol=1e-12
    )
    store = solver.multipliers["fit"]
    expected = torch.nn.functional.softplus(f @ w1 + b1)
    torch.testing.assert_close(store[batch], expected, rtol=1e-12, atol=1e-12)
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[batch] = False
    assert (store[untouched] == 0).all()
    torch.testing.assert_close(mm.predict(f), expected, rtol=1e-12, atol=1e-12)
    stats = solver.history.last.per_sample["fit"]
    assert stats["mean_multiplier"] == pytest.approx(float(expected.mean()), rel=1e-6)


def test_equality_groups_use_the_identity_link() -> None:
    module = _module()
    mm = MultiplierModel(module, lr=0.1, features=D)
    problem, _, _, F = _problem(mm, sense="==")
    solver = _solver(problem, 0.0)
    solver.step(torch.arange(4))
    assert mm.equality
    raw = module(F[:4]).detach().squeeze(1)
    torch.testing.assert_close(solver.multipliers["fit"][:4], raw)
    assert (raw < 0).any()  # an equality multiplier may be negative


def test_max_multiplier_bounds_the_model() -> None:
    module = _module()
    nn.init.constant_(module.bias, 3.0)
    mm = MultiplierModel(module, lr=0.1, features=D)
    problem, _, _, _ = _problem(mm)
    model = _primal()
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.0), max_multiplier=0.5)
    solver.step(torch.arange(4))
    assert float(solver.multipliers["fit"][:4].max()) == 0.5


def test_a_model_above_the_bound_still_learns_inwards() -> None:
    """Satisfied constraints (rhs far above every loss) must shrink the multipliers even
    when the model's output starts above max_multiplier (projected ascent, not the clamp's
    zero gradient)."""
    module = _module()
    nn.init.constant_(module.bias, 3.0)
    nn.init.zeros_(module.weight)
    mm = MultiplierModel(module, lr=0.5, features=D)
    problem, _, _, _ = _problem(mm, rhs=100.0)
    model = _primal()
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.0), max_multiplier=1.0)
    for batch in [torch.arange(s, s + 4) for s in (0, 4, 8)] * 10:
        solver.step(batch)
    assert float(module.bias) < 0.0
    assert float(solver.multipliers["fit"].max()) < 0.5


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_non_finite_step_is_dropped_on_the_device(momentum: float) -> None:
    """A NaN violation gives a NaN gradient: parameters, optimizer state and the store
    keep their values and the solver raises NonFiniteError naming the group."""
    module = _module()
    mm = MultiplierModel(module, lr=0.1, features=D, momentum=momentum)
    X, y, F = _data()
    y_bad = y.clone()
    y_bad[6] = float("nan")

    def fn(model: nn.Module, batch: Tensor) -> ConstraintValue:
        value = (model(X[batch]).squeeze(1) - y_bad[batch]).detach() ** 2
        return ConstraintValue(
            value, proxy=value * 0 + model.bias.sum(), indices=batch, features=F[batch]
        )

    c = Constraint("fit", "<=", rhs=0.5, per_sample=True, size=N, fn=fn, multiplier_model=mm)
    problem = ConstrainedProblem(objective=lambda m, b: m.bias.sum() * 0, constraints=[c])
    model = _primal()
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.0), on_nonfinite="skip"
    )
    solver.step(torch.arange(4))  # finite
    before = {k: v.clone() for k, v in module.state_dict().items()}
    opt_before = {
        k: v.clone() for k, v in mm.optimizer.state[module.weight].items() if isinstance(v, Tensor)
    }
    store = solver.multipliers["fit"].clone()
    solver.step(torch.arange(4, 8))  # skipped on the host (non-finite constraint)
    solver.duals.step(solver.layout.stack(problem.evaluate(model, torch.arange(4, 8)), 9), 9)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in mm.optimizer.state[module.weight].items():
        if isinstance(v, Tensor):
            assert torch.equal(v, opt_before[k])
    assert torch.equal(solver.multipliers["fit"], store)
    strict = _solver(problem, 0.0)
    with pytest.raises(NonFiniteError, match="fit"):
        strict.step(torch.arange(4, 8))


def test_a_diverging_model_is_named_with_its_own_lr() -> None:
    """A model ascent step that overflows is reported as the model's (its lr), not as the
    controller's update."""
    mm = MultiplierModel(_module(), lr=1e308, features=D)
    problem, *_ = _problem(mm, rhs=-5.0)
    solver = _solver(problem, 0.0)
    with pytest.raises(
        NonFiniteError, match=r"multiplier model of per-sample constraint 'fit'.*lr"
    ):
        solver.step(torch.arange(4))


def _resume_solver(path: Path | None = None) -> tuple[Solver, MultiplierModel]:
    mm = MultiplierModel(_module(), lr=0.05, features=D, optimizer=torch.optim.Adam)
    problem, _, _, _ = _problem(mm)
    model = _primal()
    return Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.02)), mm


def test_checkpoint_resume_is_bit_exact(tmp_path: Path) -> None:
    reference, ref_mm = _resume_solver()
    reference.fit(Cycle(), 10)
    first, _ = _resume_solver()
    first.fit(Cycle(), 4)
    path = save_checkpoint(tmp_path / "ckpt.pt", first)
    first.fit(Cycle(), 2)
    torch.manual_seed(999)
    resumed, mm = _resume_solver()
    resumed.load_state_dict(load_checkpoint(path)["solver"])
    resumed.fit(Cycle(), 6)
    for k, v in ref_mm.module.state_dict().items():
        assert torch.equal(v, mm.module.state_dict()[k])
    ref_state = ref_mm.optimizer.state_dict()["state"]
    for key, entry in mm.optimizer.state_dict()["state"].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ref_state[key][name]))
    assert torch.equal(reference.multipliers["fit"], resumed.multipliers["fit"])
    for a, b in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_without_models_and_mismatched_models(tmp_path: Path) -> None:
    solver, _ = _resume_solver()
    solver.fit(Cycle(), 2)
    state = solver.state_dict()
    assert set(state["multiplier_models"]) == {"fit"}
    old = {k: v for k, v in state.items() if k != "multiplier_models"}
    other, _ = _resume_solver()
    other.initialise(data=Cycle())  # layout known: the state is checked at once
    with pytest.raises(CheckpointError, match="multiplier models"):
        other.load_state_dict(old)
    # a state written before multiplier models (no entry) loads into a run without any
    X, y, _ = _data()
    plain = Constraint(
        "fit", "<=", rhs=0.5, per_sample=True, size=N,
        fn=lambda m, b: ConstraintValue((m(X[b]).squeeze(1) - y[b]) ** 2, indices=b),
    )  # fmt: skip
    problem = ConstrainedProblem(objective=lambda m, b: m(X[b]).mean(), constraints=[plain])
    table = _solver(problem, 0.01)
    table.fit(Cycle(), 2)
    saved = table.state_dict()
    assert saved["multiplier_models"] == {}
    del saved["multiplier_models"]
    again = _solver(problem, 0.01)
    again.load_state_dict(saved)
    bad = dict(state)
    bad["multiplier_models"] = {
        "fit": {
            "module": {"weight": torch.zeros(5, 5)},
            "optimizer": state["multiplier_models"]["fit"]["optimizer"],
        }
    }
    target, _ = _resume_solver()
    target.initialise(data=Cycle())
    with pytest.raises(CheckpointError, match="'fit'"):
        target.load_state_dict(bad)


# -- refusals -----------------------------------------------------------------------------
def _first_step(problem: ConstrainedProblem, **options: Any) -> Solver:
    model = _primal()
    solver = Solver(problem, model, torch.optim.SGD(model.parameters(), lr=0.01), **options)
    solver.step(torch.arange(4))
    return solver


def test_refuses_a_model_on_a_dense_group() -> None:
    problem, _, _, _ = _problem(MultiplierModel(_module(), lr=0.1, features=D), per_sample=False)
    with pytest.raises(ConfigError, match="dense group but has a multiplier model"):
        _first_step(problem)


def test_refuses_a_model_that_is_not_a_multiplier_model() -> None:
    problem, _, _, _ = _problem(_module())
    with pytest.raises(ConfigError, match=r"must be a constrain\.MultiplierModel"):
        _first_step(problem)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (None, "gives no features"),
        (torch.zeros(4, 3, dtype=DT), r"got shape \(4, 3\)"),
        (torch.zeros(4, dtype=DT), r"got shape \(4,\)"),
        (torch.zeros(4, D, dtype=torch.float32), "got dtype torch.float32"),
        (torch.zeros(4, D, dtype=DT, device="meta"), "on meta"),
        ([[0.0, 0.0]] * 4, "gives no features"),
    ],
    ids=["missing", "width", "1d", "dtype", "device", "list"],
)
def test_refuses_bad_features(features: Any, match: str) -> None:
    problem, _, _, _ = _problem(MultiplierModel(_module(), lr=0.1, features=D), features=features)
    with pytest.raises(ConfigError, match=match):
        _first_step(problem)


def test_refuses_nan_features() -> None:
    F = torch.zeros(4, D, dtype=DT)
    F[2, 1] = float("nan")
    problem, _, _, _ = _problem(MultiplierModel(_module(), lr=0.1, features=D), features=F)
    with pytest.raises(
        ConfigError, match=r"features of per-sample constraint 'fit' are not finite.*samples \[2\]"
    ):
        _first_step(problem)


def test_refuses_features_without_a_model() -> None:
    problem, _, _, _ = _problem(None)
    with pytest.raises(ConfigError, match="has no multiplier model"):
        _first_step(problem)
    X, _, F = _data()
    dense = Constraint(
        "c", "<=", fn=lambda m, b: ConstraintValue(m(X[:2]).squeeze(1), features=F[:2])
    )
    problem = ConstrainedProblem(objective=lambda m, b: m(X).mean(), constraints=[dense])
    with pytest.raises(ConfigError, match="only a per-sample group"):
        _first_step(problem)


def test_refuses_a_model_without_multipliers_or_with_restarts() -> None:
    problem, _, _, _ = _problem(MultiplierModel(_module(), lr=0.1, features=D))
    with pytest.raises(ConfigError, match="no multipliers"):
        _first_step(problem, formulation={"name": "quadratic_penalty", "penalty": 1.0})
    problem, _, _, _ = _problem(MultiplierModel(_module(), lr=0.1, features=D))
    with pytest.raises(ConfigError, match="restart"):
        _first_step(problem, restart=True)


def test_refuses_a_module_with_the_wrong_output() -> None:
    problem, _, _, _ = _problem(MultiplierModel(nn.Linear(D, 3).to(DT), lr=0.1, features=D))
    with pytest.raises(ShapeError, match=r"to \(4,\) or \(4, 1\) values"):
        _first_step(problem)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((nn.ReLU(), 0.1, 2), "floating-point parameters"),
        (("net", 0.1, 2), "must be a torch.nn.Module"),
        ((nn.Linear(2, 1), 0.0, 2), "lr must be a finite number > 0"),
        ((nn.Linear(2, 1), float("nan"), 2), "lr must be a finite number > 0"),
        ((nn.Linear(2, 1), True, 2), "lr must be a finite number > 0"),
        ((nn.Linear(2, 1), 0.1, 0), "features must be a positive integer"),
        ((nn.Linear(2, 1), 0.1, 2.0), "features must be a positive integer"),
    ],
)
def test_refuses_bad_arguments(args: tuple[Any, Any, Any], match: str) -> None:
    module, lr, features = args
    with pytest.raises(ConfigError, match=match):
        MultiplierModel(module, lr=lr, features=features)


def test_refuses_mixed_parameters_and_bad_optimizer_options() -> None:
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1).to(DT))
    with pytest.raises(ConfigError, match="share one dtype and device"):
        MultiplierModel(mixed, lr=0.1, features=2)
    with pytest.raises(ConfigError, match="refused its arguments"):
        MultiplierModel(nn.Linear(2, 1), lr=0.1, features=2, momentum=-1.0)
    with pytest.raises(ConfigError, match="refused its arguments"):
        MultiplierModel(nn.Linear(2, 1), lr=0.1, features=2, colour="red")


def test_exported_and_repr() -> None:
    mm = MultiplierModel(nn.Linear(2, 1), lr=0.1, features=2)
    assert constrain.MultiplierModel is MultiplierModel
    assert "lr=0.1" in repr(mm) and "SGD" in repr(mm)


@pytest.mark.parametrize("order", ["simultaneous", "dual_primal", "primal_dual"])
def test_steps_between_checks_do_not_synchronise(order: str) -> None:
    """check_every=4: the model's prediction and ascent step add no synchronising call
    (item, bool, tolist, ...) to the steps between checks."""
    from test_sync_free import CountSyncs

    mm = MultiplierModel(_module(), lr=0.05, features=D, momentum=0.9)
    problem, _, _, _ = _problem(mm)
    model = _primal()
    solver = Solver(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.02), check_every=4, order=order
    )
    batches = _batches()
    solver.step(next(batches))
    solver.step(next(batches))
    counts = []
    for _ in range(8):
        with CountSyncs() as mode:
            solver.step(next(batches))
        counts.append(sum(mode.calls.values()))
    assert counts == [0, 1, 0, 0, 0, 1, 0, 0]


def test_refuses_a_model_shared_by_two_groups() -> None:
    mm = MultiplierModel(_module(), lr=0.1, features=D)
    X, _, F = _data()

    def fn(model: nn.Module, batch: Tensor) -> ConstraintValue:
        return ConstraintValue(model(X[batch]).squeeze(1), indices=batch, features=F[batch])

    groups = [
        Constraint(name, "<=", per_sample=True, size=N, fn=fn, multiplier_model=mm)
        for name in ("a", "b")
    ]
    problem = ConstrainedProblem(objective=lambda m, b: m(X[b]).mean(), constraints=groups)
    with pytest.raises(ConfigError, match="'a' and 'b' share one MultiplierModel"):
        _first_step(problem)
