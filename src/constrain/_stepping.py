"""The step in progress between ``Solver.lagrangian`` and ``Solver.dual_step``, and the
order its pieces must come in.

A step runs ``lagrangian() -> backward() and optimizer.step() -> prox_step() ->
dual_step()``; with gradient accumulation, ``lagrangian(accumulate=True)`` adds
micro-batches before the optimizer step. :class:`StepInProgress` holds what the pieces
hand to each other (the evaluations, whether the step is skipped, the dual report, the
gradient norms); :func:`expect` and :func:`check_accumulate` refuse pieces out of order
with a :class:`~constrain.ConfigError` naming the expected order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._errors import ConfigError, describe
from .duals import DualReport
from .layout import ConstraintLayout, StackedConstraints
from .problem import ProblemState

__all__ = ["Micro", "StepInProgress", "check_accumulate", "expect"]

ORDER = "lagrangian() -> backward() and optimizer.step() -> prox_step() -> dual_step()"
"""The order of a step's pieces, as error messages state it."""


@dataclass(slots=True)
class Micro:
    """One evaluation of the step in progress (one micro-batch with accumulation)."""

    batch: Any
    objective: Tensor
    stacked: StackedConstraints
    state: ProblemState


@dataclass(slots=True)
class StepInProgress:
    """The step in progress (between ``lagrangian`` and ``dual_step``).

    Attributes:
        micro: The step's evaluations, one per micro-batch.
        start: ``time.perf_counter()`` at the start of the step.
        skipped: The step is skipped (``on_nonfinite="skip"``).
        dual_done: The multiplier step ran.
        prox_done: The proximal steps ran.
        report: What the multiplier step did (device tensors).
        extra: Further evaluations of the constraints (look-ahead, ``"primal_dual"``).
        gradients: Parameter names and their gradients' max-norms (device tensors).
        measure_gradients: Measures the gradients when the step is recorded, if
            ``gradients`` was not set (``PrimalSide.gradient_norms``): see
            :meth:`gradient_facts`.
        rule_metrics: What the step's update rule reports (0-d device tensors, e.g. the
            ``"cgd/hvp"`` count of the ``"cgd"`` order), recorded with the problem's
            metrics.
    """

    micro: list[Micro]
    start: float
    skipped: bool = False
    dual_done: bool = False
    prox_done: bool = False
    report: DualReport | None = None
    extra: list[StackedConstraints] = field(default_factory=list)
    gradients: tuple[tuple[str, ...], list[Tensor]] | None = None
    measure_gradients: Callable[..., tuple[tuple[str, ...], list[Tensor]] | None] | None = None
    combined: StackedConstraints | None = None
    rule_metrics: dict[str, Tensor] = field(default_factory=dict)

    def evaluation(self, layout: ConstraintLayout) -> StackedConstraints:
        """The step's constraints: the mean over the micro-batches."""
        if self.combined is None:
            micro = self.micro
            self.combined = (
                micro[0].stacked if len(micro) == 1 else layout.merge([m.stacked for m in micro])
            )
        return self.combined

    def add(self, micro: Micro) -> None:
        """One more micro-batch (gradient accumulation)."""
        self.micro.append(micro)
        self.combined = None

    def gradient_facts(self, *, screen: bool) -> tuple[tuple[str, ...], list[Tensor]] | None:
        """The step's gradient facts for the record (0-d device tensors): :attr:`gradients`
        if set, else what :attr:`measure_gradients` measures now, a cheap screen if
        ``screen`` (finite exactly when every gradient is, unless a sum overflows: the
        caller then asks again without ``screen``), else the max-norms."""
        if self.gradients is None and self.measure_gradients is not None:
            return self.measure_gradients(screen=screen)
        return self.gradients

    def objective(self) -> Tensor:
        """The step's objective (the mean over the micro-batches), detached."""
        if len(self.micro) == 1:
            return self.micro[0].objective.detach()
        return torch.stack([m.objective.detach() for m in self.micro]).mean()

    def metrics(self) -> Mapping[str, Tensor | float]:
        """The problem's metrics (the mean over the micro-batches of those all report),
        then :attr:`rule_metrics` (to read, not to change: it may be the problem's own
        dictionary).

        Raises:
            ConfigError: If a ``ProblemState.metrics`` is not a mapping.
        """
        if len(self.micro) == 1:
            metrics: Mapping[str, Tensor | float] = self.micro[0].state.metrics
            if type(metrics) is not dict:
                metrics = _checked_metrics(metrics)
            return {**metrics, **self.rule_metrics} if self.rule_metrics else metrics
        given = [_checked_metrics(m.state.metrics) for m in self.micro]
        names = set.intersection(*(set(m) for m in given))
        out: dict[str, Tensor | float] = {}
        for name in (n for n in given[0] if n in names):
            values = [torch.as_tensor(m[name]).detach() for m in given]
            out[name] = torch.stack([v.reshape(()).double() for v in values]).mean()
        return {**out, **self.rule_metrics}


def _checked_metrics(metrics: object) -> Mapping[str, Tensor | float]:
    """``metrics`` if it is a mapping.

    Raises:
        ConfigError: Otherwise, naming what was received.
    """
    if isinstance(metrics, Mapping):
        return metrics
    raise ConfigError(
        f"ProblemState.metrics must be a mapping from metric names to scalars; got "
        f"{describe(metrics)}. Return ProblemState(..., metrics={{'accuracy': acc}}) or "
        "leave metrics out."
    )


def expect(
    pending: StepInProgress | None, what: str, step: int, *, idle: bool = False
) -> StepInProgress:
    """The step in progress for the piece ``what`` (with ``idle``: check that none is).

    Raises:
        ConfigError: If ``what`` comes out of order, naming the expected order.
    """
    if (pending is None) != idle:
        state = "while a step is in progress" if idle else "before lagrangian()"
        extra = (
            " (pass accumulate=True to add a micro-batch to the step in progress)"
            if idle and what == "lagrangian"
            else ""
        )
        raise ConfigError(
            f"{what}() was called {state} in step {step}: a step runs {ORDER}{extra}."
        )
    return pending  # type: ignore[return-value]


def check_accumulate(pending: StepInProgress, order: str, step: int) -> None:
    """Check that a micro-batch may join the step in progress.

    Raises:
        ConfigError: After the step's prox or multiplier step, or in the ``"dual_primal"``
            order (whose multiplier step comes before the first loss).
    """
    if order == "dual_primal" or pending.prox_done or pending.dual_done:
        why = (
            "the 'dual_primal' order updates the multipliers before the first loss"
            if order == "dual_primal"
            else "the step's prox or multiplier step already ran"
        )
        raise ConfigError(
            f"lagrangian(accumulate=True) in step {step}: {why}. Accumulate micro-batches "
            "between lagrangian() and the optimizer step, in the 'simultaneous' or "
            "'primal_dual' order."
        )
