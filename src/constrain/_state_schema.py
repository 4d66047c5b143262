"""The schema of a saved solver state and of a checkpoint's metadata.

A checkpoint loads with ``torch.load(..., weights_only=True)``, so it can only hold
tensors and plain containers; but a crafted or damaged one can still hold the wrong kind
of value anywhere (``step_count='abc'``, ``history='x'``, an extra key in a history record,
``step_count=-5``, a primal optimizer with ``lr=-1``). :func:`check_solver_state` checks the
whole state returned by ``Solver.state_dict()`` before any of it is used and raises a
:class:`~constrain.CheckpointError` that names the field (a path such as
``history.records[3].step``), what was expected and what was received.

The schema is declarative (:data:`SOLVER_STATE`); a change of the state's layout changes
it here and bumps the solver state's version.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ._errors import CheckpointError, describe

__all__ = ["SOLVER_STATE", "check_checkpoint_meta", "check_solver_state"]

Check = Callable[[Any, str], None]
"""``check(value, path)`` raises :class:`CheckpointError` if ``value`` does not fit."""


def _where(path: str) -> str:
    return repr(path) if path else "its top level"


def _fail(path: str, expected: str, got: Any) -> None:
    raise CheckpointError(
        f"the saved solver state is malformed at {_where(path)}: expected {expected}; got "
        f"{describe(got)}. The checkpoint was damaged or not written by Solver.state_dict(); "
        "resume from an earlier checkpoint."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# -- building blocks ---------------------------------------------------------------------------
def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """An int (not a bool) within ``[minimum, maximum]``."""
    bounds = (f" >= {minimum}" if maximum is None and minimum is not None else "") or (
        f" in [{minimum}, {maximum}]" if minimum is not None and maximum is not None else ""
    )

    def check(value: Any, path: str) -> None:
        ok = _is_int(value)
        ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
        if not ok:
            _fail(path, f"an integer{bounds}", value)

    return check


def number(
    *, finite: bool = False, minimum: float | None = None, below: float | None = None
) -> Check:
    """A real number (int or float, not a bool); optionally finite, ``>= minimum``,
    ``< below``. A 0-d tensor is accepted too (torch stores some options as tensors)."""
    parts = ["a finite number" if finite else "a number"]
    if minimum is not None:
        parts.append(f">= {minimum}")
    if below is not None:
        parts.append(f"< {below}")
    expected = " ".join(parts)

    def check(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            value = float(value)
        if not _is_real(value):
            _fail(path, expected, value)
        number_ = float(value)
        if math.isnan(number_) and (finite or minimum is not None or below is not None):
            _fail(path, expected, value)
        if finite and not math.isfinite(number_):
            _fail(path, expected, value)
        if (minimum is not None and number_ < minimum) or (below is not None and number_ >= below):
            _fail(path, expected, value)

    return check


def string(*choices: str) -> Check:
    """A str (one of ``choices`` if given)."""
    expected = f"one of {list(choices)}" if choices else "a string"

    def check(value: Any, path: str) -> None:
        if not isinstance(value, str) or (choices and value not in choices):
            _fail(path, expected, value)

    return check


def boolean(value: Any, path: str) -> None:
    """A bool."""
    if not isinstance(value, bool):
        _fail(path, "true or false (a bool)", value)


def tensor(
    *, dtype: torch.dtype | None = None, floating: bool = False, ndim: int | None = None
) -> Check:
    """A tensor (of ``dtype``, floating-point, with ``ndim`` dimensions)."""
    expected = "a tensor" + (f" of dtype {dtype}" if dtype is not None else "")
    expected += " of a floating-point dtype" if floating else ""
    expected += f" with {ndim} dimension(s)" if ndim is not None else ""

    def check(value: Any, path: str) -> None:
        if not isinstance(value, torch.Tensor):
            _fail(path, expected, value)
        if (dtype is not None and value.dtype != dtype) or (
            floating and not value.is_floating_point()
        ):
            _fail(path, expected, value)
        if ndim is not None and value.dim() != ndim:
            _fail(path, expected, value)

    return check


def nullable(inner: Check) -> Check:
    """``None`` or what ``inner`` accepts."""

    def check(value: Any, path: str) -> None:
        if value is not None:
            inner(value, path)

    return check


def plain(value: Any, path: str) -> None:
    """Plain data: None, bool, numbers, strings, and lists/tuples/dicts of those."""
    if value is None or isinstance(value, (bool, str)) or _is_real(value):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                _fail(f"{path} key", "a string or integer key", key)
            plain(item, f"{path}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            plain(item, f"{path}[{k}]")
        return
    _fail(path, "plain data (numbers, strings, lists, mappings)", value)


def sequence(items: Check, *, length: int | None = None) -> Check:
    """A list or tuple whose items pass ``items``."""

    def check(value: Any, path: str) -> None:
        if not isinstance(value, (list, tuple)):
            _fail(path, "a list", value)
        if length is not None and len(value) != length:
            _fail(path, f"a list of {length} items", f"{len(value)} items")
        for k, item in enumerate(value):
            items(item, f"{path}[{k}]")

    return check


def mapping(
    fields: Mapping[str, Check] | None = None,
    *,
    values: Check | None = None,
    keys: Check | None = None,
    optional: Sequence[str] = (),
    extra: Check | None = None,
) -> Check:
    """A mapping.

    Args:
        fields: Known keys and their checks; every one required unless in ``optional``.
        values: Check of every value (for mappings with free keys, e.g. by name).
        keys: Check of every key.
        optional: Keys of ``fields`` that may be absent.
        extra: Check of values under keys not in ``fields`` (``None``: such keys refused).
    """

    def check(value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            _fail(path, "a mapping", value)
        for key in value:
            if keys is not None:
                keys(key, f"{path} key")
            elif not isinstance(key, str):
                _fail(f"{path} key", "a string key", key)
        if fields is not None:
            missing = [k for k in fields if k not in value and k not in optional]
            if missing:
                where = f"{path}.{missing[0]}" if path else missing[0]
                raise CheckpointError(
                    f"the solver state lacks the entry {missing[0]!r} (at {_where(where)}; it "
                    "is required). The checkpoint was damaged or not written by "
                    "Solver.state_dict(); resume from an earlier checkpoint."
                )
            unknown = [k for k in value if k not in fields]
            if unknown and extra is None and values is None:
                first = unknown[0]
                raise CheckpointError(
                    f"the saved solver state is malformed at {_where(path)}: unexpected entry "
                    f"{first!r} (expected only {sorted(fields)}). The checkpoint was damaged "
                    "or not written by Solver.state_dict(); resume from an earlier checkpoint."
                )
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if fields is not None and key in fields:
                fields[key](item, where)
            elif values is not None:
                values(item, where)
            elif extra is not None:
                extra(item, where)

    return check


def tensor_tree(value: Any, path: str) -> None:
    """Tensors, or mappings (by name) of tensor trees."""
    if isinstance(value, torch.Tensor):
        return
    mapping(values=tensor_tree)(value, path)


# -- the solver state --------------------------------------------------------------------------
def _record_fields() -> dict[str, Check]:
    finite_or_nan = number()
    return {
        "step": integer(0),
        "objective": finite_or_nan,
        "max_violation": finite_or_nan,
        "violation": nullable(sequence(finite_or_nan)),
        "multipliers": nullable(sequence(finite_or_nan)),
        "group_violation": sequence(finite_or_nan),
        "group_multiplier_norm": sequence(finite_or_nan),
        "per_sample": mapping(values=mapping(values=nullable(finite_or_nan))),
        "metrics": mapping(values=nullable(finite_or_nan)),
        "clusters": mapping(values=integer(0)),
        "penalty": nullable(finite_or_nan),
        "seconds": number(minimum=0.0),
        "skipped": boolean,
    }


HISTORY_RECORD = _record_fields()
"""Checks of the fields of one history record (those of :class:`constrain.StepRecord`)."""


_NEW_RECORD_FIELDS = ("group_violation", "group_multiplier_norm")
"""Record fields that records of version-1 and -2 states lack."""


def _history(value: Any, path: str) -> None:
    record = mapping(HISTORY_RECORD, optional=_NEW_RECORD_FIELDS)
    mapping(
        {"labels": sequence(string()), "groups": sequence(string()), "records": sequence(record)},
        optional=("groups",),
    )(value, path)
    width = len(value["labels"])
    previous = -1
    for k, record in enumerate(value["records"]):
        where = f"{path}.records[{k}]"
        if record["step"] <= previous:
            _fail(
                f"{where}.step", f"a step after the previous record's ({previous})", record["step"]
            )
        previous = record["step"]
        for key in ("violation", "multipliers"):
            if record[key] is not None and len(record[key]) != width:
                _fail(f"{where}.{key}", f"{width} values (one per label)", record[key])


_NON_NEGATIVE_OPTIONS = (
    "lr",
    "eps",
    "weight_decay",
    "momentum",
    "dampening",
    "alpha",
    "lr_decay",
    "initial_accumulator_value",
)


def _param_group(value: Any, path: str) -> None:
    mapping({"params": sequence(integer(0))}, extra=plain)(value, path)
    for key, item in value.items():
        where = f"{path}.{key}"
        if key == "params" or item is None or isinstance(item, (bool, str)):
            continue
        if key in _NON_NEGATIVE_OPTIONS:
            number(finite=True, minimum=0.0)(item, where)
        elif key == "betas":
            sequence(number(finite=True, minimum=0.0, below=1.0))(item, where)
        elif isinstance(item, (list, tuple)):
            sequence(number(finite=True))(item, where)
        else:
            number(finite=True)(item, where)


def _optimizer(value: Any, path: str) -> None:
    mapping(
        {
            "state": mapping(keys=integer(0), values=mapping(values=_optimizer_value)),
            "param_groups": sequence(_param_group),
        }
    )(value, path)


def _optimizer_value(value: Any, path: str) -> None:
    if isinstance(value, torch.Tensor):
        return
    plain(value, path)


_RNG = mapping(
    {
        "torch": tensor(dtype=torch.uint8, ndim=1),
        "cuda": sequence(tensor(dtype=torch.uint8, ndim=1)),
        "numpy": mapping(
            {
                "name": string(),
                "keys": tensor(dtype=torch.int64, ndim=1),
                "pos": integer(0, 624),
                "has_gauss": integer(0, 1),
                "cached_gaussian": number(),
            }
        ),
        "python": mapping(
            {
                "version": integer(),
                "internal": sequence(integer(0)),
                "gauss_next": nullable(number()),
            }
        ),
    }
)


def _data(value: Any, path: str) -> None:
    if isinstance(value, Mapping) and not value:
        return
    mapping(
        {
            "epoch": integer(0),
            "position": integer(0),
            "epoch_rng": nullable(_RNG),
            "epoch_generator": nullable(tensor(dtype=torch.uint8)),
            "generator": nullable(tensor(dtype=torch.uint8)),
        }
    )(value, path)


def _component(value: Any, path: str) -> None:
    mapping({"name": string()}, extra=plain)(value, path)


def _multipliers(value: Any, path: str) -> None:
    if value is None:
        return
    mapping(
        {
            "dense": tensor(floating=True, ndim=1),
            "per_sample": mapping(values=tensor(floating=True, ndim=1)),
        }
    )(value, path)
    for name, item in [("dense", value["dense"]), *value["per_sample"].items()]:
        where = f"{path}.dense" if name == "dense" else f"{path}.per_sample.{name}"
        if not bool(torch.isfinite(item).all()):
            _fail(where, "finite multipliers", item)


def one_or_list(inner: Check) -> Check:
    """What ``inner`` accepts, or a non-empty list of those (one entry per optimizer)."""

    def check(value: Any, path: str) -> None:
        if isinstance(value, list):
            if not value:
                _fail(path, "a non-empty list", value)
            for k, item in enumerate(value):
                inner(item, f"{path}[{k}]")
        else:
            inner(value, path)

    return check


def _extra_state(value: Any, path: str) -> None:
    """A registered object's ``state_dict()`` (LR schedulers, ...): plain data or tensors."""
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                _fail(f"{path} key", "a string or integer key", key)
            _extra_state(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            _extra_state(item, f"{path}[{k}]")
    else:
        plain(value, path)


SOLVER_STATE: dict[str, Check] = {
    "version": integer(1),
    "problem": string(),
    "hyperparameters": mapping(extra=plain, fields={}),
    "layout": nullable(plain),
    "controller": _component,
    "formulation": _component,
    "optimizer_type": one_or_list(string()),
    "order": string("simultaneous", "dual_primal", "primal_dual", "cgd"),
    "record_every": integer(1),
    "step_count": integer(0),
    "model": mapping(values=tensor()),
    "optimizer": one_or_list(_optimizer),
    "multipliers": _multipliers,
    "controller_state": mapping(values=tensor_tree),
    "indexed_state": mapping(values=tensor_tree),
    "formulation_state": mapping(values=tensor_tree),
    "multiplier_models": mapping(
        values=mapping({"module": mapping(values=tensor()), "optimizer": _optimizer})
    ),
    "history": _history,
    "history_position": mapping({"records": integer(0), "bytes": integer(0)}),
    "schedules": mapping(values=mapping(values=_extra_state)),
    "extra": mapping(values=_extra_state),
    "rng": _RNG,
    "data": _data,
}
"""Checks of every entry of ``Solver.state_dict()`` (all required, no others allowed;
``extra``, the registered objects' states, is absent from version-1 states; version 3
holds ``history_position`` and ``schedules`` instead of versions 1 and 2's ``history``;
``multiplier_models``, the modules and optimizer states of the per-sample groups'
multiplier models, is absent from states written before multiplier models)."""

_BY_VERSION = {
    1: ("history_position", "schedules", "extra"),
    2: ("history_position", "schedules"),
}
"""Entries of :data:`SOLVER_STATE` that a version's states lack (version 3: ``history``)."""


def check_solver_state(state: Mapping[str, Any]) -> None:
    """Check a saved solver state against :data:`SOLVER_STATE` before it is used.

    Versions 1 (constrain 0.1.0, no ``extra``), 2 and 3 (the history's stream position
    instead of its records) are accepted; whether this constrain reads the version is the
    loader's decision. Besides each entry's type and range, the history of a version-1 or
    -2 state must be consistent with the state: records in increasing step order, below
    ``step_count``, each with one violation and one multiplier per label (or none).

    Raises:
        CheckpointError: Naming the first offending field by its path (e.g.
            ``'history.records[3].step'``), what was expected and what was received.
    """
    version = state.get("version") if isinstance(state, Mapping) else None
    absent = _BY_VERSION.get(version, ("history",))  # type: ignore[arg-type]
    fields = {k: v for k, v in SOLVER_STATE.items() if k not in absent or k == "extra"}
    optional = (("extra",) if "extra" in absent else ()) + ("multiplier_models",)
    mapping(fields, optional=optional)(state, "")
    if isinstance(state["optimizer"], list) != isinstance(state["optimizer_type"], list) or (
        isinstance(state["optimizer"], list)
        and len(state["optimizer"]) != len(state["optimizer_type"])
    ):
        _fail("optimizer_type", "one optimizer type per saved optimizer", state["optimizer_type"])
    if "history" not in state:
        return
    records = state["history"]["records"]
    if records and records[-1]["step"] >= state["step_count"]:
        _fail(
            f"history.records[{len(records) - 1}].step",
            f"a step below step_count ({state['step_count']})",
            records[-1]["step"],
        )


CHECKPOINT_META: dict[str, Check] = {
    "step": integer(0),
    "saved_at": number(finite=True),
    "problem": string(),
    "controller": string(),
    "every": nullable(integer(1)),
    "config": mapping(extra=plain, fields={}),
    "world_size": integer(1),
}
"""Checks of the metadata :func:`constrain.checkpoint.save_checkpoint` writes (other keys,
the caller's, must be plain data)."""


def check_checkpoint_meta(meta: Mapping[str, Any], step_count: int | None = None) -> None:
    """Check a checkpoint's ``meta`` section (``step`` required; the rest if present).

    Raises:
        CheckpointError: Naming the offending field, expected and received.
    """
    optional = [k for k in CHECKPOINT_META if k != "step"]
    mapping(CHECKPOINT_META, optional=optional, extra=plain)(meta, "meta")
    if step_count is not None and meta["step"] != step_count:
        _fail("meta.step", f"the solver state's step_count ({step_count})", meta["step"])
