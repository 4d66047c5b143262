"""The solver-state format of checkpoints: what :meth:`Solver.state_dict` holds and how it
is checked and restored.

:mod:`constrain.checkpoint` writes and reads files; this module defines their ``"solver"``
entry. The solver hands over its parts (model, optimizers, dual side, history, data
cursor, registered stateful objects) and nothing else reads them.

Version history:

* 1 (constrain 0.1.0): one optimizer under ``optimizer``, the whole history under
  ``history``. Still loaded.
* 2: ``optimizer`` and ``optimizer_type`` hold one optimizer's state and class name, or
  lists of them when the solver has several optimizers; ``extra`` holds the objects
  registered with :meth:`Solver.register_state` (LR schedulers, ...). Still loaded.
* 3: no ``history``: ``history_position`` (``{"records", "bytes"}``) says where the
  history's stream continues (:meth:`History.position`), so that a checkpoint's size does
  not grow with the run; ``schedules`` holds the state of the dual step-size and penalty
  schedulers. Version-1 and -2 states load: their embedded records are replayed into the
  history (and its stream).
  With per-group controllers, ``controller`` holds ``{"name": "{pattern: name, ...}",
  pattern: spec}`` and ``controller_state`` holds ``{pattern: state}`` (one dense block per
  pattern; per-sample groups stay under ``indexed_state``); per-entry penalties add
  ``penalty/<group>``-style entries to ``formulation_state``. Single-controller states are
  unchanged.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ._errors import CheckpointError, describe
from ._resume import get_rng_state, set_rng_state
from ._state_schema import check_solver_state
from .duals import expect_equal
from .history import History

if TYPE_CHECKING:
    from .solver import Solver

__all__ = ["SOLVER_STATE_VERSION", "load_solver_state", "solver_state"]

logger = logging.getLogger("constrain")

SOLVER_STATE_VERSION = 3
"""Version of the :meth:`Solver.state_dict` layout (1: constrain 0.1.0)."""
_READABLE_VERSIONS = (1, 2, 3)


def solver_state(solver: Solver) -> dict[str, Any]:
    """The whole state of ``solver`` as copies made only of tensors and plain containers
    (``torch.load(..., weights_only=True)`` reads it back). See :meth:`Solver.state_dict`."""
    duals = solver.duals
    controller = {"name": duals.controller.name, **duals.controller.model_dump(mode="json")}
    formulation = {"name": duals.formulation.name, **duals.formulation.model_dump(mode="json")}
    return {
        "version": SOLVER_STATE_VERSION,
        "problem": type(solver.problem).__name__,
        "hyperparameters": solver.problem.hyperparameters(),
        "controller": controller,
        "formulation": formulation,
        "optimizer_type": _one_or_list([type(o).__name__ for o in solver.optimizers]),
        "order": solver.order,
        "record_every": solver.record_every,
        "step_count": solver.step_count,
        "model": {k: v.detach().clone() for k, v in solver.model.state_dict().items()},
        "optimizer": _one_or_list([copy.deepcopy(o.state_dict()) for o in solver.optimizers]),
        **duals.state_dict(),
        "history_position": solver.history.position(),
        "schedules": {name: runner.state_dict() for name, runner in solver.schedules.items()},
        "extra": {
            name: copy.deepcopy(obj.state_dict()) for name, obj in solver.extra_state.items()
        },
        "rng": get_rng_state(),
        "data": solver.cursor.state_dict(),
    }


def load_solver_state(solver: Solver, state: Mapping[str, Any]) -> None:
    """Restore :func:`solver_state` into ``solver`` (see :meth:`Solver.load_state_dict`).

    Raises:
        CheckpointError: Naming the part that does not match, what this solver expects
            and what the state holds, or the unsupported version.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"a solver state must be a mapping from Solver.state_dict(); got {describe(state)}."
        )
    version = state.get("version")
    if version not in _READABLE_VERSIONS:
        raise CheckpointError(
            f"unsupported solver state version {version!r}: this constrain reads versions "
            f"{list(_READABLE_VERSIONS)}. Resume with the constrain release that wrote it."
        )
    check_solver_state(state)
    try:
        _load(solver, _upgrade(state))
    except KeyError as exc:
        raise CheckpointError(
            f"the solver state lacks the entry {exc.args[0]!r}; it was not written by "
            "Solver.state_dict()."
        ) from None


