"""The controller contract, for every registered controller: state layout, purity,
save/restore, indexed (per-sample) use, dtypes, and projection left to the formulation.

Parametrized from the registry through tests/controllers/_controller_db.py, so a newly
registered controller runs through all of these.
"""

from __future__ import annotations

import io

import pytest
import torch
from _controller_db import Case, N, parametrize
from torch import Tensor

from constrain import Lagrangian
from constrain._errors import ShapeError
from constrain.controllers import Controller, ControllerState, build

pytest_generate_tests = parametrize

DTYPE = torch.float64


def start(controller: Controller, n: int = N, dtype: torch.dtype = DTYPE) -> Tensor:
    like = torch.zeros(n, dtype=dtype)
    initial = controller.initial_multipliers(like)
    return like + 0.5 if initial is None else initial


def signals(steps: int, n: int = N, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(steps, n, generator=gen, dtype=DTYPE)


def advance(
    controller: Controller, lam: Tensor, state: ControllerState, es: Tensor
) -> tuple[Tensor, ControllerState]:
    for e in es:
        lam, state = controller.update(lam, e, state)
    return lam, state


def clone_state(state: ControllerState) -> ControllerState:
    return {k: v.clone() for k, v in state.items()}


def test_init_state_has_multipliers_as_last_dimension(case: Case) -> None:
    controller = case.build()
    lam = start(controller)
    state = controller.init(lam)
    for key, tensor in state.items():
        assert tensor.shape[-1] == N, key
        assert tensor.device == lam.device
        assert not tensor.requires_grad
    new_lam, new_state = controller.update(lam, signals(1)[0], state)
    assert new_lam.shape == lam.shape
    assert new_lam.dtype == lam.dtype
    assert set(new_state) == set(state)
    for key in state:
        assert new_state[key].shape == state[key].shape, key
        assert new_state[key].dtype == state[key].dtype, key


def test_update_is_pure(case: Case) -> None:
    controller = case.build()
    lam, state = advance(
        controller, start(controller), controller.init(start(controller)), signals(5)
    )
    e = signals(1, seed=1)[0]
    copies = (lam.clone(), e.clone(), clone_state(state))
    first = controller.update(lam, e, state)
    second = controller.update(lam, e, state)
    assert torch.equal(lam, copies[0])
    assert torch.equal(e, copies[1])
    assert all(torch.equal(state[k], copies[2][k]) for k in state)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(first[1][k], second[1][k]) for k in state)
    if controller.extrapolates:
        controller.extrapolate(lam, e, state)
        assert all(torch.equal(state[k], copies[2][k]) for k in state)


