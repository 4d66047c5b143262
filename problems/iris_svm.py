"""The hard-margin SVM of the nuPI paper (Sohrabi et al., ICML 2024), on iris.

Setosa vs versicolor (100 points), four features standardized over those 100 points,
then a 70% stratified train split (random_state 0): 70 points. (Standardizing before the
split is the setup behind the multiplier-error table of the nuPI paper's SVM experiment.) Variables ``(w, b)``; minimize ``1/2 ||w||^2`` subject to
``y_i (w . x_i + b) >= 1`` for every training point (70 inequality constraints).
Declared from :mod:`constrain.blocks` with the data as :class:`~constrain.blocks.Data`
(the batch is ``{"X": X, "y": y}``); the exact multipliers are the dual values of its
CVXPY twin, and ``constrain validate iris-svm`` checks a run exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from constrain import Constraint, ProblemSpec, Reference, Setup, Variables, blocks
from constrain.config import RunConfig

from ._cvx import import_cvxpy


def load_iris_binary(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Setosa-vs-versicolor training split, ``X`` (70, 4) and ``y`` in {-1, +1}; the features
    are standardized over all 100 points before the split."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    mask = data.target < 2
    X = StandardScaler().fit_transform(data.data[mask])
    y = np.where(data.target[mask] == 0, -1.0, 1.0)
    X_train, _, y_train, _ = train_test_split(X, y, train_size=0.7, stratify=y, random_state=0)
    return torch.tensor(X_train, dtype=dtype), torch.tensor(y_train, dtype=dtype)


class HardMarginSVM(blocks.BlockProblem):
    """``min 1/2 ||w||^2  s.t.  y_i (w . x_i + b) >= margin`` for every point of the batch.

    The batch is the mapping ``{"X": X, "y": y}`` (``X``: ``num_points x num_features``,
    ``y`` in {-1, +1}); the model holds ``w`` and ``b``.

    Attributes:
        margin: Functional margin every training point must reach.
        num_points: Training points (set from the data).
        num_features: Features (set from the data).
    """

    margin: float = 1.0
    num_points: int = Field(default=70, ge=1)
    num_features: int = Field(default=4, ge=1)

    def declare(self) -> tuple[blocks.Expression, list[Constraint]]:
        w, b = blocks.Variable("w", self.num_features), blocks.Variable("b")
        X = blocks.Data("X", (self.num_points, self.num_features))
        y = blocks.Data("y", self.num_points)
        margins = Constraint(
            "margins", ">=", rhs=self.margin, size=self.num_points, fn=y * (X @ w + b)
        )
        return 0.5 * blocks.sum_squares(w), [margins]


class IrisSVM(ProblemSpec):
    name = "iris-svm"
    params = HardMarginSVM
    derived_params = ("num_points", "num_features")
    validates = True
    description = "Hard-margin SVM on iris (70 margin constraints); exact multipliers from CVXPY."
    defaults: ClassVar[dict[str, Any]] = {
        "controller": {"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0},
        "optimizer": {"name": "sgd", "lr": 1e-3, "momentum": 0.9},
        "order": "dual_primal",
        "steps": 5000,
        "dtype": "float64",
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "gda": {"lr": 0.1},
        "momentum": {"lr": 0.1, "beta": 0.3},
        "nesterov": {"lr": 0.1, "beta": -0.3},
        "adam": {"lr": 1e-2},
        "nupi": {"lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0},
        "optimistic": {"lr": 0.1},
        "extragradient": {"lr": 0.1},
        "pid": {"ki": 0.1, "kp": 1.0},
        "multiplicative": {"lr": 0.1},
    }

    def build(self, config: RunConfig) -> Setup:
        X, y = load_iris_binary(torch.get_default_dtype())
        params = {k: v for k, v in config.problem.items() if k != "name"}
        problem = HardMarginSVM(num_points=len(y), num_features=X.shape[1], **params)
        model = Variables(w=torch.zeros(X.shape[1]), b=torch.zeros(()))
        return Setup(problem, model, batch={"X": X, "y": y}, extras={"X": X, "y": y})

    def reference(self, setup: Setup) -> Reference | None:
        """CVXPY's solution of the blocks' twin (multipliers in the library's convention)."""
        if import_cvxpy() is None:
            return None
        return blocks.to_cvxpy(setup.problem, data=setup.batch).solve().reference()
