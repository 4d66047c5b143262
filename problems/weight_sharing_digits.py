"""Weight-sharing regularization on pixel-permuted digits: MLP + prox vs MLP vs CNN.

scikit-learn's 8x8 digits with one fixed random permutation of the 64 pixels (so a model
cannot know which pixels are neighbours). The studied model is an MLP
``64 -> hidden -> 10`` whose first layer carries the weight-sharing penalty of
Shakerinava, Sohrabi, Ravanbakhsh et al. (2023),

    R(W1) = 1/(d-1) sum_{i>j} |w_i - w_j|     over the d = 64 * hidden first-layer weights,

applied as a proximal step ``W1 <- prox_{strength * lr * R}(W1)`` after every optimizer step
(:class:`constrain.Regularizer` with ``prox="weight_sharing"``). It is compared, with the
same budget, against the same MLP without the prox and against a small CNN (on the
natural pixel order, where its locality prior holds, and on the permuted order). The report
gives test accuracies and the number of distinct first-layer weights (weight clusters);
the figures show the first-layer filters mapped back to the 8x8 pixel grid, where
conv-like structure (localized, repeated patterns) would be visible.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from constrain import ConstrainedProblem, ProblemSpec, Regularizer, RunConfig, Setup, Solver

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


class WeightSharingParams(StudyParams):
    """Hyperparameters of ``weight-sharing-digits`` (``--set problem.KEY=VALUE``).

    Attributes:
        strength: Weight-sharing penalty ``mu`` (the prox uses ``mu * lr``).
        hidden: Hidden units of the MLP.
        permutation_seed: Seed of the fixed pixel permutation.
        cnn_channels: Channels of the CNN's two convolutions.
    """


    strength: float = Field(default=0.5, ge=0)
    hidden: int = Field(default=64, ge=1)
    permutation_seed: int = 0
    cnn_channels: int = Field(default=8, ge=1)


class PixelMLP(nn.Module):
    """``x -> fc2(relu(fc1(x)))`` on flattened 8x8 images."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.fc2(F.relu(self.fc1(x)))


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (padding 1), 2x2 average pooling, a linear classifier.

    The flattened input is read row-major as an 8x8 image: natural digits give the real
    image, permuted ones a scrambled image (where the locality prior is wrong).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        h = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        h = F.avg_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc(h.flatten(1))


def _cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with evaluating(model):
        return float((model(x).argmax(1) == y).float().mean())


def first_layer(model: nn.Module) -> Tensor:
    """The first-layer weight ``W1`` (``(hidden, 64)``) of a :class:`PixelMLP`."""
    if not isinstance(model, PixelMLP):
        raise TypeError(f"expected a PixelMLP; got {type(model).__name__}")
    return model.fc1.weight


def distinct_values(weight: Tensor) -> int:
    """Number of distinct entries (weight clusters) of a tensor."""
    return int(torch.unique(weight.detach()).numel())


def unpermuted_filters(weight: Tensor, permutation: Tensor) -> Tensor:
    """First-layer rows mapped back to the pixel grid: ``(hidden, 8, 8)``.

    With permuted inputs ``x_perm[k] = x[perm[k]]``, weight column ``k`` belongs to pixel
    ``perm[k]``: ``W_pixels[:, perm] = W``.
    """
    out = torch.zeros_like(weight)
    out[:, permutation] = weight.detach()
    return out.reshape(-1, 8, 8)


