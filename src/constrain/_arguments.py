"""Up-front validation of the solver's arguments.

:func:`check_arguments` refuses what :class:`constrain.Solver` (and :func:`constrain.solve`)
cannot run before any stage is built, with a :class:`~constrain.ConfigError` naming the
argument, what was expected and what was received; :func:`check_stateful` does the same
for ``Solver.register_state``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from torch import nn

from ._cgd_order import check_cgd_options
from ._errors import ConfigError, describe
from .history import History
from .problem import ConstrainedProblem

__all__ = ["ORDERS", "Order", "check_arguments", "check_interval", "check_stateful"]

Order = Literal["simultaneous", "dual_primal", "primal_dual", "cgd"]
ORDERS = ("simultaneous", "dual_primal", "primal_dual", "cgd")
"""The update orders (see docs/algorithms.md, 'Update orders')."""


def check_interval(name: str, value: object, *, allow_none: bool = False) -> None:
    """Check that ``value`` is a positive integer (or ``None`` with ``allow_none``).

    Raises:
        ConfigError: Naming ``name`` and the value received.
    """
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}.")


def check_arguments(
    problem: object,
    model: object,
    order: object,
    on_nonfinite: object,
    record_every: object,
    *,
    cgd_tol: object = 1e-10,
    cgd_max_iter: object = None,
    vectors_every: object = None,
    check_every: object = 1,
    history: object = None,
    loggers: Iterable[object] = (),
) -> None:
    """Validate the solver's arguments up front (see :class:`constrain.Solver`).

    Raises:
        ConfigError: Naming the first invalid argument, what was expected and what was
            received.
    """
    if not isinstance(problem, ConstrainedProblem):
        raise ConfigError(
            f"problem must be a constrain.ConstrainedProblem; got {describe(problem)}."
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module (wrap plain tensors in constrain.Variables); "
            f"got {describe(model)}."
        )
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {list(ORDERS)}; got {order!r}.")
    if on_nonfinite not in ("raise", "skip"):
        raise ConfigError(f"on_nonfinite must be 'raise' or 'skip'; got {on_nonfinite!r}.")
    if not isinstance(record_every, int) or isinstance(record_every, bool) or record_every < 1:
        raise ConfigError(f"record_every must be a positive integer; got {record_every!r}.")
    check_cgd_options(order, cgd_tol, cgd_max_iter)
    check_interval("vectors_every", vectors_every, allow_none=True)
    check_interval("check_every", check_every)
    if on_nonfinite == "skip" and check_every != 1:
        raise ConfigError(
            f"on_nonfinite='skip' decides on the host inside each step and needs "
            f"check_every=1; got check_every={check_every}. Use on_nonfinite='raise' "
            "for steps without host synchronisation."
        )
    if history is not None and not isinstance(history, History):
        raise ConfigError(f"history must be a constrain.History; got {describe(history)}.")
    for k, sink in enumerate(loggers):
        if not (callable(getattr(sink, "log", None)) and callable(getattr(sink, "flush", None))):
            raise ConfigError(
                f"loggers[{k}] must have log(record, history) and flush() methods (e.g. a "
                f"constrain.TensorBoardLogger); got {describe(sink)}."
            )


def check_stateful(name: str, obj: object, taken: Iterable[str]) -> None:
    """Check an object given to ``Solver.register_state``.

    Raises:
        ConfigError: If ``obj`` lacks ``state_dict``/``load_state_dict`` or ``name`` is
            taken.
    """
    if not (
        callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    ):
        raise ConfigError(
            f"register_state({name!r}, ...): expected an object with state_dict() and "
            f"load_state_dict(); got {describe(obj)}."
        )
    if name in taken:
        raise ConfigError(f"register_state: the name {name!r} is already registered.")
