"""nuPI's reduction table (docs/algorithms.md, 'The nuPI reduction table'), to float64 precision.

With ``lr = 1`` the unprojected nuPI recurrence must reproduce GDA, the PI controller,
optimistic GDA, Polyak momentum and Nesterov momentum. Trajectories are compared over
hundreds of steps on random vector signals.
"""

from __future__ import annotations

from typing import Any

import torch
from _controller_db import parametrize
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from constrain import Lagrangian
from constrain.controllers import GDA, Controller, Momentum, Nesterov, NuPI, Optimistic, build

pytest_generate_tests = parametrize

DTYPE = torch.float64
STEPS = 250
RTOL = 1e-12
SETTINGS = settings(max_examples=25, deadline=None)

seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(5, 12)
steps_sizes = st.floats(1e-3, 2.0)
betas = st.floats(-0.95, 0.95).filter(lambda b: abs(b) > 1e-3)
nus = st.floats(-0.99, 0.99)
scales = st.floats(0.1, 3.0)


def problem(seed: int, n: int, scale: float = 1.0, steps: int = STEPS) -> tuple[Tensor, Tensor]:
    """Random initial multipliers (n,) and signal sequence (steps, n)."""
    gen = torch.Generator().manual_seed(seed)
    lam0 = torch.randn(n, generator=gen, dtype=DTYPE)
    signals = scale * torch.randn(steps, n, generator=gen, dtype=DTYPE)
    return lam0, signals


def trajectory(controller: Controller, lam0: Tensor, signals: Tensor) -> Tensor:
    """Unprojected multipliers lam_0, ..., lam_T, shape (T + 1, n)."""
    lam, state = lam0, controller.init(lam0)
    out = [lam]
    for e in signals:
        lam, state = controller.update(lam, e, state)
        out.append(lam)
    return torch.stack(out)


def assert_float64_close(actual: Tensor, expected: Tensor) -> None:
    """Agreement to float64 precision: relative 1e-12, absolute 1e-12 * trajectory scale.

    The absolute part is scaled by max(1, max |expected|) so that entries crossing zero
    in a trajectory of magnitude ~1e3 are held to float64 precision, not to 1e-12 absolute.
    """
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


# --- GDA: any nu, ki = alpha, kp = 0 --------------------------------------------------


@SETTINGS
@given(seed=seeds, n=sizes, alpha=steps_sizes, nu=nus)
def test_nupi_reduces_to_gda_for_any_nu(seed: int, n: int, alpha: float, nu: float) -> None:
    lam0, signals = problem(seed, n)
    nupi = trajectory(NuPI(lr=1.0, ki=alpha, kp=0.0, nu=nu), lam0, signals)
    gda = trajectory(GDA(lr=alpha), lam0, signals)
    # kp = 0 contributes an exact zero; GDA's fused ``lam + lr * e`` rounds once where
    # nuPI rounds ``ki * e`` first, so the two agree to float64 precision.
    assert_float64_close(nupi, gda)


# --- PI controller: nu = 0, any ki, kp ------------------------------------------------


@SETTINGS
@given(
    seed=seeds,
    n=sizes,
    ki=st.floats(0.0, 3.0),
    kp=st.floats(-3.0, 3.0),
    lr=st.floats(1e-2, 2.0),
)
def test_nupi_with_nu_zero_is_the_pi_controller(
    seed: int, n: int, ki: float, kp: float, lr: float
) -> None:
    lam0, signals = problem(seed, n)
    nupi = trajectory(NuPI(lr=lr, ki=ki, kp=kp, nu=0.0), lam0, signals)
    # Explicit PI recurrence: lam_{t+1} = lam_t + lr * (ki e_t + kp (e_t - e_{t-1})), e_{-1} = 0.
    lam, previous = lam0, torch.zeros_like(lam0)
    expected = [lam]
    for e in signals:
        lam = lam + lr * (ki * e + kp * (e - previous))
        previous = e
        expected.append(lam)
    torch.testing.assert_close(nupi, torch.stack(expected), rtol=RTOL, atol=RTOL)


# --- optimistic GDA: nu = 0, ki = kp = alpha ------------------------------------------


@SETTINGS
@given(seed=seeds, n=sizes, alpha=steps_sizes, scale=scales)
def test_nupi_reduces_to_optimistic_gda(seed: int, n: int, alpha: float, scale: float) -> None:
    lam0, signals = problem(seed, n, scale)
    nupi = trajectory(NuPI(lr=1.0, ki=alpha, kp=alpha, nu=0.0), lam0, signals)
    optimistic = trajectory(Optimistic(lr=alpha), lam0, signals)
    assert_float64_close(nupi, optimistic)


# --- Polyak and Nesterov momentum: nu = beta ------------------------------------------


def polyak_nupi(alpha: float, beta: float) -> NuPI:
    return NuPI(lr=1.0, nu=beta, ki=alpha / (1 - beta), kp=-alpha * beta / (1 - beta) ** 2)


def nesterov_nupi(alpha: float, beta: float) -> NuPI:
    return NuPI(lr=1.0, nu=beta, ki=alpha / (1 - beta), kp=-alpha * beta**2 / (1 - beta) ** 2)


@SETTINGS
@given(seed=seeds, n=sizes, alpha=steps_sizes, beta=betas, scale=scales)
def test_nupi_reduces_to_polyak_momentum(
    seed: int, n: int, alpha: float, beta: float, scale: float
) -> None:
    lam0, signals = problem(seed, n, scale)
    nupi = trajectory(polyak_nupi(alpha, beta), lam0, signals)
    momentum = trajectory(Momentum(lr=alpha, beta=beta), lam0, signals)
    assert_float64_close(nupi, momentum)


