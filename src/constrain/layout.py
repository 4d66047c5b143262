"""Stacked constraint layout: where each constraint group lives in the stacked vectors.

All dense constraint groups of a problem share one flat vector: group ``k`` occupies
``[offset_k, offset_k + size_k)``. Stacking a :class:`~constrain.problem.ProblemState` is one
``torch.cat`` plus two vectorised operations, whatever the number of groups. Per-sample
(indexed) groups keep one multiplier per sample and only the entries observed in a
minibatch are read and written.

Right-hand sides are read at every step (a schedule's value, a changed problem field, a
solver-level ``rhs_schedule`` override). Groups that a step does not measure (an
intermittent constraint left out of ``evaluate()``, or a ``ConstraintValue`` with
``observed=False``) are marked as unobserved: their violation reads 0 and the dual side
leaves their multipliers alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import Tensor

from . import schedules as _schedules
from ._errors import ConfigError, NonFiniteError, ShapeError, describe
from ._patterns import match_patterns
from .multiplier_models import MultiplierModel
from .multipliers import Multipliers
from .problem import (
    ConstrainedProblem,
    Constraint,
    ProblemState,
    as_constraint_value,
    check_objective,
    declared,
    is_dense,
)
from .schedules import RhsSchedule

__all__ = [
    "NONFINITE_HINT",
    "ConstraintLayout",
    "IndexedViolation",
    "StackedConstraints",
    "index_message",
]

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


@dataclass
class IndexedViolation:
    """Observed entries of one per-sample constraint group.

    A sample drawn several times in one batch (sampling with replacement, the padding of a
    distributed sampler) counts once, with the mean of its values: every occurrence carries
    that mean in ``violation`` (so the multiplier updates of the occurrences are identical),
    and only the first one enters the primal loss (the others' ``primal`` is a constant 0).
    This keeps every shape fixed, so that no host synchronisation is needed.

    Attributes:
        violation: Standard-form true values ``g_i`` of the observed samples (detached).
        primal: Standard-form values the primal player differentiates (proxy or true).
        indices: Sample indices (int64), one per entry, clamped to ``[0, size)``.
        equality: True if the group is an equality constraint (multipliers of any sign).
        first: True at the first occurrence of each sample (``None``: no repeats possible).
        raw_indices: The indices as given (checked against ``size`` when the step is
            flushed; see :meth:`ConstraintLayout.check_indices`).
        size: Number of samples of the group.
        observed: False when the step gave only a proxy (``ConstraintValue.proxy_only``):
            the violation reads 0 and the multipliers do not move.
        features: ``(batch, d)`` per-entry features of a group with a multiplier model
            (``None`` otherwise), one row per entry of ``indices``.
    """

    violation: Tensor
    primal: Tensor
    indices: Tensor
    equality: bool = False
    first: Tensor | None = None
    raw_indices: Tensor | None = None
    size: int = 0
    observed: bool = True
    features: Tensor | None = None


@dataclass
class StackedConstraints:
    """All constraint values of one evaluation, in standard form.

    Attributes:
        violation: Dense true violations, one per dense constraint entry (detached); drives
            the multipliers.
        primal: Dense values seen by the primal player (proxies where given), with graph.
        equality: Boolean mask of the dense entries that are equality constraints.
        per_sample: Observed entries of each per-sample group, by name.
        observed: Boolean mask of the dense entries measured by this evaluation (``None``:
            all). Unobserved entries have violation 0, no primal term (unless a proxy
            was given) and get no multiplier update.
        unobserved: Names of the dense groups this evaluation did not measure at all (an
            intermittent group left out, ``ConstraintValue(observed=False)``); known on the
            host, their entries are also outside ``observed``.
    """

    violation: Tensor
    primal: Tensor
    equality: Tensor
    per_sample: dict[str, IndexedViolation] = field(default_factory=dict)
    observed: Tensor | None = None
    unobserved: frozenset[str] = frozenset()


_NOTHING: frozenset[str] = frozenset()

NONFINITE_HINT = (
    "expected finite values; look for log(0), a division by zero, an overflow or NaN "
    "in the data, or pass on_nonfinite='skip' to skip such steps"
)


class ConstraintLayout:
    """Where each constraint group lives in the stacked vectors.

    Built once from the problem declaration and the first evaluation (to infer sizes that
    were not declared), then reused at every step.

    Args:
        problem: The problem.
        state: A first evaluation (used to infer undeclared sizes and the dtype/device).
        rhs_schedule: Right-hand sides that replace the declared ones, by constraint-name
            pattern: schedules (:mod:`constrain.schedules`: instances, mappings with a
            ``name``) or numbers. Groups no pattern matches keep their declaration.
        share_values: Whether the primal loss may take a group's tensor itself, not a
            copy, where the one-group short path of :meth:`stack` would copy nothing else:
            only for a formulation whose terms are linear in the values (its
            ``linear_terms``), whose backward keeps none of them, so that a tensor the
            user changes in place before ``backward`` cannot break it. Contiguous tensors
            only (a reduction over a strided one may round differently from one over its
            copy).

    Raises:
        ShapeError: For a non-scalar objective, sizes that disagree with the declaration
            or the right-hand side, or an intermittent group without a declared size that
            the first evaluation did not measure.
        ConfigError: For an ``rhs_schedule`` pattern that matches no group or a group
            matched by two patterns, or an invalid schedule.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        state: ProblemState,
        *,
        rhs_schedule: Mapping[str, Any] | None = None,
        share_values: bool = False,
    ) -> None:
        self.share_values = share_values
        self.dense: list[Constraint] = []
        self.per_sample: list[Constraint] = []
        sizes: list[int] = []
        reference = state.objective
        check_objective(problem, reference)
        modelled: dict[int, str] = {}
        for c in problem.all_constraints:
            if c.multiplier_model is not None:
                _check_model(c)
                other = modelled.setdefault(id(c.multiplier_model), c.name)
                if other != c.name:
                    raise ConfigError(
                        f"per-sample constraints {other!r} and {c.name!r} share one "
                        "MultiplierModel; give each group its own (its own module and "
                        "optimizer)."
                    )
            if c.per_sample:
                self.per_sample.append(c)
                continue
            if c.name not in state.constraints and c.intermittent:
                if c.size is None:
                    raise ShapeError(
                        f"intermittent constraint {c.name!r} was not measured at the first "
                        "evaluation, so its size is unknown; declare it with size=N."
                    )
                self.dense.append(c)
                sizes.append(c.size)
                continue
            value = as_constraint_value(c.name, state.constraints[c.name])
            n = value.value.numel()
            if c.size is not None and n != c.size:
                raise ShapeError(
                    f"constraint {c.name!r} is declared with size {c.size} but its value has "
                    f"{n} entries (shape {tuple(value.value.shape)})."
                )
            if isinstance(c.rhs, tuple) and len(c.rhs) != n:
                raise ShapeError(
                    f"constraint {c.name!r} has {len(c.rhs)} right-hand sides for {n} entries."
                )
            self.dense.append(c)
            sizes.append(n)
        self.sizes = sizes
        self.offsets = [0]
        for n in sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.num_dense = self.offsets[-1]
        self.problem = problem
        self.dtype = dual_dtype(
            reference,
            [state.constraints[c.name] for c in self.dense if c.name in state.constraints],
        )
        self.device = reference.device
        sign, equality = [], []
        for c, n in zip(self.dense, sizes, strict=True):
            sign.append(torch.full((n,), c.sign, dtype=self.dtype))
            equality.append(torch.full((n,), c.is_equality, dtype=torch.bool))
        empty = torch.zeros(0, dtype=self.dtype)
        self.sign = (torch.cat(sign) if sign else empty).to(self.device)
        self.equality = (torch.cat(equality) if equality else empty.bool()).to(self.device)
        self.names = [c.name for c in self.dense]
        self._per_sample_names = {c.name for c in self.per_sample}
        self.group_names = self.names + [c.name for c in self.per_sample]
        self._intermittent = any(c.intermittent for c in problem.all_constraints)
        self._declared_names = frozenset(self.group_names)
        self._all_plus = all(c.sign == 1.0 for c in self.dense)
        self._rhs_override = _rhs_overrides(rhs_schedule, self.group_names)
        self._masks: dict[frozenset[str], Tensor] = {}
        self._rhs_values: tuple[object, ...] | None = None
        self._rhs_source: object = None
        self._rhs_moves = False
        self._set_rhs(self._current_rhs(0))
        self.dense_equality = any(c.is_equality for c in self.dense)
        self.has_equality = self.dense_equality or any(c.is_equality for c in self.per_sample)
        self._shapes = [torch.Size([n]) for n in sizes]
        self._scalars = [torch.Size([])] * len(sizes) if set(sizes) == {1} else None
        self._one = (
            self.names[0]
            if len(self.dense) == 1 and not self.per_sample and not self._intermittent
            else None
        )
        """The name of the only constraint group, a dense one always measured (the
        common case :meth:`stack` takes first); ``None`` otherwise."""

    # -- right-hand sides -------------------------------------------------------------
    def rhs_of(
        self, c: Constraint, step: int, declared: Mapping[str, Constraint] | None = None
    ) -> float | tuple[float, ...]:
        """Group ``c``'s right-hand side at step ``step``: the solver-level override if one
        matches it, else the problem's current declaration (a schedule's value there).

        Args:
            c: The group.
            step: The solver step.
            declared: The problem's current constraints by name (looked up if omitted).
        """
        override = self._rhs_override.get(c.name)
        if override is not None:
            return float(override.at(step))
        current = declared.get(c.name, c) if declared is not None else self._declared(c)
        return current.rhs_at(step)

    def _current_rhs(self, step: int) -> tuple[object, ...]:
        """The dense groups' right-hand sides at ``step`` (a field named by ``rhs=`` can
        change between steps, a schedule moves with the step)."""
        declared = {c.name: c for c in self.problem.all_constraints}
        dense = [declared.get(c.name, c) for c in self.dense]
        self._rhs_moves = any(c.name in self._rhs_override for c in self.dense) or any(
            isinstance(c.rhs, RhsSchedule) for c in dense
        )
        return tuple(self.rhs_of(c, step, declared) for c in self.dense)

    def _set_rhs(self, values: tuple[object, ...]) -> None:
        if values == self._rhs_values:
            return
        parts = []
        for c, value, n in zip(self.dense, values, self.sizes, strict=True):
            if isinstance(value, tuple) and len(value) != n:
                raise ShapeError(
                    f"constraint {c.name!r} has {len(value)} right-hand sides for {n} entries."
                )
            parts.append(
                torch.as_tensor(value, dtype=self.dtype).expand(n)
                if isinstance(value, float)
                else torch.tensor(value, dtype=self.dtype)
            )
        rhs = torch.cat(parts) if parts else torch.zeros(0, dtype=self.dtype)
        self.rhs = rhs.to(self.device)
        # Decided from the declarations, not from the device tensors (no synchronisation,
        # also when a schedule moves the rhs).
        self._identity_form = self._all_plus and all(
            all(float(x) == 0.0 for x in (v if isinstance(v, tuple) else (v,))) for v in values
        )
        self._shift = -self.sign * self.rhs
        self._rhs_values = values

    # -- bookkeeping ------------------------------------------------------------------
    def labels(self) -> list[str]:
        """One label per dense entry: ``name`` for scalars, ``name[i]`` otherwise."""
        out: list[str] = []
        for c, n in zip(self.dense, self.sizes, strict=True):
            out.extend([c.name] if n == 1 else [f"{c.name}[{i}]" for i in range(n)])
        return out

    def slice_of(self, name: str) -> slice:
        """The slice of dense group ``name`` in the stacked vectors."""
        for k, c in enumerate(self.dense):
            if c.name == name:
                return slice(self.offsets[k], self.offsets[k + 1])
        raise ConfigError(f"no dense constraint named {name!r}; known: {self.names}.")

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a dense vector into its groups (views)."""
        return {
            c.name: flat[self.offsets[k] : self.offsets[k + 1]] for k, c in enumerate(self.dense)
        }

    def entry_mask(self, excluded: frozenset[str]) -> Tensor | None:
        """Boolean mask of the dense entries whose group is not in ``excluded`` (``None``
        when no dense group is excluded). Cached: one host-to-device copy per distinct
        set."""
        excluded = excluded.intersection(self.names)
        if not excluded:
            return None
        mask = self._masks.get(excluded)
        if mask is None:
            flags = [c.name not in excluded for c in self.dense]
            mask = torch.tensor(flags, dtype=torch.bool).repeat_interleave(
                torch.tensor(self.sizes, dtype=torch.int64)
            )
            mask = self._masks[excluded] = mask.to(self.device)
        return mask

    def signature(self) -> dict[str, object]:
        """A JSON description used to check that a checkpoint belongs to this problem."""
        return {
            "dense": [[c.name, c.sense, n] for c, n in zip(self.dense, self.sizes, strict=True)],
            "per_sample": [[c.name, c.sense, c.size] for c in self.per_sample],
        }

    def init_multipliers(self, initial: Tensor | None = None) -> Multipliers:
        """Zero multipliers (or ``initial`` broadcast) for every group."""
        dense = torch.zeros(self.num_dense, dtype=self.dtype, device=self.device)
        per_sample = {
            c.name: torch.zeros(int(c.size or 0), dtype=self.dtype, device=self.device)
            for c in self.per_sample
        }
        if initial is not None:
            dense = dense + initial
            per_sample = {k: v + initial for k, v in per_sample.items()}
        return Multipliers(dense, per_sample)

    # -- stacking ---------------------------------------------------------------------
    def stack(self, state: ProblemState, step: int | None = None) -> StackedConstraints:
        """Bring every constraint of ``state`` to standard form and stack the dense ones.

        Implements ``violation = sign * (value - rhs)`` on the concatenated values.

        Raises:
            ShapeError: If a group's size changed since the layout was built, or a
                per-sample group has indices out of range or repeated within the batch.
        """
        one = self._one
        if one is not None and not self._rhs_moves:
            # One dense group that returned a plain tensor of its size, with the rhs it had
            # at the last step: the steps below without their branches for the rest.
            constraints = state.constraints
            raw = constraints.get(one)
            if (
                type(raw) is Tensor
                and len(constraints) == 1
                and is_dense(raw)
                and raw.shape == self._shapes[0]
                and (dtype := raw.dtype) in _FLOATS
                and declared(self.problem) is self._rhs_source
                and raw.device == self.device
            ):
                flat = raw if dtype is self.dtype else raw.to(self.dtype)
                violation = self._standard_form(flat)
                if violation is not raw or (self.share_values and raw.is_contiguous()):
                    # The primal term takes the new tensor, or the user's own (see
                    # share_values: no copy in the graph); the signal is copied only where
                    # it would share the user's memory (see _stacked).
                    return self._stacked(violation, violation, {}, None, _NOTHING, raw)
                flat = torch.cat((raw,))  # a copy for the primal term and the signal
                return self._stacked(flat, flat, {}, None, _NOTHING, None)
        step = 0 if step is None else step
        if self.dense:
            # The declarations are rebuilt (a new list) whenever a field of the problem
            # changes; a schedule moves the rhs with the step. Otherwise nothing changes.
            source = declared(self.problem)
            if self._rhs_moves or source is not self._rhs_source:
                self._set_rhs(self._current_rhs(step))
                self._rhs_source = source
        expected = len(self.dense) + len(self.per_sample)
        constraints = state.constraints
        if self._intermittent:  # some may be left out: only undeclared names are wrong
            if len(constraints) > expected or not self._declared_names.issuperset(constraints):
                self._raise_names(state)
        elif len(constraints) != expected:
            self._raise_names(state)
        plain = self._plain(constraints) if self.dense else None
        if plain is not None and not self.per_sample:
            # Every group a plain tensor of its size, no per-sample group: the common case.
            if plain.dtype is not self.dtype:
                plain = plain.to(self.dtype)
            violation = self._standard_form(plain)
            return self._stacked(violation, violation, {}, None, _NOTHING, None)
        values: list[Tensor] = []
        primals: list[Tensor] = []
        masks: list[Tensor | None] = []
        any_proxy = any_mask = False
        unobserved: set[str] = set()  # no measurement: violation 0, multipliers frozen
        absent: set[str] = set()  # neither value nor proxy: no primal term either
        device = self.device
        if plain is not None:
            values = primals = [plain]
            masks = [None]
        for c, n in zip(self.dense if plain is None else (), self.sizes, strict=False):
            raw = constraints.get(c.name)
            if raw is None:
                if not c.intermittent:
                    self._raise_names(state)
                unobserved.add(c.name)
                absent.add(c.name)
                values.append(torch.zeros(n, dtype=self.dtype, device=device))
                primals.append(values[-1])
                masks.append(None)
                continue
            if (
                type(raw) is Tensor
                and is_dense(raw)
                and raw.is_floating_point()
                and raw.device == device
            ):
                # The common case, a plain dense tensor: nothing else to check.
                flat = raw if raw.dim() == 1 else raw.reshape(-1)
                values.append(flat)
                primals.append(flat)
                masks.append(None)
                if flat.numel() != n:
                    self._raise_size_mismatch(values)
                continue
            value = as_constraint_value(c.name, raw)
            if value.features is not None:
                raise ConfigError(
                    f"constraint {c.name!r} returned features, which only a per-sample group "
                    "with a multiplier model reads; drop features=... or declare the group "
                    "per_sample=True with multiplier_model=MultiplierModel(...)."
                )
            if value.value.device != device:
                raise ShapeError(
                    f"constraint {c.name!r} is on {value.value.device} but the model and the "
                    f"multipliers are on {device}; compute it on the model's device."
                )
            values.append(value.value.reshape(-1))
            if values[-1].numel() != n:
                self._raise_size_mismatch(values)
            if isinstance(value.observed, Tensor):
                masks.append(value.observed.reshape(-1))
                any_mask = True
            else:
                masks.append(None)
                if value.observed is False:
                    unobserved.add(c.name)
                    if value.proxy is None:
                        absent.add(c.name)
            if value.proxy is not None:
                any_proxy = True
                primals.append(value.proxy.reshape(-1))
            else:
                primals.append(values[-1])
        observed: Tensor | None = None
        if values:
            flat = torch.cat(values) if len(values) > 1 else values[0]
            flat = flat.to(self.dtype)
            violation = self._standard_form(flat)
            if any_proxy:
                primal = self._standard_form(torch.cat(primals).to(self.dtype))
            else:
                primal = violation
            if any_mask:
                observed = torch.cat(
                    [
                        torch.ones(v.numel(), dtype=torch.bool, device=device) if m is None else m
                        for v, m in zip(values, masks, strict=True)
                    ]
                )
                violation = torch.where(observed, violation, 0.0)
                primal = torch.where(observed, primal, 0.0)
            if unobserved:
                groups = self.entry_mask(frozenset(unobserved))
                assert groups is not None
                observed = groups if observed is None else observed & groups
                violation = torch.where(groups, violation, 0.0)
                if absent:
                    # Proxy-only groups keep their primal term; absent ones have none.
                    has_primal = self.entry_mask(frozenset(absent))
                    assert has_primal is not None
                    primal = torch.where(has_primal, primal, 0.0)
        else:
            violation = primal = torch.zeros(0, dtype=self.dtype, device=device)
        per_sample: dict[str, IndexedViolation] = {}
        for c in self.per_sample:
            raw = constraints.get(c.name)
            if raw is None:
                if c.intermittent:
                    continue  # not measured at this step
                self._raise_names(state)
            per_sample[c.name] = self._stack_indexed(c, raw, step)
        user = values[0] if len(values) == 1 and plain is None else None  # cat: a copy
        return self._stacked(
            violation, primal, per_sample, observed, frozenset(unobserved) or _NOTHING, user
        )

    def _stacked(
        self,
        violation: Tensor,
        primal: Tensor,
        per_sample: dict[str, IndexedViolation],
        observed: Tensor | None,
        unobserved: frozenset[str],
        user: Tensor | None,
    ) -> StackedConstraints:
        """The stacked evaluation. The signal (``violation`` detached) must never share
        memory with a tensor of the user's: a constraint that returns a parameter itself
        would change under the optimizer step, and controllers keep signals in their state.
        It is copied when it may (``user``: the one tensor it was made from, if any)."""
        signal = violation.detach()
        if user is violation or (user is not None and signal.data_ptr() == user.data_ptr()):
            signal = signal.clone()
        return StackedConstraints(signal, primal, self.equality, per_sample, observed, unobserved)

    def _plain(self, constraints: Mapping[str, object]) -> Tensor | None:
        """The dense values concatenated, when every group returned a plain 1-d
        floating-point tensor of its size (or every group of size 1 a 0-d one) on the
        layout's device: the common case, checked in a few passes over the groups instead
        of one group at a time. Else ``None``, and
        :meth:`stack` checks each group and names the one that is wrong."""
        tensors: list[Tensor] = []
        shapes = []
        try:
            for name in self.names:  # a loop, not generators: this runs at every step
                raw = constraints.get(name)
                if type(raw) is not Tensor or raw.dtype not in _FLOATS:
                    return None
                tensors.append(raw)
                shapes.append(raw.shape)  # a nested tensor has none: RuntimeError
            if shapes == self._shapes:
                flat = torch.cat(tensors)
            elif shapes == self._scalars:  # one number per group
                flat = torch.stack(tensors)
            else:
                return None
        except RuntimeError:  # e.g. groups on different devices
            return None
        return flat if flat.device == self.device and flat.layout is torch.strided else None

    def _raise_names(self, state: ProblemState) -> NoReturn:
        declared = [c.name for c in self.dense + self.per_sample]
        optional = {c.name for c in self.dense + self.per_sample if c.intermittent}
        missing = sorted(set(declared) - set(state.constraints) - optional)
        extra = sorted(set(state.constraints) - set(declared))
        if missing:
            kind = "per-sample constraint" if missing[0] in self._per_sample_names else "constraint"
            raise ConfigError(
                f"evaluate() did not return {kind} {missing[0]!r}; returned "
                f"{sorted(state.constraints)} (declared: {declared}). Declare it "
                "intermittent=True if it is only measured on some steps."
            )
        raise ConfigError(
            f"evaluate() returned constraint(s) {extra} that the problem does not declare "
            f"(declared: {declared}). Declare every constraint up front: one that first "
            "appears after the first step would be ignored."
        )

    def _standard_form(self, flat: Tensor) -> Tensor:
        """``sign * (flat - rhs)`` as one fused operation (identity when already standard)."""
        if self._identity_form:
            return flat
        return torch.addcmul(self._shift, self.sign, flat)

    def _stack_indexed(self, c: Constraint, raw: object, step: int) -> IndexedViolation:
        if raw is None:
            raise ConfigError(f"evaluate() did not return per-sample constraint {c.name!r}.")
        value = as_constraint_value(c.name, raw)
        if value.indices is None:
            raise ShapeError(
                f"per-sample constraint {c.name!r} needs sample indices: return "
                "ConstraintValue(value, indices=batch_indices)."
            )
        size = int(c.size or 0)
        given = value.indices.reshape(-1).long()
        # Out-of-range indices are reported when the step is flushed (check_indices); until
        # then they are clamped so that no gather or scatter leaves the store.
        indices = given.clamp(0, max(size - 1, 0))
        rhs = self.rhs_of(c, step)
        assert isinstance(rhs, float)  # per-sample groups take a scalar rhs
        v = c.sign * (value.value.reshape(-1).to(self.dtype) - rhs)
        p = v if value.proxy is None else c.sign * (value.proxy.reshape(-1).to(self.dtype) - rhs)
        observed = value.observed is not False
        if not observed:
            v = torch.zeros_like(v)
        features = None
        model = c.multiplier_model
        if model is not None:
            features = model.check_features(c.name, value.features, given.numel())
        elif value.features is not None:
            raise ConfigError(
                f"per-sample constraint {c.name!r} returned features but has no multiplier "
                "model to read them; drop features=... or give the constraint "
                "multiplier_model=MultiplierModel(...)."
            )
        first = None
        if indices.numel() > 1:
            v, p, first = _merge_repeats(indices, v, p)
        return IndexedViolation(
            v.detach().clone(), p, indices, c.is_equality, first, given, size, observed, features
        )

    def merge(self, evaluations: list[StackedConstraints]) -> StackedConstraints:
        """One evaluation from several micro-batches (gradient accumulation): the mean of
        the dense violations (over the micro-batches that observed each entry), and the
        observed entries of every per-sample group together (a sample seen in several
        micro-batches counts once, with the mean of its values). Only the violations are
        merged: the primal values stay with each micro-batch's loss."""
        if len(evaluations) == 1:
            return evaluations[0]
        violations = torch.stack([e.violation for e in evaluations])
        observed: Tensor | None = None
        if all(e.observed is None for e in evaluations):
            violation = violations.mean(0)
        else:  # the mean over the micro-batches that observed each entry
            masks = torch.stack(
                [
                    torch.ones_like(e.violation, dtype=torch.bool)
                    if e.observed is None
                    else e.observed
                    for e in evaluations
                ]
            )
            counts = masks.sum(0)
            violation = (violations * masks).sum(0) / counts.clamp_min(1)
            observed = counts > 0
        per_sample: dict[str, IndexedViolation] = {}
        names = dict.fromkeys(n for e in evaluations for n in e.per_sample)
        for name in names:
            present = [e.per_sample[name] for e in evaluations if name in e.per_sample]
            # Intermittent groups: only the micro-batches that measured the group count.
            parts = [iv for iv in present if iv.observed] or present
            first = parts[0]
            given = torch.cat([iv.indices for iv in parts])
            values = torch.cat([iv.violation for iv in parts])
            raw = torch.cat(
                [iv.raw_indices if iv.raw_indices is not None else iv.indices for iv in parts]
            )
            mask = None
            if given.numel() > 1:
                values, _, mask = _merge_repeats(given, values, values)
            features = None
            if all(iv.features is not None for iv in parts):
                features = torch.cat([iv.features for iv in parts])  # type: ignore[misc]
            per_sample[name] = IndexedViolation(
                values,
                values,
                given,
                first.equality,
                mask,
                raw,
                first.size,
                first.observed,
                features,
            )
        unobserved = frozenset.intersection(*(e.unobserved for e in evaluations))
        return StackedConstraints(
            violation, violation, self.equality, per_sample, observed, unobserved
        )

    def check_indices(self, stacked: StackedConstraints, step: int | None = None) -> None:
        """Raise :class:`ShapeError` if a per-sample group's indices leave ``[0, size)``
        (one host synchronisation per group; the solver reads the same facts from the
        step's record instead).
        """
        for name, iv in stacked.per_sample.items():
            given = iv.raw_indices if iv.raw_indices is not None else iv.indices
            if given.numel() == 0:
                continue
            low, high = int(given.min()), int(given.max())
            if low < 0 or high >= iv.size:
                raise ShapeError(index_message(name, iv.size, low, high, step))

    def _declared(self, c: Constraint) -> Constraint:
        """The problem's current declaration of ``c`` (its rhs may have changed)."""
        for current in self.problem.all_constraints:
            if current.name == c.name:
                return current
        return c

    def _raise_size_mismatch(self, values: list[Tensor]) -> None:
        for c, n, v in zip(self.dense, self.sizes, values, strict=False):
            if v.numel() != n:
                raise ShapeError(
                    f"constraint {c.name!r} returned {v.numel()} entries but has {n} "
                    "multipliers (its size was fixed at the first evaluation); constraint "
                    "groups must keep their size between steps."
                )

    def check_finite(
        self, objective: Tensor | None, stacked: StackedConstraints, step: int
    ) -> None:
        """Raise :class:`NonFiniteError` naming the first non-finite quantity (the
        objective is not checked when ``None``), or :class:`ConfigError` for non-finite
        features of a group with a multiplier model.

        One device synchronisation in the common (all finite) case: the solver calls it
        only where the host must decide (``on_nonfinite="skip"``) or when it reports an
        error (to name the entries).
        """
        parts = [stacked.violation]
        if objective is not None:
            parts.append(objective.detach().reshape(1).to(self.dtype))
        parts += [iv.violation for iv in stacked.per_sample.values()]
        features = {
            n: iv.features for n, iv in stacked.per_sample.items() if iv.features is not None
        }
        parts += [f.detach().reshape(-1).to(self.dtype) for f in features.values()]
        if bool(torch.isfinite(torch.cat(parts)).all()):
            return
        for name, f in features.items():
            bad = ~torch.isfinite(f).all(dim=1)
            if bool(bad.any()):
                raise ConfigError(
                    f"the features of per-sample constraint {name!r} are not finite at step "
                    f"{step} (samples {stacked.per_sample[name].indices[bad][:5].tolist()}); "
                    "a multiplier model cannot predict multipliers from NaN/Inf features. "
                    "Impute or drop the offending features before returning them."
                )
        hint = NONFINITE_HINT
        if objective is not None and not bool(torch.isfinite(objective.detach()).all()):
            raise NonFiniteError(f"the objective is {objective.item()} at step {step} ({hint}).")
        for name, part in self.split(stacked.violation).items():
            bad = ~torch.isfinite(part)
            if bool(bad.any()):
                where = bad.nonzero().reshape(-1)[:5].tolist()
                raise NonFiniteError(
                    f"constraint {name!r} is not finite at step {step} (entries {where}; "
                    f"values {part[bad][:5].tolist()}; {hint})."
                )
        for name, iv in stacked.per_sample.items():
            bad = ~torch.isfinite(iv.violation)
            if bool(bad.any()):
                raise NonFiniteError(
                    f"per-sample constraint {name!r} is not finite at step {step} "
                    f"(samples {iv.indices[bad][:5].tolist()}; values "
                    f"{iv.violation[bad][:5].tolist()}; {hint})."
                )


