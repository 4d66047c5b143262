"""Weight sharing learns convolutions: 2FC + weight-sharing prox vs 2FC vs circular CNN on
digits living on a torus, with natural and with shuffled pixels.

The headline experiment of Shakerinava, Sohrabi, Ravanbakhsh et al. (2023, "Weight-Sharing
Regularization"), after the authors' ``mnist_torus`` setting, on scikit-learn's 8x8 digits:

* **Data**: every training draw rolls the image by a random circular shift (uniform over
  the 64 shifts of the 8x8 torus), so translation structure is what generalizes. Test
  accuracy averages over all 64 shifts of every test image. The *permuted* view applies
  one fixed random permutation of the 64 pixels after the shift: the torus is still there,
  but no model can know which pixels are neighbours.
* **2FC** (the fully connected twin of a 2-layer circular CNN with global pooling):
  ``fc1: 64 -> alpha1*64``, BatchNorm, ReLU; ``fc2: alpha1*64 -> alpha2*64``, BatchNorm,
  ReLU; reshape to ``(alpha2, 64)``, average over the 64 positions, linear classifier.
* **2FC + WS**: the same with the weight-sharing prox ``prox_{mu lr R}`` on the weights
  and biases of fc1 (``mu = ws_fc1``) and fc2 (``mu = ws_fc2``) after every SGD step, with
  ``R(w) = 1/(d-1) sum_{i>j} |w_i - w_j|`` (the authors' strengths: 1e-3 and 1e-4 times the
  learning rate). Options from the authors' code: a partial prox step ``rho`` (particles
  travel ``1 - rho`` of the way, clusters stay tied) and cluster freezing + retraining
  (``retrain_steps``: the clusters found are tied and the network retrained without the
  prox).
* **CNN**: two 3x3 circular convolutions (BatchNorm, ReLU), global average pooling, linear.

**Conv-likeness score** of a first layer ``W`` (rows: output units, columns: the 64 input
pixels in natural order -- the permutation is undone first; for the CNN ``W`` is conv1 as a
dense matrix): center every row, normalize it, and for every row ``r`` and every non-zero
shift ``s`` of the torus take the best cosine between ``shift_s(w_r)`` and any row; the score
is the mean over shifts and rows, weighted by the rows' norms,

    score(W) = sum_r ||w_r|| mean_{s != 0} max_{r'} cos(shift_s w_r, w_r') / sum_r ||w_r||.

It is invariant to the order of the output units, equals 1 exactly when the set of rows is
closed under translations -- a circular convolution (any kernels, any number of channels)
-- and is low for unstructured rows; its chance level for fc1 at initialization is
measured and reported (``conv_score_chance``; about 0.35 for ``alpha1 = 4``). The
*locality* score is the norm-weighted mean over rows of the largest fraction of a row's
energy inside one 3x3 window of the torus (1 for 3x3 kernels).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from constrain import (
    ConfigError,
    ConstrainedProblem,
    ProblemSpec,
    Regularizer,
    RunConfig,
    Setup,
    Solver,
)
from constrain.prox import weight_sharing

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

SIDE = 8
PIXELS = SIDE * SIDE
MODELS = ("ws", "fc", "cnn")
VIEWS = ("permuted", "natural")


class TorusParams(StudyParams):
    """Hyperparameters of ``weight-sharing-torus`` (``--set problem.KEY=VALUE``).

    Attributes:
        alpha1: Channels of the first layer (fc1 has ``alpha1 * 64`` outputs).
        alpha2: Channels of the second layer.
        ws_fc1: Weight-sharing strength on fc1 (times the learning rate at every step).
        ws_fc2: Weight-sharing strength on fc2.
        rho: Partial prox step: particles travel ``1 - rho`` of the way (0: the prox).
        retrain_steps: Steps of cluster-frozen retraining after the 2FC + WS run (0: none).
        dropout: Dropout after each hidden block of the 2FC (the authors use 0.4).
        seeds: Seeds per model and view (``seed``, ``seed + 1``, ...).
        permutation_seed: Seed of the fixed pixel permutation.
        test_shifts: Evaluate every test image under all 64 shifts (``True``) or unshifted.
        train_shifts: Roll the training images (``False``: a control without translation
            structure in the training data).
    """


    alpha1: int = Field(default=4, ge=1)
    alpha2: int = Field(default=8, ge=1)
    ws_fc1: float = Field(default=1e-3, ge=0)
    ws_fc2: float = Field(default=1e-4, ge=0)
    rho: float = Field(default=0.0, ge=0, lt=1)
    retrain_steps: int = Field(default=0, ge=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    seeds: int = Field(default=3, ge=1)
    permutation_seed: int = 0
    test_shifts: bool = True
    train_shifts: bool = True


# -- the torus ---------------------------------------------------------------------------


def shift_table(side: int = SIDE) -> Tensor:
    """``(side^2, side^2)`` gather indices: row ``s = dy * side + dx`` maps every output pixel
    of the image rolled by ``(dy, dx)`` to its source pixel, ``out[y, x] = in[y - dy, x - dx]``
    (indices mod ``side``), i.e. ``torch.roll(image, (dy, dx), (0, 1))``."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    rows = [
        (((ys - dy) % side) * side + (xs - dx) % side).reshape(-1)
        for dy in range(side)
        for dx in range(side)
    ]
    return torch.stack(rows)