def test_save_and_restore_midway(case: Case) -> None:
    controller = case.build()
    es = signals(40)
    lam, state = advance(controller, start(controller), controller.init(start(controller)), es[:20])
    saved_lam, saved_state = lam.clone(), clone_state(state)
    # Through torch.save as a checkpoint would do.
    buffer = io.BytesIO()
    torch.save({"lam": lam, "state": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    reference = advance(controller, lam, state, es[20:])
    from_clone = advance(controller, saved_lam, saved_state, es[20:])
    from_disk = advance(controller, loaded["lam"], loaded["state"], es[20:])
    for other in (from_clone, from_disk):
        assert torch.equal(other[0], reference[0])
        assert all(torch.equal(other[1][k], reference[1][k]) for k in reference[1])


def test_gather_update_scatter_equals_full_update_on_the_subset(scalar_case: Case) -> None:
    """Indexed (per-sample) use: gather rows of the state, update, scatter back."""
    controller = scalar_case.build()
    es = signals(12)
    lam, state = advance(controller, start(controller), controller.init(start(controller)), es[:6])
    idx = torch.tensor([1, 4, 7, 8])
    rest = torch.tensor([j for j in range(N) if j not in idx.tolist()])
    for e in es[6:]:
        full_lam, full_state = controller.update(lam, e, state)
        sub_lam, sub_state = controller.update(
            lam[idx], e[idx], {k: v[..., idx] for k, v in state.items()}
        )
        torch.testing.assert_close(sub_lam, full_lam[idx], rtol=1e-15, atol=0.0)
        for k in state:
            torch.testing.assert_close(sub_state[k], full_state[k][..., idx], rtol=1e-15, atol=0.0)
        # Scatter: only the gathered entries change.
        new_lam = lam.clone()
        new_lam[idx] = sub_lam
        new_state = clone_state(state)
        for k in state:
            new_state[k][..., idx] = sub_state[k]
        assert torch.equal(new_lam[rest], lam[rest])
        for k in state:
            assert torch.equal(new_state[k][..., rest], state[k][..., rest])
        lam, state = new_lam, new_state


def test_projection_is_left_to_the_formulation(signed_case: Case) -> None:
    """A rule never clips its output: under a persistent negative signal every multiplier
    leaves the domain ``lam >= 0`` unprojected; the Lagrangian's projection brings it back
    (and leaves equality multipliers alone), while the state is used as returned."""
    controller = signed_case.build()
    zeros = torch.zeros(N, dtype=DTYPE)
    initial = controller.initial_multipliers(zeros)
    lam = zeros if initial is None else initial
    state = controller.init(lam)
    below = torch.zeros(N, dtype=torch.bool)
    for _ in range(200):
        lam, state = controller.update(lam, -torch.ones(N, dtype=DTYPE), state)
        below |= lam < 0
    assert bool(below.all()), lam
    equality = torch.arange(N) % 2 == 0
    projected = Lagrangian().project(lam, equality)
    assert torch.equal(projected[equality], lam[equality])
    assert torch.equal(projected[~equality], lam[~equality].clamp_min(0))


def test_projected_iterates_stay_in_the_domain(case: Case) -> None:
    """Controller, then projection, as the solver does: inequality multipliers stay
    ``>= 0`` and finite (equality multipliers only where the rule supports them)."""
    controller = case.build()
    equality = torch.arange(N) % 2 == 0
    if not controller.supports_equality:
        equality = torch.zeros(N, dtype=torch.bool)
    formulation = Lagrangian()
    lam = formulation.project(start(controller), equality)
    state = controller.init(lam)
    for e in signals(60, seed=4):
        lam, state = controller.update(lam, e, state)
        lam = formulation.project(lam, equality)
        assert bool(torch.isfinite(lam).all())
        assert bool((lam[~equality] >= 0).all())


def test_rules_for_inequalities_stay_nonnegative_by_themselves(nonnegative_case: Case) -> None:
    controller = nonnegative_case.build()
    lam = start(controller)
    state = controller.init(lam)
    for e in 3.0 * signals(100, seed=5):
        lam, state = controller.update(lam, e, state)
        assert bool((lam >= 0).all()), lam


def test_adam_step_counts_are_per_multiplier() -> None:
    """Lazily updated entries get the bias correction of their own step count."""
    controller = build({"name": "adam", "lr": 0.1, "betas": (0.8, 0.95), "eps": 1e-6})
    lam = torch.zeros(4, dtype=DTYPE)
    state = controller.init(lam)
    es = signals(10, n=4)
    idx = torch.tensor([0, 2])
    for t, e in enumerate(es):
        if t % 2 == 0:  # entries 1 and 3 only every other step
            lam, state = controller.update(lam, e, state)
        else:
            sub, sub_state = controller.update(
                lam[idx], e[idx], {k: v[..., idx] for k, v in state.items()}
            )
            lam = lam.index_copy(0, idx, sub)
            state = {k: v.index_copy(-1, idx, sub_state[k]) for k, v in state.items()}
    assert state["step"].tolist() == [10, 5, 10, 5]
    # Entry 1 equals a fresh Adam that only saw the even steps' signals.
    alone, alone_state = advance(
        controller,
        torch.zeros(1, dtype=DTYPE),
        controller.init(torch.zeros(1, dtype=DTYPE)),
        es[::2, 1:2],
    )
    torch.testing.assert_close(lam[1:2], alone, rtol=1e-15, atol=0.0)
    assert alone_state["step"].tolist() == [5]


def test_dtype_follows_the_multipliers(case: Case) -> None:
    controller = case.build()
    lam = start(controller, dtype=torch.float32)
    state = controller.init(lam)
    new_lam, new_state = controller.update(lam, signals(1)[0], state)  # float64 signal
    assert new_lam.dtype == torch.float32
    for key, tensor in new_state.items():
        assert tensor.dtype == state[key].dtype, key
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, key


def test_signal_of_the_wrong_shape_is_rejected(case: Case) -> None:
    controller = case.build()
    lam = start(controller)
    with pytest.raises(ShapeError, match="shape"):
        controller.update(lam, torch.zeros(N + 1, dtype=DTYPE), controller.init(lam))


def test_class_flags_are_those_of_the_table(case: Case) -> None:
    controller = case.build()
    assert controller.supports_equality is case.info.supports_equality
    assert controller.extrapolates is case.info.extrapolates


def test_initial_multipliers_match_the_multipliers(case: Case) -> None:
    """``None`` (the solver starts from zero) or positive values shaped like ``like``."""
    like = torch.zeros(3, dtype=torch.float32)
    initial = case.build().initial_multipliers(like)
    if initial is not None:
        assert initial.shape == like.shape and initial.dtype == like.dtype
        assert bool((initial > 0).all()) and bool(torch.isfinite(initial).all())


def test_initial_multipliers_of_the_builtin_rules() -> None:
    like = torch.zeros(3, dtype=torch.float32)
    initial = build("multiplicative", initial_value=0.5).initial_multipliers(like)
    assert initial is not None and torch.equal(initial, torch.full((3,), 0.5))
    for name in ("gda", "momentum", "nesterov", "adam", "nupi", "pid", "optimistic"):
        assert build(name).initial_multipliers(like) is None, name
