"""Ready-made constraints for fairness, sparsity and per-sample studies.

* :mod:`~constrain.studies.groups`: protected groups (intersectional or marginal) and
  per-group means.
* :mod:`~constrain.studies.fairness`: demographic parity, true-positive-rate parity,
  equalized odds, per-group accuracy and loss; :class:`FairClassification`.
* :mod:`~constrain.studies.group_metrics`: per-group report of a binary classifier
  (sizes, rates, parity gaps) with bootstrap confidence intervals.
* :mod:`~constrain.studies.rates`: rate constraints (positive prediction rate, TPR, FPR,
  FNR, TNR, error rate, precision, recall) per group, binary and multi-class, with builders
  and :class:`RateProblem`.
* :mod:`~constrain.studies.group_dro`: :class:`GroupDROProblem`, the worst-group loss.
* :mod:`~constrain.studies.sparsity`: hard-concrete L0 gates, :class:`L0Linear`, expected
  and achieved density, magnitude density.
* :mod:`~constrain.studies.per_sample`: per-sample loss constraints with indexed
  multipliers (:class:`FeasibleLearning`), optionally relaxed by per-sample slacks of
  minimal norm (:class:`SampleSlack`).
* :mod:`~constrain.studies.balancing`: per-group accuracy-gap constraints between a dense
  and a sparse model ("Balancing Act").

Every counting constraint is returned as a :class:`~constrain.ConstraintValue` with the
exact value (for the multipliers) and a differentiable proxy (for the primal player).
"""

from .balancing import DenseAccuracy, accuracy_gap, dense_accuracy
from .fairness import (
    Criterion,
    FairClassification,
    correctness,
    demographic_parity,
    equalized_odds,
    group_accuracy,
    group_loss,
    max_parity_gap,
    negate,
    positive_rates,
    true_positive_rate_parity,
)
from .group_dro import GroupDROProblem
from .group_metrics import format_group_metrics, group_metrics
from .groups import Groups, group_counts, group_means, membership_from_labels
from .per_sample import FeasibleLearning, SampleSlack, per_sample_losses
from .rates import (
    RateConstraint,
    RateProblem,
    demographic_parity_constraint,
    equalized_odds_constraint,
    error_rate,
    false_negative_rate,
    false_positive_rate,
    positive_prediction_rate,
    precision,
    rate,
    rate_constraint,
    rate_constraint_from_spec,
    rate_gap_constraint,
    rate_parity_constraint,
    recall,
    true_negative_rate,
    true_positive_rate,
)
from .sparsity import (
    GateStructure,
    HardConcreteGate,
    L0Linear,
    achieved_density,
    expected_density,
    gated_layers,
    l0_density,
    magnitude_density,
)

__all__ = [
    "Criterion",
    "DenseAccuracy",
    "FairClassification",
    "FeasibleLearning",
    "GateStructure",
    "GroupDROProblem",
    "Groups",
    "HardConcreteGate",
    "L0Linear",
    "RateConstraint",
    "RateProblem",
    "SampleSlack",
    "accuracy_gap",
    "achieved_density",
    "correctness",
    "demographic_parity",
    "demographic_parity_constraint",
    "dense_accuracy",
    "equalized_odds",
    "equalized_odds_constraint",
    "error_rate",
    "expected_density",
    "false_negative_rate",
    "false_positive_rate",
    "format_group_metrics",
    "gated_layers",
    "group_accuracy",
    "group_counts",
    "group_loss",
    "group_metrics",
    "group_means",
    "l0_density",
    "magnitude_density",
    "max_parity_gap",
    "membership_from_labels",
    "negate",
    "per_sample_losses",
    "positive_prediction_rate",
    "positive_rates",
    "precision",
    "rate",
    "rate_constraint",
    "rate_constraint_from_spec",
    "rate_gap_constraint",
    "rate_parity_constraint",
    "recall",
    "true_negative_rate",
    "true_positive_rate",
    "true_positive_rate_parity",
]
