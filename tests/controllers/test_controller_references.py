"""Each controller against a direct, hand-written reference recurrence (float64)."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from torch import Tensor

from constrain.controllers import (
    GDA,
    PID,
    Adam,
    Controller,
    ExtraGradient,
    Momentum,
    MultiplicativeWeights,
    Nesterov,
    Optimistic,
)

DTYPE = torch.float64


def problem(seed: int, n: int, steps: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lam0 = torch.rand(n, generator=gen, dtype=DTYPE)
    signals = scale * torch.randn(steps, n, generator=gen, dtype=DTYPE)
    return lam0, signals


def trajectory(controller: Controller, lam0: Tensor, signals: Tensor) -> Tensor:
    lam, state = lam0, controller.init(lam0)
    out = [lam]
    for e in signals:
        lam, state = controller.update(lam, e, state)
        out.append(lam)
    return torch.stack(out)


# --- PID: the authors' reference implementation, transcribed with Python floats -------


def stooke_pid(
    signals: list[float],
    *,
    kp: float,
    ki: float,
    kd: float,
    ema_p: float,
    ema_d: float,
    delay: int,
) -> list[float]:
    """One constraint, transcribed from rlpyt's CppoPID.update_pid (Stooke et al. 2020)."""
    cost_ds: deque[float] = deque(maxlen=delay)
    cost_ds.append(0.0)
    pid_i = delta_p = cost_d = 0.0
    out = []
    for cost in signals:
        delta = cost
        pid_i = max(0.0, pid_i + delta * ki)
        delta_p = ema_p * delta_p + (1 - ema_p) * delta
        cost_d = ema_d * cost_d + (1 - ema_d) * cost
        pid_d = max(0.0, cost_d - cost_ds[0])
        pid_o = kp * delta_p + pid_i + kd * pid_d
        out.append(max(0.0, pid_o))
        cost_ds.append(cost_d)
    return out


@pytest.mark.parametrize(
    ("kp", "ki", "kd", "ema_p", "ema_d", "delay", "lr"),
    [
        (0.0, 1.0, 0.0, 0.95, 0.95, 10, 1.0),
        (0.5, 0.2, 2.0, 0.95, 0.95, 10, 1.0),
        (1.0, 0.3, 3.0, 0.9, 0.5, 1, 1.0),
        (2.0, 0.0, 1.0, 0.0, 0.0, 3, 0.5),
        (
            (0.0, 1.0, 2.0, 3.0, 4.0),
            (0.1, 0.2, 0.3, 0.4, 0.5),
            (5.0, 0.0, 1.0, 2.0, 0.5),
            0.8,
            0.7,
            4,
            2.0,
        ),
    ],
)
def test_pid_matches_the_authors_reference(
    kp: float | tuple[float, ...],
    ki: float | tuple[float, ...],
    kd: float | tuple[float, ...],
    ema_p: float,
    ema_d: float,
    delay: int,
    lr: float,
) -> None:
    n, steps = 5, 80
    lam0, signals = problem(seed=1, n=n, steps=steps)
    # A drift so that the signal changes sign and the clamps and the delay all act.
    signals = signals + torch.linspace(1.0, -1.0, steps, dtype=DTYPE)[:, None]
    controller = PID(lr=lr, kp=kp, ki=ki, kd=kd, ema_p=ema_p, ema_d=ema_d, delay=delay)
    actual = trajectory(controller, lam0, signals)[1:]

    def entry(value: float | tuple[float, ...], j: int) -> float:
        return value[j] if isinstance(value, tuple) else value

    for j in range(n):
        expected = stooke_pid(
            signals[:, j].tolist(),
            kp=entry(kp, j),
            ki=entry(ki, j),
            kd=entry(kd, j),
            ema_p=ema_p,
            ema_d=ema_d,
            delay=delay,
        )
        torch.testing.assert_close(
            actual[:, j], lr * torch.tensor(expected, dtype=DTYPE), rtol=1e-13, atol=1e-13
        )


