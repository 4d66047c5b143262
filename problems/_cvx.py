"""Small helpers for CVXPY references (CVXPY is an optional dependency)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("constrain")

TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10}


def import_cvxpy() -> Any | None:
    """Return the ``cvxpy`` module, or ``None`` (with a log message) if it is missing."""
    try:
        import cvxpy
    except ImportError:
        logger.warning("cvxpy is not installed: no exact reference (pip install constrain[reference])")
        return None
    return cvxpy


def solve_tight(problem: Any) -> float:
    """Solve a CVXPY problem with Clarabel at tight tolerances; return the optimal value."""
    import cvxpy as cp

    problem.solve(solver=cp.CLARABEL, **TIGHT)
    if problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"CVXPY reference solve failed with status {problem.status!r}")
    return float(problem.value)
