"""Reference problems and studies for :mod:`constrain` (installed as ``constrain_problems``).

Each module declares one problem (a :class:`constrain.ConstrainedProblem`), its data and,
where one exists, its exact reference solution, bundled as a :class:`constrain.ProblemSpec`.
They are registered with the ``constrain.problems`` entry-point group through
:data:`PROBLEMS`, so ``constrain run NAME`` finds them. Heavy imports (scikit-learn, CVXPY)
happen inside the functions that need them, so listing problems stays fast.
"""

from __future__ import annotations

from constrain.runner import ProblemSpec

from .iris_svm import IrisSVM
from .random_qp import RandomQP
from .simplex import SimplexProjection

PROBLEMS: dict[str, type[ProblemSpec]] = {
    spec.name: spec
    for spec in (IrisSVM, SimplexProjection, RandomQP)
}

__all__ = ["PROBLEMS", "IrisSVM", "RandomQP", "SimplexProjection"]
