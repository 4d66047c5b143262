"""Helpers shared by the studies: validated parameters, baselines trained with the same
budget, evaluation mode and figure styling."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from constrain import ConstrainedProblem, RunConfig, Solver, make_optimizer
from constrain._components import build_model

__all__ = [
    "StudyParams",
    "cached",
    "config_key",
    "evaluating",
    "seeded_model",
    "study_params",
    "train_plain",
]

P = TypeVar("P", bound=BaseModel)
T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)

DTYPES = {"float32": torch.float32, "float64": torch.float64}

_CACHE: dict[str, Any] = {}
_CACHE_LIMIT = 8


class StudyParams(BaseModel):
    """Base of the studies' parameter models: unknown keys and NaN/Inf numbers are refused
    (naming the field), like a :class:`ConstrainedProblem`'s hyperparameters."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def study_params(cls: type[P], config: RunConfig) -> P:
    """``config.problem`` (without ``name``) validated as ``cls``, numbers strictly: a bool
    for an ``int`` or ``float`` field is refused (true and false are not 1 and 0).

    Raises:
        ConfigError: Naming every unknown or invalid key, a bool given for a number
            included.
    """
    options = {k: v for k, v in config.problem.items() if k != "name"}
    return build_model(cls, options, f"problem {config.problem['name']!r}")


def config_key(config: RunConfig, *, drop: Iterable[str] = ()) -> str:
    """A stable string identifying ``config`` without the fields in ``drop``."""
    data = config.model_dump(mode="json")
    for field in drop:
        data.pop(field, None)
    return json.dumps(data, sort_keys=True)


def cached(key: str, compute: Callable[[], T]) -> T:
    """``compute()`` memoised under ``key`` for this process (a few entries).

    Used so that a baseline trained for one run's report is reused by its figures and by
    the other controllers of a ``constrain compare``.
    """
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = compute()
    return _CACHE[key]  # type: ignore[no-any-return]


def seeded_model(factory: Callable[[], M], seed: int, dtype: torch.dtype) -> M:
    """``factory()`` initialised from ``torch.manual_seed(seed)`` without touching the
    global random state, so a baseline starts from the same weights as the studied model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.to(dtype)


def train_plain(
    problem: ConstrainedProblem,
    model: nn.Module,
    config: RunConfig,
    *,
    batch: Any = None,
    data: Iterable[Any] | None = None,
) -> Solver:
    """Train ``model`` on ``problem`` with ``config``'s optimizer and number of steps.

    For a problem without constraints this is plain empirical risk minimisation with the
    same budget as the constrained run (the baseline of a study).
    """
    options = dict(config.optimizer)
    name = options.pop("name")
    optimizer = make_optimizer(name, model.parameters(), **options)
    solver = Solver(problem, model, optimizer, record_every=config.record_every)
    solver.fit(data, config.steps, batch=batch, progress=False)
    return solver


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (deterministic gates, no dropout) and no autograd; restores the mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
