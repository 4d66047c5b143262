"""Randomized and best-iterate solutions from snapshots of a run.

The last iterate of a Lagrangian game need not be feasible, nor the best point seen; a
*distribution* over iterates can be (Cotter, Jiang, Sridharan, "Two-player games for
efficient non-convex constrained optimization", ALT 2019). Given ``n`` candidates (snapshots
of the model) with objective values ``f_j`` and standard-form constraint values ``g_ij``
(``<= 0`` when met), the *shrinking* step solves the linear program

    minimize_p  sum_j p_j f_j
    subject to  sum_j p_j g_ij <= 0   for i = 1..m,     p in the probability simplex,

whose basic optimal solutions have at most ``m + 1`` non-zero probabilities (``m + 1`` rows;
their Lemma 3, TFCO's ``find_best_candidate_distribution``; see docs/algorithms.md,
'Randomized solutions'). :func:`shrinking_distribution`
solves it with ``scipy.optimize.linprog`` (HiGHS dual simplex, which returns a basic
solution) and reduces any optimal point with a larger support to a basic one.

* :class:`Snapshots` is a callback for :meth:`constrain.Solver.fit` that keeps copies of the
  model every ``k`` steps (a bounded number) with the objective and constraint values on an
  evaluation batch;
* :func:`best_iterate`: the feasible snapshot of lowest objective, else the least violating;
* :class:`RandomizedPredictor`: samples one snapshot of a distribution per call (seeded) and
  reports expectations ``sum_j p_j v_j`` of any metric (rates, accuracy, constraint values).

When no distribution is feasible the LP has no solution; :func:`shrinking_distribution` then
returns the distribution of lowest expected objective among those of least largest expected
violation ``eps* = min_p max_i sum_j p_j g_ij`` (a first LP) and marks it infeasible; pass
``on_infeasible="raise"`` to get an error instead. This is the outcome TFCO finds by bisection.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ._errors import ConfigError, ShapeError, describe
from .problem import as_constraint_value

if TYPE_CHECKING:
    from .history import StepRecord
    from .solver import Solver

__all__ = [
    "CandidateDistribution",
    "RandomizedPredictor",
    "Snapshot",
    "Snapshots",
    "best_iterate",
    "shrinking_distribution",
]

Evaluator = Callable[[nn.Module], tuple[float, Sequence[float] | np.ndarray | Tensor]]
"""``evaluate(model) -> (objective, standard-form constraint values)``."""


def _as_arrays(objectives: Any, violations: Any) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(objectives, dtype=np.float64)
    g = np.asarray(violations, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ShapeError(
            f"objectives must be a non-empty 1-d array (one value per candidate); got shape "
            f"{f.shape}."
        )
    if g.ndim == 1 and g.size == 0:
        g = g.reshape(f.size, 0)
    if g.ndim != 2 or g.shape[0] != f.size:
        raise ShapeError(
            f"violations must have shape (n, m) = ({f.size}, m): one row of standard-form "
            f"constraint values per candidate; got shape {g.shape}."
        )
    if not (np.isfinite(f).all() and np.isfinite(g).all()):
        raise ConfigError("objectives and violations must be finite (a candidate has NaN/Inf).")
    return f, g


@dataclass(frozen=True)
class CandidateDistribution:
    """A distribution over candidates and its expected values.

    Attributes:
        probabilities: ``p`` ``(n,)``, non-negative, summing to 1.
        expected_objective: ``sum_j p_j f_j``.
        expected_violations: ``sum_j p_j g_ij`` ``(m,)``.
        feasible: Whether every expected violation is ``<= tolerance``.
        level: The bound the LP imposed on the expected violations (``tolerance`` when
            feasible, else the least achievable largest violation ``eps*``).
    """

    probabilities: np.ndarray
    expected_objective: float
    expected_violations: np.ndarray
    feasible: bool
    level: float

    @property
    def support(self) -> np.ndarray:
        """Indices of the candidates with non-zero probability."""
        return np.flatnonzero(self.probabilities > 0)

    @property
    def max_violation(self) -> float:
        """``max_i sum_j p_j g_ij`` (0 without constraints)."""
        v = self.expected_violations
        return float(v.max()) if v.size else 0.0


def _linprog(
    c: np.ndarray,
    a_ub: np.ndarray,
    b_ub: np.ndarray,
    a_eq: np.ndarray,
    bounds: list[tuple[float | None, float | None]],
) -> Any:
    from scipy.optimize import linprog

    return linprog(
        c,
        A_ub=a_ub if a_ub.size else None,
        b_ub=b_ub if a_ub.size else None,
        A_eq=a_eq,
        b_eq=np.ones(1),
        bounds=bounds,
        method="highs-ds",
    )


def _basic(p: np.ndarray, f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Reduce ``p`` to at most ``m + 1`` non-zeros, keeping ``g^T p`` and ``sum p`` and not
    increasing ``f . p`` (Caratheodory: move along a null direction of the support's
    ``(m + 1) x k`` matrix until an entry reaches zero)."""
    m = g.shape[1]
    p = p.copy()
    support = np.flatnonzero(p > 0)
    while support.size > m + 1:
        rows = np.vstack([g[support].T, np.ones((1, support.size))])
        d = np.linalg.svd(rows)[2][-1]  # rows @ d = 0 since k > m + 1 >= rank
        if f[support] @ d > 0:
            d = -d
        negative = np.flatnonzero(d < 0)  # sum(d) = 0 and d != 0: some entry is negative
        ratios = p[support][negative] / -d[negative]
        k = int(np.argmin(ratios))
        p[support] = np.maximum(p[support] + ratios[k] * d, 0.0)
        p[support[negative[k]]] = 0.0
        p /= p.sum()
        support = np.flatnonzero(p > 0)
    return p


