"""A random strongly convex quadratic program with equality and inequality constraints.

``min 1/2 x'Px + q'x  s.t.  Gx <= h,  Ax == b`` with ``P`` positive definite (eigenvalues
in ``[1, 3]``), built so that some inequalities are active at the optimum. The exact
primal and dual solution comes from CVXPY (Clarabel, tight tolerances).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from constrain import ConstrainedProblem, ProblemSpec, Reference, Setup, Variables, constraint
from constrain.config import RunConfig

from ._cvx import import_cvxpy, solve_tight


def qp_data(n: int, m_ineq: int, m_eq: int, seed: int) -> dict[str, np.ndarray]:
    """Random QP data (float64): P, q, G, h, A, b."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    P = Q @ np.diag(rng.uniform(1.0, 3.0, n)) @ Q.T
    q = rng.standard_normal(n)
    G = rng.standard_normal((m_ineq, n)) / np.sqrt(n)
    A = rng.standard_normal((m_eq, n)) / np.sqrt(n)
    x0 = rng.standard_normal(n) * 0.3
    h = G @ x0 + rng.uniform(-0.2, 0.2, m_ineq)  # some constraints bind at the optimum
    h = np.maximum(h, G @ x0)  # x0 stays feasible
    b = A @ x0
    return {"P": P, "q": q, "G": G, "h": h, "A": A, "b": b}


class QuadraticProgram(ConstrainedProblem):
    """``min 1/2 x'Px + q'x  s.t.  Gx <= h,  Ax == b`` (random data from ``seed``)."""

    num_variables: int = Field(default=12, ge=2)
    num_inequalities: int = Field(default=6, ge=1)
    num_equalities: int = Field(default=5, ge=1)
    seed: int = 0

    def data(self, like: Tensor) -> dict[str, Tensor]:
        raw = qp_data(self.num_variables, self.num_inequalities, self.num_equalities, self.seed)
        return {k: torch.as_tensor(v, dtype=like.dtype, device=like.device) for k, v in raw.items()}

    def objective(self, model: Any, batch: Any) -> Tensor:
        d = self.data(model.x)
        return 0.5 * model.x @ d["P"] @ model.x + d["q"] @ model.x

    @constraint("<=", size="num_inequalities")
    def inequalities(self, model: Any, batch: Any) -> Tensor:
        d = self.data(model.x)
        return d["G"] @ model.x - d["h"]

    @constraint("==", size="num_equalities")
    def equalities(self, model: Any, batch: Any) -> Tensor:
        d = self.data(model.x)
        return d["A"] @ model.x - d["b"]


class RandomQP(ProblemSpec):
    name = "random-qp"
    description = "Random strongly convex QP, 12 variables, 6 inequalities, 5 equalities; CVXPY reference."
    defaults = {
        "problem": {"num_variables": 12, "num_inequalities": 6, "num_equalities": 5, "seed": 0},
        "controller": {"name": "gda", "lr": 1.0},
        "formulation": {"name": "augmented_lagrangian", "penalty": 1.0},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "order": "dual_primal",
        "steps": 4000,
        "dtype": "float64",
    }
    controller_defaults = {"gda": {"lr": 1.0}, "nupi": {"lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0}}

    def build(self, config: RunConfig) -> Setup:
        params = {k: v for k, v in config.problem.items() if k != "name"}
        problem = QuadraticProgram(**params)
        model = Variables(x=torch.zeros(problem.num_variables))
        return Setup(problem, model)

    def reference(self, setup: Setup) -> Reference | None:
        cp = import_cvxpy()
        if cp is None:
            return None
        problem = setup.problem
        assert isinstance(problem, QuadraticProgram)
        d = qp_data(problem.num_variables, problem.num_inequalities, problem.num_equalities, problem.seed)
        x = cp.Variable(problem.num_variables)
        ineq = d["G"] @ x <= d["h"]
        eq = d["A"] @ x == d["b"]
        objective = 0.5 * cp.quad_form(x, cp.psd_wrap(d["P"])) + d["q"] @ x
        value = solve_tight(cp.Problem(cp.Minimize(objective), [ineq, eq]))
        # CVXPY's Lagrangian is f + y'(Ax - b) for equalities: the same sign as ours.
        return Reference(
            objective=value,
            multipliers={"inequalities": np.asarray(ineq.dual_value), "equalities": np.asarray(eq.dual_value)},
            primal={"x": np.asarray(x.value)},
            source="cvxpy/clarabel",
        )
