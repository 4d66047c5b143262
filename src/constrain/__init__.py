"""constrain: constrained optimization of PyTorch models.

Declare a :class:`ConstrainedProblem`, pick a formulation and a multiplier controller,
and run a :class:`Solver` (or :func:`solve`) with any ``torch.optim`` optimizer.
"""

from . import blocks, controllers, formulations, schedules
from ._errors import (
    CheckpointError,
    ConfigError,
    ConstrainError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from .config import RunConfig, load_config
from .controllers import Controller
from .exact import Tolerances, ValidationReport, to_cvxpy, validate
from .formulations import AugmentedLagrangian, Formulation, Lagrangian, QuadraticPenalty
from .history import History, StepRecord
from .layout import ConstraintLayout
from .loggers import Logger, TensorBoardLogger
from .multiplier_models import MultiplierModel
from .multipliers import Multipliers
from .problem import (
    ConstrainedProblem,
    Constraint,
    ConstraintValue,
    ProblemState,
    Regularizer,
    constraint,
)
from .randomized import (
    CandidateDistribution,
    RandomizedPredictor,
    Snapshot,
    Snapshots,
    best_iterate,
    shrinking_distribution,
)
from .runner import ProblemSpec, Reference, RunResult, Setup, get_problem, problem_names, run
from .schedules import ScheduledValue
from .solver import Solver, SolveResult, make_optimizer, solve
from .variables import Variables

__version__ = "0.1.0"

__all__ = [
    "AugmentedLagrangian",
    "CandidateDistribution",
    "CheckpointError",
    "ConfigError",
    "ConstrainError",
    "ConstrainedProblem",
    "Constraint",
    "ConstraintLayout",
    "ConstraintValue",
    "Controller",
    "Formulation",
    "History",
    "Lagrangian",
    "Logger",
    "MultiplierModel",
    "Multipliers",
    "NonFiniteError",
    "ProblemSpec",
    "ProblemState",
    "QuadraticPenalty",
    "RandomizedPredictor",
    "Reference",
    "Regularizer",
    "RunConfig",
    "RunResult",
    "ScheduledValue",
    "Setup",
    "ShapeError",
    "Snapshot",
    "Snapshots",
    "SolveResult",
    "Solver",
    "StepRecord",
    "TensorBoardLogger",
    "Tolerances",
    "UnknownNameError",
    "ValidationReport",
    "Variables",
    "__version__",
    "best_iterate",
    "blocks",
    "constraint",
    "controllers",
    "formulations",
    "get_problem",
    "load_config",
    "make_optimizer",
    "problem_names",
    "run",
    "shrinking_distribution",
    "schedules",
    "solve",
    "to_cvxpy",
    "validate",
]