_SHIFTS = shift_table()


class TorusBatches(Minibatches):
    """Minibatches of flattened 8x8 images, each rolled by its own random circular shift
    at every draw, then (optionally) pixel-permuted.

    Shifts come from a generator seeded with ``(seed, epoch)``, so the stream is a function
    of the seed and the number of passes only (and resumes exactly). Batches are
    ``(x, y, indices)``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int = 0,
        permutation: Tensor | None = None,
        *,
        shifts: bool = True,
    ) -> None:
        super().__init__([images, labels], batch_size, seed=seed)
        self.permutation = permutation
        self.shifts = shifts

    def __iter__(self):  # type: ignore[no-untyped-def]
        shifts = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_919)
        for x, y, idx in super().__iter__():
            s = torch.randint(0, PIXELS, (len(idx),), generator=shifts)
            rolled = x.gather(1, _SHIFTS[s]) if self.shifts else x
            if self.permutation is not None:
                rolled = rolled[:, self.permutation]
            yield rolled, y, idx


def all_shifts(images: Tensor, permutation: Tensor | None = None) -> Tensor:
    """Every image under all 64 shifts: ``(n * 64, 64)`` (image-major)."""
    n = images.shape[0]
    out = images[:, None, :].expand(n, PIXELS, PIXELS).gather(2, _SHIFTS[None].expand(n, -1, -1))
    out = out.reshape(n * PIXELS, PIXELS)
    return out if permutation is None else out[:, permutation]


# -- models ------------------------------------------------------------------------------


class TwoFC(nn.Module):
    """The authors' "2FC": the fully connected twin of :class:`CircularCNN`."""

    def __init__(self, alpha1: int, alpha2: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.alpha2 = alpha2
        self.fc1 = nn.Linear(PIXELS, alpha1 * PIXELS)
        self.bn1 = nn.BatchNorm1d(alpha1 * PIXELS)
        self.fc2 = nn.Linear(alpha1 * PIXELS, alpha2 * PIXELS)
        self.bn2 = nn.BatchNorm1d(alpha2 * PIXELS)
        self.fc3 = nn.Linear(alpha2, 10)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of flattened images ``(n, 64)``."""
        h = self.dropout(F.relu(self.bn1(self.fc1(x))))
        h = self.dropout(F.relu(self.bn2(self.fc2(h))))
        return self.fc3(h.reshape(-1, self.alpha2, PIXELS).mean(dim=-1))


class CircularCNN(nn.Module):
    """Two 3x3 circular convolutions with BatchNorm and ReLU, global average pooling and a
    linear classifier; flattened inputs are read row-major as 8x8 images."""

    def __init__(self, alpha1: int, alpha2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, alpha1, 3, padding=1, padding_mode="circular")
        self.bn1 = nn.BatchNorm2d(alpha1)
        self.conv2 = nn.Conv2d(alpha1, alpha2, 3, padding=1, padding_mode="circular")
        self.bn2 = nn.BatchNorm2d(alpha2)
        self.fc = nn.Linear(alpha2, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of flattened images ``(n, 64)``."""
        h = F.relu(self.bn1(self.conv1(x.reshape(-1, 1, SIDE, SIDE))))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean(dim=(2, 3)))