def _clean(p: np.ndarray) -> np.ndarray:
    kept = np.where(p > 1e-12, p, 0.0)
    return np.asarray(kept / kept.sum(), dtype=np.float64)


def shrinking_distribution(
    objectives: Sequence[float] | np.ndarray,
    violations: Sequence[Sequence[float]] | np.ndarray,
    *,
    tolerance: float = 0.0,
    on_infeasible: Literal["least_violation", "raise"] = "least_violation",
) -> CandidateDistribution:
    """The distribution over at most ``m + 1`` candidates that minimises the expected
    objective subject to expected constraint values ``<= tolerance``.

    Solves ``min_p f . p  s.t.  g^T p <= tolerance, sum p = 1, p >= 0`` (Cotter, Jiang,
    Sridharan, ALT 2019, Lemma 3) with ``scipy.optimize.linprog`` (HiGHS dual simplex).

    Args:
        objectives: ``f`` ``(n,)``, one objective value per candidate.
        violations: ``g`` ``(n, m)``: standard-form constraint values (``<= 0`` when met) per
            candidate; ``m`` may be 0.
        tolerance: Allowed expected violation (``>= 0``).
        on_infeasible: ``"least_violation"`` (default) returns the lowest-objective
            distribution among those whose largest expected violation is the least possible
            (``feasible=False``); ``"raise"`` raises instead.

    Returns:
        The :class:`CandidateDistribution`, with at most ``m + 1`` non-zero probabilities.

    Raises:
        ShapeError: For inconsistent shapes.
        ConfigError: For non-finite values, a negative tolerance, an unknown
            ``on_infeasible``, or (with ``"raise"``) no feasible distribution.
    """
    f, g = _as_arrays(objectives, violations)
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0; got {tolerance!r}.")
    if on_infeasible not in ("least_violation", "raise"):
        raise ConfigError(
            f"on_infeasible must be 'least_violation' or 'raise'; got {on_infeasible!r}."
        )
    n, m = g.shape
    if m == 0:
        p = np.zeros(n)
        p[int(np.argmin(f))] = 1.0
        return CandidateDistribution(p, float(f @ p), np.zeros(0), True, float(tolerance))
    level = float(tolerance)
    feasible = bool(g.max(axis=1).min() <= tolerance)
    if not feasible:
        # eps* = min_p max_i (g^T p)_i: variables (p, eps), minimise eps.
        c = np.zeros(n + 1)
        c[-1] = 1.0
        a_ub = np.hstack([g.T, -np.ones((m, 1))])
        a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
        result = _linprog(c, a_ub, np.zeros(m), a_eq, [(0.0, None)] * n + [(None, None)])
        if result.status != 0:  # pragma: no cover - a bounded, feasible LP
            raise ConfigError(f"the least-violation LP failed: {result.message}")
        eps = float(result.x[-1])
        feasible = eps <= tolerance
        if not feasible:
            if on_infeasible == "raise":
                raise ConfigError(
                    f"no distribution over the {n} candidates meets the constraints: the "
                    f"least achievable largest expected violation is {eps:.6g} > tolerance "
                    f"{tolerance}. Train longer, loosen the constraints, or pass "
                    "on_infeasible='least_violation'."
                )
            level = eps + 1e-9 * (1.0 + abs(eps))
    result = _linprog(f, g.T, np.full(m, level), np.ones((1, n)), [(0.0, None)] * n)
    if result.status != 0:  # pragma: no cover - feasible by construction
        raise ConfigError(f"the shrinking LP failed: {result.message}")
    p = _basic(_clean(np.asarray(result.x, dtype=np.float64)), f, g)
    expected = g.T @ p
    return CandidateDistribution(
        p, float(f @ p), expected, bool(feasible and expected.max() <= level + 1e-9), level
    )