def _upgrade(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A version-1 or -2 state in the version-3 layout (its records stay under
    ``history``, to be replayed)."""
    if state["version"] == 3:
        return state
    return {"extra": {}, **state, "schedules": {}}


def _load(solver: Solver, state: Mapping[str, Any]) -> None:
    duals = solver.duals
    expect_equal("problem", type(solver.problem).__name__, state["problem"])
    expect_equal("controller", duals.controller.name, _name_of(state["controller"]))
    expect_equal("formulation", duals.formulation.name, _name_of(state["formulation"]))
    # the update order is part of the algorithm (the steps differ, so would the run)
    expect_equal("update order", solver.order, state.get("order", solver.order))
    expect_equal(
        "optimizer type",
        _one_or_list([type(o).__name__ for o in solver.optimizers]),
        state["optimizer_type"],
    )
    own_controller = {"name": duals.controller.name, **duals.controller.model_dump(mode="json")}
    if own_controller != state["controller"]:
        logger.warning(
            "resuming with controller settings %s instead of the checkpoint's %s",
            own_controller,
            state["controller"],
        )
    if solver.problem.hyperparameters() != state["hyperparameters"]:
        logger.warning(
            "resuming with problem hyperparameters %s instead of the checkpoint's %s",
            solver.problem.hyperparameters(),
            state["hyperparameters"],
        )
    _load_model(solver.model, state["model"])
    saved_optimizers = state["optimizer"] if len(solver.optimizers) > 1 else [state["optimizer"]]
    for k, (optimizer, saved) in enumerate(zip(solver.optimizers, saved_optimizers, strict=True)):
        try:
            optimizer.load_state_dict(copy.deepcopy(saved))
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"the state of optimizer #{k} does not fit this {type(optimizer).__name__} "
                f"(expected {len(optimizer.param_groups)} parameter group(s) of sizes "
                f"{[len(g['params']) for g in optimizer.param_groups]}): {exc}"
            ) from None
    extra = state["extra"]
    missing = sorted(set(solver.extra_state) - set(extra))
    if missing:
        raise CheckpointError(
            f"the checkpoint holds no state for the registered object(s) {missing}; it "
            f"holds {sorted(extra)}. Register the same objects as the saved run."
        )
    for name, obj in solver.extra_state.items():
        obj.load_state_dict(copy.deepcopy(extra[name]))
    schedules = state["schedules"]
    if not isinstance(schedules, Mapping):
        raise CheckpointError(f"schedules: expected a mapping; got {describe(schedules)}.")
    dropped = sorted(set(schedules) - set(solver.schedules))
    if dropped:
        raise CheckpointError(
            f"the checkpoint was saved by a run with the schedule(s) "
            f"{[f'{n}_schedule' for n in dropped]}, which this solver lacks; resuming would "
            "continue with constant values. Build the solver with the same schedules."
        )
    for name, runner in solver.schedules.items():
        runner.load_state_dict(schedules.get(name))
    step_count = state["step_count"]
    if not isinstance(step_count, int) or isinstance(step_count, bool) or step_count < 0:
        raise CheckpointError(
            f"step_count: expected a non-negative integer; the checkpoint holds "
            f"{describe(step_count)}."
        )
    solver.step_count = step_count
    if state["layout"] is None:
        solver.duals.reset()
    else:
        solver.duals.load_state_dict(state)
    if "history" in state:  # versions 1 and 2 embed the records
        _replay(_history(state["history"], solver), solver)
    else:
        _resume_history(solver, state["history_position"])
    solver.cursor.load_state_dict(state["data"])
    set_rng_state(state["rng"])


def _history(data: Any, solver: Solver) -> History:
    """The saved history. A last record that only exists because the saved run's ``fit``
    ended there (off the ``record_every`` grid) is dropped, so that the resumed history
    equals an uninterrupted one."""
    if not isinstance(data, Mapping):
        raise CheckpointError(
            f"history: expected a mapping from History.to_dict(); the checkpoint holds "
            f"{describe(data)}."
        )
    records = list(data.get("records", []))
    if records:
        last = records[-1]
        step = last.get("step") if isinstance(last, Mapping) else None
        if step == solver.step_count - 1 and isinstance(step, int) and step % solver.record_every:
            records.pop()  # recorded only because the saved fit() ended there
    try:
        return History.from_dict({**dict(data), "records": records})
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"history: the checkpoint's records are malformed ({exc}).") from None


def _resume_history(solver: Solver, position: Any) -> None:
    if not isinstance(position, Mapping) or not {"records", "bytes"} <= set(position):
        raise CheckpointError(
            f"history_position: expected a mapping with 'records' and 'bytes'; the "
            f"checkpoint holds {describe(position)}."
        )
    solver.history.resume(dict(position))


def _replay(saved: History, solver: Solver) -> None:
    """Start the history (and its stream) over with the records of an old checkpoint."""
    history = solver.history
    history.resume({"records": 0, "bytes": 0})
    if saved.labels:
        history.labels = saved.labels
    for record in saved:
        history.append(record)


def _one_or_list(items: list[Any]) -> Any:
    """The single item of a one-optimizer solver (the version-1 layout), else the list."""
    return items[0] if len(items) == 1 else items


def _name_of(spec: Any) -> Any:
    return spec.get("name") if isinstance(spec, Mapping) else spec


def _load_model(model: nn.Module, saved: Any) -> None:
    own = model.state_dict()
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"the model state must be a mapping; got {describe(saved)}.")
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"the model does not match the checkpoint: entries missing from the checkpoint "
            f"{missing}, entries this model lacks {unexpected}."
        )
    for key, tensor in own.items():
        value = saved[key]
        same = isinstance(value, Tensor) and value.shape == tensor.shape
        if not same or value.dtype != tensor.dtype:
            raise CheckpointError(
                f"model entry {key!r}: expected shape {tuple(tensor.shape)} and dtype "
                f"{tensor.dtype}; the checkpoint holds {describe(value)}."
            )
    model.load_state_dict(saved)
