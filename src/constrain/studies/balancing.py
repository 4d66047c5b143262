"""Accuracy-gap constraints between a dense and a sparse model, per group.

"Balancing Act" (Hashemizadeh, Ramirez, Sukumaran, Farnadi, Lacoste-Julien,
Gallego-Posada, 2024) bounds how much more accuracy each group loses to pruning than
the population does. With the dense model's accuracies ``A_g`` (per group) and ``A``
(overall), fixed before pruning, and the sparse model's ``a_g`` and ``a``::

    drop_g = A_g - a_g                     (accuracy lost by group g)
    psi_g  = drop_g - (A - a)              (excess over the overall drop; "relative")

and the constraints are ``psi_g <= tolerance`` (or ``drop_g <= tolerance`` in the absolute
variant). The exact accuracies count correct predictions; the proxy replaces each
indicator by the smooth correctness of :func:`~constrain.studies.fairness.correctness`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._errors import ShapeError, describe
from ..problem import ConstraintValue
from .fairness import correctness
from .groups import group_counts, group_means

__all__ = ["DenseAccuracy", "accuracy_gap", "dense_accuracy"]


@dataclass(frozen=True)
class DenseAccuracy:
    """Accuracies of the dense (reference) model, computed once before pruning.

    Attributes:
        group: Per-group accuracy ``A_g``, shape ``(G,)``.
        overall: Overall accuracy ``A``.
    """

    group: Tensor
    overall: float


def dense_accuracy(logits: Tensor, labels: Tensor, membership: Tensor) -> DenseAccuracy:
    """``A_g = mean_g 1[correct]`` and ``A = mean 1[correct]`` of the dense model's logits
    (binary ``(n,)`` or multi-class ``(n, C)``)."""
    c = correctness(logits.detach(), labels).value
    return DenseAccuracy(group_means(c, membership), float(c.mean()))


def accuracy_gap(
    logits: Tensor,
    labels: Tensor,
    membership: Tensor,
    reference: DenseAccuracy,
    *,
    relative: bool = True,
    temperature: float = 1.0,
) -> ConstraintValue:
    """Per-group accuracy drop of the sparse model against the dense reference.

    ``relative=True``: ``psi_g = (A_g - a_g) - (A - a)``; ``relative=False``:
    ``drop_g = A_g - a_g``. Groups absent from the batch get 0 in both value and proxy.

    Args:
        logits: The sparse model's logits on the batch (binary or multi-class).
        labels: Labels of the batch.
        membership: Membership matrix ``(n, G)`` of the batch.
        reference: The dense model's accuracies (same groups).
        relative: Subtract the overall drop (the Balancing Act formulation).
        temperature: Temperature of the smooth correctness proxy.

    Returns:
        Value (exact accuracies) and proxy (smooth correctness), shape ``(G,)``.

    Raises:
        ShapeError: If ``reference`` has another number of groups than ``membership``.
    """
    if reference.group.shape != (membership.shape[1],):
        raise ShapeError(
            f"accuracy_gap: the reference has {describe(reference.group)} group accuracies "
            f"but the membership matrix has {membership.shape[1]} groups; compute the "
            "reference with the same Groups definition."
        )
    c = correctness(logits, labels, temperature=temperature)
    assert c.proxy is not None
    present = group_counts(membership) > 0
    ref = reference.group.to(dtype=c.proxy.dtype, device=c.proxy.device)
    out: list[Tensor] = []
    for per_sample in (c.value, c.proxy):
        drop = ref - group_means(per_sample, membership)
        if relative:
            drop = drop - (reference.overall - per_sample.mean())
        out.append(torch.where(present, drop, torch.zeros_like(drop)))
    return ConstraintValue(out[0].detach(), out[1])