def best_iterate(
    objectives: Sequence[float] | np.ndarray,
    violations: Sequence[Sequence[float]] | np.ndarray,
    *,
    tolerance: float = 0.0,
) -> int:
    """The best single candidate: the lowest objective among the feasible ones (largest
    violation ``<= tolerance``), else the one of least largest violation (ties: lower
    objective, then the earlier candidate).

    Args:
        objectives: ``(n,)`` objective values.
        violations: ``(n, m)`` standard-form constraint values.
        tolerance: Allowed violation.

    Returns:
        The index of the chosen candidate.

    Raises:
        ShapeError: For inconsistent shapes.
        ConfigError: For non-finite values.
    """
    f, g = _as_arrays(objectives, violations)
    worst = g.max(axis=1) if g.shape[1] else np.zeros(f.size)
    feasible = worst <= tolerance
    if feasible.any():
        return int(np.flatnonzero(feasible)[np.argmin(f[feasible])])
    order = np.lexsort((np.arange(f.size), f, worst))
    return int(order[0])


@dataclass(frozen=True)
class Snapshot:
    """One stored iterate.

    Attributes:
        step: The solver's step count when it was taken (steps completed).
        state: A copy of the model's ``state_dict``.
        objective: Objective on the evaluation batch.
        violations: Standard-form constraint values on the evaluation batch ``(m,)``.
    """

    step: int
    state: dict[str, Tensor]
    objective: float
    violations: np.ndarray


def _standard_form_evaluator(solver: Solver, batch: Any) -> tuple[float, np.ndarray]:
    """Objective and standard-form dense constraint values of the solver's problem."""
    problem, model = solver.problem, solver.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = problem.evaluate(model, batch)
    finally:
        model.train(was_training)
    parts = []
    for c in problem.all_constraints:
        if c.per_sample:
            continue
        value = as_constraint_value(c.name, state.constraints[c.name]).value
        parts.append(c.violation(value.detach().reshape(-1).double()).cpu().numpy())
    violations = np.concatenate(parts) if parts else np.zeros(0)
    return float(state.objective.detach()), violations


