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
within ``accuracy_margin`` of the unconstrained model. ``group_metrics`` gives, for the
training and the test set, every group's size, positive rate, parity gap, accuracy, TPR
and FPR with 95% bootstrap intervals (:func:`constrain.studies.group_metrics`); a run's
report folder holds them as ``fairness_groups.md``. The run summary's ``late_*`` keys
(the last 10% of the steps) expose oscillating multipliers, whose final iterate may look
feasible by chance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from constrain import ConstrainedProblem, ProblemSpec, RunConfig, Setup, Solver
from constrain._io import atomic_write_text
from constrain.studies import (
    Criterion,
    FairClassification,
    Groups,
    correctness,
    format_group_metrics,
    group_metrics,
    max_parity_gap,
    positive_rates,
)

from ._data import Minibatches, load_adult
from ._study import (
    DTYPES,
    StudyParams,
    cached,
    config_key,
    evaluating,
    seeded_model,
    study_params,
    train_plain,
)


class AdultParams(StudyParams):
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
    params = AdultParams
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
        # The figures reuse the report of the same state (its bootstrap takes seconds).
        key = (id(solver), solver.step_count)
        cached_report = setup.extras.get("report")
        if cached_report is None or cached_report[0] != key:
            setup.extras["report"] = (key, self._report(setup, solver))
        return dict(setup.extras["report"][1])

    def _report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: AdultParams = setup.extras["params"]
        groups: Groups = setup.extras["groups"]
        train = self._metrics(solver.model, setup.extras["train"])
        test = self._metrics(solver.model, setup.extras["test"])
        base = self._baseline(setup)
        drop = base["test"]["accuracy"] - test["accuracy"]
        sizes_train = setup.extras["train"][2].sum(dim=0).tolist()
        sizes_test = setup.extras["test"][2].sum(dim=0).tolist()
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
            "group_metrics": {
                "train": self._group_metrics(solver.model, setup.extras["train"], groups),
                "test": self._group_metrics(solver.model, setup.extras["test"], groups),
            },
        }

    @staticmethod
    def _group_metrics(
        model: nn.Module, split: tuple[Tensor, Tensor, Tensor], groups: Groups
    ) -> dict[str, Any]:
        x, y, m = split
        with evaluating(model):
            predicted = (model(x)[:, 0] > 0).double()
        return group_metrics(predicted, y, m, groups.names, n_boot=1000, seed=0)

    # -- figures ------------------------------------------------------------------------
    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        from constrain.plots import legend_outside, mark_late_window, new_figure, save_figure

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
        from matplotlib import colormaps

        colors = [colormaps["tab10"](k % 10) for k in range(len(labels))]
        report = self.report(setup, solver)
        name = f"fairness-adult ({params.model}, {solver.controller.name})"
        written: list[Path] = []

        fig = new_figure(13, 5.2)
        axes = fig.subplots(1, 2, sharey=True)
        for ax in axes:
            mark_late_window(ax, steps)
        for k, label in enumerate(labels):
            axes[0].plot(steps, lam_upper[:, k], color=colors[k], lw=1.2, label=label)
            axes[1].plot(steps, lam_lower[:, k], color=colors[k], lw=1.2, label=label)
        axes[0].set(
            title=f"upper side: rate_g - rate <= {params.tolerance:g}",
            xlabel="step",
            ylabel="multiplier lambda (loss per unit of rate gap)",
        )
        axes[1].set(title=f"lower side: rate - rate_g <= {params.tolerance:g}", xlabel="step")
        fig.suptitle(f"{name}: multipliers of the parity constraints, per group")
        legend_outside(fig, axes)
        written.append(save_figure(fig, out / "fairness_multipliers.png"))

        fig = new_figure(11, 5.2)
        ax = fig.subplots()
        mark_late_window(ax, steps)
        gaps = history.violation()[:, upper] + params.tolerance
        ax.axhspan(
            -params.tolerance,
            params.tolerance,
            color="#d6f0d6",
            zorder=0,
            label=f"allowed: |gap| <= {params.tolerance:g} (training tolerance)",
        )
        for k, label in enumerate(labels):
            ax.plot(steps, gaps[:, k], color=colors[k], lw=1.0, label=label)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set(
            title=f"{name}: training parity gaps (exact counts)",
            xlabel="step",
            ylabel="parity gap rate_g - rate (fraction of the group)",
        )
        legend_outside(ax)
        written.append(save_figure(fig, out / "fairness_train_gaps.png"))

        written.append(self._test_rates_figure(report, solver.controller.name, out))
        written.append(
            self._outcome_figure(
                [{"label": solver.controller.name, "runs": [report]}],
                out / "fairness_outcome.png",
                title=f"{name}: the study's outcome on the test set",
            )
        )
        tables = report["group_metrics"]
        text = "\n\n".join(
            format_group_metrics(tables[split], f"## {split} set", markdown=True)
            for split in ("train", "test")
        )
        path = out / "fairness_groups.md"
        atomic_write_text(path, f"# {name}: per-group metrics\n\n{text}\n")
        written.append(path)
        return written

    def compare_figures(self, entries: list[dict[str, Any]], out: Path) -> list[Path]:
        if not entries or not all("max_parity_gap" in r for e in entries for r in e["runs"]):
            return []
        return [
            self._outcome_figure(
                entries,
                out / "fairness_outcome.png",
                title="fairness-adult: test accuracy against test parity gap",
            )
        ]

    @staticmethod
    def _test_rates_figure(report: dict[str, Any], controller: str, out: Path) -> Path:
        from constrain.plots import legend_outside, new_figure, save_figure

        test = report["group_metrics"]["test"]
        rows = test["groups"]
        base_rates = [r["unconstrained_test_positive_rate"] for r in report["groups"]]
        x = np.arange(len(rows))
        fig = new_figure(max(7.0, 1.4 * len(rows) + 3), 5.2)
        ax = fig.subplots()
        rates = np.array([r["positive_rate"] for r in rows])
        low = np.array(
            [r.get("positive_rate_ci", [None, None])[0] or r["positive_rate"] for r in rows]
        )
        high = np.array(
            [r.get("positive_rate_ci", [None, None])[1] or r["positive_rate"] for r in rows]
        )
        ax.bar(x - 0.2, base_rates, width=0.4, color="0.65", label="unconstrained model")
        ax.bar(
            x + 0.2,
            rates,
            width=0.4,
            color="tab:blue",
            yerr=np.stack([rates - low, high - rates]),
            capsize=3,
            label=f"constrained ({controller}), {test['confidence']:.0%} bootstrap interval",
        )
        overall, tol = test["positive_rate"], report["parity_tolerance"]
        ax.axhspan(
            overall - tol,
            overall + tol,
            color="tab:blue",
            alpha=0.15,
            zorder=0,
            label=f"target: overall rate {overall:.3f} +/- {tol:g}",
        )
        ax.axhline(overall, color="tab:blue", lw=1.0)
        ax.set_xticks(x, [f"{r['name'].replace(' & ', chr(10))}\n(n={r['size']})" for r in rows])
        ax.tick_params(axis="x", labelsize=8)
        ax.set(
            ylabel="test positive rate P(yhat = 1 | group)",
            title=(
                f"test set: accuracy {report['test_accuracy']:.4f} (unconstrained "
                f"{report['unconstrained_test_accuracy']:.4f}); max gap "
                f"{report['max_parity_gap']:.4f} (unconstrained "
                f"{report['unconstrained_max_parity_gap']:.4f})"
            ),
        )
        ax.title.set_fontsize(9)
        legend_outside(ax)
        return save_figure(fig, out / "fairness_test_rates.png")

    @staticmethod
    def _outcome_figure(entries: list[dict[str, Any]], path: Path, *, title: str) -> Path:
        """Test accuracy against test max parity gap: one marker per entry (mean and
        standard deviation over seeds, seeds as dots), the unconstrained model, the
        tolerance and the accuracy margin."""
        from constrain.plots import legend_outside, new_figure, save_figure

        first = entries[0]["runs"][0]
        tol, margin = first["parity_tolerance"], first["accuracy_margin"]
        base_acc = float(
            np.mean([r["unconstrained_test_accuracy"] for e in entries for r in e["runs"]])
        )
        base_gap = float(
            np.mean([r["unconstrained_max_parity_gap"] for e in entries for r in e["runs"]])
        )
        fig = new_figure(8.5, 5.2)
        ax = fig.subplots()
        ax.axvspan(0, tol, color="#d6f0d6", zorder=0, label=f"test target: gap <= {tol:g}")
        ax.axhline(
            base_acc - margin,
            color="0.4",
            ls=":",
            lw=1.0,
            label=f"accuracy floor: unconstrained - {margin:g}",
        )
        ax.scatter(
            [base_gap],
            [base_acc],
            marker="X",
            s=90,
            color="k",
            zorder=3,
            label=f"unconstrained: acc {base_acc:.4f}, gap {base_gap:.4f}",
        )
        from matplotlib import colormaps

        colors = [colormaps["tab10"](k % 10) for k in range(len(entries))]
        for entry, color in zip(entries, colors, strict=True):
            gaps = np.array([r["max_parity_gap"] for r in entry["runs"]])
            accs = np.array([r["test_accuracy"] for r in entry["runs"]])
            if gaps.size > 1:
                ax.scatter(gaps, accs, s=12, color=color, alpha=0.5, zorder=3)
                ax.errorbar(
                    gaps.mean(),
                    accs.mean(),
                    xerr=gaps.std(ddof=1),
                    yerr=accs.std(ddof=1),
                    fmt="o",
                    ms=8,
                    color=color,
                    capsize=3,
                    zorder=4,
                    label=f"{entry['label']}: acc {accs.mean():.4f}, gap {gaps.mean():.4f} "
                    f"(mean +/- std of {gaps.size} seeds)",
                )
            else:
                interval = entry["runs"][0].get("group_metrics", {}).get("test", {})
                gap_ci = interval.get("max_abs_parity_gap_ci")
                acc_ci = interval.get("accuracy_ci")
                xerr = None if gap_ci is None else [[gaps[0] - gap_ci[0]], [gap_ci[1] - gaps[0]]]
                yerr = None if acc_ci is None else [[accs[0] - acc_ci[0]], [acc_ci[1] - accs[0]]]
                ax.errorbar(
                    gaps,
                    accs,
                    xerr=xerr,
                    yerr=yerr,
                    fmt="o",
                    ms=8,
                    color=color,
                    capsize=3,
                    zorder=4,
                    label=f"{entry['label']}: acc {accs[0]:.4f}, gap {gaps[0]:.4f}"
                    + (" (95% bootstrap interval)" if gap_ci is not None else ""),
                )
        ax.set(
            title=title,
            xlabel="test max parity gap max_g |rate_g - rate| (fraction; lower is fairer)",
            ylabel="test accuracy (fraction correct)",
        )
        ax.set_xlim(left=0)
        ax.title.set_fontsize(10)
        legend_outside(ax)
        return save_figure(fig, path)


def _entry_labels(group_names: tuple[str, ...], n: int) -> list[str]:
    """Labels of the constrained gaps: group names, or ``TPR``/``FPR`` pairs for 2G gaps."""
    if n == len(group_names):
        return list(group_names)
    if n == 2 * len(group_names):
        return [f"TPR {g}" for g in group_names] + [f"FPR {g}" for g in group_names]
    return [f"gap {k}" for k in range(n)]