def first_layer_matrix(model: nn.Module) -> Tensor:
    """The first layer as a dense ``(units, 64)`` matrix over the model's input pixels:
    fc1's weight for :class:`TwoFC`, conv1 applied to the 64 basis images for
    :class:`CircularCNN` (unit ``(channel, position)``)."""
    if isinstance(model, TwoFC):
        return model.fc1.weight.detach()
    if isinstance(model, CircularCNN):
        weight = model.conv1.weight.detach()
        basis = torch.eye(PIXELS, dtype=weight.dtype).reshape(PIXELS, 1, SIDE, SIDE)
        responses = F.conv2d(F.pad(basis, (1, 1, 1, 1), mode="circular"), weight)
        return responses.reshape(PIXELS, -1).T.contiguous()
    raise ConfigError(f"first_layer_matrix: expected TwoFC or CircularCNN; got {type(model)}.")


def to_pixel_grid(matrix: Tensor, permutation: Tensor | None) -> Tensor:
    """Columns mapped back to natural pixel order: with inputs ``x_perm[k] = x[perm[k]]``,
    column ``k`` belongs to pixel ``perm[k]``."""
    if permutation is None:
        return matrix
    out = torch.zeros_like(matrix)
    out[:, permutation] = matrix
    return out


# -- scores ------------------------------------------------------------------------------


def conv_score(matrix: Tensor, permutation: Tensor | None = None) -> float:
    """Conv-likeness of a first layer ``(units, 64)`` (see the module docstring): 1 exactly
    for a circular convolution, invariant to the order of the units.

    Args:
        matrix: Rows are units, columns the model's input pixels.
        permutation: The input permutation to undo first (``None``: natural order).

    Raises:
        ConfigError: If the matrix does not have 64 columns or every row is constant.
    """
    if matrix.dim() != 2 or matrix.shape[1] != PIXELS:
        raise ConfigError(
            f"conv_score: expected a (units, {PIXELS}) matrix; got {tuple(matrix.shape)}."
        )
    w = to_pixel_grid(matrix.detach().double(), permutation)
    centered = w - w.mean(dim=1, keepdim=True)
    norms = centered.norm(dim=1)
    keep = norms > 1e-12 * float(norms.max()) if norms.numel() else norms > 0
    if not bool(keep.any()):
        raise ConfigError("conv_score: every row is constant; the score is undefined.")
    rows, norms = centered[keep], norms[keep]
    unit = rows / norms[:, None]
    best = torch.zeros(len(unit), dtype=torch.float64)
    for s in range(1, PIXELS):
        best += (unit[:, _SHIFTS[s]] @ unit.T).max(dim=1).values
    best /= PIXELS - 1
    return float((best * norms).sum() / norms.sum())


