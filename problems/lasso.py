"""A lasso with a norm constraint: least squares subject to ``||w||_1 <= t``.

``min 1/2 mean_i (x_i . w - y_i)^2  s.t.  ||w||_1 <= t`` on a seeded, well-conditioned
synthetic regression (Gaussian design, ``num_samples x num_features``, every true
coefficient non-zero, Gaussian noise), with ``t = bound_fraction * ||w_ols||_1`` so that the
constraint is active. Declared from :mod:`constrain.blocks` (data as
:class:`~constrain.blocks.Data`, batch ``{"X": X, "y": y}``); the reference is its CVXPY
twin.

The default ``bound_fraction`` keeps every coefficient of the solution non-zero. With a
tighter bound some coefficients are exactly zero at the optimum; (sub)gradient steps on
the Lagrangian then oscillate around zero with an amplitude of about ``lr * lambda``, and
``constrain validate lasso`` reports that honestly as a primal error of that size.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from constrain import Constraint, ProblemSpec, Reference, Setup, Variables, blocks
from constrain.config import RunConfig

from ._cvx import import_cvxpy

_TRUE_COEFFICIENTS = (1.5, -1.2, 1.0, -0.9, 0.8, -0.7, 0.7, -0.6, 0.6, -0.5)


def regression_data(
    num_samples: int, num_features: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic regression ``y = X w_true + noise * eps`` (float64)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_samples, num_features))
    w_true = np.resize(np.asarray(_TRUE_COEFFICIENTS), num_features)
    y = X @ w_true + noise * rng.standard_normal(num_samples)
    return X, y


class Lasso(blocks.BlockProblem):
    """``min 1/2 mean((X w - y)^2)  s.t.  ||w||_1 <= bound`` (batch ``{"X": X, "y": y}``).

    The data come from :func:`regression_data` and ``bound = bound_fraction * ||w_ols||_1``.

    Attributes:
        num_samples: Rows of the synthetic regression data.
        num_features: Columns (length of ``w``).
        noise: Standard deviation of the label noise.
        bound_fraction: The l1 bound as a fraction of ``||w_ols||_1``.
        seed: Seed of the synthetic data.
    """

    num_samples: int = Field(default=100, ge=2)
    num_features: int = Field(default=10, ge=1)
    noise: float = Field(default=0.3, ge=0, allow_inf_nan=False)
    bound_fraction: float = Field(default=0.8, gt=0, lt=1)
    seed: int = 0

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` as float64 arrays."""
        return regression_data(self.num_samples, self.num_features, self.noise, self.seed)

    @property
    def bound(self) -> float:
        """``t = bound_fraction * ||w_ols||_1`` (``w_ols``: the least-squares solution)."""
        X, y = self.data()
        return self.bound_fraction * float(np.abs(np.linalg.lstsq(X, y, rcond=None)[0]).sum())

    def declare(self) -> tuple[blocks.Expression, list[Constraint]]:
        w = blocks.Variable("w", self.num_features)
        X = blocks.Data("X", (self.num_samples, self.num_features))
        y = blocks.Data("y", self.num_samples)
        objective = 0.5 * blocks.mean(blocks.square(X @ w - y))
        return objective, [Constraint("l1_norm", "<=", rhs=self.bound, fn=blocks.norm1(w))]


class LassoSpec(ProblemSpec):
    name = "lasso"
    params = Lasso
    validates = True
    description = "Least squares s.t. ||w||_1 <= t (10 features, synthetic); CVXPY reference."
    defaults: ClassVar[dict[str, Any]] = {
        "problem": {
            "num_samples": 100,
            "num_features": 10,
            "noise": 0.3,
            "bound_fraction": 0.8,
            "seed": 0,
        },
        "controller": {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5},
        "order": "dual_primal",
        "steps": 1500,
        "dtype": "float64",
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "gda": {"lr": 0.5},
        "nupi": {"lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0},
    }

    def build(self, config: RunConfig) -> Setup:
        params = {k: v for k, v in config.problem.items() if k != "name"}
        problem = Lasso(**params)
        X, y = problem.data()
        dtype = torch.get_default_dtype()
        batch = {"X": torch.tensor(X, dtype=dtype), "y": torch.tensor(y, dtype=dtype)}
        model = Variables(w=torch.zeros(problem.num_features))
        return Setup(problem, model, batch=batch)

    def reference(self, setup: Setup) -> Reference | None:
        """CVXPY's solution of the blocks' twin (multipliers in the library's convention)."""
        if import_cvxpy() is None:
            return None
        return blocks.to_cvxpy(setup.problem, data=setup.batch).solve().reference()
