"""The engine on a CUDA device (skipped without one; ``python benchmarks/gpu.py`` runs
these on a GPU machine): steps, records and multipliers on the device agree with the CPU,
and the steps between checks make no synchronising call."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from constrain import (
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    ProblemState,
    Solver,
    Variables,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Mixed(ConstrainedProblem):
    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        x = model.x
        idx = torch.tensor([1, 3, 3, 6], device=x.device)
        return ProblemState(
            (x - 1).pow(2).sum(),
            {
                "cap": x[:4] - 0.5,
                "sum": x.sum().reshape(1),
                "margin": ConstraintValue(0.2 - x[idx], indices=idx),
            },
        )


def _solver(device: str, **options: Any) -> Solver:
    problem = Mixed(
        constraints=[
            Constraint("cap", "<=", size=4),
            Constraint("sum", "==", rhs=2.0),
            Constraint("margin", "<=", size=8, per_sample=True),
        ]
    )
    model = Variables(x=torch.zeros(8, dtype=torch.float64, device=device))
    return Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5),
        controller={"name": "nupi", "lr": 0.3, "kp": 0.5},
        **options,
    )


def test_cuda_matches_cpu() -> None:
    cpu, cuda = _solver("cpu"), _solver("cuda")
    cpu.fit(steps=50)
    cuda.fit(steps=50)
    torch.testing.assert_close(cuda.model.x.cpu(), cpu.model.x, rtol=1e-10, atol=1e-12)
    for name, lam in cpu.multipliers.items():
        torch.testing.assert_close(cuda.multipliers[name].cpu(), lam, rtol=1e-10, atol=1e-12)
    assert cuda.history.objective() == pytest.approx(cpu.history.objective(), rel=1e-10)


@pytest.mark.parametrize(("check_every", "expected"), [(1, [1] * 8), (4, [0, 1, 0, 0, 0, 1, 0, 0])])
def test_cuda_synchronisations_per_step(check_every: int, expected: list[int]) -> None:
    solver = _solver("cuda", check_every=check_every)
    solver.step()
    solver.step()
    counts = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        for _ in range(8):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                solver.step()
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert counts == expected