_WINDOWS = torch.stack(
    [
        torch.tensor(
            [((y + dy) % SIDE) * SIDE + (x + dx) % SIDE for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        )
        for y in range(SIDE)
        for x in range(SIDE)
    ]
)


def locality_score(matrix: Tensor, permutation: Tensor | None = None) -> float:
    """Norm-weighted mean over units of the largest fraction of a unit's energy (squared
    weights) inside one 3x3 window of the torus: 1 for 3x3 kernels, about 0.3 for random
    rows."""
    w = to_pixel_grid(matrix.detach().double(), permutation)
    energy = w**2
    total = energy.sum(dim=1)
    keep = total > 0
    frac = energy[keep][:, _WINDOWS].sum(dim=2).max(dim=1).values / total[keep]
    weights = total[keep].sqrt()
    return float((frac * weights).sum() / weights.sum())


# -- proxes of the options -----------------------------------------------------------------


def partial_weight_sharing(x: Tensor, strength: float, rho: float = 0.0) -> Tensor:
    """The authors' partial prox step: each cluster of the weight-sharing prox moves from
    the mean of its members ``m_C`` only ``1 - rho`` of the way to its prox value ``p_C``:
    ``w_i = m_C + (1 - rho) (p_C - m_C)`` (``rho = 0``: the prox; clusters stay tied)."""
    p = weight_sharing(x, strength)
    if rho == 0.0:
        return p
    flat, pf = x.detach().reshape(-1), p.reshape(-1)
    values, cluster = torch.unique(pf, return_inverse=True)
    sums = torch.zeros(len(values), dtype=flat.dtype).index_add_(0, cluster, flat)
    counts = torch.zeros(len(values), dtype=flat.dtype).index_add_(
        0, cluster, torch.ones_like(flat)
    )
    mean = (sums / counts)[cluster]
    return (mean + (1.0 - rho) * (pf - mean)).reshape(x.shape)


def tie_to_clusters(cluster: Tensor) -> Callable[..., Tensor]:
    """A projection ``x -> cluster means of x`` (the frozen clusters of the retraining phase),
    usable as a :class:`~constrain.Regularizer` prox (``strength`` is ignored)."""
    count = int(cluster.max()) + 1 if cluster.numel() else 0

    def tie(x: Tensor, strength: float) -> Tensor:
        flat = x.detach().reshape(-1)
        sums = torch.zeros(count, dtype=flat.dtype).index_add_(0, cluster, flat)
        counts = torch.zeros(count, dtype=flat.dtype).index_add_(0, cluster, torch.ones_like(flat))
        return (sums / counts)[cluster].reshape(x.shape)

    return tie


# -- the study ---------------------------------------------------------------------------


def _cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


_PROX_PARAMS = (("fc1", "ws_fc1"), ("fc2", "ws_fc2"))


def ws_problem(params: TorusParams) -> ConstrainedProblem:
    """Cross-entropy with the weight-sharing prox on fc1's and fc2's weights and biases."""
    regularizers = []
    for layer, field in _PROX_PARAMS:
        strength = getattr(params, field)
        if strength > 0:
            regularizers.append(
                Regularizer(
                    prox=partial_weight_sharing,
                    strength=strength,
                    params=[f"{layer}.weight", f"{layer}.bias"],
                    options={"rho": params.rho},
                    name=f"weight_sharing_{layer}",
                    track_clusters=False,
                )
            )
    return ConstrainedProblem(objective=_cross_entropy, regularizers=regularizers)


def _summary(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "values": [float(v) for v in array],
    }


class WeightSharingTorus(ProblemSpec):
    name = "weight-sharing-torus"
    params = TorusParams
    description = (
        "Weight sharing learns convolutions? 2FC + weight-sharing prox vs 2FC vs circular CNN "
        "on randomly shifted 8x8 digits, natural and shuffled pixels, several seeds; "
        "accuracy and conv-likeness of fc1."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "controller": {"name": "gda", "lr": 0.01},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "order": "simultaneous",
        "steps": 1500,
        "batch_size": 128,
        "dtype": "float32",
        "record_every": 50,
        "problem": TorusParams().model_dump(),
    }

    def build(self, config: RunConfig) -> Setup:
        params = study_params(TorusParams, config)
        data = self._data(config, params)
        model = seeded_model(
            lambda: TwoFC(params.alpha1, params.alpha2, params.dropout), config.seed, data["dtype"]
        )
        return Setup(
            ws_problem(params),
            model,
            data=self._loader(data, "permuted", config.seed, config),
            extras={"config": config, "params": params, "data": data},
        )

    @staticmethod
    def _data(config: RunConfig, params: TorusParams) -> dict[str, Any]:
        digits = load_digits_split()
        dtype = DTYPES[config.dtype]
        permutation = torch.as_tensor(
            np.random.RandomState(params.permutation_seed).permutation(PIXELS), dtype=torch.long
        )
        return {
            "dtype": dtype,
            "permutation": permutation,
            "train": (
                torch.as_tensor(digits.X_train, dtype=dtype),
                torch.as_tensor(digits.y_train),
            ),
            "test": (torch.as_tensor(digits.X_test, dtype=dtype), torch.as_tensor(digits.y_test)),
        }

    @staticmethod
    def _loader(data: dict[str, Any], view: str, seed: int, config: RunConfig) -> TorusBatches:
        x, y = data["train"]
        perm = data["permutation"] if view == "permuted" else None
        return TorusBatches(
            x,
            y,
            config.batch_size or len(y),
            seed=seed,
            permutation=perm,
            shifts=bool(config.problem.get("train_shifts", True)),
        )

    @staticmethod
    def _accuracy(model: nn.Module, data: dict[str, Any], view: str, params: TorusParams) -> float:
        x, y = data["test"]
        perm = data["permutation"] if view == "permuted" else None
        if params.test_shifts:
            inputs, labels = all_shifts(x, perm), y.repeat_interleave(PIXELS)
        else:
            inputs, labels = (x if perm is None else x[:, perm]), y
        with evaluating(model):
            return float((model(inputs).argmax(dim=1) == labels).double().mean())

    def _evaluate(
        self, model: nn.Module, data: dict[str, Any], view: str, params: TorusParams
    ) -> dict[str, Any]:
        perm = data["permutation"] if view == "permuted" else None
        matrix = first_layer_matrix(model)
        return {
            "accuracy": self._accuracy(model, data, view, params),
            "conv_score": conv_score(matrix, perm),
            "locality": locality_score(matrix, perm),
            "filters": to_pixel_grid(matrix.double(), perm).reshape(-1, SIDE, SIDE),
        }

    def _train(self, kind: str, view: str, seed: int, setup: Setup) -> dict[str, Any]:
        config: RunConfig = setup.extras["config"]
        params: TorusParams = setup.extras["params"]
        data = setup.extras["data"]
        factory: Callable[[], nn.Module]
        if kind == "cnn":
            factory = lambda: CircularCNN(params.alpha1, params.alpha2)  # noqa: E731
        else:
            factory = lambda: TwoFC(params.alpha1, params.alpha2, params.dropout)  # noqa: E731
        model = seeded_model(factory, seed, data["dtype"])
        perm = data["permutation"] if view == "permuted" else None
        out: dict[str, Any] = {}
        if kind != "cnn":
            out["init_conv_score"] = conv_score(first_layer_matrix(model), perm)
            out["init_locality"] = locality_score(first_layer_matrix(model), perm)
        problem = (
            ws_problem(params) if kind == "ws" else ConstrainedProblem(objective=_cross_entropy)
        )
        train_plain(problem, model, config, data=self._loader(data, view, seed, config))
        out.update(self._evaluate(model, data, view, params))
        if kind == "ws":
            out.update(self._clusters(model))
            if params.retrain_steps:
                out["retrained"] = self._retrain(model, view, seed, setup)
        return out

    @staticmethod
    def _clusters(model: nn.Module) -> dict[str, Any]:
        assert isinstance(model, TwoFC)
        return {
            "clusters_fc1": int(torch.unique(model.fc1.weight.detach()).numel()),
            "clusters_fc2": int(torch.unique(model.fc2.weight.detach()).numel()),
            "weights_fc1": model.fc1.weight.numel(),
            "weights_fc2": model.fc2.weight.numel(),
        }

    def _retrain(self, model: nn.Module, view: str, seed: int, setup: Setup) -> dict[str, Any]:
        """Freeze the clusters of the prox'd parameters and retrain without the prox."""
        config: RunConfig = setup.extras["config"]
        params: TorusParams = setup.extras["params"]
        data = setup.extras["data"]
        retrained = copy.deepcopy(model)
        regularizers = []
        for name, p in retrained.named_parameters():
            if name.split(".")[0] in ("fc1", "fc2"):
                _, cluster = torch.unique(p.detach().reshape(-1), return_inverse=True)
                regularizers.append(
                    Regularizer(
                        prox=tie_to_clusters(cluster),
                        strength=0.0,
                        params=[name],
                        name=f"tie_{name}",
                        track_clusters=False,
                    )
                )
        problem = ConstrainedProblem(objective=_cross_entropy, regularizers=regularizers)
        retrain_config = config.model_copy(update={"steps": params.retrain_steps})
        train_plain(
            problem, retrained, retrain_config, data=self._loader(data, view, seed + 10_000, config)
        )
        result = self._evaluate(retrained, data, view, params)
        result.pop("filters")
        result.update(self._clusters(retrained))
        return result

    def _study(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        """Every (model, view, seed) run; the solver's own run is 2FC + WS, permuted, on the
        first seed."""
        config: RunConfig = setup.extras["config"]
        params: TorusParams = setup.extras["params"]

        def compute() -> dict[str, Any]:
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                k: {v: [] for v in VIEWS} for k in MODELS
            }
            for offset in range(params.seeds):
                seed = config.seed + offset
                for kind in MODELS:
                    for view in VIEWS:
                        if (kind, view, offset) == ("ws", "permuted", 0):
                            runs[kind][view].append(self._main_run(solver, setup))
                        else:
                            runs[kind][view].append(self._train(kind, view, seed, setup))
            return runs

        key = "weight-sharing-torus:" + config_key(
            config, drop=("controller", "formulation", "order")
        )
        return cached(key, compute)

    def _main_run(self, solver: Solver, setup: Setup) -> dict[str, Any]:
        params: TorusParams = setup.extras["params"]
        data = setup.extras["data"]
        perm = data["permutation"]
        init = seeded_model(
            lambda: TwoFC(params.alpha1, params.alpha2, params.dropout),
            setup.extras["config"].seed,
            data["dtype"],
        )
        out: dict[str, Any] = {
            "init_conv_score": conv_score(first_layer_matrix(init), perm),
            "init_locality": locality_score(first_layer_matrix(init), perm),
        }
        out.update(self._evaluate(solver.model, data, "permuted", params))
        out.update(self._clusters(solver.model))
        if params.retrain_steps:
            out["retrained"] = self._retrain(
                solver.model, "permuted", setup.extras["config"].seed, setup
            )
        return out

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        params: TorusParams = setup.extras["params"]
        runs = self._study(setup, solver)
        main = runs["ws"]["permuted"][0]
        report: dict[str, Any] = {
            "seeds": params.seeds,
            "test_accuracy": main["accuracy"],
            "conv_score": main["conv_score"],
            "clusters_fc1": main["clusters_fc1"],
            "clusters_fc2": main["clusters_fc2"],
        }
        table: dict[str, Any] = {}
        for kind in MODELS:
            table[kind] = {}
            for view in VIEWS:
                entries = runs[kind][view]
                suffix = "" if view == "permuted" else "_natural"
                stats = {
                    metric: _summary([e[metric] for e in entries])
                    for metric in ("accuracy", "conv_score", "locality")
                }
                table[kind][view] = stats
                report[f"accuracy_{kind}{suffix}"] = stats["accuracy"]["mean"]
                report[f"conv_score_{kind}{suffix}"] = stats["conv_score"]["mean"]
                report[f"locality_{kind}{suffix}"] = stats["locality"]["mean"]
                if params.retrain_steps and kind == "ws":
                    retrained = [e["retrained"] for e in entries]
                    stats["retrained"] = {
                        metric: _summary([r[metric] for r in retrained])
                        for metric in ("accuracy", "conv_score", "locality")
                    }
                    report[f"accuracy_ws_retrained{suffix}"] = stats["retrained"]["accuracy"][
                        "mean"
                    ]
                    report[f"conv_score_ws_retrained{suffix}"] = stats["retrained"]["conv_score"][
                        "mean"
                    ]
        chance = [e["init_conv_score"] for k in ("ws", "fc") for v in VIEWS for e in runs[k][v]]
        local = [e["init_locality"] for k in ("ws", "fc") for v in VIEWS for e in runs[k][v]]
        report["conv_score_chance"] = _summary(chance)["mean"]
        report["locality_chance"] = _summary(local)["mean"]
        report["table"] = table
        return report

    def summary_rows(self, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Accuracy and conv-likeness of 2FC + WS against the 2FC and CNN baselines, per
        view (means over the seeds), for the printed run summary."""
        if "seeds" not in summary:  # an interrupted run has no study report
            return []
        names = {"ws": "2FC+WS", "fc": "2FC", "cnn": "CNN"}

        def line(prefix: str, suffix: str, digits: int) -> str:
            return "  ".join(
                f"{names[k]} {summary[f'{prefix}_{k}{suffix}']:.{digits}f}"
                for k in MODELS
                if f"{prefix}_{k}{suffix}" in summary
            )

        seeds = int(summary["seeds"])
        rows = [("seeds", f"{seeds} per model and view (the rows below: means)")]
        for view, suffix in (("permuted", ""), ("natural", "_natural")):
            rows.append((f"test acc, {view} px", line("accuracy", suffix, 4)))
        for view, suffix in (("permuted", ""), ("natural", "_natural")):
            chance = summary.get("conv_score_chance")
            text = line("conv_score", suffix, 3)
            if chance is not None:
                text += f"  (random init {chance:.3f})"
            rows.append((f"conv score, {view} px", text))
        for view, suffix in (("permuted", ""), ("natural", "_natural")):
            if f"accuracy_ws_retrained{suffix}" in summary:
                rows.append(
                    (
                        f"2FC+WS retrained, {view}",
                        f"acc {summary[f'accuracy_ws_retrained{suffix}']:.4f}  conv score "
                        f"{summary[f'conv_score_ws_retrained{suffix}']:.3f}",
                    )
                )
        return rows

    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        from constrain.plots import new_figure, save_figure

        runs = self._study(setup, solver)
        report = self.report(setup, solver)
        written: list[Path] = []

        shown = 16
        fig = new_figure(shown * 0.9, 3.4)
        axes = fig.subplots(3, shown)
        labels = {"ws": "2FC + WS", "fc": "2FC", "cnn": "CNN"}
        for row, kind in enumerate(MODELS):
            entry = runs[kind]["permuted"][0]
            filters = entry["filters"]
            norms = filters.reshape(len(filters), -1).norm(dim=1)
            if kind == "cnn":  # unit (channel c, position p) is row c * 64 + p
                channels = len(filters) // PIXELS
                order = torch.tensor(
                    [c * PIXELS + p for c in range(channels) for p in (0, 9, 18, 27, 36, 45)]
                )[:shown]
            else:
                order = norms.argsort(descending=True)[:shown]
            # One symmetric colour range per row (its largest weight), so the filters of a
            # row compare with each other and with the row's colour bar.
            bound = float(filters[order].abs().max()) or 1.0
            image = None
            for col in range(shown):
                ax = axes[row, col]
                ax.set_xticks([])
                ax.set_yticks([])
                if col < len(order):
                    image = ax.imshow(
                        filters[order[col]].numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound
                    )
                else:
                    ax.axis("off")
            if image is not None:
                bar = fig.colorbar(image, ax=list(axes[row]), fraction=0.02, pad=0.01)
                bar.set_label("weight", fontsize=8)
                bar.ax.tick_params(labelsize=7)
            axes[row, 0].set_ylabel(
                f"{labels[kind]}\n{entry['conv_score']:.2f}",
                rotation=0,
                ha="right",
                va="center",
                fontsize=9,
            )
        fig.suptitle(
            "first-layer filters on the 8x8 pixel grid (permutation undone; permuted-pixel runs, "
            "first seed; 2FC: the 16 largest units, CNN: conv1 kernels at a few positions; label: "
            "conv-likeness score; colour range shared per row)",
            fontsize=10,
        )
        written.append(save_figure(fig, out / "torus_filters.png"))

        fig = new_figure(12, 4.2)
        axes = fig.subplots(1, 2)
        width = 0.38
        for ax, metric, title, ylabel in (
            (
                axes[0],
                "accuracy",
                "test accuracy (all 64 shifts of each test image)",
                "test accuracy (fraction correct)",
            ),
            (
                axes[1],
                "conv_score",
                "conv-likeness of the first layer",
                "conv-likeness score (1: a circular convolution)",
            ),
        ):
            for j, view in enumerate(VIEWS):
                means = [report["table"][k][view][metric]["mean"] for k in MODELS]
                stds = [report["table"][k][view][metric]["std"] for k in MODELS]
                xs = np.arange(len(MODELS)) + (j - 0.5) * width
                ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{view} pixels")
            ax.set_xticks(np.arange(len(MODELS)), [labels[k] for k in MODELS])
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(ylabel)
            if metric == "conv_score":
                ax.axhline(
                    report["conv_score_chance"],
                    color="0.4",
                    ls="--",
                    lw=1,
                    label=f"random init {report['conv_score_chance']:.2f}",
                )
                ax.set_ylim(0, 1.05)
            ax.legend(fontsize=8)
        seeds = report["seeds"]
        fig.suptitle(
            f"weight-sharing-torus: mean and std over {seeds} seed{'s' if seeds > 1 else ''}",
            fontsize=10,
        )
        written.append(save_figure(fig, out / "torus_summary.png"))
        return written
