"""Registered, runnable problems and the function that runs one from a :class:`RunConfig`.

A :class:`ProblemSpec` bundles what the command line needs to run a problem: its default
configuration, how to build the problem, model and data for a configuration, its exact
reference solution (if any) and extra report fields (e.g. test accuracy). Specs are found
by name in :data:`PROBLEMS`, which loads the entry-point group ``constrain.problems``
(each entry point loads a spec class, or a mapping of names to spec classes).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from . import distributed
from ._components import format_validation_error
from ._errors import ConfigError
from ._io import atomic_write_text
from ._registry import Registry
from .config import RunConfig
from .problem import ConstrainedProblem
from .reference import Reference
from .solver import Solver, make_optimizer

__all__ = [
    "PROBLEMS",
    "ProblemSpec",
    "Reference",
    "RunResult",
    "Setup",
    "get_problem",
    "problem_names",
    "register_problem",
    "run",
]

logger = logging.getLogger("constrain")


@dataclass
class Setup:
    """A problem instance ready to solve.

    Attributes:
        problem: The declaration.
        model: The primal variables.
        batch: Fixed batch for full-batch problems (``None`` if none is needed).
        data: Iterable of minibatches (overrides ``batch``).
        extras: Anything the spec wants to keep (test data, reference data, ...).
        full: In a distributed run, the whole-data setup this rank's shard came from
            (references, reports and figures use it); ``None`` otherwise.
    """

    problem: ConstrainedProblem
    model: nn.Module
    batch: Any = None
    data: Iterable[Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    full: Setup | None = None


class ProblemSpec:
    """Base class of runnable problems (subclass and register with
    :func:`register_problem`).

    Class attributes:
        name: Registry name (``constrain run NAME``).
        description: One line for ``constrain list``.
        defaults: Default :class:`RunConfig` fields (without ``problem``'s name).
        controller_defaults: Recommended hyperparameters per controller name, used when
            ``--controller NAME`` switches controllers.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def default_config(self, controller: str | None = None) -> RunConfig:
        """The default configuration, optionally with another controller."""
        data = {"problem": {"name": self.name}, **self.defaults}
        problem_defaults = dict(self.defaults.get("problem", {}))
        data["problem"] = {**problem_defaults, "name": self.name}
        if controller is not None:
            current = dict(data.get("controller", {"name": "gda"}))
            if current.get("name") != controller:
                current = {"name": controller, **self.controller_defaults.get(controller, {})}
            data["controller"] = current
        return RunConfig.parse(data)

    def build(self, config: RunConfig) -> Setup:
        """Build problem, model and data for ``config``."""
        raise NotImplementedError

    def reference(self, setup: Setup) -> Reference | None:
        """The exact solution, or ``None`` if the problem has none."""
        return None

    def report(self, setup: Setup, solver: Solver) -> dict[str, Any]:
        """Extra JSON fields after the run (test metrics, ...)."""
        return {}

    def figures(self, setup: Setup, solver: Solver, out: Path) -> list[Path]:
        """Extra figures written under ``out``; returns their paths."""
        return []

    def shard(self, setup: Setup, rank: int, world_size: int) -> Setup:
        """This rank's part of ``setup`` for a distributed run (``torchrun``).

        The default (:func:`shard_setup`) splits a full ``batch`` of
        tensors into contiguous row blocks in rank order and strides ``data`` (a
        ``DataLoader`` with a ``DistributedSampler`` is kept). Constraint groups with one
        entry per row must declare their full ``size`` so that they are gathered across
        ranks (see :mod:`constrain.distributed`). Override for other data.
        """
        return shard_setup(setup, rank, world_size)


PROBLEMS: Registry[type[ProblemSpec]] = Registry("problem")
_ENTRY_POINTS_LOADED = False


def shard_setup(setup: Setup, rank: int, world_size: int) -> Setup:
    """The default :meth:`constrain.ProblemSpec.shard`: shard ``batch`` with
    :func:`constrain.distributed.shard_batch` and ``data`` with
    :func:`constrain.distributed.shard_data`; ``extras`` are kept whole and
    ``full`` points to ``setup`` (references and reports use the whole data)."""
    return dataclasses.replace(
        setup,
        batch=distributed.shard_batch(setup.batch, rank, world_size),
        data=distributed.shard_data(setup.data, rank, world_size),
        full=setup,
    )


def register_problem(cls: type[ProblemSpec]) -> type[ProblemSpec]:
    """Class decorator registering a :class:`ProblemSpec` under its ``name``."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} needs a non-empty class attribute 'name'.")
    PROBLEMS.register(cls.name)(cls)
    return cls


def _load_problem_plugins() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="constrain.problems"):
        try:
            loaded = ep.load()
        except Exception as exc:
            logger.warning("could not load problem plug-in %s (%s): %s", ep.name, ep.value, exc)
            continue
        items = loaded.items() if isinstance(loaded, Mapping) else [(ep.name, loaded)]
        for name, spec in items:
            if name not in PROBLEMS:
                PROBLEMS.add(name, spec)


def problem_names() -> list[str]:
    """Names of all runnable problems (built-in and plug-ins)."""
    _load_problem_plugins()
    return PROBLEMS.names()


def get_problem(name: str) -> ProblemSpec:
    """An instance of the problem spec registered under ``name``."""
    _load_problem_plugins()
    return PROBLEMS.get(name)()


@dataclass
class RunResult:
    """Outcome of :func:`run`: the JSON summary plus live objects."""

    summary: dict[str, Any]
    solver: Solver
    setup: Setup
    config: RunConfig


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_solver(spec: ProblemSpec, config: RunConfig) -> tuple[Setup, Solver]:
    """Seed, build the setup and the solver for ``config`` (no step taken).

    Raises:
        ConfigError: If the problem's hyperparameters (``config.problem``) are invalid,
            naming each offending key.
    """
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2**32))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(_DTYPES[config.dtype])
    try:
        setup = spec.build(config)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"problem {spec.name!r}")) from None
    finally:
        torch.set_default_dtype(previous)
    setup.model.to(_DTYPES[config.dtype])

    if distributed.launched_distributed() or distributed.is_distributed():
        rank, world = distributed.init_from_env()
        if world > 1:
            setup = spec.shard(setup, rank, world)
    options = dict(config.optimizer)
    name = options.pop("name")
    optimizer = make_optimizer(name, setup.model.parameters(), **options)
    solver = Solver(
        setup.problem,
        setup.model,
        optimizer,
        controller=config.controller,
        formulation=config.formulation,
        order=config.order,
        on_nonfinite=config.on_nonfinite,
        record_every=config.record_every,
        max_multiplier=config.max_multiplier,
        restart=config.restart,
        dual_every=config.dual_every,
        rhs_schedule=config.rhs_schedule,
    )
    return setup, solver


def summarize(
    spec: ProblemSpec, config: RunConfig, setup: Setup, solver: Solver, seconds: float
) -> dict[str, Any]:
    """The JSON summary of a finished run (see the CLI's ``--json``)."""
    history = solver.history
    last = history.last if len(history) else None
    summary: dict[str, Any] = {
        "problem": spec.name,
        "controller": config.controller_label,
        "controller_config": solver.controller.spec(),
        "formulation": config.formulation["name"],
        "order": config.order,
        "steps": solver.step_count,
        "objective": None if last is None else last.objective,
        "max_violation": None if last is None else last.max_violation,
        "multipliers": [] if last is None else list(last.multipliers),
        "multiplier_names": history.labels,
        "seconds": seconds,
        "seconds_per_step": seconds / max(solver.step_count, 1),
    }
    if last is not None and last.per_sample:
        summary["per_sample"] = last.per_sample
    if last is not None and last.metrics:
        summary["metrics"] = last.metrics
    if last is not None and last.clusters:
        summary["clusters"] = last.clusters
    reference = spec.reference(setup.full or setup)
    if reference is not None:
        summary["reference"] = compare_with_reference(reference, solver)
    summary.update(spec.report(setup.full or setup, solver))
    return summary


def compare_with_reference(reference: Reference, solver: Solver) -> dict[str, Any]:
    """Distances between the solver's current point and an exact reference.

    ``multipliers`` lists the exact multipliers in the solver's constraint order (the order
    of :attr:`Solver.multipliers` and of the history's columns), whatever the order of
    ``reference.multipliers``.

    Raises:
        ConfigError: If the reference names a constraint the problem does not have.
    """
    current = solver.multipliers
    unknown = sorted(set(reference.multipliers) - set(current))
    if unknown:
        raise ConfigError(
            f"the reference gives multipliers for {unknown}, which are not constraints of the "
            f"problem; its constraints: {list(current)}."
        )
    names = [n for n in current if n in reference.multipliers]
    ours = (
        np.concatenate([current[n].detach().cpu().double().numpy().reshape(-1) for n in names])
        if names
        else np.zeros(0)
    )
    exact = (
        np.concatenate(
            [np.asarray(reference.multipliers[n], dtype=np.float64).reshape(-1) for n in names]
        )
        if names
        else np.zeros(0)
    )
    out: dict[str, Any] = {
        "objective": reference.objective,
        "multipliers": exact.tolist(),
        "multiplier_error": float(np.linalg.norm(ours - exact)),
        "source": reference.source,
    }
    if reference.primal is not None:
        params = dict(solver.model.named_parameters())
        diffs = [
            np.asarray(params[n].detach().cpu().double().numpy()).reshape(-1)
            - np.asarray(v).reshape(-1)
            for n, v in reference.primal.items()
            if n in params
        ]
        if diffs:
            out["primal_error"] = float(np.linalg.norm(np.concatenate(diffs)))
    return out


def run(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    progress: bool | None = None,
    figures: bool = True,
) -> RunResult:
    """Run a registered problem as configured; write a report under ``out`` if given.

    The report: ``summary.json``, ``config.yaml``, ``history.csv``, ``history.json`` and
    PNG figures (objective, constraints against their bounds, multipliers), plus the
    problem's own figures.
    """
    spec = get_problem(config.problem["name"])
    setup, solver = build_solver(spec, config)
    logger.info(
        "running %s: controller %s, formulation %s, order %s, %d steps",
        spec.name,
        solver.controller.spec(),
        config.formulation["name"],
        config.order,
        config.steps,
    )
    start = time.perf_counter()
    solver.fit(setup.data, config.steps, batch=setup.batch, progress=progress)
    seconds = time.perf_counter() - start
    summary = summarize(spec, config, setup, solver, seconds)
    logger.info(
        "%s finished in %.1f s: objective %.6g, max violation %.3g",
        spec.name,
        seconds,
        summary["objective"] or float("nan"),
        summary["max_violation"] or 0.0,
    )
    if out is not None:
        from .distributed import is_main_process

        if is_main_process():
            write_report(Path(out), spec, config, setup, solver, summary, figures=figures)
    return RunResult(summary, solver, setup, config)


def write_report(
    out: Path,
    spec: ProblemSpec,
    config: RunConfig,
    setup: Setup,
    solver: Solver,
    summary: dict[str, Any],
    *,
    figures: bool = True,
) -> list[Path]:
    """Write the run report under ``out`` (atomic writes); returns the files written."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json", out / "config.yaml", out / "history.csv", out / "history.json"]
    atomic_write_text(written[0], json.dumps(summary, indent=2, default=float))
    config.to_yaml(written[1])
    solver.history.to_csv(written[2])
    solver.history.to_json(written[3])
    if figures:
        try:
            from . import plots
        except ImportError:  # matplotlib missing
            logger.warning("matplotlib is not installed: no figures (pip install constrain[plots])")
        else:
            written += plots.run_figures(solver.history, solver.layout, out, title=spec.name)
            written += spec.figures(setup.full or setup, solver, out)
    return written
