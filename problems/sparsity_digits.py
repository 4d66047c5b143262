"""L0-sparse MLP on scikit-learn's digits under a density constraint.

An MLP ``64 -> hidden -> 10`` whose weights are gated by hard-concrete gates
(:class:`constrain.studies.L0Linear`, one gate per weight) is trained with::

    minimize   mean cross-entropy
    subject to density <= target      (model-wide, or per layer with per_layer=true)

The constrained quantity is the *expected* density of the stochastic gates (the L0
formulation, differentiable: :func:`constrain.studies.l0_density`); the report also gives
the *achieved* density (the fraction of weights the deterministic evaluation gates keep)
and checks both against the target. It covers the run's target and the extra targets in
``sweep`` (trained with the same budget and controller), next to the dense MLP trained
without gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from constrain import (
    ConstrainedProblem,
    ConstraintValue,
    ProblemSpec,
    ProblemState,
    RunConfig,
    Setup,
    Solver,
    constraint,
)
from constrain.studies import (
    L0Linear,
    achieved_density,
    expected_density,
    l0_density,
    magnitude_density,
)

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


class DigitsSparsityParams(StudyParams):
    """Hyperparameters of ``sparsity-digits`` (``--set problem.KEY=VALUE``).

    Attributes:
        density: Target density of the run (fraction of gated weights kept).
        sweep: Further targets trained with the same budget for the report.
        per_layer: Constrain every layer's density instead of the model-wide one.
        hidden: Hidden units.
        init_density: Initial ``P(gate != 0)``.
    """


    density: float = Field(default=0.1, gt=0, lt=1)
    sweep: list[float] = Field(default_factory=lambda: [0.3])
    per_layer: bool = False
    hidden: int = Field(default=128, ge=1)
    init_density: float = Field(default=0.9, gt=0, lt=1)

    @model_validator(mode="after")
    def _valid_sweep(self) -> DigitsSparsityParams:
        bad = [t for t in self.sweep if not 0 < t < 1]
        if bad:
            raise ValueError(f"every sweep target must lie in (0, 1); got {bad}")
        return self


class SparseClassification(ConstrainedProblem):
    """Cross-entropy of a gated classifier subject to ``density <= target``.

    The batch is ``(x, y, *rest)``. Metrics: ``accuracy`` (batch, sampled gates),
    ``density`` (achieved) and ``expected_density``.
    """

    target: float = Field(gt=0, lt=1)
    per_layer: bool = False

    def objective(self, model: Any, batch: Any) -> Tensor:
        """Mean cross-entropy."""
        return F.cross_entropy(model(batch[0]), batch[1])

    @constraint("<=", rhs="target", description="density of the gated weights")
    def density(self, model: Any, batch: Any) -> ConstraintValue:
        """Expected density of the gated weights (differentiable)."""
        return l0_density(model, per_layer=self.per_layer)

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        """Objective, the density constraint and metrics."""
        logits = model(batch[0])
        dens = l0_density(model, per_layer=self.per_layer)
        model_wide = dens.value if not self.per_layer else expected_density(model)
        return ProblemState(
            objective=F.cross_entropy(logits, batch[1]),
            constraints={"density": dens},
            metrics={
                "accuracy": (logits.detach().argmax(1) == batch[1]).float().mean(),
                "density": achieved_density(model),
                "expected_density": model_wide.detach(),
            },
        )


def make_mlp(hidden: int, *, gated: bool, init_density: float = 0.9) -> nn.Module:
    """``64 -> hidden -> 10`` ReLU MLP; gated layers are :class:`L0Linear`."""
    if gated:
        return nn.Sequential(
            L0Linear(64, hidden, init_density=init_density),
            nn.ReLU(),
            L0Linear(hidden, 10, init_density=init_density),
        )
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with evaluating(model):
        return float((model(x).argmax(1) == y).float().mean())


def _sparse_summary(model: nn.Module, test: tuple[Tensor, Tensor], target: float) -> dict[str, Any]:
    with evaluating(model):
        achieved = float(achieved_density(model))
        expected = float(expected_density(model))
        per_layer = achieved_density(model, per_layer=True)
        effective = [m.effective_weight() for m in model.modules() if isinstance(m, L0Linear)]
    return {
        "target_density": target,
        "density": achieved,
        "expected_density": expected,
        "layer_density": per_layer.tolist(),
        "magnitude_density": magnitude_density(effective),
        "test_accuracy": _accuracy(model, *test),
        "meets_target": achieved <= target and expected <= target,
    }


class SparsityDigits(ProblemSpec):
    name = "sparsity-digits"
    params = DigitsSparsityParams
    description = (
        "L0 (hard-concrete) gated MLP on digits under a density constraint; achieved "
        "density and test accuracy per target."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "controller": {"name": "nupi", "lr": 1.0, "ki": 0.02, "kp": 20.0, "nu": 0.0},
        "optimizer": {"name": "adam", "lr": 1e-2},
        "order": "dual_primal",
        "steps": 3000,
        "batch_size": 256,
        "dtype": "float32",
        "problem": DigitsSparsityParams().model_dump(),
    }
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "gda": {"lr": 0.05},
        "nupi": {"lr": 1.0, "ki": 0.02, "kp": 20.0, "nu": 0.0},
        "momentum": {"lr": 0.05, "beta": 0.5},
        "pid": {"ki": 0.02, "kp": 20.0},
        "adam": {"lr": 1e-1},
    }

    def build(self, config: RunConfig) -> Setup:
        params = study_params(DigitsSparsityParams, config)
        data = load_digits_split()
        dtype = DTYPES[config.dtype]
        train = (torch.as_tensor(data.X_train, dtype=dtype), torch.as_tensor(data.y_train))
        test = (torch.as_tensor(data.X_test, dtype=dtype), torch.as_tensor(data.y_test))
        model = seeded_model(
            lambda: make_mlp(params.hidden, gated=True, init_density=params.init_density),
            config.seed,
            dtype,
        )
        problem = SparseClassification(target=params.density, per_layer=params.per_layer)
        extras = {"config": config, "params": params, "train": train, "test": test}
        if config.batch_size is None:
            return Setup(problem, model, batch=train, extras=extras)
        return Setup(
            problem,
            model,
            data=Minibatches(train, config.batch_size, seed=config.seed),
            extras=extras,
        )

    # -- comparisons trained with the same budget ---------------------------------------
    def _loader(self, setup: Setup) -> tuple[Any, Any]:
        config: RunConfig = setup.extras["config"]
        train = setup.extras["train"]
        if config.batch_size is None:
            return train, None
        return None, Minibatches(train, config.batch_size, seed=config.seed)

    def _dense(self, setup: Setup) -> dict[str, Any]:
        config: RunConfig = setup.extras["config"]
        params: DigitsSparsityParams = setup.extras["params"]

        def compute() -> dict[str, Any]:
            model = seeded_model(
                lambda: make_mlp(params.hidden, gated=False), config.seed, DTYPES[config.dtype]
            )
            batch, data = self._loader(setup)
            problem = ConstrainedProblem(objective=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
            train_plain(problem, model, config, batch=batch, data=data)
            return {"test_accuracy": _accuracy(model, *setup.extras["test"])}

        key = "sparsity-digits:dense:" + config_key(
            config, drop=("controller", "formulation", "order")
        )
        return cached(key, compute)

    def _sweep_run(self, setup: Setup, target: float) -> dict[str, Any]:
        config: RunConfig = setup.extras["config"]
        params: DigitsSparsityParams = setup.extras["params"]

        def compute() -> dict[str, Any]:
            from constrain import make_optimizer

            model = seeded_model(
                lambda: make_mlp(params.hidden, gated=True, init_density=params.init_density),
                config.seed,
                DTYPES[config.dtype],
            )
            options = dict(config.optimizer)
            optimizer = make_optimizer(options.pop("name"), model.parameters(), **options)
            problem = SparseClassification(target=target, per_layer=params.per_layer)
            solver = Solver(
                problem,
                model,
                optimizer,
                controller=config.controller,
                formulation=config.formulation,
                order=config.order,
            )
            batch, data = self._loader(setup)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                solver.fit(data, config.steps, batch=batch, progress=False)
            summary = _sparse_summary(model, setup.extras["test"], target)
            summary["history_density"] = solver.history.metric("density").tolist()
            return summary

        key = f"sparsity-digits:target={target}:" + config_key(config)
        return cached(key, compute)

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: DigitsSparsityParams = setup.extras["params"]
        main = _sparse_summary(solver.model, setup.extras["test"], params.density)
        sweep = [
            {k: v for k, v in self._sweep_run(setup, t).items() if k != "history_density"}
            for t in params.sweep
        ]
        return {
            **main,
            "dense_test_accuracy": self._dense(setup)["test_accuracy"],
            "test_samples": int(setup.extras["test"][1].numel()),
            "per_layer": params.per_layer,
            "sweep": sweep,
        }

    # -- figures ------------------------------------------------------------------------
    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        from matplotlib import colormaps
        from matplotlib.ticker import MaxNLocator

        from constrain.plots import legend_outside, mark_late_window, new_figure, save_figure

        params: DigitsSparsityParams = setup.extras["params"]
        history = solver.history
        if len(history) == 0:
            return []
        report = self.report(setup, solver)
        written: list[Path] = []
        colors = [colormaps["tab10"](k) for k in range(10)]

        fig = new_figure(10, 4.8)
        ax = fig.subplots()
        mark_late_window(ax, history.steps())
        runs = [(params.density, history.steps(), history.metric("density"))]
        for t in params.sweep:
            dens = np.asarray(self._sweep_run(setup, t)["history_density"])
            runs.append((t, np.arange(len(dens)), dens))
        for k, (target, steps, dens) in enumerate(runs):
            ax.plot(steps, dens, color=colors[k % 10], lw=1.3, label=f"achieved, target {target:g}")
            ax.axhline(
                target, color=colors[k % 10], lw=1.0, ls="--", label=f"target {target:g} (bound)"
            )
        ax.plot(
            history.steps(),
            history.metric("expected_density"),
            color=colors[0],
            lw=1.0,
            ls=":",
            label=f"expected (constrained quantity), target {params.density:g}",
        )
        ax.set(
            title="sparsity-digits: density of the gated weights (feasible: on or below its target)",
            xlabel="step",
            ylabel="density (fraction of gated weights kept)",
            ylim=(0, 1.03),  # a density of exactly 1 stays visible above the frame
        )
        legend_outside(ax)
        written.append(save_figure(fig, out / "sparsity_density.png"))

        entries = [
            {"label": f"{solver.controller.name}, target {p['target_density']:g}", "runs": [p]}
            for p in [report, *report["sweep"]]
        ]
        written.append(
            _tradeoff_figure(
                entries,
                report,
                out / "sparsity_tradeoff.png",
                title="sparsity-digits: test accuracy against achieved density",
            )
        )

        first = next(m for m in solver.model.modules() if isinstance(m, L0Linear))
        with evaluating(solver.model):
            active = (first.effective_weight() != 0).float()  # (hidden, 64)
        fig = new_figure(10.5, 4)
        axes = fig.subplots(1, 2)
        image = axes[0].imshow(active.sum(0).reshape(8, 8).numpy(), cmap="viridis")
        fig.colorbar(image, ax=axes[0], fraction=0.046, label="kept connections")
        axes[0].set_title("kept connections per input pixel (8x8 image)", fontsize=10)
        axes[0].set_xticks([])
        axes[0].set_yticks([])
        per_unit = active.sum(1).numpy()
        axes[1].hist(per_unit, bins=np.arange(per_unit.max() + 2) - 0.5, color="tab:blue")
        axes[1].set(
            title="kept inputs per hidden unit",
            xlabel="kept inputs (of 64)",
            ylabel="hidden units",
        )
        axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(
            f"first layer at target {params.density:g} "
            f"(layer density {report['layer_density'][0]:.3f})"
        )
        written.append(save_figure(fig, out / "sparsity_first_layer.png"))
        return written

    def compare_figures(self, entries: list[dict[str, Any]], out: Path) -> list[Path]:
        runs = [r for e in entries for r in e["runs"]]
        if not runs or not all("density" in r and "test_accuracy" in r for r in runs):
            return []
        return [
            _tradeoff_figure(
                entries,
                runs[0],
                out / "sparsity_tradeoff.png",
                title="sparsity-digits: test accuracy against achieved density",
                sweeps=True,
            )
        ]


def _wilson(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a proportion ``accuracy`` over ``n`` samples."""
    if n <= 0:
        return accuracy, accuracy
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def _tradeoff_figure(
    entries: list[dict[str, Any]],
    reference: dict[str, Any],
    path: Path,
    *,
    title: str,
    sweeps: bool = False,
) -> Path:
    """Test accuracy against achieved density: per entry the seeds (dots) and their mean
    +/- standard deviation, or, for one seed, the 95% binomial interval of the test accuracy
    (the sampling noise of a finite test set); the dense model and the targets."""
    from matplotlib import colormaps

    from constrain.plots import legend_outside, new_figure, save_figure

    n_test = int(reference.get("test_samples", 0))
    colors = [colormaps["tab10"](k % 10) for k in range(len(entries))]
    fig = new_figure(9, 5.2)
    ax = fig.subplots()
    dense = float(
        np.mean(
            [
                r["dense_test_accuracy"]
                for e in entries
                for r in e["runs"]
                if "dense_test_accuracy" in r
            ]
            or [reference["dense_test_accuracy"]]
        )
    )
    low, high = _wilson(dense, n_test)
    ax.axhspan(low, high, color="0.85", zorder=0, label="dense MLP: 95% interval")
    ax.axhline(dense, color="0.3", ls="--", lw=1.0, label=f"dense MLP (no gates): acc {dense:.3f}")
    targets = sorted({float(r["target_density"]) for e in entries for r in e["runs"]})
    for k, target in enumerate(targets):
        ax.axvline(
            target,
            color="0.5",
            ls=":",
            lw=1.0,
            label="target densities (bounds)" if k == 0 else None,
        )
    for entry, color in zip(entries, colors, strict=True):
        dens = np.array([r["density"] for r in entry["runs"]])
        accs = np.array([r["test_accuracy"] for r in entry["runs"]])
        if dens.size > 1:
            ax.scatter(dens, accs, s=12, color=color, alpha=0.5, zorder=3)
            ax.errorbar(
                dens.mean(),
                accs.mean(),
                xerr=dens.std(ddof=1),
                yerr=accs.std(ddof=1),
                fmt="o",
                ms=8,
                color=color,
                capsize=3,
                zorder=4,
                label=f"{entry['label']}: density {dens.mean():.3f}, acc {accs.mean():.3f} "
                f"(mean +/- std of {dens.size} seeds)",
            )
        else:
            lo, hi = _wilson(float(accs[0]), n_test)
            ax.errorbar(
                dens,
                accs,
                yerr=[[accs[0] - lo], [hi - accs[0]]],
                fmt="o",
                ms=8,
                color=color,
                capsize=3,
                zorder=4,
                label=f"{entry['label']}: density {dens[0]:.3f}, acc {accs[0]:.3f}",
            )
        for r in entry["runs"]:
            for point in r.get("sweep", []) if sweeps else []:
                ax.scatter(
                    point["density"],
                    point["test_accuracy"],
                    marker="^",
                    s=30,
                    color=color,
                    zorder=3,
                )
    if sweeps and any(r.get("sweep") for e in entries for r in e["runs"]):
        ax.scatter([], [], marker="^", s=30, color="0.4", label="sweep targets of each run")
    ax.set(
        title=title,
        xlabel="achieved density (fraction of gated weights kept)",
        ylabel=f"test accuracy (fraction of {n_test} test images)",
        xlim=(0, 1.03),  # a density of exactly 1 stays visible inside the frame
    )
    ax.text(
        0.01,
        0.02,
        f"one test image = {1 / max(n_test, 1):.4f} accuracy; bars: "
        + (
            "95% binomial interval"
            if all(len(e["runs"]) == 1 for e in entries)
            else "std over seeds"
        ),
        transform=ax.transAxes,
        fontsize=7,
        color="0.3",
    )
    ax.title.set_fontsize(10)
    legend_outside(ax)
    return save_figure(fig, path)
