"""Moved to :mod:`constrain.exact` (the CVXPY check); kept for one release."""

from __future__ import annotations

import warnings

from .exact import Tolerances, ValidationReport, kkt_residuals, solve_reference, to_cvxpy, validate

__all__ = [
    "Tolerances",
    "ValidationReport",
    "kkt_residuals",
    "solve_reference",
    "to_cvxpy",
    "validate",
]

warnings.warn(
    "constrain.validation moved to constrain.exact; the old path goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
