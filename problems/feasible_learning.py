"""Feasible Learning: a loss bound for every training sample, against plain ERM.

Data: :func:`constrain_problems._data.make_feasible_dataset`, a synthetic binary
classification set (20,000 training and 5,000 test samples by default; 16 clusters of
varied difficulty, 1% flipped labels). Model: a ReLU MLP ``20 -> 128 -> 128 -> 1``.

Problem (:class:`constrain.studies.FeasibleLearning`)::

    minimize   objective_weight * mean_i l_i       (0 by default: pure feasibility)
    subject to l_i <= epsilon   for each of the N training samples

with one multiplier per sample, updated only when the sample is in the minibatch (O(batch)
per step). With ``--set problem.slack_penalty=ALPHA`` the constraints are relaxed as in the
paper's resilient variant: ``l_i <= epsilon + u_i`` with per-sample slacks ``u`` paying
``(ALPHA/2) ||u||^2`` (the model is wrapped in :class:`constrain.studies.SampleSlack`); the
report then adds the slacks' distribution. The report compares the distribution of per-sample losses (mean, quantiles,
maximum, fraction above ``epsilon``) with the same MLP trained by ERM (mean loss) with the
same budget and initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from constrain import ConstrainedProblem, ProblemSpec, RunConfig, Setup, Solver
from constrain.studies import FeasibleLearning, SampleSlack, per_sample_losses

from ._data import Minibatches, make_feasible_dataset
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

_QUANTILES = (0.5, 0.9, 0.99, 0.999)


class FeasibleParams(StudyParams):
    """Hyperparameters of ``feasible-learning`` (``--set problem.KEY=VALUE``).

    Attributes:
        num_samples: Training samples ``N`` (one constraint and multiplier each).
        num_test: Test samples.
        num_features: Input dimension.
        epsilon: Per-sample loss bound.
        objective_weight: Weight of the mean loss in the objective.
        hidden: Hidden units of both layers.
        data_seed: Seed of the synthetic data set.
        slack_penalty: ``alpha`` of the resilient relaxation (per-sample slacks of minimal
            norm), or ``None`` for the hard constraints.
    """


    num_samples: int = Field(default=20_000, ge=256)
    num_test: int = Field(default=5_000, ge=100)
    num_features: int = Field(default=20, ge=14)
    epsilon: float = Field(default=0.3, gt=0)
    objective_weight: float = Field(default=0.0, ge=0)
    hidden: int = Field(default=128, ge=1)
    data_seed: int = 0
    slack_penalty: float | None = Field(default=None, gt=0)


def make_mlp(num_features: int, hidden: int) -> nn.Module:
    """``num_features -> hidden -> hidden -> 1`` ReLU MLP (binary logits)."""
    return nn.Sequential(
        nn.Linear(num_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def loss_profile(losses: Tensor, logits: Tensor, y: Tensor, epsilon: float) -> dict[str, Any]:
    """Summary of a per-sample loss vector: mean, quantiles, max, fraction above epsilon."""
    values = losses.double()
    quantiles = torch.quantile(values, torch.tensor(_QUANTILES, dtype=torch.float64))
    return {
        "mean_loss": float(values.mean()),
        **{f"q{q * 100:g}_loss": float(v) for q, v in zip(_QUANTILES, quantiles, strict=True)},
        "max_loss": float(values.max()),
        "infeasible_fraction": float((values > epsilon).double().mean()),
        "accuracy": float(((logits > 0).to(y.dtype) == y).double().mean()),
    }


def _losses(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    with evaluating(model):
        logits = model(x)[:, 0]
        return per_sample_losses(logits, y), logits


class FeasibleLearningStudy(ProblemSpec):
    name = "feasible-learning"
    params = FeasibleParams
    description = (
        "Per-sample loss constraints (Feasible Learning) with indexed multipliers on 20,000 "
        "synthetic samples; loss tail against ERM."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "controller": {"name": "gda", "lr": 1.0},
        "optimizer": {"name": "adam", "lr": 3e-3},
        "order": "dual_primal",
        "steps": 4000,
        "batch_size": 256,
        "dtype": "float32",
        "problem": FeasibleParams().model_dump(),
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "gda": {"lr": 1.0},
        "nupi": {"lr": 1.0, "ki": 1.0, "kp": 1.0, "nu": 0.0},
        "momentum": {"lr": 1.0, "beta": 0.5},
    }

    def build(self, config: RunConfig) -> Setup:
        params = study_params(FeasibleParams, config)
        X_train, y_train, X_test, y_test = make_feasible_dataset(
            params.num_samples,
            params.num_test,
            num_features=params.num_features,
            seed=params.data_seed,
        )
        dtype = DTYPES[config.dtype]
        train = (torch.as_tensor(X_train, dtype=dtype), torch.as_tensor(y_train, dtype=dtype))
        test = (torch.as_tensor(X_test, dtype=dtype), torch.as_tensor(y_test, dtype=dtype))
        batch_size = config.batch_size or params.num_samples
        problem = FeasibleLearning(
            num_samples=params.num_samples,
            epsilon=params.epsilon,
            objective_weight=params.objective_weight,
            slack_penalty=params.slack_penalty,
        )
        model: nn.Module = seeded_model(
            lambda: make_mlp(params.num_features, params.hidden), config.seed, dtype
        )
        if params.slack_penalty is not None:
            model = SampleSlack(model, params.num_samples)
        return Setup(
            problem,
            model,
            data=Minibatches(train, batch_size, seed=config.seed),
            extras={"config": config, "params": params, "train": train, "test": test},
        )

    def _erm(self, setup: Setup) -> dict[str, Any]:
        config: RunConfig = setup.extras["config"]
        params: FeasibleParams = setup.extras["params"]

        def compute() -> dict[str, Any]:
            model = seeded_model(
                lambda: make_mlp(params.num_features, params.hidden),
                config.seed,
                DTYPES[config.dtype],
            )
            train = setup.extras["train"]
            loader = Minibatches(train, config.batch_size or params.num_samples, seed=config.seed)
            problem = ConstrainedProblem(
                objective=lambda m, b: per_sample_losses(m(b[0]), b[1]).mean()
            )
            train_plain(problem, model, config, data=loader)
            return self._profiles(model, setup)

        key = "feasible-learning:erm:" + config_key(
            config, drop=("controller", "formulation", "order")
        )
        return cached(key, compute)

    @staticmethod
    def _profiles(model: nn.Module, setup: Setup) -> dict[str, Any]:
        eps = setup.extras["params"].epsilon
        out: dict[str, Any] = {}
        for split in ("train", "test"):
            x, y = setup.extras[split]
            losses, logits = _losses(model, x, y)
            out[split] = loss_profile(losses, logits, y, eps)
            out[f"{split}_losses"] = losses.double().numpy()
        return out

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: FeasibleParams = setup.extras["params"]
        ours = self._profiles(solver.model, setup)
        erm = self._erm(setup)
        lam = solver.multipliers["sample_loss"].double()
        extra: dict[str, Any] = {}
        if params.slack_penalty is not None:
            slack = solver.model.slack.detach().double()
            deviation = (lam - params.slack_penalty * slack).abs()
            extra["slack_penalty"] = params.slack_penalty
            extra["slack_stats"] = {
                "mean": float(slack.mean()),
                "max": float(slack.max()),
                "positive_fraction": float((slack > 1e-3).double().mean()),
                # At a solution u_i = lam_i / alpha; the deviation shows how far from it.
                "mean_abs_lam_minus_alpha_u": float(deviation.mean()),
                "max_abs_lam_minus_alpha_u": float(deviation.max()),
            }
        return {
            "epsilon": params.epsilon,
            "num_samples": params.num_samples,
            "train": ours["train"],
            "test": ours["test"],
            "erm_train": erm["train"],
            "erm_test": erm["test"],
            "test_accuracy": ours["test"]["accuracy"],
            "erm_test_accuracy": erm["test"]["accuracy"],
            "multiplier_stats": {
                "mean": float(lam.mean()),
                "max": float(lam.max()),
                "nonzero_fraction": float((lam > 0).double().mean()),
            },
            **extra,
        }

    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        from constrain.plots import legend_outside, mark_late_window, new_figure, save_figure

        params: FeasibleParams = setup.extras["params"]
        ours = self._profiles(solver.model, setup)
        erm = self._erm(setup)
        written: list[Path] = []

        fig = new_figure(13, 5.0)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, split in zip(axes, ("train", "test"), strict=True):
            for label, losses, color in (
                ("ERM (no constraints)", erm[f"{split}_losses"], "0.4"),
                (
                    f"Feasible Learning ({solver.controller.name})",
                    ours[f"{split}_losses"],
                    "tab:blue",
                ),
            ):
                sorted_losses = np.sort(losses)
                survival = 1.0 - np.arange(len(sorted_losses)) / len(sorted_losses)
                ax.loglog(
                    np.maximum(sorted_losses, 1e-5), survival, color=color, lw=1.5, label=label
                )
            ax.axvline(
                params.epsilon,
                color="tab:red",
                ls="--",
                lw=1.0,
                label=f"bound epsilon = {params.epsilon:g} (feasible: left of it)",
            )
            ax.set(
                title=f"{split} set ({len(ours[f'{split}_losses'])} samples)",
                xlabel="per-sample loss l (cross-entropy, nats; below 1e-5 drawn at 1e-5)",
            )
            ax.set_xlim(left=1e-5)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("fraction of samples with loss > l")
        fig.suptitle("feasible-learning: tail of the per-sample loss distribution")
        legend_outside(fig, axes)
        written.append(save_figure(fig, out / "feasible_loss_tail.png"))

        history = solver.history
        steps = history.steps()
        feasible = np.array(
            [r.per_sample.get("sample_loss", {}).get("feasible_fraction", np.nan) for r in history]
        )
        mean_lam = np.array(
            [r.per_sample.get("sample_loss", {}).get("mean_multiplier", np.nan) for r in history]
        )
        lam = solver.multipliers["sample_loss"].double().numpy()
        fig = new_figure(13, 5.0)
        axes = fig.subplots(1, 2)
        window = max(1, len(steps) // 100)
        kernel = np.ones(window) / window
        mark_late_window(axes[0], steps)
        axes[0].plot(steps, feasible, color="tab:blue", lw=0.4, alpha=0.3)
        axes[0].plot(
            steps[window - 1 :],
            np.convolve(feasible, kernel, mode="valid"),
            color="tab:blue",
            lw=1.5,
            label=f"feasible fraction of the batch (moving average over {window} steps)",
        )
        axes[0].set(
            xlabel="step",
            ylabel="fraction of the batch with l_i <= epsilon",
            ylim=(0, 1.02),
            title="training",
        )
        twin = axes[0].twinx()
        twin.plot(
            steps[window - 1 :],
            np.convolve(mean_lam, kernel, mode="valid"),
            color="tab:orange",
            lw=1.5,
            label=f"mean multiplier of the batch (moving average over {window} steps)",
        )
        twin.set_ylabel("mean multiplier lambda_i (loss units)", color="tab:orange")
        axes[1].hist(lam[lam > 0], bins=60, color="tab:orange", log=True)
        axes[1].set(
            title=f"final multipliers ({(lam > 0).mean():.1%} of the samples non-zero)",
            xlabel="multiplier lambda_i (> 0 only)",
            ylabel="samples (log)",
        )
        legend_outside(fig, [axes[0], twin])
        written.append(save_figure(fig, out / "feasible_multipliers.png"))
        return written