def _check_model(c: Constraint) -> None:
    """A constraint's ``multiplier_model`` is a :class:`MultiplierModel` of a per-sample
    group (:class:`ConfigError` otherwise)."""
    if not isinstance(c.multiplier_model, MultiplierModel):
        raise ConfigError(
            f"constraint {c.name!r}: multiplier_model must be a constrain.MultiplierModel; "
            f"got {describe(c.multiplier_model)}."
        )
    if not c.per_sample:
        raise ConfigError(
            f"constraint {c.name!r} is a dense group but has a multiplier model: a "
            "multiplier model predicts the multipliers of a per-sample group from per-entry "
            "features. Declare it per_sample=True (values with indices and features), or "
            "drop multiplier_model to keep one multiplier per entry."
        )
    c.multiplier_model.equality = c.is_equality


def index_message(name: str, size: int, low: float, high: float, step: int | None) -> str:
    """The error message of out-of-range sample indices."""
    where = "" if step is None else f" at step {step}"
    return (
        f"per-sample constraint {name!r}: indices must lie in [0, {size}); got "
        f"[{int(low)}, {int(high)}]{where}. Give each sample its row number in the whole "
        "data set (e.g. a TensorDataset with torch.arange(n))."
    )


def _merge_repeats(indices: Tensor, v: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Give every occurrence of a repeated index the mean of its values (``v``) and keep
    only the first occurrence in the primal values (``p``, 0 elsewhere), with fixed shapes
    and no host synchronisation. Returns ``(v, p, first)``."""
    n = indices.numel()
    order = torch.sort(indices, stable=True).indices
    ordered = indices[order]
    starts = torch.ones(n, dtype=torch.bool, device=indices.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = torch.empty_like(order).scatter_(0, order, torch.cumsum(starts, 0) - 1)
    first = torch.empty_like(starts).scatter_(0, order, starts)
    counts = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, group, torch.ones_like(v))
    scale = counts.clamp_min(1)
    mean_v = (torch.zeros_like(counts).index_add_(0, group, v.detach()) / scale)[group]
    mean_p = (torch.zeros_like(counts).index_add(0, group, p) / scale)[group]
    return mean_v, torch.where(first, mean_p, torch.zeros_like(mean_p)), first


def dual_dtype(objective: Tensor, constraints: list[object]) -> torch.dtype:
    """The dtype of the stacked constraints and the multipliers: the widest floating dtype
    among the objective and the constraint values, and at least float32.

    Low-precision (bf16, fp16) objectives and constraints therefore never make the
    multipliers low-precision (small increments would round away), and a constraint value
    is never rounded to the objective's dtype before it is compared with its bound.
    """
    dtype = torch.float32
    candidates: list[torch.dtype] = [objective.dtype]
    for raw in constraints:
        if isinstance(raw, Tensor):
            candidates.append(raw.dtype)
        else:
            value = getattr(raw, "value", None)
            if isinstance(value, Tensor):
                candidates.append(value.dtype)
    for candidate in candidates:
        if candidate.is_floating_point:
            dtype = torch.promote_types(dtype, candidate)
    return dtype


def _rhs_overrides(spec: Mapping[str, Any] | None, names: list[str]) -> dict[str, RhsSchedule]:
    """Resolve a solver-level ``rhs_schedule`` mapping to one schedule per matched group.

    Raises:
        ConfigError: For a pattern matching no group, a group matched twice, a value that
            is not a schedule, a mapping with a ``name`` or a number.
    """
    if not spec:
        return {}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            "rhs_schedule must map constraint-name patterns to schedules, e.g. "
            "{'parity*': {'name': 'linear', 'start': 0.1, 'end': 0.02, 'steps': 500}}; got "
            f"{describe(spec)}."
        )
    assigned = match_patterns(spec, names, what="rhs_schedule", require_all=False)
    out: dict[str, RhsSchedule] = {}
    built = {pattern: _build_schedule(pattern, value) for pattern, value in spec.items()}
    for name, pattern in assigned.items():
        out[name] = built[pattern]
    return out


def _build_schedule(pattern: str, value: object) -> RhsSchedule:
    if isinstance(value, (RhsSchedule, Mapping)) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    ):
        try:
            return _schedules.build(value)
        except ConfigError as exc:
            raise ConfigError(f"rhs_schedule[{pattern!r}]: {exc}") from None
    raise ConfigError(
        f"rhs_schedule[{pattern!r}]: expected a schedule (a mapping with a 'name' key, a "
        f"constrain.schedules.RhsSchedule or a number); got {describe(value)}."
    )