def test_pid_ignores_incoming_multipliers() -> None:
    controller = PID(kp=1.0, ki=0.5, kd=2.0, delay=3)
    _, signals = problem(seed=2, n=6, steps=30)
    a = trajectory(controller, torch.zeros(6, dtype=DTYPE), signals)[1:]
    b = trajectory(controller, torch.full((6,), 7.0, dtype=DTYPE), signals)[1:]
    torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)


def test_default_pid_is_projected_gda_from_zero() -> None:
    lr = 0.5  # a power of two: scaling the integral by lr is exact
    _, signals = problem(seed=3, n=7, steps=200)
    pid = trajectory(PID(lr=lr), torch.zeros(7, dtype=DTYPE), signals)
    lam = torch.zeros(7, dtype=DTYPE)
    expected = [lam]
    for e in signals:
        lam = torch.clamp_min(lam + lr * e, 0.0)
        expected.append(lam)
    torch.testing.assert_close(pid[1:], torch.stack(expected)[1:], rtol=0.0, atol=0.0)


# --- Adam: torch.optim.Adam on a parameter whose gradient is -e (ascent) --------------


@pytest.mark.parametrize(
    ("lr", "betas", "eps"),
    [(1e-2, (0.9, 0.999), 1e-8), (0.3, (0.5, 0.9), 1e-3), (1.0, (0.0, 0.0), 1e-6)],
)
def test_adam_matches_torch_adam_ascent(lr: float, betas: tuple[float, float], eps: float) -> None:
    lam0, signals = problem(seed=4, n=6, steps=200)
    actual = trajectory(Adam(lr=lr, betas=betas, eps=eps), lam0, signals)
    param = torch.nn.Parameter(lam0.clone())
    optimizer = torch.optim.Adam([param], lr=lr, betas=betas, eps=eps, foreach=False)
    expected = [lam0.clone()]
    for e in signals:
        param.grad = -e.clone()
        optimizer.step()
        expected.append(param.detach().clone())
    torch.testing.assert_close(actual, torch.stack(expected), rtol=1e-12, atol=1e-12)


# --- momentum rules: torch.optim.SGD (positive momentum only there) -------------------


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("beta", [0.3, 0.9])
def test_momentum_rules_match_torch_sgd_ascent(nesterov: bool, beta: float) -> None:
    lr = 0.1
    lam0, signals = problem(seed=5, n=6, steps=200)
    controller = Nesterov(lr=lr, beta=beta) if nesterov else Momentum(lr=lr, beta=beta)
    actual = trajectory(controller, lam0, signals)
    param = torch.nn.Parameter(lam0.clone())
    optimizer = torch.optim.SGD([param], lr=lr, momentum=beta, nesterov=nesterov, foreach=False)
    expected = [lam0.clone()]
    for e in signals:
        param.grad = -e.clone()
        optimizer.step()
        expected.append(param.detach().clone())
    torch.testing.assert_close(actual, torch.stack(expected), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [-0.3, 0.6])
def test_momentum_rules_match_explicit_recurrences(beta: float) -> None:
    lr = 0.2
    lam0, signals = problem(seed=6, n=5, steps=200)
    polyak = trajectory(Momentum(lr=lr, beta=beta), lam0, signals)
    nesterov = trajectory(Nesterov(lr=lr, beta=beta), lam0, signals)
    for j in range(5):
        lam_p = lam_n = float(lam0[j])
        buffer = 0.0
        expected_p, expected_n = [lam_p], [lam_n]
        for e in signals[:, j].tolist():
            buffer = beta * buffer + e
            lam_p += lr * buffer
            lam_n += lr * (e + beta * buffer)
            expected_p.append(lam_p)
            expected_n.append(lam_n)
        torch.testing.assert_close(polyak[:, j], torch.tensor(expected_p, dtype=DTYPE))
        torch.testing.assert_close(nesterov[:, j], torch.tensor(expected_n, dtype=DTYPE))


