"""Equalized odds on UCI Adult with rate constraints, a tolerance schedule and the randomized
(shrinking) solution.

Data and groups as in ``fairness-adult`` (:func:`constrain_problems.fairness_adult.adult_splits`):
the official split, intersectional ``sex x race`` groups with small race cells pooled per sex
(``min_group_size``). Problem (:class:`constrain.studies.RateProblem`), full batch::

    minimize   mean BCE(s_i, y_i)
    subject to |TPR_g - TPR| <= tol_t  and  |FPR_g - FPR| <= tol_t   for every group g
               FPR_smallest <= fpr_bound                           (the smallest group)

with exact counting rates for the multipliers and sigmoid (or hinge) proxies for the model.

**Tolerance schedule.** ``tol_t`` moves linearly from ``initial_tolerance`` to ``tolerance``
over the first ``schedule_fraction`` of the steps, then stays. It is a problem
hyperparameter set after every step by a fit callback (``Setup.callback``); setting it
re-declares the constraints, and the solver reads the new right-hand side at the next step.

**Solutions compared.** Snapshots of the model are kept every ``snapshot_every`` steps (at
most ``max_snapshots``, thinned evenly), each with its training error rate and its standard-
form training violations at the *final* tolerance. From them: the randomized solution of the
shrinking LP (Cotter, Jiang, Sridharan, ALT 2019: at most ``m + 1`` snapshots, expected
violations <= 0 on the training set), the best feasible iterate (lowest training error among
the feasible snapshots, else the least violating), and the last iterate, next to the model
trained without constraints with the same budget. The randomized solution's rates are
expectations ``sum_j p_j rate_j`` (rates are linear in the distribution), its gaps those of
the expected rates.

Report (``--json``): for the randomized solution at top level and under ``last_iterate``,
``best_iterate`` and ``unconstrained``: ``test_accuracy``, ``test_tpr_gap`` and
``test_fpr_gap`` (largest ``|rate_g - rate|``), ``test_equalized_odds_gap`` (the larger of
the two), ``test_smallest_group_fpr``, and the same on the training set (``train_*``).

The run uses one controller for all constraints unless ``controller`` maps the constraint
names (``equalized_odds``, ``fpr_smallest``) to controllers of their own, e.g. ``--set
'controller={equalized_odds: {name: nupi, kp: 10, ki: 1}, fpr_smallest: gda}'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from constrain import ConstrainedProblem, ProblemSpec, RunConfig, Setup, Snapshots, Solver
from constrain.studies import (
    Groups,
    RateConstraint,
    RateProblem,
    equalized_odds_constraint,
    rate,
    rate_constraint,
)

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
from .fairness_adult import (
    ADULT_CONTROLLER_DEFAULTS,
    ADULT_RUN_DEFAULTS,
    Split,
    adult_splits,
    make_classifier,
)


class AdultRatesParams(StudyParams):
    """Hyperparameters of the ``fairness-adult-rates`` study (``--set problem.KEY=VALUE``).

    Attributes:
        model: ``"logistic"`` or ``"mlp"`` (one hidden ReLU layer of ``hidden`` units).
        hidden: Hidden units of the MLP.
        tolerance: Final equalized-odds tolerance on ``|TPR_g - TPR|`` and ``|FPR_g - FPR|``.
        initial_tolerance: Tolerance at step 0 of the schedule.
        schedule_fraction: Fraction of the steps over which the tolerance tightens.
        fpr_bound: Bound on the false positive rate of the smallest group.
        proxy: Surrogate of the indicators in the rates (``"sigmoid"`` or ``"hinge"``).
        temperature: Scale of the scores inside the proxy.
        min_group_size: Race cells with fewer training rows are pooled per sex.
        include_protected: Whether ``sex`` and ``race`` are model inputs.
        max_train_samples: Use a fixed random subset of the training rows (quick runs).
        snapshot_every: Steps between snapshots (the interval doubles when thinning).
        max_snapshots: Largest number of snapshots kept.
        predictor_seed: Seed of the randomized predictor's sampling.
    """


    model: Literal["logistic", "mlp"] = "logistic"
    hidden: int = Field(default=32, ge=1)
    tolerance: float = Field(default=0.05, ge=0, lt=1)
    initial_tolerance: float = Field(default=0.1, ge=0, lt=1)
    schedule_fraction: float = Field(default=0.5, ge=0, le=1)
    fpr_bound: float = Field(default=0.03, gt=0, le=1)
    proxy: Literal["sigmoid", "hinge"] = "sigmoid"
    temperature: float = Field(default=1.0, gt=0)
    min_group_size: int = Field(default=2000, ge=1)
    include_protected: bool = True
    max_train_samples: int | None = Field(default=None, ge=100)
    snapshot_every: int = Field(default=10, ge=1)
    max_snapshots: int = Field(default=100, ge=2)
    predictor_seed: int = 0

    @model_validator(mode="after")
    def _tightening(self) -> AdultRatesParams:
        if self.initial_tolerance < self.tolerance:
            raise ValueError(
                f"initial_tolerance ({self.initial_tolerance}) must be >= tolerance "
                f"({self.tolerance}): the schedule tightens the tolerance"
            )
        return self


class AdultRates(RateProblem):
    """Equalized odds within ``tolerance`` and an FPR bound on group ``smallest_group``."""

    tolerance: float = Field(default=0.05, ge=0)
    fpr_bound: float = Field(default=0.05, gt=0)
    smallest_group: int = Field(default=0, ge=0)
    proxy: Literal["sigmoid", "hinge"] = "sigmoid"
    temperature: float = Field(default=1.0, gt=0)

    def rates(self) -> list[RateConstraint]:
        options: dict[str, Any] = {
            "proxy": self.proxy,
            "temperature": self.temperature,
            "num_groups": self.num_groups,
        }
        return [
            equalized_odds_constraint(self.tolerance, **options),
            rate_constraint(
                "fpr",
                "<=",
                self.fpr_bound,
                groups=[self.smallest_group],
                name="fpr_smallest",
                **options,
            ),
        ]


class ToleranceSchedule:
    """Fit callback: ``tol_t = start + (end - start) * min(1, t / duration)`` set on the
    problem after every step (``t``: steps completed)."""

    def __init__(self, problem: AdultRates, start: float, end: float, duration: int) -> None:
        self.problem, self.start, self.end, self.duration = problem, start, end, duration

    def value(self, step: int) -> float:
        if self.duration <= 0:
            return self.end
        return self.start + (self.end - self.start) * min(1.0, step / self.duration)

    def __call__(self, solver: Solver, record: Any) -> None:
        self.problem.tolerance = self.value(solver.step_count)


class _Callbacks:
    def __init__(self, *callbacks: Any) -> None:
        self.callbacks = callbacks

    def __call__(self, solver: Solver, record: Any) -> None:
        for callback in self.callbacks:
            callback(solver, record)


def _bce(model: nn.Module, batch: Any) -> Tensor:
    return F.binary_cross_entropy_with_logits(model(batch[0])[:, 0], batch[1])


def _rates(model: nn.Module, split: Split) -> dict[str, np.ndarray]:
    """Accuracy and the TPR/FPR of every group and overall (exact), as arrays."""
    x, y, m = split
    with evaluating(model):
        s = model(x)[:, 0]
    out = {"accuracy": np.array(float(((s > 0).to(s.dtype) == y).to(s.dtype).mean()))}
    for name in ("tpr", "fpr"):
        out[f"group_{name}"] = rate(name, s, y, m).value.double().numpy()
        out[name] = rate(name, s, y, None).value.double().numpy()
    return out


def _summary(values: dict[str, np.ndarray], split: str, smallest: int) -> dict[str, Any]:
    tpr_gap = float(np.abs(values["group_tpr"] - values["tpr"]).max())
    fpr_gap = float(np.abs(values["group_fpr"] - values["fpr"]).max())
    return {
        f"{split}_accuracy": float(values["accuracy"]),
        f"{split}_tpr_gap": tpr_gap,
        f"{split}_fpr_gap": fpr_gap,
        f"{split}_equalized_odds_gap": max(tpr_gap, fpr_gap),
        f"{split}_smallest_group_fpr": float(values["group_fpr"][smallest]),
        f"{split}_group_tpr": values["group_tpr"].tolist(),
        f"{split}_group_fpr": values["group_fpr"].tolist(),
    }


class FairnessAdultRates(ProblemSpec):
    name = "fairness-adult-rates"
    params = AdultRatesParams
    description = (
        "Equalized odds (TPR and FPR parity) over sex x race on UCI Adult with a tolerance "
        "schedule, an FPR bound on the smallest group and the randomized (shrinking) solution."
    )
    defaults: ClassVar[dict[str, Any]] = {
        **ADULT_RUN_DEFAULTS,
        "problem": AdultRatesParams().model_dump(),
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = ADULT_CONTROLLER_DEFAULTS

    def build(self, config: RunConfig) -> Setup:
        params = study_params(AdultRatesParams, config)
        dtype = DTYPES[config.dtype]
        groups, train, test = adult_splits(
            params.include_protected, params.min_group_size, params.max_train_samples, dtype
        )
        sizes = train[2].sum(dim=0)
        smallest = int(torch.argmin(sizes))
        num_features = train[0].shape[1]

        def factory() -> nn.Module:
            return make_classifier(num_features, params.model, params.hidden)

        def problem_at(tolerance: float) -> AdultRates:
            return AdultRates(
                tolerance=tolerance,
                fpr_bound=params.fpr_bound,
                smallest_group=smallest,
                proxy=params.proxy,
                temperature=params.temperature,
                num_groups=groups.num_groups,
            )

        problem = problem_at(params.initial_tolerance)
        final = problem_at(params.tolerance)
        schedule = ToleranceSchedule(
            problem,
            params.initial_tolerance,
            params.tolerance,
            round(params.schedule_fraction * config.steps),
        )

        def evaluate(model: nn.Module) -> tuple[float, np.ndarray]:
            """Training error rate and standard-form violations at the final tolerance."""
            with evaluating(model):
                s = model(train[0])
            error = float(((s[:, 0] > 0).to(s.dtype) != train[1]).to(s.dtype).mean())
            return error, final.violations(s, train[1], train[2]).double().numpy()

        snapshots = Snapshots(
            every=params.snapshot_every, max_count=params.max_snapshots, evaluate=evaluate
        )
        model = seeded_model(factory, config.seed, dtype)
        extras = {
            "config": config,
            "params": params,
            "groups": groups,
            "smallest": smallest,
            "train": train,
            "test": test,
            "factory": factory,
            "snapshots": snapshots,
            "schedule": schedule,
        }
        return Setup(
            problem, model, batch=train, extras=extras, callback=_Callbacks(schedule, snapshots)
        )

    # -- evaluation ---------------------------------------------------------------------
    def _baseline(self, setup: Setup) -> dict[str, dict[str, np.ndarray]]:
        config: RunConfig = setup.extras["config"]

        def compute() -> dict[str, dict[str, np.ndarray]]:
            model = seeded_model(setup.extras["factory"], config.seed, DTYPES[config.dtype])
            train = setup.extras["train"]
            train_plain(ConstrainedProblem(objective=_bce), model, config, batch=train)
            return {"train": _rates(model, train), "test": _rates(model, setup.extras["test"])}

        drop = ("controller", "formulation", "order")
        return cached("fairness-adult-rates:" + config_key(config, drop=drop), compute)

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: AdultRatesParams = setup.extras["params"]
        groups: Groups = setup.extras["groups"]
        smallest: int = setup.extras["smallest"]
        snapshots: Snapshots = setup.extras["snapshots"]
        train, test = setup.extras["train"], setup.extras["test"]

        def summary(values: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
            return {
                **_summary(values["test"], "test", smallest),
                **_summary(values["train"], "train", smallest),
            }

        def metrics(model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
            return {"train": _rates(model, train), "test": _rates(model, test)}

        last = summary(metrics(solver.model))
        base = summary(self._baseline(setup))
        out: dict[str, Any] = {}
        if len(snapshots):
            dist = snapshots.distribution()
            predictor = snapshots.predictor(solver.model, dist, seed=params.predictor_seed)
            expected = predictor.expected(lambda model: _flat(metrics(model)))
            randomized = summary(_unflat(expected))
            best_snapshot = snapshots.best()
            config: RunConfig = setup.extras["config"]
            best_model = seeded_model(setup.extras["factory"], config.seed, DTYPES[config.dtype])
            best_model.load_state_dict(best_snapshot.state)
            best = {"step": best_snapshot.step, **summary(metrics(best_model))}
            best["train_max_violation"] = float(best_snapshot.violations.max())
            out.update(randomized)
            out["randomized"] = {
                "steps": [snapshots.steps[j] for j in dist.support],
                "probabilities": dist.probabilities[dist.support].tolist(),
                "feasible_on_train": dist.feasible,
                "train_expected_error": dist.expected_objective,
                "train_expected_max_violation": dist.max_violation,
                "num_snapshots": len(snapshots),
            }
        else:  # fewer steps than snapshot_every: the last iterate stands in
            out.update(last)
            best = {"step": solver.step_count, **last}
        out["last_iterate"] = last
        out["best_iterate"] = best
        out["unconstrained"] = base
        out.update(
            {
                "tolerance": params.tolerance,
                "initial_tolerance": params.initial_tolerance,
                "fpr_bound": params.fpr_bound,
                "smallest_group": groups.names[smallest],
                "final_schedule_tolerance": setup.extras["schedule"].problem.tolerance,
                "groups": [
                    {"name": name, "train_size": int(n_train), "test_size": int(n_test)}
                    for name, n_train, n_test in zip(
                        groups.names,
                        train[2].sum(dim=0).tolist(),
                        test[2].sum(dim=0).tolist(),
                        strict=True,
                    )
                ],
            }
        )
        return out

    # -- figures ------------------------------------------------------------------------
    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        from constrain.plots import legend_outside, new_figure, save_figure

        report = self.report(setup, solver)
        groups: Groups = setup.extras["groups"]
        params: AdultRatesParams = setup.extras["params"]
        solutions = [
            ("unconstrained", report["unconstrained"], "0.6"),
            ("last iterate", report["last_iterate"], "tab:orange"),
            ("best iterate", report["best_iterate"], "tab:green"),
            ("randomized", report, "tab:blue"),
        ]
        x = np.arange(groups.num_groups)
        width = 0.8 / len(solutions)
        fig = new_figure(max(10.0, 2.8 * groups.num_groups + 4), 5.0)
        axes = fig.subplots(1, 2)
        meaning = {
            "tpr": "TPR: P(yhat = 1 | y = 1, group)",
            "fpr": "FPR: P(yhat = 1 | y = 0, group)",
        }
        for ax, key in zip(axes, ("tpr", "fpr"), strict=True):
            for k, (label, values, color) in enumerate(solutions):
                ax.bar(
                    x + (k - 1.5) * width,
                    values[f"test_group_{key}"],
                    width,
                    color=color,
                    label=f"{label} (max gap: TPR {values['test_tpr_gap']:.3f}, "
                    f"FPR {values['test_fpr_gap']:.3f})"
                    if key == "tpr"
                    else None,
                )
            ax.set_xticks(x, [n.replace(" & ", "\n") for n in groups.names], fontsize=8)
            ax.set(ylabel=f"test {meaning[key]}", title=f"test {key.upper()} by group")
        # The bound applies to the smallest group only: drawn over its bars alone.
        smallest = groups.names.index(report["smallest_group"])
        axes[1].hlines(
            params.fpr_bound,
            smallest - 0.45,
            smallest + 0.45,
            color="tab:red",
            ls="--",
            lw=1.2,
            label=f"FPR bound {params.fpr_bound:g} on {report['smallest_group']} (its bars only)",
        )
        fig.suptitle(
            f"fairness-adult-rates: equalized odds, |TPR_g - TPR| and |FPR_g - FPR| <= "
            f"{params.tolerance:g} on training (test set shown); gaps in the legend",
            fontsize=10,
        )
        legend_outside(fig, axes)
        return [save_figure(fig, out / "fairness_rates_test.png")]


def _flat(values: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{split}/{k}": v for split, d in values.items() for k, v in d.items()}


def _unflat(values: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in values.items():
        split, name = key.split("/", 1)
        out.setdefault(split, {})[name] = np.asarray(value, dtype=np.float64)
    return out
