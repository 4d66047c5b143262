"""Per-group controllers: a mapping from constraint-name patterns to controllers.

``{"budget": "gda", "parity*": {"name": "nupi", "kp": 5, "ki": 0.5}}`` gives the groups
whose names match ``budget`` plain gradient ascent and those matching ``parity*`` nuPI.
Every group must be matched by exactly one pattern (resolved against the problem's groups
when the dual side is initialised). A plain name, a mapping with a ``name`` key or a
:class:`Controller` instance still means one controller for all groups.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._errors import ConfigError, describe
from .._patterns import match_patterns
from ._base import Controller
from ._registry import build

__all__ = ["ControllerMap", "ControllerSpec", "build_controllers"]

ControllerSpec = str | Controller | Mapping[str, Any]
"""What the ``controller`` argument accepts: a name, a mapping with a ``name`` key, an
instance, or a mapping from constraint-name patterns to any of these (see
:func:`build_controllers`)."""


class ControllerMap:
    """Controllers by constraint-name pattern (shell-style globs).

    Args:
        controllers: ``{pattern: controller}``, in priority-free order (every group must be
            matched by exactly one pattern).

    Raises:
        ConfigError: If the mapping is empty, or the controllers disagree on whether they
            extrapolate (an extragradient rule cannot share a step with a one-evaluation
            rule).
    """

    def __init__(self, controllers: Mapping[str, Controller]) -> None:
        if not controllers:
            raise ConfigError(
                "a per-group controller mapping needs at least one pattern, e.g. "
                "{'budget': 'gda', 'parity*': 'nupi'}."
            )
        self.controllers: dict[str, Controller] = dict(controllers)
        kinds = {c.extrapolates for c in self.controllers.values()}
        if len(kinds) > 1:
            which = [p for p, c in self.controllers.items() if c.extrapolates]
            raise ConfigError(
                f"per-group controllers: {which} extrapolate (they evaluate the problem twice "
                "per step) and the others do not; use extrapolating controllers for all "
                "groups or for none."
            )

    # The attributes the solver and the reports read from a controller.
    @property
    def name(self) -> str:
        """A label such as ``"{budget: gda, parity*: nupi}"``."""
        return "{" + ", ".join(f"{p}: {c.name}" for p, c in self.controllers.items()) + "}"

    @property
    def extrapolates(self) -> bool:
        """True if the controllers extrapolate (all or none do)."""
        return next(iter(self.controllers.values())).extrapolates

    def spec(self) -> dict[str, object]:
        """``{pattern: controller.spec()}``; :func:`build_controllers` builds it back."""
        return {p: c.spec() for p, c in self.controllers.items()}

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        """``{pattern: {"name": ..., **hyperparameters}}`` (``mode`` as in pydantic)."""
        return {p: {"name": c.name, **c.model_dump(mode=mode)} for p, c in self.items()}

    def items(self) -> Iterator[tuple[str, Controller]]:
        """``(pattern, controller)`` pairs."""
        return iter(self.controllers.items())

    def assign(self, groups: Sequence[str]) -> dict[str, str]:
        """``{group: pattern}`` for every group.

        Raises:
            ConfigError: If a group is matched by none or by several patterns, or a pattern
                matches no group (the message lists patterns and groups).
        """
        return match_patterns(self.controllers, groups, what="controller", require_all=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ControllerMap) and self.controllers == other.controllers

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ControllerMap({self.controllers!r})"


def build_controllers(spec: ControllerSpec | ControllerMap) -> Controller | ControllerMap:
    """Build the ``controller`` argument of the solver.

    Args:
        spec: A registered name, a mapping with a ``name`` key, a :class:`Controller`
            (one controller for all groups); or a mapping without ``name`` from
            constraint-name patterns to any of those (per-group controllers), e.g.
            ``{"budget": "gda", "parity*": {"name": "nupi", "kp": 5, "ki": 0.5}}``; or a
            :class:`ControllerMap` (returned as is).

    Raises:
        UnknownNameError: For an unknown controller name.
        ConfigError: For invalid hyperparameters (naming the pattern and the field) or a
            pattern whose value is not a controller.
    """
    if isinstance(spec, ControllerMap):
        return spec
    if isinstance(spec, Mapping) and "name" not in spec:
        built: dict[str, Controller] = {}
        for pattern, value in spec.items():
            if not isinstance(value, (str, Controller, Mapping)) or (
                isinstance(value, Mapping) and "name" not in value
            ):
                raise ConfigError(
                    f"controller: {pattern!r} maps to {describe(value)}; a controller mapping "
                    "is either one controller ({'name': 'nupi', 'kp': 1, ...}) or maps "
                    "constraint-name patterns to controllers ({'budget': 'gda', 'parity*': "
                    "{'name': 'nupi', 'kp': 5}}); each pattern needs a name, a mapping with "
                    "a 'name' key or a Controller."
                )
            try:
                built[str(pattern)] = build(value)
            except ConfigError as exc:
                raise type(exc)(f"controller for {pattern!r}: {exc}") from None
        return ControllerMap(built)
    return build(spec)
