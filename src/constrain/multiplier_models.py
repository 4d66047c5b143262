"""Lagrange multiplier models: the multipliers of a per-sample group as a function of
per-entry features.

A per-sample constraint group with very many entries (one per training sample, one per
pair, ...) keeps by default one multiplier per entry, and an entry's multiplier only moves
when the entry is observed. A :class:`MultiplierModel` replaces that table by a small
network ``phi_theta`` of per-entry features ``f_i`` (Narasimhan, Cotter, Zhou, Wang and
Guo, "Approximate Heavily-Constrained Learning with Lagrange Multiplier Models",
NeurIPS 2020):

.. math::

    \\lambda_i = \\sigma\\bigl(\\phi_\\theta(f_i)\\bigr), \\qquad
    \\sigma = \\operatorname{softplus} \\text{ (inequalities)}, \\quad
    \\sigma = \\operatorname{id} \\text{ (equalities)},

so that the multipliers of entries never observed are predicted from their features. The
primal player minimises ``f(x) + sum_i lambda_i g_i(x)`` with ``lambda_i`` detached; the
dual player takes a step of gradient **ascent** on the Lagrangian with respect to
``theta`` with its own optimizer (SGD by default):

.. math::

    \\theta \\leftarrow \\theta + \\eta \\, \\nabla_\\theta
    \\sum_{i \\in B} \\lambda_\\theta(f_i) \\, s_i ,

where ``s_i`` is the formulation's dual signal of the batch's entries (the violation
``g_i`` for the Lagrangian), detached. See docs/algorithms.md, 'Multiplier models'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import ConfigError, ShapeError, describe

__all__ = ["MultiplierModel"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class MultiplierModel:
    """The multipliers of one per-sample group as ``link(module(features))``.

    Give it to a per-sample constraint (``Constraint(..., per_sample=True,
    multiplier_model=MultiplierModel(module, lr=..., features=d))``); the group's value
    function then returns ``ConstraintValue(values, indices=..., features=F)`` with ``F``
    of shape ``(batch, d)``, dtype and device of the module's parameters.

    Args:
        module: A ``torch.nn.Module`` mapping ``(batch, d)`` features to ``(batch,)`` or
            ``(batch, 1)`` raw multipliers (floating parameters, one dtype, one device).
        lr: Step size ``eta > 0`` of the ascent step.
        features: The number ``d`` of features per entry.
        optimizer: The torch optimizer class (or factory ``f(params, lr=lr, **options)``)
            of the ascent step; default ``torch.optim.SGD``. It minimises the negated
            Lagrangian.
        **options: Further arguments of the optimizer (e.g. ``momentum=0.9``).

    Attributes:
        module: The network.
        optimizer: Its optimizer (state saved in checkpoints).
        equality: Whether the group it serves is an equality (identity link); set when the
            solver builds the constraint layout (inequality until then).

    Raises:
        ConfigError: For a module without floating parameters or with parameters of
            several dtypes/devices, a non-positive or non-finite ``lr``, a ``features``
            that is not a positive integer, or optimizer arguments the optimizer refuses.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        lr: float,
        features: int,
        optimizer: OptimizerFactory | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"MultiplierModel: module must be a torch.nn.Module; got {describe(module)}."
            )
        params = list(module.parameters())
        if not params or not all(p.is_floating_point() for p in params):
            raise ConfigError(
                "MultiplierModel: the module needs trainable floating-point parameters (e.g. "
                f"torch.nn.Linear(d, 1)); got {type(module).__name__} with "
                f"{len(params)} parameter(s)."
            )
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) != 1:
            raise ConfigError(
                "MultiplierModel: the module's parameters must share one dtype and device; "
                f"got {sorted(map(str, kinds))}. Move it with module.to(dtype, device)."
            )
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
            raise ConfigError(f"MultiplierModel: lr must be a finite number > 0; got {lr!r}.")
        if lr <= 0:
            raise ConfigError(f"MultiplierModel: lr must be a finite number > 0; got {lr!r}.")
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ConfigError(
                f"MultiplierModel: features must be a positive integer (the number of "
                f"features per entry); got {features!r}."
            )
        self.module = module
        self.lr = float(lr)
        self.features = features
        self.dtype, self.device = next(iter(kinds))
        factory = torch.optim.SGD if optimizer is None else optimizer
        try:
            self.optimizer = factory(params, lr=self.lr, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"MultiplierModel: the optimizer {getattr(factory, '__name__', factory)!r} "
                f"refused its arguments lr={lr!r}, {options}: {exc}"
            ) from None
        self.equality = False

    def __repr__(self) -> str:
        return (
            f"MultiplierModel({type(self.module).__name__}, lr={self.lr}, "
            f"features={self.features}, optimizer={type(self.optimizer).__name__})"
        )

    # -- checks ---------------------------------------------------------------------------
    def check_features(self, name: str, features: object, batch: int) -> Tensor:
        """``features`` if it is a ``(batch, d)`` tensor of the module's dtype and device.

        Raises:
            ConfigError: Naming the group, what was expected and what was received.
        """
        expected = (
            f"a tensor of shape ({batch}, {self.features}), dtype {self.dtype} on "
            f"{self.device} (one row of features per entry of the batch)"
        )
        fix = (
            f"return ConstraintValue(values, indices=indices, features=F) for per-sample "
            f"constraint {name!r}, whose multiplier model reads F"
        )
        if not isinstance(features, Tensor):
            raise ConfigError(
                f"per-sample constraint {name!r} has a multiplier model but its value gives "
                f"no features: expected {expected}; got {describe(features)}. Fix: {fix}."
            )
        if tuple(features.shape) != (batch, self.features):
            raise ConfigError(
                f"features of per-sample constraint {name!r}: expected {expected}; got shape "
                f"{tuple(features.shape)}. Fix: {fix}."
            )
        if features.dtype != self.dtype or features.device != self.device:
            raise ConfigError(
                f"features of per-sample constraint {name!r}: expected {expected}; got dtype "
                f"{features.dtype} on {features.device}. Fix: convert them with "
                f"F.to(dtype={self.dtype}, device='{self.device}')."
            )
        return features

    # -- the multipliers ------------------------------------------------------------------
    def link(self, raw: Tensor) -> Tensor:
        """``softplus(raw)`` for an inequality group, ``raw`` for an equality group."""
        return raw if self.equality else nn.functional.softplus(raw)

    def forward(self, features: Tensor) -> Tensor:
        """``link(module(features))`` with the graph to ``theta``, shape ``(batch,)``.

        Raises:
            ShapeError: If the module does not return one value per row.
        """
        raw = self.module(features)
        batch = features.shape[0]
        if not isinstance(raw, Tensor) or raw.numel() != batch or raw.dim() > 2:
            raise ShapeError(
                f"the multiplier model's module must map ({batch}, {self.features}) features "
                f"to ({batch},) or ({batch}, 1) values; got {describe(raw)}."
            )
        return self.link(raw.reshape(batch))

    def predict(self, features: Tensor) -> Tensor:
        """The multipliers ``link(module(features))`` of any entries (e.g. entries never
        observed), detached, unclamped (the solver applies ``max_multiplier`` to what it
        stores); ``features`` of shape ``(n, d)``."""
        with torch.no_grad():
            return self.forward(features.to(device=self.device, dtype=self.dtype)).detach()

    def parameters(self) -> Iterable[nn.Parameter]:
        """The module's parameters ``theta``."""
        return self.module.parameters()

    # -- the dual step --------------------------------------------------------------------
    def ascent_step(
        self, features: Tensor, signal: Tensor, upper: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """One ascent step on ``sum_i lambda_theta(f_i) * signal_i`` (signal detached).

        A step whose gradient, new parameters or new multipliers are not all finite is
        undone on the device (parameters and optimizer state keep their values; state
        the step created reads 0, a fresh optimizer's state for SGD and Adam), with no
        host synchronisation.

        Args:
            features: ``(batch, d)`` features of the observed entries.
            signal: ``(batch,)`` dual signal (e.g. the violations ``g_i``).
            upper: Optional bound ``M``: the multipliers are clamped to ``[-M, M]``; the
                step still moves a model whose output lies beyond the bound back inwards.

        Returns:
            ``(proposal, ok)``: the multipliers of the batch after the step (detached,
            before ``ok`` is applied) and a 0-dim bool tensor (the step was taken).
        """
        params = [p for p in self.module.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        state_before = {
            id(p): {
                k: v.clone() for k, v in self.optimizer.state[p].items() if isinstance(v, Tensor)
            }
            for p in params
            if p in self.optimizer.state
        }
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            raw = self.forward(features)
            direction = signal.detach().to(raw.dtype)
            if upper is not None:
                # Projected ascent: a multiplier at its bound only stops moving outwards; the
                # clamp's zero gradient would otherwise freeze a model above the bound.
                outward = ((raw >= upper) & (direction > 0)) | ((raw <= -upper) & (direction < 0))
                direction = torch.where(outward, torch.zeros_like(direction), direction)
            ascent = -(raw * direction).sum()
            grads = torch.autograd.grad(ascent, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.zeros_like(p) if g is None else g
        ok = _finite([p.grad for p in params if p.grad is not None])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            proposal = self._bounded(self.forward(features), upper).detach()
            ok = ok & _finite([*params, proposal])
            for p, old in zip(params, before, strict=True):
                p.copy_(torch.where(ok, p, old))
                state = self.optimizer.state.get(p, {})
                saved = state_before.get(id(p), {})
                for key, value in state.items():
                    if isinstance(value, Tensor):
                        old_value = saved.get(key, torch.zeros_like(value))
                        value.copy_(torch.where(ok, value, old_value))
        return proposal, ok

    @staticmethod
    def _bounded(lam: Tensor, upper: float | None) -> Tensor:
        return lam if upper is None else lam.clamp(-upper, upper)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"module": ..., "optimizer": ...}``: copies of the module's and the
        optimizer's state dicts."""
        import copy

        return {
            "module": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (bit-exact)."""
        import copy

        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


def _finite(tensors: list[Tensor]) -> Tensor:
    """0-dim bool tensor: every entry of every tensor is finite (no synchronisation)."""
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for t in tensors:
        total = total + t.detach().sum(dtype=torch.float64)
    return torch.isfinite(total)
