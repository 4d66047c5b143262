"""The controller contract: state layout, purity, checkpointing and indexed use."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import Tensor

from constrain._errors import ShapeError
from constrain.controllers import Controller, ControllerState, build, names

DTYPE = torch.float64
N = 10

# Non-default hyperparameters so that every term of every rule is active.
CASES: dict[str, dict[str, Any]] = {
    "gda": {"name": "gda", "lr": 0.3},
    "momentum": {"name": "momentum", "lr": 0.2, "beta": -0.3},
    "nesterov": {"name": "nesterov", "lr": 0.2, "beta": 0.7},
    "adam": {"name": "adam", "lr": 0.1, "betas": (0.8, 0.95), "eps": 1e-6},
    "nupi": {"name": "nupi", "lr": 0.5, "ki": 0.3, "kp": 2.0, "nu": 0.6},
    "nupi-per-constraint": {
        "name": "nupi",
        "lr": 0.5,
        "ki": [0.1 * (j + 1) for j in range(N)],
        "kp": [float(j) - 3 for j in range(N)],
        "nu": -0.4,
    },
    "pid": {"name": "pid", "lr": 0.5, "kp": 1.0, "ki": 0.4, "kd": 3.0, "delay": 4},
    "pid-per-constraint": {
        "name": "pid",
        "kp": [0.5] * N,
        "ki": [0.1 * j for j in range(N)],
        "kd": [1.0] * N,
        "ema_p": 0.5,
        "ema_d": 0.8,
        "delay": 2,
    },
    "optimistic": {"name": "optimistic", "lr": 0.4},
    "extragradient": {"name": "extragradient", "lr": 0.4},
    "multiplicative": {"name": "multiplicative", "lr": 0.1, "initial_value": 0.5},
}
SCALAR_CASES = [k for k in CASES if not k.endswith("per-constraint")]


def make(case: str) -> Controller:
    return build(CASES[case])


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


def test_every_registered_controller_is_covered() -> None:
    expected = {
        "gda",
        "momentum",
        "nesterov",
        "adam",
        "nupi",
        "pid",
        "optimistic",
        "extragradient",
        "multiplicative",
    }
    assert expected <= set(names())
    assert {spec["name"] for spec in CASES.values()} == expected


@pytest.mark.parametrize("case", list(CASES))
def test_init_state_has_multipliers_as_last_dimension(case: str) -> None:
    controller = make(case)
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


@pytest.mark.parametrize("case", list(CASES))
def test_update_is_pure(case: str) -> None:
    controller = make(case)
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


@pytest.mark.parametrize("case", list(CASES))
def test_save_and_restore_midway(case: str) -> None:
    controller = make(case)
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


@pytest.mark.parametrize("case", SCALAR_CASES)
def test_gather_update_scatter_equals_full_update_on_the_subset(case: str) -> None:
    """Indexed (per-sample) use: gather rows of the state, update, scatter back."""
    controller = make(case)
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


def test_adam_step_counts_are_per_multiplier() -> None:
    """Lazily updated entries get the bias correction of their own step count."""
    controller = make("adam")
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


@pytest.mark.parametrize("case", list(CASES))
def test_dtype_follows_the_multipliers(case: str) -> None:
    controller = make(case)
    lam = start(controller, dtype=torch.float32)
    state = controller.init(lam)
    new_lam, new_state = controller.update(lam, signals(1)[0], state)  # float64 signal
    assert new_lam.dtype == torch.float32
    for key, tensor in new_state.items():
        assert tensor.dtype == state[key].dtype, key
        if key != "step":
            assert tensor.dtype == torch.float32, key


@pytest.mark.parametrize("case", list(CASES))
def test_signal_of_the_wrong_shape_is_rejected(case: str) -> None:
    controller = make(case)
    lam = start(controller)
    with pytest.raises(ShapeError, match="shape"):
        controller.update(lam, torch.zeros(N + 1, dtype=DTYPE), controller.init(lam))


def test_class_flags() -> None:
    flags = {
        name: (build(name).supports_equality, build(name).extrapolates)
        for name in (
            "gda",
            "momentum",
            "nesterov",
            "adam",
            "nupi",
            "pid",
            "optimistic",
            "extragradient",
            "multiplicative",
        )
    }
    assert flags["pid"] == (False, False)
    assert flags["multiplicative"] == (False, False)
    assert flags["extragradient"] == (True, True)
    for name in ("gda", "momentum", "nesterov", "adam", "nupi", "optimistic"):
        assert flags[name] == (True, False), name


def test_initial_multipliers() -> None:
    like = torch.zeros(3, dtype=torch.float32)
    for name in CASES:
        initial = make(name).initial_multipliers(like)
        if name == "multiplicative":
            assert initial is not None
            assert torch.equal(initial, torch.full((3,), 0.5))
        else:
            assert initial is None, name
