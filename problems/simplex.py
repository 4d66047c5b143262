"""Euclidean projection onto the probability simplex, with a closed-form reference.

``min 1/2 ||x - c||^2  s.t.  sum(x) == 1,  x >= 0``. The solution is
``x* = max(c - tau, 0)`` with ``tau`` chosen so that ``sum(x*) = 1``; the multipliers are
``mu* = tau`` for the equality and ``lam*_i = max(tau - c_i, 0)`` for ``x_i >= 0``
(stationarity ``x - c + mu 1 - lam = 0``). Declared from :mod:`constrain.blocks`, so
``constrain validate simplex`` also checks a run against the CVXPY twin.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from constrain import Constraint, ProblemSpec, Reference, Setup, Variables, blocks
from constrain.config import RunConfig


def project_simplex(c: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact projection of ``c`` onto the simplex (sort-based); returns ``(x, tau)``."""
    u = np.sort(c)[::-1]
    cumulative = np.cumsum(u) - 1.0
    k = np.arange(1, len(c) + 1)
    rho = int(np.nonzero(u - cumulative / k > 0)[0][-1])
    tau = float(cumulative[rho] / (rho + 1))
    return np.maximum(c - tau, 0.0), tau


class SimplexProblem(blocks.BlockProblem):
    """``min 1/2 ||x - c||^2`` over the probability simplex, declared from blocks.

    Attributes:
        dimension: Length ``d`` of ``x``.
        seed: Seed of the point ``c`` (standard normal entries).
    """

    dimension: int = Field(default=10, ge=2)
    seed: int = 0

    def target(self) -> Tensor:
        """The point ``c`` to project (float64, from ``seed``)."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.dimension, generator=generator, dtype=torch.float64)

    def declare(self) -> tuple[blocks.Expression, list[Constraint]]:
        x = blocks.Variable("x", self.dimension)
        objective = 0.5 * blocks.sum_squares(x - self.target())
        return objective, [
            *blocks.bounds(x, lower=0.0, name="nonnegative"),
            Constraint("total", "==", rhs=1.0, size=1, fn=blocks.sum(x)),
        ]


class SimplexProjection(ProblemSpec):
    name = "simplex"
    params = SimplexProblem
    validates = True
    description = (
        "Projection onto the probability simplex (1 equality, d bounds); closed-form reference."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "problem": {"dimension": 10, "seed": 0},
        "controller": {"name": "nupi", "lr": 0.5, "ki": 1.0, "kp": 1.0, "nu": 0.0},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "order": "dual_primal",
        "steps": 3000,
        "dtype": "float64",
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "gda": {"lr": 0.5},
        "nupi": {"lr": 0.5, "ki": 1.0, "kp": 1.0, "nu": 0.0},
    }

    def build(self, config: RunConfig) -> Setup:
        params = {k: v for k, v in config.problem.items() if k != "name"}
        problem = SimplexProblem(**params)
        model = Variables(x=torch.zeros(problem.dimension))
        return Setup(problem, model)

    def reference(self, setup: Setup) -> Reference | None:
        problem = setup.problem
        assert isinstance(problem, SimplexProblem)
        c = problem.target().numpy()
        x, tau = project_simplex(c)
        return Reference(
            objective=float(0.5 * np.sum((x - c) ** 2)),
            multipliers={"total": np.array([tau]), "nonnegative": np.maximum(tau - c, 0.0)},
            primal={"x": x},
            source="closed form",
        )
