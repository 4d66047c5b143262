"""Offline data sets of the studies and a reproducible minibatch loader.

* :func:`load_adult`: UCI Adult (shipped under ``data/adult`` with its attribution), the
  official train/test split, one-hot categoricals and standardized numericals.
* :func:`load_digits_split`: scikit-learn's 8x8 digits, a fixed stratified split.
* :func:`make_feasible_dataset`: a synthetic classification set of any size with a long
  tail of hard samples (the Feasible Learning study).
* :class:`Minibatches`: an iterable of minibatches whose order is a function of a seed and
  the epoch only, so runs are reproducible.

All loaders run offline; scikit-learn is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import functools
import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from constrain import ConfigError

__all__ = [
    "ADULT_DIR",
    "AdultData",
    "DigitsData",
    "Minibatches",
    "load_adult",
    "load_digits_split",
    "make_feasible_dataset",
]

ADULT_DIR = Path(__file__).resolve().parent / "data" / "adult"
"""Where the shipped UCI Adult files live (see ``SOURCE.md`` there for the attribution)."""

_ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
_ADULT_NUMERICAL = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
_ADULT_LOG_SCALED = ("capital-gain", "capital-loss")
_ADULT_CATEGORICAL = (
    "workclass",
    "education",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native-country",
)
ADULT_PROTECTED = ("sex", "race")


@dataclass(frozen=True)
class AdultData:
    """Preprocessed UCI Adult.

    Attributes:
        X_train: Features of the 32,561 training rows, ``float64`` ``(n, d)``.
        y_train: Labels in {0, 1} (1: income > 50K).
        X_test: Features of the 16,281 official test rows.
        y_test: Test labels.
        feature_names: One name per column of ``X`` (``column=value`` for one-hot columns).
        protected_train: Raw protected attributes of the training rows by column name
            (string arrays, e.g. ``{"sex": [...], "race": [...]}``).
        protected_test: The same for the test rows.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    protected_train: dict[str, np.ndarray]
    protected_test: dict[str, np.ndarray]


def _read_adult_rows(path: Path) -> list[list[str]]:
    """Rows of one Adult file as stripped strings (comment and blank lines skipped)."""
    if not path.is_file():
        raise ConfigError(
            f"UCI Adult file {str(path)!r} is missing; the constrain_problems package ships it "
            "under data/adult (reinstall the package or restore the file)."
        )
    rows: list[list[str]] = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            if not row or row[0].startswith("|"):
                continue
            if len(row) != len(_ADULT_COLUMNS):
                raise ConfigError(
                    f"{path.name}: expected {len(_ADULT_COLUMNS)} comma-separated fields per "
                    f"row; got {len(row)} in {row!r}. The file is corrupt: restore it."
                )
            rows.append([field.strip() for field in row])
    return rows


@functools.lru_cache(maxsize=4)
def _adult_cached(include_protected: bool) -> AdultData:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    train = np.array(_read_adult_rows(ADULT_DIR / "adult.data.gz"), dtype=object)
    test = np.array(_read_adult_rows(ADULT_DIR / "adult.test.gz"), dtype=object)
    col = {name: k for k, name in enumerate(_ADULT_COLUMNS)}

    def labels(table: np.ndarray) -> np.ndarray:
        # The test file writes ">50K." with a trailing period.
        raw = np.char.rstrip(table[:, col["income"]].astype(str), ".")
        return (raw == ">50K").astype(np.float64)

    categorical = [c for c in _ADULT_CATEGORICAL if include_protected or c not in ADULT_PROTECTED]
    numerical = list(_ADULT_NUMERICAL)
    log_cols = [numerical.index(c) for c in _ADULT_LOG_SCALED]

    def log_scale(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).copy()
        x[:, log_cols] = np.log1p(x[:, log_cols])
        return x

    # Missing values are written "?"; they are kept as their own category.
    transformer = ColumnTransformer(
        [
            (
                "numerical",
                make_pipeline(FunctionTransformer(log_scale), StandardScaler()),
                [col[c] for c in numerical],
            ),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                [col[c] for c in categorical],
            ),
        ]
    )
    X_train = np.asarray(transformer.fit_transform(train), dtype=np.float64)
    X_test = np.asarray(transformer.transform(test), dtype=np.float64)
    encoder = transformer.named_transformers_["categorical"]
    names = list(numerical)
    for column, values in zip(categorical, encoder.categories_, strict=True):
        names += [f"{column}={v}" for v in values]
    return AdultData(
        X_train=X_train,
        y_train=labels(train),
        X_test=X_test,
        y_test=labels(test),
        feature_names=tuple(names),
        protected_train={c: train[:, col[c]].astype(str) for c in ADULT_PROTECTED},
        protected_test={c: test[:, col[c]].astype(str) for c in ADULT_PROTECTED},
    )


