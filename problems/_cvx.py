"""Small helpers for CVXPY references (CVXPY is an optional dependency)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("constrain")

def import_cvxpy() -> Any | None:
    """Return the ``cvxpy`` module, or ``None`` (with a log message) if it is missing."""
    try:
        import cvxpy
    except ImportError:
        logger.warning("cvxpy is not installed: no exact reference (pip install constrain[reference])")
        return None
    return cvxpy

