"""Multiplier storage: one flat dense vector plus one vector per per-sample group.

The stacked constraint layout that used to live here is :mod:`constrain.layout`; its names
are still importable from this module for one release.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Multipliers"]


@dataclass
class Multipliers:
    """Lagrange multipliers: one flat dense vector plus one vector per per-sample group."""

    dense: Tensor
    per_sample: dict[str, Tensor] = field(default_factory=dict)

    def clone(self) -> Multipliers:
        """Deep copy."""
        return Multipliers(self.dense.clone(), {k: v.clone() for k, v in self.per_sample.items()})

    def tensors(self) -> Iterator[tuple[str, Tensor]]:
        """``("dense", tensor)`` then ``(group name, tensor)`` for per-sample groups."""
        yield "dense", self.dense
        yield from self.per_sample.items()


_MOVED = ("ConstraintLayout", "IndexedViolation", "StackedConstraints")


def __getattr__(name: str) -> Any:
    """The layout names moved to :mod:`constrain.layout` (kept here for one release)."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(
            f"constrain.multipliers.{name} moved to constrain.layout.{name}; the old path "
            "goes away in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("constrain.layout"), name)
    raise AttributeError(f"module 'constrain.multipliers' has no attribute {name!r}")
