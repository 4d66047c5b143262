"""Formulations (Lagrangian, augmented Lagrangian, quadratic penalty) and penalty updaters."""

from ._base import Formulation, FormulationState, PenalizedFormulation, PenaltySchedule
from ._registry import FORMULATIONS, build, register
from ._updaters import (
    PENALTY_UPDATERS,
    AdditiveUpdater,
    MultiplicativeUpdater,
    PenaltyUpdater,
    build_updater,
    register_updater,
)
from .augmented import AugmentedLagrangian
from .lagrangian import Lagrangian
from .penalty import QuadraticPenalty

__all__ = [
    "FORMULATIONS",
    "PENALTY_UPDATERS",
    "AdditiveUpdater",
    "AugmentedLagrangian",
    "Formulation",
    "FormulationState",
    "Lagrangian",
    "MultiplicativeUpdater",
    "PenalizedFormulation",
    "PenaltyUpdater",
    "PenaltySchedule",
    "QuadraticPenalty",
    "build",
    "build_updater",
    "register",
    "register_updater",
]
