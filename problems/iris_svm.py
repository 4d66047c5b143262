"""The hard-margin SVM of the nuPI paper (Sohrabi et al., ICML 2024), on iris.

Setosa vs versicolor, four standardized features, 70% stratified train split
(random_state 0): 70 points. Variables ``(w, b)``; minimize ``1/2 ||w||^2`` subject to
``y_i (w . x_i + b) >= 1`` for every training point (70 inequality constraints). The
exact multipliers come from CVXPY's dual values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from constrain import ConstrainedProblem, ProblemSpec, Reference, Setup, Variables, constraint
from constrain.config import RunConfig

from ._cvx import import_cvxpy, solve_tight


def load_iris_binary(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Standardized setosa-vs-versicolor training split: ``X`` (70, 4), ``y`` in {-1, +1}."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    mask = data.target < 2
    X, y = data.data[mask], np.where(data.target[mask] == 0, -1.0, 1.0)
    X_train, _, y_train, _ = train_test_split(X, y, train_size=0.7, stratify=y, random_state=0)
    X_train = StandardScaler().fit_transform(X_train)
    return torch.tensor(X_train, dtype=dtype), torch.tensor(y_train, dtype=dtype)


class HardMarginSVM(ConstrainedProblem):
    """``min 1/2 ||w||^2  s.t.  y_i (w . x_i + b) >= margin`` for every point of the batch.

    The batch is ``(X, y)``; the model holds ``w`` and ``b``.
    """

    margin: float = 1.0
    num_points: int = 70

    def objective(self, model: Any, batch: Any) -> Tensor:
        return 0.5 * model.w.pow(2).sum()

    @constraint(">=", rhs="margin", size="num_points")
    def margins(self, model: Any, batch: Any) -> Tensor:
        X, y = batch
        return y * (X @ model.w + model.b)


class IrisSVM(ProblemSpec):
    name = "iris-svm"
    description = "Hard-margin SVM on iris (70 margin constraints); exact multipliers from CVXPY."
    defaults = {
        "controller": {"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0},
        "optimizer": {"name": "sgd", "lr": 1e-3, "momentum": 0.9},
        "order": "dual_primal",
        "steps": 5000,
        "dtype": "float64",
    }
    controller_defaults = {
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
        problem = HardMarginSVM(num_points=len(y), **params)
        model = Variables(w=torch.zeros(X.shape[1]), b=torch.zeros(()))
        return Setup(problem, model, batch=(X, y), extras={"X": X, "y": y})

    def reference(self, setup: Setup) -> Reference | None:
        cp = import_cvxpy()
        if cp is None:
            return None
        X = setup.extras["X"].double().numpy()
        y = setup.extras["y"].double().numpy()
        margin = float(setup.problem.margin)  # type: ignore[attr-defined]
        w, b = cp.Variable(X.shape[1]), cp.Variable()
        margins = cp.multiply(y, X @ w + b) >= margin
        value = solve_tight(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(w)), [margins]))
        return Reference(
            objective=value,
            multipliers={"margins": np.asarray(margins.dual_value, dtype=np.float64)},
            primal={"w": np.asarray(w.value), "b": np.asarray(b.value)},
            source="cvxpy/clarabel",
        )
