"""Demographic parity on UCI Adult: logistic regression or a small MLP, sex x race groups.

Data: the official UCI Adult split (32,561 training, 16,281 test rows) shipped in
``data/adult`` (CC BY 4.0, see ``SOURCE.md`` there), preprocessed by
:func:`constrain_problems._data.load_adult`. Groups: intersectional ``sex x race``; race
cells with fewer than ``min_group_size`` training rows are pooled per sex into
``race=other`` (a test group of 100 rows has a standard error of about 0.04 on its
positive rate, so a tolerance of 0.02 could not be checked on it). With the default
``min_group_size = 2000`` the groups are ``{Female, Male} x {White, other}``;
``--set problem.min_group_size=1`` gives all ten cells.

Problem (:class:`constrain.studies.FairClassification`), full batch by default::

    minimize   mean BCE(s_i, y_i)
    subject to |rate_g - rate| <= tolerance   for every group g

with exact counting rates for the multipliers and sigmoid proxies for the model. The
report gives test accuracy and the test-set ``max_parity_gap = max_g |rate_g - rate|``
next to those of the same model trained without constraints with the same budget, and
checks them against the stated targets: test gap ``<= test_tolerance`` and accuracy
within ``accuracy_margin`` of the unconstrained model. ``late_max_violation`` is the largest
training violation over the last quarter of the steps (it exposes oscillating multipliers,
whose final iterate may look feasible by chance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from constrain import ConstrainedProblem, ProblemSpec, RunConfig, Setup, Solver
from constrain.studies import (
    Criterion,
    FairClassification,
    Groups,
    correctness,
    max_parity_gap,
    positive_rates,
)

from ._data import Minibatches, load_adult
from ._study import DTYPES, cached, config_key, evaluating, seeded_model, study_params, train_plain


class AdultParams(BaseModel):
    """Hyperparameters of the ``fairness-adult`` study (``--set problem.KEY=VALUE``).

    Attributes:
        model: ``"logistic"`` (logistic regression) or ``"mlp"`` (one hidden ReLU layer).
        hidden: Hidden units of the MLP.
        tolerance: Training constraint ``|rate_g - rate| <= tolerance``.
        test_tolerance: Stated test-set target for ``max_parity_gap``.
        accuracy_margin: Stated largest test-accuracy loss against the unconstrained model.
        temperature: Temperature of the sigmoid proxy of the positive rate.
        criterion: Parity notion (``demographic_parity`` in the study).
        min_group_size: Race cells with fewer training rows are pooled per sex.
        include_protected: Whether ``sex`` and ``race`` are model inputs.
        max_train_samples: Use a fixed random subset of the training rows (quick runs).
    """

    model_config = ConfigDict(extra="forbid")

    model: Literal["logistic", "mlp"] = "logistic"
    hidden: int = Field(default=32, ge=1)
    tolerance: float = Field(default=0.015, gt=0, lt=1)
    test_tolerance: float = Field(default=0.02, gt=0, lt=1)
    accuracy_margin: float = Field(default=0.02, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    criterion: Criterion = "demographic_parity"
    min_group_size: int = Field(default=2000, ge=1)
    include_protected: bool = True
    max_train_samples: int | None = Field(default=None, ge=100)


Split = tuple[Tensor, Tensor, Tensor]
"""Features, labels in {0, 1} and the membership matrix of one split."""


def adult_splits(
    include_protected: bool,
    min_group_size: int,
    max_train_samples: int | None,
    dtype: torch.dtype,
) -> tuple[Groups, Split, Split]:
    """UCI Adult as tensors: the intersectional ``sex x race`` groups (cells below
    ``min_group_size`` training rows pooled per sex) and the training and test splits
    ``(x, y, membership)``; ``max_train_samples`` keeps a fixed random subset of the training
    rows (seed 0)."""
    data = load_adult(include_protected)
    X_train, y_train = data.X_train, data.y_train
    protected_train = data.protected_train
    if max_train_samples is not None and max_train_samples < len(y_train):
        keep = np.sort(np.random.RandomState(0).permutation(len(y_train))[:max_train_samples])
        X_train, y_train = X_train[keep], y_train[keep]
        protected_train = {k: v[keep] for k, v in protected_train.items()}
    groups = Groups.intersectional(protected_train, min_count=min_group_size)
    train = (
        torch.as_tensor(X_train, dtype=dtype),
        torch.as_tensor(y_train, dtype=dtype),
        groups.membership(protected_train, dtype=dtype),
    )
    test = (
        torch.as_tensor(data.X_test, dtype=dtype),
        torch.as_tensor(data.y_test, dtype=dtype),
        groups.membership(data.protected_test, dtype=dtype),
    )
    return groups, train, test


def make_classifier(num_features: int, kind: str, hidden: int) -> nn.Module:
    """Logistic regression ``s = w.x + b`` or ``s = w2 . relu(W1 x + b1) + b2``."""
    if kind == "logistic":
        return nn.Linear(num_features, 1)
    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _bce(model: nn.Module, batch: Any) -> Tensor:
    return F.binary_cross_entropy_with_logits(model(batch[0])[:, 0], batch[1])


ADULT_RUN_DEFAULTS: dict[str, Any] = {
    "controller": {"name": "nupi", "lr": 1.0, "ki": 1.0, "kp": 10.0, "nu": 0.0},
    "optimizer": {"name": "adam", "lr": 1e-2},
    "order": "dual_primal",
    "steps": 1000,
    "dtype": "float32",
}
"""Run settings shared by the Adult studies (everything but the problem section)."""

ADULT_CONTROLLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "gda": {"lr": 1.0},
    "nupi": {"lr": 1.0, "ki": 1.0, "kp": 10.0, "nu": 0.0},
    "momentum": {"lr": 1.0, "beta": 0.5},
    "nesterov": {"lr": 1.0, "beta": 0.5},
    "optimistic": {"lr": 1.0},
    "extragradient": {"lr": 1.0},
    "pid": {"ki": 1.0, "kp": 10.0},
    "adam": {"lr": 1e-2},
    "multiplicative": {"lr": 1.0},
}
"""Recommended controller settings on the Adult studies (parity gaps of a few percent)."""


class FairnessAdult(ProblemSpec):
    name = "fairness-adult"
    description = (
        "Demographic parity over sex x race groups on UCI Adult (logistic regression or MLP); "
        "test accuracy and parity gap against the unconstrained model."
    )
    defaults: ClassVar[dict[str, Any]] = {
        **ADULT_RUN_DEFAULTS,
        "problem": AdultParams().model_dump(),
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = ADULT_CONTROLLER_DEFAULTS

    def build(self, config: RunConfig) -> Setup:
        params = study_params(AdultParams, config)
        dtype = DTYPES[config.dtype]
        groups, train, test = adult_splits(
            params.include_protected, params.min_group_size, params.max_train_samples, dtype
        )
        num_features = train[0].shape[1]

        def factory() -> nn.Module:
            return make_classifier(num_features, params.model, params.hidden)

        problem = FairClassification(
            tolerance=params.tolerance, temperature=params.temperature, criterion=params.criterion
        )
        model = seeded_model(factory, config.seed, dtype)
        extras = {
            "config": config,
            "params": params,
            "groups": groups,
            "train": train,
            "test": test,
            "factory": factory,
        }
        if config.batch_size is None:
            return Setup(problem, model, batch=train, extras=extras)
        loader = Minibatches(train, config.batch_size, seed=config.seed)
        return Setup(problem, model, data=loader, extras=extras)

    # -- evaluation ---------------------------------------------------------------------
    @staticmethod
    def _metrics(model: nn.Module, split: tuple[Tensor, Tensor, Tensor]) -> dict[str, Any]:
        x, y, m = split
        with evaluating(model):
            s = model(x)[:, 0]
        return {
            "accuracy": float(correctness(s, y).value.mean()),
            "max_parity_gap": max_parity_gap(s, m),
            "positive_rate": float((s > 0).to(s.dtype).mean()),
            "group_rates": positive_rates(s, m).value.tolist(),
        }

    def _baseline(self, setup: Setup) -> dict[str, dict[str, Any]]:
        config: RunConfig = setup.extras["config"]

        def compute() -> dict[str, dict[str, Any]]:
            dtype = DTYPES[config.dtype]
            model = seeded_model(setup.extras["factory"], config.seed, dtype)
            train = setup.extras["train"]
            data = None
            if config.batch_size is not None:
                data = Minibatches(train, config.batch_size, seed=config.seed)
            train_plain(ConstrainedProblem(objective=_bce), model, config, batch=train, data=data)
            return {
                "train": self._metrics(model, train),
                "test": self._metrics(model, setup.extras["test"]),
            }

        key = "fairness-adult:" + config_key(config, drop=("controller", "formulation", "order"))
        return cached(key, compute)

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: AdultParams = setup.extras["params"]
        groups: Groups = setup.extras["groups"]
        train = self._metrics(solver.model, setup.extras["train"])
        test = self._metrics(solver.model, setup.extras["test"])
        base = self._baseline(setup)
        drop = base["test"]["accuracy"] - test["accuracy"]
        sizes_train = setup.extras["train"][2].sum(dim=0).tolist()
        sizes_test = setup.extras["test"][2].sum(dim=0).tolist()
        late = solver.history.max_violation()
        late = late[len(late) - max(1, len(late) // 4) :]
        return {
            "model": params.model,
            "test_accuracy": test["accuracy"],
            "max_parity_gap": test["max_parity_gap"],
            "train_accuracy": train["accuracy"],
            "train_max_parity_gap": train["max_parity_gap"],
            "test_positive_rate": test["positive_rate"],
            "unconstrained_test_accuracy": base["test"]["accuracy"],
            "unconstrained_max_parity_gap": base["test"]["max_parity_gap"],
            "unconstrained_train_accuracy": base["train"]["accuracy"],
            "accuracy_drop": drop,
            "late_max_violation": float(late.max()) if late.size else 0.0,
            "train_parity_tolerance": params.tolerance,
            "parity_tolerance": params.test_tolerance,
            "accuracy_margin": params.accuracy_margin,
            "meets_parity": test["max_parity_gap"] <= params.test_tolerance,
            "within_accuracy_margin": drop <= params.accuracy_margin,
            "groups": [
                {
                    "name": name,
                    "train_size": int(n_train),
                    "test_size": int(n_test),
                    "test_positive_rate": rate,
                    "unconstrained_test_positive_rate": base_rate,
                }
                for name, n_train, n_test, rate, base_rate in zip(
                    groups.names,
                    sizes_train,
                    sizes_test,
                    test["group_rates"],
                    base["test"]["group_rates"],
                    strict=True,
                )
            ],
        }

    # -- figures ------------------------------------------------------------------------
    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        import matplotlib.pyplot as plt

        from constrain.plots import save_figure

        params: AdultParams = setup.extras["params"]
        groups: Groups = setup.extras["groups"]
        history = solver.history
        if len(history) == 0:
            return []
        steps = history.vector_steps()  # the steps whose vectors were recorded
        assert solver.layout is not None
        upper, lower = (
            solver.layout.slice_of("parity_upper"),
            solver.layout.slice_of("parity_lower"),
        )
        lam_upper, lam_lower = history.multipliers()[:, upper], history.multipliers()[:, lower]
        labels = _entry_labels(groups.names, lam_upper.shape[1])
        colors = plt.get_cmap("tab10")
        written: list[Path] = []

        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=False)
        for k, label in enumerate(labels):
            axes[0].plot(steps, lam_upper[:, k], color=colors(k % 10), lw=1.3, label=label)
            axes[1].plot(steps, lam_lower[:, k], color=colors(k % 10), lw=1.3, label=label)
        axes[0].set(title="upper side: rate_g - rate <= tol", xlabel="step", ylabel="multiplier")
        axes[1].set(title="lower side: rate - rate_g <= tol", xlabel="step", ylabel="multiplier")
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.suptitle(f"fairness-adult ({params.model}, {solver.controller.name}): multipliers")
        fig.tight_layout()
        written.append(save_figure(fig, out / "fairness_multipliers.png"))

        fig, ax = plt.subplots(figsize=(9, 4.5))
        gaps = history.violation()[:, upper] + params.tolerance
        for k, label in enumerate(labels):
            ax.plot(steps, gaps[:, k], color=colors(k % 10), lw=1.3, label=label)
        ax.axhspan(-params.tolerance, params.tolerance, color="0.85", label="tolerance band")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set(title="training parity gaps rate_g - rate (exact)", xlabel="step", ylabel="gap")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        written.append(save_figure(fig, out / "fairness_train_gaps.png"))

        report = self.report(setup, solver)
        rows = report["groups"]
        x = np.arange(len(rows))
        fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(rows) + 3), 4.8))
        base_rates = [r["unconstrained_test_positive_rate"] for r in rows]
        rates = [r["test_positive_rate"] for r in rows]
        ax.bar(x - 0.2, base_rates, width=0.4, color="0.6", label="unconstrained")
        ax.bar(x + 0.2, rates, width=0.4, color="tab:blue", label=solver.controller.name)
        overall = report["test_positive_rate"]
        ax.axhspan(
            overall - params.test_tolerance,
            overall + params.test_tolerance,
            color="tab:blue",
            alpha=0.15,
            zorder=0,
            label=f"overall rate +/- {params.test_tolerance}",
        )
        ax.axhline(overall, color="tab:blue", lw=1.0)
        ax.set_xticks(x, [r["name"].replace(" & ", "\n") for r in rows], fontsize=8)
        ax.set(
            ylabel="test positive rate",
            title=(
                f"test set: accuracy {report['test_accuracy']:.4f} (unconstrained "
                f"{report['unconstrained_test_accuracy']:.4f}), max gap "
                f"{report['max_parity_gap']:.4f} (unconstrained "
                f"{report['unconstrained_max_parity_gap']:.4f})"
            ),
        )
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(save_figure(fig, out / "fairness_test_rates.png"))
        return written


def _entry_labels(group_names: tuple[str, ...], n: int) -> list[str]:
    """Labels of the constrained gaps: group names, or ``TPR``/``FPR`` pairs for 2G gaps."""
    if n == len(group_names):
        return list(group_names)
    if n == 2 * len(group_names):
        return [f"TPR {g}" for g in group_names] + [f"FPR {g}" for g in group_names]
    return [f"gap {k}" for k in range(n)]
