"""Formulations: Lagrangian, augmented Lagrangian and quadratic penalty."""

from ._base import Formulation, FormulationState, PenalizedFormulation, PenaltySchedule
from ._registry import FORMULATIONS, build, register
from .augmented import AugmentedLagrangian
from .lagrangian import Lagrangian
from .penalty import QuadraticPenalty

__all__ = [
    "FORMULATIONS",
    "AugmentedLagrangian",
    "Formulation",
    "FormulationState",
    "Lagrangian",
    "PenalizedFormulation",
    "PenaltySchedule",
    "QuadraticPenalty",
    "build",
    "register",
]
