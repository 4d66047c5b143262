"""Moved to :mod:`constrain.exact` (the CVXPY check); kept for one release."""

from __future__ import annotations

import warnings

from .exact import (
    CONVENTIONS,
    KKTResiduals,
    Tolerances,
    ValidationReport,
    kkt_residuals,
    solve_reference,
    to_cvxpy,
    validate,
    validate_registered,
)

__all__ = [
    "CONVENTIONS",
    "KKTResiduals",
    "Tolerances",
    "ValidationReport",
    "kkt_residuals",
    "solve_reference",
    "to_cvxpy",
    "validate",
    "validate_registered",
]

warnings.warn(
    "constrain.validation moved to constrain.exact; the old path goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
