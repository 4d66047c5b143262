"""Exact references: a known optimal solution that a run is compared with.

A :class:`Reference` is plain data (numpy arrays) so that every layer can produce one: the
CVXPY twin of a block problem (:meth:`constrain.blocks.twin.TwinSolution.reference`), a
closed form written by a problem spec, or a file. :mod:`constrain.exact` (the CVXPY check)
and the runner's reports read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Reference"]


@dataclass
class Reference:
    """An exact solution to compare against.

    Attributes:
        objective: Optimal objective value.
        multipliers: Optimal multipliers by constraint name (library convention:
            ``>= 0`` for inequalities in standard form ``g <= 0``).
        primal: Optimal primal variables by parameter name, if known.
        source: How it was obtained (e.g. ``"cvxpy/clarabel"``).
    """

    objective: float
    multipliers: dict[str, np.ndarray]
    primal: dict[str, np.ndarray] | None = None
    source: str = ""
