"""Moved to :mod:`constrain._components` (kept for one release)."""

from ._components import build_component, build_model, format_validation_error

__all__ = ["build_component", "build_model", "format_validation_error"]