class Snapshots:
    """A :meth:`Solver.fit` callback keeping model snapshots every ``every`` steps.

    Each snapshot stores a copy of the model's ``state_dict`` and the objective and
    standard-form constraint values (``sign * (g - rhs)``, dense groups only; per-sample
    groups are left out) on ``batch``, evaluated in eval mode without gradients, or by
    ``evaluate(model)`` when given (e.g. exact rates on a held-out set, or the error rate as
    the objective).

    At most ``max_count`` snapshots are kept. ``policy="thin"`` (default) keeps them spread
    over the whole run: when full, every other snapshot is dropped and the interval doubles
    (snapshots stay at multiples of the current interval). ``policy="latest"`` keeps the
    most recent ones.

    Example:
        >>> snapshots = Snapshots(batch, every=10, max_count=50)  # doctest: +SKIP
        >>> solver.fit(data, 1000, callback=snapshots)  # doctest: +SKIP
        >>> dist = snapshots.distribution()  # doctest: +SKIP
        >>> predictor = snapshots.predictor(model, dist, seed=0)  # doctest: +SKIP

    Args:
        batch: The evaluation batch (ignored when ``evaluate`` is given).
        every: Take a snapshot when the step count is a multiple of ``every``.
        max_count: Largest number of snapshots kept (``>= 2`` for ``"thin"``).
        evaluate: Optional ``evaluate(model) -> (objective, violations)``.
        policy: ``"thin"`` or ``"latest"``.
        device: Where the copies of the model state live (default CPU).

    Raises:
        ConfigError: For a bad ``every``, ``max_count``, ``policy`` or ``evaluate``.
    """

    def __init__(
        self,
        batch: Any = None,
        *,
        every: int = 1,
        max_count: int = 100,
        evaluate: Evaluator | None = None,
        policy: Literal["thin", "latest"] = "thin",
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"Snapshots: every must be a positive integer; got {every!r}.")
        if policy not in ("thin", "latest"):
            raise ConfigError(f"Snapshots: policy must be 'thin' or 'latest'; got {policy!r}.")
        minimum = 2 if policy == "thin" else 1
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < minimum:
            raise ConfigError(
                f"Snapshots: max_count must be an integer >= {minimum} for policy "
                f"{policy!r}; got {max_count!r}."
            )
        if evaluate is not None and not callable(evaluate):
            raise ConfigError(
                f"Snapshots: evaluate must be a callable evaluate(model) -> (objective, "
                f"violations); got {describe(evaluate)}."
            )
        self.batch = batch
        self.every = every
        self.max_count = max_count
        self.evaluate = evaluate
        self.policy = policy
        self.device = torch.device(device)
        self.snapshots: list[Snapshot] = []

    def __len__(self) -> int:
        return len(self.snapshots)

    def __call__(self, solver: Solver, record: StepRecord | None = None) -> None:
        """Take a snapshot if the step count is a multiple of :attr:`every` (thinning or
        dropping the oldest when :attr:`max_count` are already kept)."""
        step = solver.step_count
        if step % self.every:
            return
        if len(self.snapshots) >= self.max_count:
            if self.policy == "latest":
                self.snapshots.pop(0)
            else:
                self.every *= 2
                self.snapshots = [s for s in self.snapshots if s.step % self.every == 0]
                if step % self.every:
                    return
        self.snapshots.append(self._capture(solver))

    def take(self, solver: Solver) -> Snapshot:
        """Take a snapshot now, whatever the step count (the oldest is dropped when
        :attr:`max_count` are already kept), and return it."""
        if len(self.snapshots) >= self.max_count:
            self.snapshots.pop(0)
        snapshot = self._capture(solver)
        self.snapshots.append(snapshot)
        return snapshot

    def _capture(self, solver: Solver) -> Snapshot:
        if self.evaluate is not None:
            objective, raw = self.evaluate(solver.model)
            if isinstance(raw, Tensor):
                raw = raw.detach().double().cpu().numpy()
            violations = np.asarray(raw, dtype=np.float64).reshape(-1)
        else:
            objective, violations = _standard_form_evaluator(solver, self.batch)
        if self.snapshots and violations.shape != self.snapshots[0].violations.shape:
            raise ShapeError(
                f"Snapshots: {violations.size} constraint values at step {solver.step_count} "
                f"but {self.snapshots[0].violations.size} before; every snapshot needs the "
                "same constraints."
            )
        state = {
            k: v.detach().to(self.device, copy=True) for k, v in solver.model.state_dict().items()
        }
        return Snapshot(solver.step_count, state, float(objective), violations)

    @property
    def steps(self) -> list[int]:
        """The step count of every snapshot."""
        return [s.step for s in self.snapshots]

    @property
    def objectives(self) -> np.ndarray:
        """Objective values ``(n,)``."""
        return np.array([s.objective for s in self.snapshots], dtype=np.float64)

    @property
    def violations(self) -> np.ndarray:
        """Standard-form constraint values ``(n, m)``."""
        if not self.snapshots:
            return np.zeros((0, 0))
        return np.stack([s.violations for s in self.snapshots])

    def _check_nonempty(self) -> None:
        if not self.snapshots:
            raise ConfigError(
                "Snapshots: no snapshot was taken; pass the callback to Solver.fit(callback=...) "
                "and run at least `every` steps."
            )

    def distribution(
        self,
        *,
        tolerance: float = 0.0,
        on_infeasible: Literal["least_violation", "raise"] = "least_violation",
    ) -> CandidateDistribution:
        """:func:`shrinking_distribution` over the snapshots."""
        self._check_nonempty()
        return shrinking_distribution(
            self.objectives, self.violations, tolerance=tolerance, on_infeasible=on_infeasible
        )

    def best(self, *, tolerance: float = 0.0) -> Snapshot:
        """The snapshot chosen by :func:`best_iterate`."""
        self._check_nonempty()
        return self.snapshots[best_iterate(self.objectives, self.violations, tolerance=tolerance)]

    def predictor(
        self, model: nn.Module, distribution: CandidateDistribution, *, seed: int = 0
    ) -> RandomizedPredictor:
        """A :class:`RandomizedPredictor` over the snapshots with ``distribution``."""
        self._check_nonempty()
        return RandomizedPredictor(
            model, [s.state for s in self.snapshots], distribution.probabilities, seed=seed
        )


