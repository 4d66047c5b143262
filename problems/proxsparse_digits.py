"""ProxSparse: learning 2:4 masks by proximal regularization, against one-shot magnitude 2:4
pruning, on an MLP for scikit-learn's 8x8 digits.

Liu, Saha, Jia, Park, Huang, Sabach, Wang, Karypis (ICML 2025): instead of choosing a 2:4
mask by a local rule (keep the 2 largest of every 4 consecutive weights), train the
pretrained model for a while with the 2:4 regularizer

    R(W) = sum over blocks of 4 consecutive weights of sum_{i<j<k} |w_i w_j w_k|

by proximal gradient (the exact prox :func:`constrain.prox.proxsparse` after every step),
read the mask off the trained weights (the 2 largest of every block -- by then most blocks
have at most 2 non-zeros), and apply it to the *original* pretrained weights: no weight
update once the mask is found.

Here: an MLP ``64 -> hidden -> hidden -> 10`` is pretrained densely (Adam); the mask
learning runs the regularizer on the two hidden layers (blocks along their inputs) with the
run's optimizer and steps; both masks prune exactly half of those two layers. The report
gives test accuracies of the dense model, of magnitude 2:4 pruning and of the ProxSparse
mask (mean and spread over seeds), the fraction of blocks already 2:4 after mask learning
and how many blocks the two masks choose differently.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from constrain import (
    ConstrainedProblem,
    ProblemSpec,
    Regularizer,
    RunConfig,
    Setup,
    Solver,
    make_optimizer,
)
from constrain.prox import two_four_fraction, two_four_mask

from ._data import Minibatches, load_digits_split
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

PRUNED = ("fc1.weight", "fc2.weight")


class ProxSparseParams(StudyParams):
    """Hyperparameters of ``proxsparse-digits`` (``--set problem.KEY=VALUE``).

    Attributes:
        hidden: Width of both hidden layers (a multiple of 4).
        strength: ProxSparse penalty ``lambda``; the prox after every step uses
            ``lambda * lr``.
        pretrain_steps: Dense pretraining steps (Adam, lr ``pretrain_lr``).
        pretrain_lr: Learning rate of the dense pretraining.
        seeds: Seeds (``seed``, ``seed + 1``, ...): initialisation and batch order.
    """


    hidden: int = Field(default=32, ge=4)
    strength: float = Field(default=20.0, ge=0)
    pretrain_steps: int = Field(default=2000, ge=1)
    pretrain_lr: float = Field(default=3e-3, gt=0)
    seeds: int = Field(default=3, ge=1)

    @field_validator("hidden")
    @classmethod
    def _multiple_of_four(cls, value: int) -> int:
        if value % 4:
            raise ValueError(f"hidden must be a multiple of 4 (blocks of 4 weights); got {value}")
        return value


class DigitsMLP(nn.Module):
    """``64 -> hidden -> hidden -> 10`` with ReLU."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with evaluating(model):
        return float((model(x).argmax(dim=1) == y).double().mean())


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """A copy of ``model`` with the named weights multiplied by their masks."""
    pruned = copy.deepcopy(model)
    params = dict(pruned.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))
    return pruned


def proxsparse_problem(strength: float) -> ConstrainedProblem:
    """Cross-entropy with the ProxSparse prox on the two hidden layers' weights."""
    return ConstrainedProblem(
        objective=_cross_entropy,
        regularizers=[
            Regularizer(
                prox="proxsparse", strength=strength, params=list(PRUNED), track_clusters=False
            )
        ],
    )


