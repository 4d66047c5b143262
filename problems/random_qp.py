"""A random strongly convex quadratic program with equality and inequality constraints.

``min 1/2 x'Px + q'x  s.t.  Gx <= h,  Ax == b`` with ``P`` positive definite (eigenvalues
in ``[1, 3]``), built so that some inequalities are active at the optimum. Declared from
:mod:`constrain.blocks`; the exact primal and dual solution comes from its CVXPY twin
(Clarabel, tight tolerances), and ``constrain validate random-qp`` checks a run exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from constrain import Constraint, ProblemSpec, Reference, Setup, Variables, blocks
from constrain.config import RunConfig

from ._cvx import import_cvxpy


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


class QuadraticProgram(blocks.BlockProblem):
    """``min 1/2 x'Px + q'x  s.t.  Gx <= h,  Ax == b`` (random data from ``seed``),
    declared from blocks.

    Attributes:
        num_variables: Length of ``x``.
        num_inequalities: Rows of ``G``.
        num_equalities: Rows of ``A``.
        seed: Seed of the random data.
    """

    num_variables: int = Field(default=12, ge=2)
    num_inequalities: int = Field(default=6, ge=1)
    num_equalities: int = Field(default=5, ge=1)
    seed: int = 0

    def data(self) -> dict[str, np.ndarray]:
        """The QP data (float64 arrays P, q, G, h, A, b)."""
        return qp_data(self.num_variables, self.num_inequalities, self.num_equalities, self.seed)

    def declare(self) -> tuple[blocks.Expression, list[Constraint]]:
        d = self.data()
        x = blocks.Variable("x", self.num_variables)
        objective = 0.5 * blocks.quad_form(x, d["P"]) + d["q"] @ x
        return objective, [
            Constraint("equalities", "==", rhs=tuple(d["b"]), fn=d["A"] @ x),
            Constraint("inequalities", "<=", rhs=tuple(d["h"]), fn=d["G"] @ x),
        ]


class RandomQP(ProblemSpec):
    name = "random-qp"
    params = QuadraticProgram
    validates = True
    description = (
        "Random strongly convex QP, 12 variables, 6 inequalities, 5 equalities; CVXPY reference."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "problem": {"num_variables": 12, "num_inequalities": 6, "num_equalities": 5, "seed": 0},
        "controller": {"name": "gda", "lr": 1.0},
        "formulation": {"name": "augmented_lagrangian", "penalty": 1.0},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "order": "dual_primal",
        "steps": 4000,
        "dtype": "float64",
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "gda": {"lr": 1.0},
        "nupi": {"lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0},
    }

    def build(self, config: RunConfig) -> Setup:
        params = {k: v for k, v in config.problem.items() if k != "name"}
        problem = QuadraticProgram(**params)
        model = Variables(x=torch.zeros(problem.num_variables))
        return Setup(problem, model)

    def reference(self, setup: Setup) -> Reference | None:
        """CVXPY's solution of the blocks' twin (multipliers in the library's convention)."""
        cvxpy = import_cvxpy()
        if cvxpy is None:
            return None
        return blocks.to_cvxpy(setup.problem).solve().reference()
