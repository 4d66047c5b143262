"""Neyman-Pearson-style logistic regression on the breast-cancer data.

Score ``s(x) = w . x + b``; a point is flagged malignant when ``s(x) > 0``. Minimize a
convex surrogate of the false-positive rate (the mean logistic loss on benign points,
plus a small ridge ``ridge/2 ||w||^2``) subject to a convex surrogate of the miss rate:

    min  mean_{benign} log(1 + exp(s(x_i))) + ridge/2 ||w||^2
    s.t. mean_{malignant} log(1 + exp(-s(x_i))) <= bound.

Data: scikit-learn's breast-cancer set, the ten "mean" features, 70% stratified train
split (random_state 0), standardized: 148 malignant and 250 benign points. Declared from
:mod:`constrain.blocks`; the reference is its CVXPY twin (exponential cones in Clarabel).
The report adds the true training rates, measured with the torch-only
:func:`constrain.blocks.positive_rate` block.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from constrain import Constraint, ProblemSpec, Reference, Setup, Solver, Variables, blocks
from constrain.config import RunConfig

from ._cvx import import_cvxpy


def load_breast_cancer_split(
    num_features: int = 10, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """Standardized train split: ``(X_malignant, X_benign)``."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    X = data.data[:, :num_features]
    malignant = data.target == 0
    X_train, _, m_train, _ = train_test_split(
        X, malignant, train_size=0.7, stratify=malignant, random_state=0
    )
    X_train = StandardScaler().fit_transform(X_train)
    return (
        torch.tensor(X_train[m_train], dtype=dtype),
        torch.tensor(X_train[~m_train], dtype=dtype),
    )


class NeymanPearsonLogistic(blocks.BlockProblem):
    """Benign-loss minimization under a malignant-loss bound (batch: ``{"X_malignant":
    ..., "X_benign": ...}``).

    Attributes:
        bound: Largest mean logistic loss on the malignant points.
        ridge: Weight of the ridge term ``ridge/2 ||w||^2`` in the objective.
        num_features: Number of features used (the first ones of the data set).
        num_malignant: Malignant training points (set from the data).
        num_benign: Benign training points (set from the data).
    """

    bound: float = Field(default=0.1, gt=0, allow_inf_nan=False)
    ridge: float = Field(default=0.01, ge=0, allow_inf_nan=False)
    num_features: int = Field(default=10, ge=1, le=30)
    num_malignant: int = Field(default=148, ge=1)
    num_benign: int = Field(default=250, ge=1)

    def scores(self) -> tuple[blocks.Expression, blocks.Expression]:
        """Scores ``s(x)`` of the malignant and of the benign points (blocks)."""
        w, b = blocks.Variable("w", self.num_features), blocks.Variable("b")
        X_malignant = blocks.Data("X_malignant", (self.num_malignant, self.num_features))
        X_benign = blocks.Data("X_benign", (self.num_benign, self.num_features))
        return X_malignant @ w + b, X_benign @ w + b

    def declare(self) -> tuple[blocks.Expression, list[Constraint]]:
        s_malignant, s_benign = self.scores()
        w = blocks.Variable("w", self.num_features)
        objective = blocks.mean(blocks.logistic_loss(-s_benign))
        if self.ridge > 0:
            objective = objective + 0.5 * self.ridge * blocks.sum_squares(w)
        miss = Constraint(
            "miss_surrogate",
            "<=",
            rhs=self.bound,
            fn=blocks.mean(blocks.logistic_loss(s_malignant)),
            description="mean logistic loss on malignant points (surrogate of the miss rate)",
        )
        return objective, [miss]


class NeymanPearson(ProblemSpec):
    name = "neyman-pearson"
    params = NeymanPearsonLogistic
    derived_params = ("num_malignant", "num_benign")
    validates = True
    description = (
        "Logistic regression: benign loss s.t. malignant loss <= bound (breast cancer); "
        "CVXPY reference."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "problem": {"bound": 0.1, "ridge": 0.01, "num_features": 10},
        "controller": {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0},
        "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
        "order": "dual_primal",
        "steps": 1500,
        "dtype": "float64",
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "gda": {"lr": 1.0},
        "nupi": {"lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0},
    }

    def build(self, config: RunConfig) -> Setup:
        params = {k: v for k, v in config.problem.items() if k != "name"}
        num_features = int(params.get("num_features", 10))
        X_malignant, X_benign = load_breast_cancer_split(num_features, torch.get_default_dtype())
        problem = NeymanPearsonLogistic(
            num_malignant=len(X_malignant), num_benign=len(X_benign), **params
        )
        model = Variables(w=torch.zeros(num_features), b=torch.zeros(()))
        batch = {"X_malignant": X_malignant, "X_benign": X_benign}
        return Setup(problem, model, batch=batch)

    def reference(self, setup: Setup) -> Reference | None:
        """CVXPY's solution of the blocks' twin (multipliers in the library's convention)."""
        if import_cvxpy() is None:
            return None
        return blocks.to_cvxpy(setup.problem, data=setup.batch).solve().reference()

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        """True training rates: misses among malignant, false alarms among benign."""
        problem = setup.problem
        assert isinstance(problem, NeymanPearsonLogistic)
        s_malignant, s_benign = problem.scores()
        with torch.no_grad():
            miss = blocks.positive_rate(-s_malignant)(solver.model, setup.batch)
            false_alarm = blocks.positive_rate(s_benign)(solver.model, setup.batch)
        return {"miss_rate": float(miss), "false_alarm_rate": float(false_alarm)}


__all__ = ["NeymanPearson", "NeymanPearsonLogistic", "load_breast_cancer_split"]