class RandomizedPredictor:
    """A stochastic model: each call samples one member ``j`` with probability ``p_j``.

    Expected rates of such a classifier are linear in ``p``: for any metric ``v``,
    ``E[v] = sum_j p_j v_j``, e.g. the expected constraint values ``sum_j p_j g_ij``.

    Args:
        model: A template module (deep-copied; members are loaded into the copy).
        states: One ``state_dict`` per candidate.
        probabilities: ``p`` ``(len(states),)``; only the support is kept.
        seed: Seed of the sampling generator (the sequence of members is reproducible).

    Raises:
        ShapeError: If the number of probabilities differs from the number of states.
        ConfigError: If ``p`` is negative, non-finite or does not sum to 1.
    """

    def __init__(
        self,
        model: nn.Module,
        states: Sequence[Mapping[str, Tensor]],
        probabilities: Sequence[float] | np.ndarray,
        *,
        seed: int = 0,
    ) -> None:
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.size != len(states):
            raise ShapeError(
                f"RandomizedPredictor: {p.size} probabilities for {len(states)} model states."
            )
        if not (np.isfinite(p).all() and (p >= 0).all() and abs(p.sum() - 1.0) < 1e-9):
            raise ConfigError(
                "RandomizedPredictor: probabilities must be finite, non-negative and sum to 1; "
                f"got sum {p.sum()!r}."
            )
        keep = np.flatnonzero(p > 0)
        self.indices = keep
        self.probabilities = p[keep] / p[keep].sum()
        self.states = [dict(states[int(j)]) for j in keep]
        self.model = copy.deepcopy(model)
        self._generator = np.random.default_rng(seed)
        self._loaded: int | None = None

    def __len__(self) -> int:
        return len(self.states)

    def sample(self) -> int:
        """Draw a member (its position in the support) from the seeded generator."""
        return int(self._generator.choice(len(self.states), p=self.probabilities))

    def member(self, k: int) -> nn.Module:
        """The model loaded with the ``k``-th member of the support."""
        if self._loaded != k:
            self.model.load_state_dict(self.states[k])
            self._loaded = k
        return self.model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Sample a member and return its output on the inputs."""
        return self.member(self.sample())(*args, **kwargs)

    def expected(self, metric: Callable[[nn.Module], Any]) -> Any:
        """``sum_j p_j metric(member_j)``: the expected value of a metric.

        ``metric(model)`` may return a number, an array or tensor, or a mapping of names
        to numbers/arrays (summed key by key).
        """
        total: Any = None
        for k, weight in enumerate(self.probabilities):
            value = metric(self.member(k))
            if isinstance(value, Mapping):
                term = {key: weight * _numeric(v) for key, v in value.items()}
                total = term if total is None else {key: total[key] + term[key] for key in total}
            else:
                term = weight * _numeric(value)
                total = term if total is None else total + term
        if isinstance(total, dict):
            return {k: _plain(v) for k, v in total.items()}
        return _plain(total)


def _numeric(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().double().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _plain(value: Any) -> Any:
    array = np.asarray(value)
    return float(array) if array.ndim == 0 else array