class WeightSharingDigits(ProblemSpec):
    name = "weight-sharing-digits"
    params = WeightSharingParams
    description = (
        "Weight-sharing prox on the first layer of an MLP on pixel-permuted digits, against "
        "the plain MLP and a small CNN; accuracies, weight clusters and filters."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "controller": {"name": "gda", "lr": 0.01},
        "optimizer": {"name": "adam", "lr": 3e-3},
        "order": "simultaneous",
        "steps": 2000,
        "batch_size": 128,
        "dtype": "float32",
        "problem": WeightSharingParams().model_dump(),
    }

    def build(self, config: RunConfig) -> Setup:
        params = study_params(WeightSharingParams, config)
        data = load_digits_split()
        dtype = DTYPES[config.dtype]
        permutation = torch.as_tensor(
            np.random.RandomState(params.permutation_seed).permutation(64), dtype=torch.long
        )
        natural = {
            "train": (torch.as_tensor(data.X_train, dtype=dtype), torch.as_tensor(data.y_train)),
            "test": (torch.as_tensor(data.X_test, dtype=dtype), torch.as_tensor(data.y_test)),
        }
        permuted = {k: (x[:, permutation], y) for k, (x, y) in natural.items()}
        problem = ConstrainedProblem(
            objective=_cross_entropy,
            regularizers=[
                Regularizer(prox="weight_sharing", strength=params.strength, params=["fc1.weight"])
            ],
        )
        model = seeded_model(lambda: PixelMLP(params.hidden), config.seed, dtype)
        return Setup(
            problem,
            model,
            data=self._loader(permuted["train"], config),
            extras={
                "config": config,
                "params": params,
                "permutation": permutation,
                "natural": natural,
                "permuted": permuted,
            },
        )

    @staticmethod
    def _loader(train: tuple[Tensor, Tensor], config: RunConfig) -> Minibatches:
        return Minibatches(train, config.batch_size or len(train[1]), seed=config.seed)

    def _baselines(self, setup: Setup) -> dict[str, Any]:
        config: RunConfig = setup.extras["config"]
        params: WeightSharingParams = setup.extras["params"]
        permutation: Tensor = setup.extras["permutation"]

        def compute() -> dict[str, Any]:
            dtype = DTYPES[config.dtype]
            problem = ConstrainedProblem(objective=_cross_entropy)
            out: dict[str, Any] = {}
            runs: list[tuple[str, Callable[[], nn.Module], str]] = [
                ("mlp", lambda: PixelMLP(params.hidden), "permuted"),
                ("cnn", lambda: SmallCNN(params.cnn_channels), "natural"),
                ("cnn_permuted", lambda: SmallCNN(params.cnn_channels), "permuted"),
            ]
            for label, factory, view in runs:
                # Same seed as the studied model: the plain MLP starts from its weights.
                model = seeded_model(factory, config.seed, dtype)
                train, test = setup.extras[view]["train"], setup.extras[view]["test"]
                train_plain(problem, model, config, data=self._loader(train, config))
                out[f"{label}_test_accuracy"] = _accuracy(model, *test)
                out[f"{label}_parameters"] = sum(p.numel() for p in model.parameters())
                if label == "mlp":
                    out["mlp_clusters"] = distinct_values(first_layer(model))
                    out["mlp_filters"] = unpermuted_filters(first_layer(model), permutation)
            return out

        key = (
            "weight-sharing:baselines:"
            + config_key(config, drop=("controller", "formulation", "order"))
            + str(params.model_dump(exclude={"strength"}))
        )
        return cached(key, compute)

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: WeightSharingParams = setup.extras["params"]
        model = solver.model
        test = setup.extras["permuted"]["test"]
        base = self._baselines(setup)
        weight = first_layer(model)
        return {
            "strength": params.strength,
            "test_accuracy": _accuracy(model, *test),
            "clusters": distinct_values(weight),
            "first_layer_weights": weight.numel(),
            **{k: v for k, v in base.items() if not k.endswith("filters")},
        }

    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        from matplotlib.figure import Figure

        from constrain.plots import legend_outside, mark_late_window, new_figure, save_figure

        permutation: Tensor = setup.extras["permutation"]
        report = self.report(setup, solver)
        base = self._baselines(setup)
        shared = unpermuted_filters(first_layer(solver.model), permutation)
        plain = base["mlp_filters"]
        written: list[Path] = []

        units = min(16, shared.shape[0])
        side = int(np.ceil(np.sqrt(units)))
        fig = Figure(figsize=(12, 6.4), layout="constrained")
        panels = fig.subfigures(1, 2, wspace=0.05)
        for panel, filters, label in (
            (panels[0], shared, f"MLP + weight sharing: {report['clusters']} distinct weights"),
            (panels[1], plain, f"MLP: {report['mlp_clusters']} distinct weights"),
        ):
            shown = filters[:units]
            # Robust colour range so that the bulk of the weights stays visible.
            bound = float(torch.quantile(shown.abs().flatten(), 0.98)) or 1.0
            axes = panel.subplots(side, side)
            for k, ax in enumerate(axes.flat):
                ax.set_xticks([])
                ax.set_yticks([])
                if k < units:
                    image = ax.imshow(shown[k].numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
                else:
                    ax.axis("off")
            panel.suptitle(label, fontsize=10)
            panel.colorbar(image, ax=axes, shrink=0.7, label="weight (clipped at 98th pct of |w|)")
        fig.suptitle(
            f"first-layer filters of the first {units} hidden units, mapped back to the 8x8 "
            "pixel grid",
            fontsize=10,
        )
        written.append(save_figure(fig, out / "weight_sharing_filters.png"))

        history = solver.history
        fig = new_figure(13, 4.6)
        axes = fig.subplots(1, 2)
        counts = np.array([r.clusters.get("fc1.weight", np.nan) for r in history], dtype=float)
        mark_late_window(axes[0], history.steps())
        axes[0].semilogy(
            history.steps(), counts, color="tab:blue", lw=1.3, label="MLP + weight sharing"
        )
        axes[0].axhline(
            report["first_layer_weights"],
            color="0.5",
            ls="--",
            label=f"all {report['first_layer_weights']} weights distinct",
        )
        axes[0].set(
            title="distinct first-layer weights",
            xlabel="step",
            ylabel="distinct values (clusters, log)",
        )
        names = [
            "MLP +\nweight sharing",
            "MLP",
            "CNN\n(natural\npixels)",
            "CNN\n(permuted\npixels)",
        ]
        accs = [
            report["test_accuracy"],
            report["mlp_test_accuracy"],
            report["cnn_test_accuracy"],
            report["cnn_permuted_test_accuracy"],
        ]
        bars = axes[1].bar(names, accs, color=["tab:blue", "0.5", "tab:green", "tab:olive"])
        for bar, acc in zip(bars, accs, strict=True):
            axes[1].text(
                bar.get_x() + bar.get_width() / 2,
                acc + 0.005,
                f"{acc:.3f}",
                ha="center",
                fontsize=9,
            )
        axes[1].set(
            title="test accuracy (permuted pixels unless noted)",
            ylabel="test accuracy (fraction correct)",
            ylim=(min(accs) - 0.1, 1.0),
        )
        legend_outside(axes[0])
        written.append(save_figure(fig, out / "weight_sharing_summary.png"))
        return written