@SETTINGS
@given(seed=seeds, n=sizes, alpha=steps_sizes, beta=betas, scale=scales)
def test_nupi_reduces_to_nesterov_momentum(
    seed: int, n: int, alpha: float, beta: float, scale: float
) -> None:
    lam0, signals = problem(seed, n, scale)
    nupi = trajectory(nesterov_nupi(alpha, beta), lam0, signals)
    nesterov = trajectory(Nesterov(lr=alpha, beta=beta), lam0, signals)
    assert_float64_close(nupi, nesterov)


def test_momentum_reductions_on_a_fixed_grid_with_plain_tolerances() -> None:
    """Deterministic grid, incl. negative beta (the paper's -0.3), 300 steps, n = 8.

    Here the plain elementwise tolerance rtol = atol = 1e-12 is used.
    """
    lam0, signals = problem(seed=0, n=8, steps=300)
    for beta in (-0.9, -0.5, -0.3, 0.3, 0.5, 0.9):
        for alpha in (0.1, 1.0):
            for nupi, reference in (
                (polyak_nupi(alpha, beta), Momentum(lr=alpha, beta=beta)),
                (nesterov_nupi(alpha, beta), Nesterov(lr=alpha, beta=beta)),
            ):
                torch.testing.assert_close(
                    trajectory(nupi, lam0, signals),
                    trajectory(reference, lam0, signals),
                    rtol=RTOL,
                    atol=RTOL,
                )


# --- positional PI form ---------------------------------------------------------------


@SETTINGS
@given(
    seed=seeds,
    n=sizes,
    lr=st.floats(1e-2, 2.0),
    ki=st.floats(0.0, 3.0),
    kp=st.floats(-3.0, 3.0),
    nu=nus,
)
def test_nupi_equals_positional_pi_form(
    seed: int, n: int, lr: float, ki: float, kp: float, nu: float
) -> None:
    """lam_{t+1} = lam_0 + lr * (ki * sum_{tau <= t} e_tau + kp * xi_t), unprojected."""
    lam0, signals = problem(seed, n)
    nupi = trajectory(NuPI(lr=lr, ki=ki, kp=kp, nu=nu), lam0, signals)
    xi = torch.zeros_like(lam0)
    xis = []
    for e in signals:
        xi = nu * xi + (1 - nu) * e
        xis.append(xi)
    positional = lam0 + lr * (ki * torch.cumsum(signals, dim=0) + kp * torch.stack(xis))
    assert_float64_close(nupi[1:], positional)


# --- per-constraint gains -------------------------------------------------------------


@SETTINGS
@given(
    seed=seeds,
    gains=st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(-3.0, 3.0)), min_size=5, max_size=9),
    nu=nus,
    lr=st.floats(1e-2, 2.0),
)
def test_per_constraint_gains_equal_separate_scalar_controllers(
    seed: int, gains: list[tuple[float, float]], nu: float, lr: float
) -> None:
    n = len(gains)
    lam0, signals = problem(seed, n, steps=100)
    ki = [g[0] for g in gains]
    kp = [g[1] for g in gains]
    vector = trajectory(NuPI(lr=lr, ki=ki, kp=kp, nu=nu), lam0, signals)
    for j in range(n):
        scalar = trajectory(
            NuPI(lr=lr, ki=ki[j], kp=kp[j], nu=nu), lam0[j : j + 1], signals[:, j : j + 1]
        )
        torch.testing.assert_close(vector[:, j : j + 1], scalar, rtol=1e-15, atol=1e-15)


def test_per_constraint_gains_accept_tensors_and_lists() -> None:
    from_tensor = NuPI(ki=torch.tensor([0.1, 0.2], dtype=DTYPE), kp=torch.tensor([1.0, 2.0]))
    from_list = NuPI(ki=[0.1, 0.2], kp=(1.0, 2.0))
    assert from_tensor == from_list
    assert from_list.ki == (0.1, 0.2)


# --- every table row that declares a reduction (tests/controllers/_controller_db.py) ---


def projected_trajectory(controller: Controller, lam0: Tensor, signals: Tensor) -> Tensor:
    """As the solver runs it: update, then the Lagrangian's projection (even entries are
    equality multipliers, left alone)."""
    equality = torch.arange(lam0.numel()) % 2 == 0
    project = Lagrangian().project
    lam = project(lam0, equality)
    state = controller.init(lam)
    out = [lam]
    for e in signals:
        lam, state = controller.update(lam, e, state)
        lam = project(lam, equality)
        out.append(lam)
    return torch.stack(out)


def test_table_rules_equal_their_nupi_settings(
    reduction: tuple[str, dict[str, Any], dict[str, Any]],
) -> None:
    """The rule and ``NuPI(lr=1, ...)`` with the row's settings agree to float64 precision,
    with and without projection (neither state depends on the multipliers)."""
    name, params, nupi_params = reduction
    rule, nupi = build({"name": name, **params}), NuPI(lr=1.0, **nupi_params)
    lam0, signals = problem(seed=11, n=8)
    assert_float64_close(trajectory(nupi, lam0, signals), trajectory(rule, lam0, signals))
    assert_float64_close(
        projected_trajectory(nupi, lam0, signals), projected_trajectory(rule, lam0, signals)
    )