# --- GDA, optimistic, multiplicative -------------------------------------------------


def test_gda_matches_explicit_recurrence() -> None:
    lam0, signals = problem(seed=7, n=5, steps=200)
    expected = lam0 + 0.3 * torch.cat([torch.zeros(1, 5, dtype=DTYPE), signals.cumsum(0)])
    torch.testing.assert_close(
        trajectory(GDA(lr=0.3), lam0, signals), expected, rtol=1e-12, atol=1e-12
    )


def test_optimistic_matches_explicit_recurrence() -> None:
    lr = 0.7
    lam0, signals = problem(seed=8, n=5, steps=200)
    actual = trajectory(Optimistic(lr=lr), lam0, signals)
    for j in range(5):
        lam, previous = float(lam0[j]), 0.0
        expected = [lam]
        for e in signals[:, j].tolist():
            lam += lr * (2 * e - previous)
            previous = e
            expected.append(lam)
        torch.testing.assert_close(
            actual[:, j], torch.tensor(expected, dtype=DTYPE), rtol=1e-13, atol=1e-13
        )


def test_multiplicative_matches_explicit_recurrence() -> None:
    lr = 0.05
    controller = MultiplicativeWeights(lr=lr, initial_value=0.5)
    _, signals = problem(seed=9, n=5, steps=200)
    lam0 = controller.initial_multipliers(torch.empty(5, dtype=DTYPE))
    assert torch.equal(lam0, torch.full((5,), 0.5, dtype=DTYPE))
    actual = trajectory(controller, lam0, signals)
    assert bool((actual > 0).all())
    for j in range(5):
        lam = 0.5
        expected = [lam]
        for e in signals[:, j].tolist():
            lam *= math.exp(lr * e)
            expected.append(lam)
        torch.testing.assert_close(
            actual[:, j], torch.tensor(expected, dtype=DTYPE), rtol=1e-12, atol=0.0
        )


# --- extragradient -------------------------------------------------------------------


def test_extragradient_steps_follow_the_protocol() -> None:
    controller = ExtraGradient(lr=0.3)
    lam = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
    state = controller.init(lam)
    e_here = torch.tensor([1.0, 2.0, -3.0], dtype=DTYPE)
    e_ahead = torch.tensor([-0.5, 0.25, 4.0], dtype=DTYPE)
    half = controller.extrapolate(lam, e_here, state)
    torch.testing.assert_close(half, lam + 0.3 * e_here, rtol=0.0, atol=0.0)
    new, state = controller.update(lam, e_ahead, state)
    torch.testing.assert_close(new, lam + 0.3 * e_ahead, rtol=0.0, atol=0.0)
    assert state == {}


def test_extragradient_converges_on_a_bilinear_game_where_gda_diverges() -> None:
    """min_x max_mu mu . x (an equality constraint x = 0 with f = 0), simultaneous play.

    The dual signal is h(x) = x; the primal gradient is mu. Hand-written extragradient for
    the primal player, the controller for the multipliers.
    """
    lr, steps = 0.2, 300
    x0 = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.5], dtype=DTYPE)
    mu0 = torch.zeros(5, dtype=DTYPE)

    def play(controller: Controller) -> float:
        x, mu, state = x0, mu0, controller.init(mu0)
        for _ in range(steps):
            if controller.extrapolates:
                mu_half = controller.extrapolate(mu, x, state)
                x_half = x - lr * mu
                x_next = x - lr * mu_half
                mu, state = controller.update(mu, x_half, state)
                x = x_next
            else:
                x, (mu, state) = x - lr * mu, controller.update(mu, x, state)
        return float(torch.linalg.vector_norm(torch.cat([x, mu])))

    start = float(torch.linalg.vector_norm(x0))
    assert play(GDA(lr=lr)) > 10 * start
    assert play(ExtraGradient(lr=lr)) < 1e-2 * start