class ProxSparseDigits(ProblemSpec):
    name = "proxsparse-digits"
    params = ProxSparseParams
    description = (
        "ProxSparse 2:4 mask learning (exact prox of the 2:4 regularizer) vs one-shot "
        "magnitude 2:4 pruning of a pretrained digits MLP, several seeds."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "controller": {"name": "gda", "lr": 0.01},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "order": "simultaneous",
        "steps": 600,
        "batch_size": 128,
        "dtype": "float32",
        "record_every": 20,
        "problem": ProxSparseParams().model_dump(),
    }

    def build(self, config: RunConfig) -> Setup:
        params = study_params(ProxSparseParams, config)
        data = self._data(config)
        pretrained = self._pretrained(config, params, data, config.seed)
        return Setup(
            proxsparse_problem(params.strength),
            copy.deepcopy(pretrained),
            data=Minibatches(data["train"], config.batch_size or 128, seed=config.seed),
            extras={"config": config, "params": params, "data": data},
        )

    @staticmethod
    def _data(config: RunConfig) -> dict[str, Any]:
        digits = load_digits_split()
        dtype = DTYPES[config.dtype]
        return {
            "dtype": dtype,
            "train": (
                torch.as_tensor(digits.X_train, dtype=dtype),
                torch.as_tensor(digits.y_train),
            ),
            "test": (torch.as_tensor(digits.X_test, dtype=dtype), torch.as_tensor(digits.y_test)),
        }

    @staticmethod
    def _pretrained(
        config: RunConfig, params: ProxSparseParams, data: dict[str, Any], seed: int
    ) -> nn.Module:
        """The dense model, trained with Adam (cached per seed and settings)."""

        def compute() -> nn.Module:
            model = seeded_model(lambda: DigitsMLP(params.hidden), seed, data["dtype"])
            optimizer = make_optimizer("adam", model.parameters(), lr=params.pretrain_lr)
            solver = Solver(
                ConstrainedProblem(objective=_cross_entropy), model, optimizer, record_every=100
            )
            loader = Minibatches(data["train"], config.batch_size or 128, seed=seed + 5_000)
            solver.fit(loader, params.pretrain_steps, progress=False)
            return model

        key = (
            f"proxsparse-digits:dense:{seed}:{params.hidden}:{params.pretrain_steps}:"
            f"{params.pretrain_lr}:{config.dtype}:{config.batch_size}"
        )
        return cached(key, compute)

    def _compare(
        self, pretrained: nn.Module, learned: nn.Module, data: dict[str, Any]
    ) -> dict[str, Any]:
        x, y = data["test"]
        dense = dict(pretrained.named_parameters())
        trained = dict(learned.named_parameters())
        magnitude = {n: two_four_mask(dense[n].detach()) for n in PRUNED}
        proxsparse = {n: two_four_mask(trained[n].detach()) for n in PRUNED}
        blocks = sum(dense[n].numel() // 4 for n in PRUNED)
        differ = sum(
            int((magnitude[n].reshape(-1, 4) != proxsparse[n].reshape(-1, 4)).any(dim=1).sum())
            for n in PRUNED
        )
        two_four = sum(
            two_four_fraction(trained[n].detach()) * (dense[n].numel() // 4) for n in PRUNED
        )
        kept = sum(int(m.sum()) for m in proxsparse.values())
        total = sum(m.numel() for m in proxsparse.values())
        return {
            "dense_accuracy": _accuracy(pretrained, x, y),
            "magnitude_accuracy": _accuracy(apply_masks(pretrained, magnitude), x, y),
            "proxsparse_accuracy": _accuracy(apply_masks(pretrained, proxsparse), x, y),
            "learned_weights_accuracy": _accuracy(apply_masks(learned, proxsparse), x, y),
            "two_four_fraction": two_four / blocks,
            "blocks_changed": differ / blocks,
            "density": kept / total,
        }

    def _study(self, setup: Setup, solver: Solver) -> list[dict[str, Any]]:
        config: RunConfig = setup.extras["config"]
        params: ProxSparseParams = setup.extras["params"]
        data = setup.extras["data"]

        def compute() -> list[dict[str, Any]]:
            results = []
            for offset in range(params.seeds):
                seed = config.seed + offset
                pretrained = self._pretrained(config, params, data, seed)
                if offset == 0:
                    learned = solver.model
                else:
                    learned = copy.deepcopy(pretrained)
                    loader = Minibatches(data["train"], config.batch_size or 128, seed=seed)
                    train_plain(proxsparse_problem(params.strength), learned, config, data=loader)
                results.append({"seed": seed, **self._compare(pretrained, learned, data)})
            return results

        key = "proxsparse-digits:" + config_key(config, drop=("controller", "formulation", "order"))
        return cached(key, compute)

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: ProxSparseParams = setup.extras["params"]
        results = self._study(setup, solver)
        report: dict[str, Any] = {"seeds": params.seeds, "strength": params.strength}
        for metric in results[0]:
            if metric == "seed":
                continue
            values = np.asarray([r[metric] for r in results], dtype=float)
            report[metric] = float(values.mean())
            report[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        report["test_accuracy"] = report["proxsparse_accuracy"]
        report["per_seed"] = results
        return report

    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        from constrain.plots import new_figure, save_figure

        report = self.report(setup, solver)
        results = report["per_seed"]
        fig = new_figure(12, 4.2)
        axes = fig.subplots(1, 2)
        names = [
            ("dense_accuracy", "dense"),
            ("magnitude_accuracy", "magnitude\n2:4 mask"),
            ("proxsparse_accuracy", "ProxSparse\nmask"),
            ("learned_weights_accuracy", "ProxSparse\nweights"),
        ]
        xs = np.arange(len(names))
        means = [report[k] for k, _ in names]
        stds = [report[f"{k}_std"] for k, _ in names]
        axes[0].bar(
            xs, means, yerr=stds, capsize=4, color=["0.5", "tab:orange", "tab:blue", "tab:cyan"]
        )
        for i, (key, _) in enumerate(names):
            axes[0].scatter(
                [i] * len(results), [r[key] for r in results], color="k", s=10, zorder=3
            )
        axes[0].set_xticks(xs, [label for _, label in names])
        low = min(min(r[k] for r in results) for k, _ in names)
        axes[0].set(
            ylim=(max(0.0, low - 0.05), 1.0),
            ylabel="test accuracy (fraction correct)",
            title=f"50% of the hidden layers pruned (2:4); "
            f"{len(results)} seed{'s' if len(results) > 1 else ''} (mean ± std; dots: seeds)",
        )
        weights = dict(solver.model.named_parameters())
        blocks = torch.cat([weights[n].detach().reshape(-1, 4) for n in PRUNED])
        nonzeros = (blocks != 0).sum(dim=1).numpy()
        axes[1].hist(nonzeros, bins=np.arange(6) - 0.5, rwidth=0.8, color="tab:blue")
        axes[1].set(
            xticks=range(5),
            xlabel="non-zeros per block of 4",
            ylabel="blocks of 4 weights (count)",
            title=f"after mask learning (first seed): {results[0]['two_four_fraction']:.1%} of "
            "blocks with at most 2 non-zeros",
        )
        return [save_figure(fig, out / "proxsparse_accuracy.png")]
