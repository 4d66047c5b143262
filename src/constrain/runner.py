"""Registered, runnable problems and the function that runs one from a :class:`RunConfig`.

A :class:`ProblemSpec` bundles what the command line needs to run a problem: its default
configuration, how to build the problem, model and data for a configuration, its exact
reference solution (if any) and extra report fields (e.g. test accuracy). Specs are found
by name in :data:`PROBLEMS`, which loads the entry-point group ``constrain.problems``
(each entry point loads a spec class, or a mapping of names to spec classes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from . import distributed
from ._components import format_validation_error, refuse_bools_for_numbers
from ._errors import ConfigError
from ._io import atomic_write_text, strict_json_dumps
from ._registry import Registry
from ._run_folder import RunFolder, RunInterrupted, StopFlag, deferred_signals, is_writer
from .config import RunConfig
from .history import History
from .loggers import Logger
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
        callback: Called after every training step as ``callback(solver, record)`` (see
            :meth:`Solver.fit`), e.g. a schedule of a problem hyperparameter or
            :class:`constrain.Snapshots`.
    """

    problem: ConstrainedProblem
    model: nn.Module
    batch: Any = None
    data: Iterable[Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    full: Setup | None = None
    callback: Callable[[Solver, Any], None] | None = None


class ProblemSpec:
    """Base class of runnable problems (subclass and register with
    :func:`register_problem`).

    Class attributes:
        name: Registry name (``constrain run NAME``).
        description: One line for ``constrain list``.
        defaults: Default :class:`RunConfig` fields (without ``problem``'s name).
        controller_defaults: Recommended hyperparameters per controller name, used when
            ``--controller NAME`` switches controllers.
        params: The pydantic model of the problem's hyperparameters (``--set
            problem.KEY=VALUE``), listed by ``constrain show``; ``None`` if not declared.
            :func:`build_solver` refuses a bool for any of its numeric fields before
            :meth:`build` runs (true and false are not 1 and 0).
        derived_params: Fields of ``params`` that the spec sets from its data (not
            settable; hidden by ``constrain show``).
        validates: Whether ``constrain validate`` applies: the problem is declared from
            convex blocks, so CVXPY solves it exactly.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    params: ClassVar[type[BaseModel] | None] = None
    derived_params: ClassVar[tuple[str, ...]] = ()
    validates: ClassVar[bool] = False

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

    def summary_rows(self, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Extra ``(label, text)`` rows of the printed run summary (``constrain run``
        without ``--json``), read from ``summary`` (the run's JSON summary, with the
        :meth:`report` fields); none by default."""
        return []

    def compare_figures(self, entries: list[dict[str, Any]], out: Path) -> list[Path]:
        """Extra figures of a ``constrain compare`` written under ``out``; returns their paths.

        Args:
            entries: One mapping per compared entry, in order: ``label``, ``seeds`` and
                ``runs`` (one run summary per seed, with the problem's report fields).
            out: The comparison's folder.
        """
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
            naming each offending key (a bool for a numeric field of ``spec.params``
            included: true and false are not 1 and 0).
    """
    if spec.params is not None:
        hyperparameters = {k: v for k, v in config.problem.items() if k != "name"}
        refuse_bools_for_numbers(spec.params, hyperparameters, f"problem {spec.name!r}")
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
    check_optimizer(config.optimizer)
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
    if not solver.formulation.uses_multipliers:
        logger.warning(
            "formulation %r has no multipliers: controller %r is not used and no multipliers "
            "are reported; use formulation lagrangian or augmented_lagrangian to compare "
            "controllers.",
            solver.formulation.name,
            solver.controller.name,
        )
    return setup, solver


def summarize(
    spec: ProblemSpec,
    config: RunConfig,
    setup: Setup,
    solver: Solver,
    seconds: float,
    *,
    extras: bool = True,
) -> dict[str, Any]:
    """The JSON summary of a run (see the CLI's ``--json``).

    ``extras=False`` leaves out the reference comparison and the problem's own report
    fields (what an interrupted run skips to stop promptly).
    """
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
        "multipliers": [] if last is None else _dense_multipliers(solver),
        "multiplier_names": history.labels,
        "seconds": seconds,
        "seconds_per_step": seconds / max(solver.step_count, 1),
        "interrupted": False,
    }
    if last is not None and last.per_sample:
        summary["per_sample"] = last.per_sample
    if last is not None and last.metrics:
        summary["metrics"] = last.metrics
    if last is not None and last.clusters:
        summary["clusters"] = last.clusters
    if not extras:
        return summary
    reference = spec.reference(setup.full or setup)
    if reference is not None:
        summary["reference"] = compare_with_reference(reference, solver)
    exact = summary["reference"]["multipliers"] if reference is not None else None
    summary.update(history.late_summary(reference_multipliers=exact))
    if not solver.formulation.uses_multipliers:
        # No multipliers: the controller never ran and the recorded zeros mean nothing.
        summary["controller_config"] = None
        summary["multipliers"] = []
    summary.update(spec.report(setup.full or setup, solver))
    return summary


def _dense_multipliers(solver: Solver) -> list[float]:
    """The dense multipliers now, in the order of the history's labels (the last record
    holds its vectors only at ``vectors_every`` steps)."""
    store = solver.multiplier_store
    return [] if store is None else [float(x) for x in store.dense.detach().cpu().tolist()]


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


def check_optimizer(options: Mapping[str, Any]) -> None:
    """Check a primal optimizer's configuration before any work: build it once on a
    dummy parameter (the optimizer's own checks), then refuse what torch would accept but
    that is meaningless: a bool for a numeric option (``lr=true`` is not ``lr=1``) and a
    non-finite number.

    Raises:
        UnknownNameError: For an unknown optimizer name.
        ConfigError: Naming the option, what was expected and what was received.
    """
    import inspect
    import math

    options = dict(options)
    name = options.pop("name")
    built = make_optimizer(name, [nn.Parameter(torch.zeros(1))], **options)
    defaults = inspect.signature(type(built).__init__).parameters
    for key, value in options.items():
        default = defaults[key].default if key in defaults else None
        numeric = isinstance(default, (int, float, tuple)) and not isinstance(default, bool)
        values = value if isinstance(value, (list, tuple)) else [value]
        if numeric and any(isinstance(v, (bool, np.bool_)) for v in values):
            raise ConfigError(
                f"optimizer {name!r}: option {key!r} takes a number (default {default!r}), not a "
                f"bool (true/false is not 1/0 here); received {value!r}."
            )
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(
                    f"optimizer {name!r}: option {key!r} must be a finite number; received "
                    f"{value!r}. A NaN or infinite {key} makes every parameter non-finite."
                )


def claim_folder(
    out: str | Path | None,
    config: RunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    what: str = "--out",
) -> RunFolder | None:
    """Claim ``out`` for a run of ``config`` (``None`` without ``out`` and on ranks other
    than 0); see :class:`constrain._run_folder.RunFolder`."""
    if out is None or not is_writer():
        return None
    info = {"problem": config.problem["name"], "controller": config.controller_label}
    return RunFolder.claim(out, overwrite=overwrite, resume=resume, what=what, info=info)


def execute(
    spec: ProblemSpec,
    config: RunConfig,
    setup: Setup,
    solver: Solver,
    folder: RunFolder | None,
    steps: int,
    *,
    progress: bool | None = None,
    figures: bool = True,
    callback: Any = None,
    at_end: Any = None,
    stop: StopFlag | None = None,
) -> RunResult:
    """Take ``steps`` steps and write the report into ``folder``, whatever happens.

    ``setup.callback`` and then ``callback(solver, record)`` run after every step.
    ``at_end(interrupted)`` runs once
    the steps are done, or after a first SIGINT/SIGTERM has stopped the run between two
    steps (e.g. to write a checkpoint); the report is then written without figures, the
    summary says ``"interrupted": true``, and :class:`RunInterrupted` is raised. On an
    error the report of the steps taken is written too (``run.json`` says ``failed``)
    and the error propagates. ``stop`` is the flag of an enclosing
    :func:`~constrain._run_folder.deferred_signals` (one is opened here if ``None``).
    """
    if stop is None:
        with deferred_signals(enabled=folder is not None and _single_process()) as flag:
            return execute(
                spec,
                config,
                setup,
                solver,
                folder,
                steps,
                progress=progress,
                figures=figures,
                callback=callback,
                at_end=at_end,
                stop=flag,
            )

    def after_step(current: Solver, record: Any) -> None:
        if setup.callback is not None:
            setup.callback(current, record)
        if callback is not None:
            callback(current, record)
        stop.check(current.step_count)

    start = time.perf_counter()
    try:
        stop.check(solver.step_count)  # a signal while the run was being set up
        solver.fit(setup.data, steps, batch=setup.batch, progress=progress, callback=after_step)
        if solver.step_count == 0:  # --steps 0: report the initial point
            solver.initialise(setup.batch, setup.data)
        if at_end is not None:
            at_end(False)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, RunInterrupted) else int(signal.SIGINT)
        if folder is not None:
            whole = isinstance(exc, RunInterrupted) and exc.step == solver.step_count
            if whole and at_end is not None:
                at_end(True)  # the state is a whole number of steps
            _write_partial(spec, config, setup, solver, folder, start, "interrupted")
        raise RunInterrupted(signum, solver.step_count, folder.path if folder else None) from None
    except BaseException as exc:
        if folder is not None:
            _write_partial(spec, config, setup, solver, folder, start, "failed", exc)
        raise
    seconds = time.perf_counter() - start
    summary = summarize(spec, config, setup, solver, seconds)
    logger.info(
        "%s finished in %.1f s after %d steps: objective %s, max violation %s",
        spec.name,
        seconds,
        solver.step_count,
        "-" if summary["objective"] is None else format(summary["objective"], ".6g"),
        "-" if summary["max_violation"] is None else format(summary["max_violation"], ".3g"),
    )
    if folder is not None:
        written = write_report(folder.path, spec, config, setup, solver, summary, figures=figures)
        folder.record(*written)
        folder.finish("finished", steps=solver.step_count)
    return RunResult(summary, solver, setup, config)


def _single_process() -> bool:
    """Not a multi-process run (signals then stop every rank at the same step only by
    chance, so distributed runs keep the default Ctrl-C behaviour)."""
    from . import distributed

    return not (distributed.is_distributed() or distributed.launched_distributed())


def _write_partial(
    spec: ProblemSpec,
    config: RunConfig,
    setup: Setup,
    solver: Solver,
    folder: RunFolder,
    start: float,
    status: Literal["interrupted", "failed"],
    error: BaseException | None = None,
) -> None:
    """Write the report of the steps taken so far (no figures, no reference)."""
    try:
        summary = summarize(spec, config, setup, solver, time.perf_counter() - start, extras=False)
        summary["interrupted"] = status == "interrupted"
        if error is not None:
            summary["error"] = f"{type(error).__name__}: {str(error)[:2000]}"
        folder.record(
            *write_report(folder.path, spec, config, setup, solver, summary, figures=False)
        )
        logger.warning(
            "run %s after %d steps: report written to %s", status, solver.step_count, folder.path
        )
    except Exception as exc:  # never hide the reason the run stopped
        logger.error("could not write the report of the %s run: %s", status, exc)
    folder.finish(status, steps=solver.step_count)


def run(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    progress: bool | None = None,
    figures: bool = True,
    overwrite: bool = False,
    loggers: Sequence[Logger] = (),
) -> RunResult:
    """Run a registered problem as configured; write a report under ``out`` if given.

    The report: ``summary.json``, ``config.yaml``, ``history.csv``, ``history.json`` and
    PNG figures (objective, constraints against their bounds, multipliers), plus the
    problem's own figures, and ``run.json`` (the run id, its status and its files).
    ``out`` is checked and locked before the first step; a folder that holds a previous
    run is refused unless ``overwrite`` (which deletes that run's files, and only those).
    ``config.steps == 0`` reports the initial point (no history, initial multipliers).
    The history streams to ``history.jsonl`` in ``out`` as the run goes; ``loggers``
    (e.g. a :class:`constrain.TensorBoardLogger`) receive every record.

    Raises:
        ConfigError: For an ``out`` that is ``''``, a file, below a file, not writable,
            in use by another run, or holding a previous run without ``overwrite``.
        RunInterrupted: (a ``KeyboardInterrupt``) after SIGINT/SIGTERM, once the report
            of the steps taken is written (marked ``"interrupted": true``).
    """
    spec = get_problem(config.problem["name"])
    check_optimizer(config.optimizer)
    with (
        deferred_signals(enabled=out is not None and _single_process()) as stop,
        claim_folder(out, config, overwrite=overwrite) or contextlib.nullcontext() as folder,
    ):
        setup, solver = build_solver(spec, config)
        stream_history(solver, folder)
        solver.loggers += list(loggers)
        logger.info(
            "running %s: controller %s, formulation %s, order %s, %d steps",
            spec.name,
            solver.controller.spec(),
            config.formulation["name"],
            config.order,
            config.steps,
        )
        return execute(
            spec,
            config,
            setup,
            solver,
            folder,
            config.steps,
            progress=progress,
            figures=figures,
            stop=stop,
        )


HISTORY_STREAM = "history.jsonl"
"""The file of a run folder that the history streams to (JSON Lines)."""


def stream_history(solver: Solver, folder: RunFolder | None) -> None:
    """Stream ``solver``'s history to ``history.jsonl`` in the run folder (a file of the
    run, recorded in ``run.json``; main process only)."""
    if folder is None or not distributed.is_main_process():
        return
    path = folder.path / HISTORY_STREAM
    solver.history = History(stream=path)
    folder.record(path)


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
    """Write the run report under ``out`` (atomic writes); returns the files written.

    ``summary.json`` and ``history.json`` are strict JSON: non-finite numbers are
    ``null`` (``summary.json`` lists their paths under ``nonfinite``).
    """
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json", out / "config.yaml", out / "history.csv", out / "history.json"]
    # Strict JSON: a non-finite number is written as null and its path listed under
    # "nonfinite" (a bare NaN is not JSON).
    atomic_write_text(written[0], strict_json_dumps(summary, indent=2, flag="nonfinite"))
    config.to_yaml(written[1])
    solver.history.to_csv(written[2])
    atomic_write_text(written[3], strict_json_dumps(solver.history.to_dict()))
    if figures:
        try:
            from . import plots
        except ImportError:  # matplotlib missing
            logger.warning("matplotlib is not installed: no figures (pip install constrain[plots])")
        else:
            written += plots.run_figures(
                solver.history,
                solver.layout,
                out,
                title=spec.name,
                reference=summary.get("reference"),
            )
            written += spec.figures(setup.full or setup, solver, out)
    return written