def load_adult(include_protected: bool = True) -> AdultData:
    """UCI Adult with the official train/test split, preprocessed for a linear model.

    Preprocessing (fitted on the training rows only): ``fnlwgt`` (a census sampling weight,
    not an attribute of the person) is dropped; ``capital-gain`` and ``capital-loss`` are
    mapped by ``log(1 + x)``; the numerical columns are standardized to zero mean and unit
    variance; categoricals are one-hot encoded with ``?`` (missing) kept as a category and
    categories unseen in training encoded as all zeros.

    Args:
        include_protected: Whether ``sex`` and ``race`` are model inputs (they are always
            returned in ``protected_*`` for building groups).

    Returns:
        The data (cached: do not modify the arrays in place).
    """
    return _adult_cached(bool(include_protected))


@dataclass(frozen=True)
class DigitsData:
    """scikit-learn's digits: 8x8 images scaled to [0, 1], flattened row-major.

    Attributes:
        X_train, y_train, X_test, y_test: Features ``(n, 64)`` and integer labels.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=4)
def load_digits_split(test_fraction: float = 0.25, random_state: int = 0) -> DigitsData:
    """The 1,797 digits images, pixel values divided by 16, stratified train/test split.

    Args:
        test_fraction: Fraction of the images held out for testing.
        random_state: Seed of the split (fixed so that every run sees the same split).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    X = np.asarray(data.data, dtype=np.float64) / 16.0
    y = np.asarray(data.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_fraction, stratify=y, random_state=random_state
    )
    return DigitsData(X_train, y_train, X_test, y_test)


def make_feasible_dataset(
    num_train: int, num_test: int, *, num_features: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic binary classification set with many clusters of different difficulty.

    ``sklearn.datasets.make_classification`` with 8 Gaussian clusters per class on a
    10-dimensional informative subspace, 4 redundant (linear combinations) and the rest
    noise features, 1% flipped labels and no class imbalance; features standardized with
    the training statistics. Small clusters that overlap the other class form the tail of
    hard samples that empirical risk minimisation neglects.

    Args:
        num_train: Number of training samples.
        num_test: Number of test samples.
        num_features: Total number of features (at least 14).
        seed: Seed of the generator (the data set is a pure function of its arguments).

    Returns:
        ``X_train, y_train, X_test, y_test`` (``float64`` features, labels in {0, 1}).
    """
    from sklearn.datasets import make_classification

    if num_features < 14:
        raise ConfigError(f"make_feasible_dataset: num_features must be >= 14; got {num_features}.")
    X, y = make_classification(
        n_samples=num_train + num_test,
        n_features=num_features,
        n_informative=10,
        n_redundant=4,
        n_clusters_per_class=8,
        flip_y=0.01,
        class_sep=1.0,
        random_state=seed,
    )
    X_train, X_test = X[:num_train], X[num_train:]
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1.0
    return (
        (X_train - mean) / std,
        y[:num_train].astype(np.float64),
        (X_test - mean) / std,
        y[num_train:].astype(np.float64),
    )


class Minibatches:
    """Shuffled minibatches over aligned tensors, reproducible from a seed.

    Each pass (epoch) draws a fresh permutation from a ``torch.Generator`` seeded with
    ``(seed, epoch)``, so the batch order depends on nothing but the seed and the number of
    completed passes. Every batch is ``(*tensors[idx], idx)``: the sample indices come last
    (per-sample constraints need them).

    Args:
        tensors: Tensors with the same first dimension.
        batch_size: Samples per batch; the last, smaller batch of a pass is dropped when
            ``drop_last`` is true.
        seed: Seed of the batch order.
        drop_last: Drop the incomplete last batch of each pass.

    Raises:
        ConfigError: For an empty tensor list, mismatched lengths or a bad batch size.
    """

    def __init__(
        self, tensors: Sequence[Tensor], batch_size: int, seed: int = 0, *, drop_last: bool = True
    ) -> None:
        if not tensors:
            raise ConfigError("Minibatches needs at least one tensor.")
        n = int(tensors[0].shape[0])
        lengths = [int(t.shape[0]) for t in tensors]
        if any(length != n for length in lengths):
            raise ConfigError(f"Minibatches: tensors must have the same length; got {lengths}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(
                f"Minibatches: batch_size must be a positive integer; got {batch_size!r}."
            )
        if drop_last and batch_size > n:
            raise ConfigError(
                f"Minibatches: batch_size {batch_size} exceeds the {n} samples and drop_last is "
                "set, so no batch would be produced; lower batch_size."
            )
        self.tensors = tuple(tensors)
        self.num_samples = n
        self.batch_size = batch_size
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the permutation of pass ``epoch`` (as
        ``DistributedSampler.set_epoch`` does); the solver calls it at the start of every pass
        so that a resumed run draws the same batches as an uninterrupted one."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.num_samples, generator=generator)
        for k in range(len(self)):
            idx = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield (*(t[idx] for t in self.tensors), idx)
