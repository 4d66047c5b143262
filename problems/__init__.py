"""Reference problems and studies for :mod:`constrain` (installed as ``constrain_problems``).

Each module declares one problem (a :class:`constrain.ConstrainedProblem`), its data and,
where one exists, its exact reference solution, bundled as a :class:`constrain.ProblemSpec`.
They are registered with the ``constrain.problems`` entry-point group through
:data:`PROBLEMS`, so ``constrain run NAME`` finds them. Heavy imports (scikit-learn, CVXPY)
happen inside the functions that need them, so listing problems stays fast.
"""

from __future__ import annotations

from constrain.runner import ProblemSpec

from .fairness_adult import FairnessAdult
from .fairness_adult_rates import FairnessAdultRates
from .feasible_learning import FeasibleLearningStudy
from .iris_svm import IrisSVM
from .lasso import LassoSpec
from .neyman_pearson import NeymanPearson
from .proxsparse_digits import ProxSparseDigits
from .random_qp import RandomQP
from .simplex import SimplexProjection
from .sparsity_digits import SparsityDigits
from .weight_sharing_digits import WeightSharingDigits
from .weight_sharing_torus import WeightSharingTorus

PROBLEMS: dict[str, type[ProblemSpec]] = {
    spec.name: spec
    for spec in (
        IrisSVM,
        SimplexProjection,
        RandomQP,
        FairnessAdult,
        FeasibleLearningStudy,
        SparsityDigits,
        WeightSharingDigits,
        WeightSharingTorus,
        ProxSparseDigits,
        NeymanPearson,
        LassoSpec,
        FairnessAdultRates,
    )
}

__all__ = [
    "PROBLEMS",
    "FairnessAdult",
    "FairnessAdultRates",
    "FeasibleLearningStudy",
    "IrisSVM",
    "LassoSpec",
    "NeymanPearson",
    "ProxSparseDigits",
    "RandomQP",
    "SimplexProjection",
    "SparsityDigits",
    "WeightSharingDigits",
    "WeightSharingTorus",
]
