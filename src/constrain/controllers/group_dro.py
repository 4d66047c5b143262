"""Group DRO: normalised exponentiated-gradient ascent on the probability simplex."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import Controller, ControllerState, PositiveFloat, checked_signal
from ._registry import register

__all__ = ["GroupDRO"]


@register("group_dro")
class GroupDRO(Controller):
    """The adversary of Group DRO (Sagawa, Koh, Hashimoto, Liang, ICLR 2020).

    Group DRO minimises the worst group's loss,
    ``min_theta max_g L_g(theta) = min_theta max_{q in simplex} sum_g q_g L_g(theta)``, by
    letting the weights ``q`` play online mirror ascent with the entropy on the simplex:
    with the error signal ``e_t`` (the group losses when the constraints are declared as
    ``L_g <= 0``, e.g. by :class:`constrain.studies.GroupDROProblem`)::

        q_{t+1, g} = q_{t, g} * exp(lr * e_{t, g}) / sum_h q_{t, h} * exp(lr * e_{t, h})

    computed as ``softmax(log q_t + lr * e_t)`` (no overflow for large ``lr * e``; see
    docs/algorithms.md, 'Group DRO weights'). The
    multipliers start uniform (``1 / m``) and stay on the simplex, where the formulation's
    projection ``max(q, 0)`` does nothing; with the Lagrangian formulation and a zero
    objective the primal player minimises ``sum_g q_g L_g``. Sagawa et al. update ``q``
    before the model at every step: use ``order="dual_primal"``.

    The normalisation couples every multiplier the controller is given: use it for a problem
    whose dense constraints are exactly the group losses, and not for per-sample (indexed)
    constraints, whose minibatch updates would renormalise only the observed entries, nor
    with entries marked unobserved (``ConstraintValue.observed``), which keep their old
    weight while the others are renormalised (:class:`constrain.studies.GroupDROProblem`
    never marks its entries unobserved: an absent group has loss 0 in that batch). Only
    for inequality constraints (:attr:`supports_equality` is ``False``). Stateless.

    Attributes:
        lr: Step size ``eta_q`` of the exponentiated-gradient step (Sagawa et al. use 0.01).
            Default ``0.01``.
    """

    supports_equality: ClassVar[bool] = False

    lr: PositiveFloat = 0.01

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        """Return ``q * exp(lr * e) / sum(q * exp(lr * e))`` and the (empty) state."""
        e = checked_signal(multipliers, signal, self.name)
        return torch.softmax(torch.log(multipliers) + self.lr * e, dim=-1), {}

    def initial_multipliers(self, like: Tensor) -> Tensor:
        """The uniform distribution ``1 / m`` over the ``m`` multipliers."""
        return torch.full_like(like, 1.0 / max(like.shape[-1], 1))
