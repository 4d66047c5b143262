"""Validate a problem you declare yourself, end to end, against CVXPY.

A small portfolio problem: choose weights ``x`` (fully invested, each between 0 and 35%)
that minimise the risk ``x' S x`` while the expected return ``r . x`` reaches a target.
It is declared once from :mod:`constrain.blocks`; the library's first-order Lagrangian
solver (nuPI multipliers) solves it in torch, and :func:`constrain.validate` solves its
CVXPY twin with Clarabel and compares the primal point, the objective and every
multiplier (including the ``>=`` and ``==`` ones) in the library's sign convention.

Run it with ``python examples/validate_custom_problem.py`` (needs ``constrain[reference]``).
"""

from __future__ import annotations

import numpy as np
import torch

import constrain
from constrain import ConstrainedProblem, Constraint, blocks

EXPECTED_RETURN = np.array([0.30, 0.10, 0.25, 0.05, 0.20])


def portfolio_problem(seed: int = 3) -> ConstrainedProblem:
    """Minimum-risk portfolio of five assets with a return target, a budget and limits."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((5, 5))
    risk = factors @ factors.T / 5 + 0.1 * np.eye(5)  # a random covariance matrix
    x = blocks.Variable("x", 5)
    return ConstrainedProblem(
        objective=blocks.quad_form(x, risk),
        constraints=[
            Constraint("budget", "==", rhs=1.0, fn=blocks.sum(x)),
            Constraint("target_return", ">=", rhs=0.22, fn=EXPECTED_RETURN @ x),
            *blocks.bounds(x, lower=0.0, upper=0.35, name="weights"),
        ],
    )


def main() -> int:
    """Solve with the library, validate exactly, print the report; exit 0 if it passed."""
    problem = portfolio_problem()
    model = constrain.Variables(x=torch.full((5,), 0.2, dtype=torch.float64))
    result = constrain.solve(
        problem,
        model,
        steps=3000,
        lr=0.1,
        order="dual_primal",
        controller={"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0},
    )
    report = constrain.validate(problem, result)
    print(report)
    print("weights:", np.round(result.model.x.detach().numpy(), 4))
    for name, exact in report.reference_multipliers.items():
        print(
            f"multiplier {name}: library {np.round(report.multipliers[name], 6)}"  # type: ignore[index]
            f"  CVXPY {np.round(exact, 6)}"
        )
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
