"""The weight-sharing proximal operator.

See docs/algorithms.md, 'The weight-sharing proximal operator'.

Penalty on ``w`` in R^d: ``R(w) = 1/(d-1) * sum_{i>j} |w_i - w_j|`` (``R = 0`` for ``d <= 1``);
``prox_{lam R}(x) = argmin_w 1/2 ||w - x||^2 + lam R(w)``.

On vectors sorted ascending ``R`` is linear, so with ``x_(0) <= ... <= x_(d-1)``::

    z_k = x_(k) + lam * (d - 1 - 2k) / (d - 1)
    prox_{lam R}(x) = isotonic (non-decreasing) regression of z, mapped back to x's positions.

The output keeps the order of ``x``, ties of ``x`` stay tied, the mean is preserved, and its
distinct values are the shared weights (clusters).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from .._errors import ConfigError, ShapeError, UnknownNameError
from ._checks import as_flat, check_strength, raise_non_finite
from ._isotonic import (
    IsotonicInfo,
    accumulation_dtype,
    isotonic_divide_conquer,
    isotonic_parallel_pav,
    isotonic_pava,
    pava_numpy,
)
from ._registry import register
from ._sort import sort_numpy, sort_with_indices

__all__ = [
    "METHODS",
    "WeightSharingStats",
    "count_clusters",
    "isotonic_regression",
    "resolve_method",
    "weight_sharing",
    "weight_sharing_",
    "weight_sharing_penalty",
]

METHODS = ("auto", "sort_pava", "parallel_pav", "divide_conquer")
"""Accepted values of ``method``: ``"auto"`` picks ``sort_pava`` on CPU (and on devices
other than CUDA, through the host) and ``divide_conquer`` on CUDA."""

_OPTIONS: dict[str, frozenset[str]] = {
    "sort_pava": frozenset(),
    "parallel_pav": frozenset(),
    "divide_conquer": frozenset({"probe_budget"}),
}
_ALL_OPTIONS = frozenset().union(*_OPTIONS.values())


@dataclass
class WeightSharingStats:
    """Filled in by :func:`weight_sharing` (pass ``stats=WeightSharingStats()``).

    Attributes:
        method: The method that ran (``"auto"`` resolved), or ``"copy"`` when nothing had to
            be computed (``d <= 1`` or ``strength == 0``).
        d: Number of elements.
        padded: Length after padding to a power of two (``divide_conquer``), else ``d``.
        levels: Divide-and-conquer levels (``log2(padded)``); 0 for the other methods.
        rounds: Dependent parallel steps of the isotonic stage: merge rounds for
            ``parallel_pav`` (``d - 1`` in the worst case), batched search rounds summed over
            levels for ``divide_conquer`` (a function of ``d`` only), 1 for ``sort_pava``
            (one sequential compiled pass).
        scans: Full-length passes of the isotonic stage (prefix sum, one cluster update per
            level, final gather for ``divide_conquer``; one per round for ``parallel_pav``).
        clusters: Number of distinct values in the output (shared weights).
    """

    method: str = ""
    d: int = 0
    padded: int = 0
    levels: int = 0
    rounds: int = 0
    scans: int = 0
    clusters: int = 0


def resolve_method(method: object, device: torch.device | str = "cpu") -> str:
    """Return the concrete method ``"auto"`` (or an alias) stands for on ``device``.

    Raises:
        UnknownNameError: For an unknown method; the message lists the known ones.
    """
    if not isinstance(method, str):
        raise ConfigError(
            f"weight_sharing: method must be one of {', '.join(METHODS)}; "
            f"received {method!r} ({type(method).__name__})."
        )
    name = method.strip().lower().replace("-", "_")
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"weight_sharing: unknown method {method!r}.{hint} Known methods: {', '.join(METHODS)}."
        )
    if name == "auto":
        return "divide_conquer" if torch.device(device).type == "cuda" else "sort_pava"
    return name


def _check_options(method: str, resolved: str, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - _ALL_OPTIONS)
    if unknown:
        raise ConfigError(
            f"weight_sharing: unknown option(s) {unknown}; known options: "
            f"{sorted(_ALL_OPTIONS)} (probe_budget applies to method='divide_conquer')."
        )
    explicit = method.strip().lower().replace("-", "_") != "auto"
    misplaced = sorted(set(options) - _OPTIONS[resolved])
    if misplaced and explicit:
        raise ConfigError(
            f"weight_sharing: option(s) {misplaced} do not apply to method {resolved!r}; "
            f"it accepts {sorted(_OPTIONS[resolved]) or 'no options'}."
        )
    used = {key: value for key, value in options.items() if key in _OPTIONS[resolved]}
    budget = used.get("probe_budget")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
    ):
        raise ConfigError(
            "weight_sharing: probe_budget must be an integer >= 1 (candidates evaluated per "
            f"search round) or None; received {budget!r}."
        )
    return used


def _solve(z: Tensor, method: str, options: dict[str, Any]) -> tuple[Tensor, IsotonicInfo]:
    if method == "sort_pava":
        return isotonic_pava(z)
    if method == "parallel_pav":
        return isotonic_parallel_pav(z)
    return isotonic_divide_conquer(z, options.get("probe_budget"))


def _count_runs(sorted_values: Tensor) -> int:
    if sorted_values.numel() == 0:
        return 0
    return 1 + int((sorted_values[1:] != sorted_values[:-1]).sum().item())


def _fill(
    stats: WeightSharingStats | None, method: str, d: int, info: IsotonicInfo, y: Tensor | None
) -> None:
    if stats is None:
        return
    stats.method = method
    stats.d = d
    stats.padded = info.padded
    stats.levels = info.levels
    stats.rounds = info.rounds
    stats.scans = info.scans
    stats.clusters = _count_runs(y) if y is not None else 0


def _sort_pava_cpu(
    xn: npt.NDArray[np.floating], lam: float
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.float64]] | None:
    """Sort, shift, PAVA, unsort on the host; ``None`` if ``xn`` has non-finite values."""
    d = xn.shape[0]
    vals, order = sort_numpy(xn)
    if not (np.isfinite(vals[0]) and np.isfinite(vals[-1])):
        return None
    z = np.linspace(lam, -lam, d)
    z += vals
    y = _snap_ties_numpy(vals, pava_numpy(z))
    out = np.empty(d, dtype=xn.dtype)
    out[order] = y
    return out, y


def _snap_ties(vals: Tensor, y: Tensor) -> Tensor:
    """Give every run of equal sorted ``vals`` the value of the run's first entry of ``y``.

    In exact arithmetic tied inputs always end in one cluster (their shifted values strictly
    decrease), but prefix-sum means cannot resolve shifts far below the values' magnitude,
    so the tensor solvers may leave a tie run split by rounding. Snapping restores exact
    ties; it moves values by rounding-level amounts only and keeps ``y`` non-decreasing.
    """
    d = vals.numel()
    index = torch.arange(d, device=vals.device)
    starts = torch.ones(d, dtype=torch.bool, device=vals.device)
    starts[1:] = vals[1:] != vals[:-1]
    run_start = torch.cummax(index * starts, 0).values
    return y.index_select(0, run_start)


def _snap_ties_numpy(
    vals: npt.NDArray[np.floating], y: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """:func:`_snap_ties` for the host path; a cheap check first, as splits are rare (PAVA
    pools equal values, but a pooled mean can round below the next tied value)."""
    tied = vals[1:] == vals[:-1]
    tied &= y[1:] != y[:-1]
    if not tied.any():
        return y
    starts = np.ones(vals.shape[0], dtype=bool)
    np.not_equal(vals[1:], vals[:-1], out=starts[1:])
    run_start = np.maximum.accumulate(np.where(starts, np.arange(vals.shape[0]), 0))
    return y[run_start]


def _exact_single_cluster(flat: Tensor, out: Tensor) -> Tensor:
    """``out``, or the exact mean of ``flat`` when ``out`` is one cluster.

    When every weight joins one cluster the prox is the mean of ``x`` (fact 1), but a
    method computes it from the shifted values ``x_(k) + lam (d-1-2k)/(d-1)``, whose
    rounding at a huge ``lam`` destroys it (``lam = 1e17`` turned ``[3, 1, -2]`` into
    zeros). The mean is then computed from ``x`` directly (see docs/algorithms.md,
    'Weight-sharing facts').
    """
    low, high = torch.aminmax(out)
    if bool(low != high):
        return out
    acc = torch.float64 if flat.device.type != "mps" else torch.float32
    return flat.to(acc).mean().to(flat.dtype).expand_as(flat).clone()


def _prox_flat(
    flat: Tensor,
    lam: float,
    resolved: str,
    options: dict[str, Any],
    stats: WeightSharingStats | None,
    shape: torch.Size,
    owner: str,
) -> Tensor:
    d = flat.numel()
    if d <= 1 or lam == 0.0:
        raise_non_finite(flat, shape, owner)
        out = flat.clone()
        info = IsotonicInfo(padded=d)
        _fill(stats, "copy", d, info, torch.sort(out).values if stats is not None else None)
        return out
    if resolved == "sort_pava" and flat.device.type == "cpu":
        result = _sort_pava_cpu(flat.numpy(), lam)
        if result is None:
            raise_non_finite(flat, shape, owner)
            raise AssertionError("unreachable")  # pragma: no cover
        out_np, y_np = result
        y_sorted = torch.from_numpy(y_np.astype(out_np.dtype, copy=False))
        _fill(stats, resolved, d, IsotonicInfo(rounds=1, scans=1, padded=d), y_sorted)
        return _exact_single_cluster(flat, torch.from_numpy(out_np))
    vals, idx = sort_with_indices(flat)
    if not bool(torch.isfinite(vals[:: d - 1]).all()):  # non-finite values sort to the ends
        raise_non_finite(flat, shape, owner)
    acc = accumulation_dtype(flat.device)
    z = torch.linspace(lam, -lam, d, dtype=acc, device=flat.device)
    z += vals
    y, info = _solve(z, resolved, options)
    y = _snap_ties(vals, y.to(flat.dtype))
    out = torch.empty_like(flat).scatter_(0, idx, y)
    _fill(stats, resolved, d, info, y)
    return _exact_single_cluster(flat, out)


@register("weight_sharing")
def weight_sharing(
    x: Tensor,
    strength: float,
    method: str = "auto",
    *,
    stats: WeightSharingStats | None = None,
    **options: Any,
) -> Tensor:
    """Proximal operator of the weight-sharing penalty, on the flattened ``x``.

    Returns ``argmin_w 1/2 ||w - x||^2 + strength * R(w)`` with
    ``R(w) = 1/(d-1) sum_{i>j} |w_i - w_j|`` over all ``d = x.numel()`` entries, reshaped to
    ``x.shape``. ``x`` is not modified (see :func:`weight_sharing_`); the result is a new,
    detached tensor with ``x``'s dtype and device.

    Args:
        x: float32 or float64 tensor of any shape, on any device.
        strength: ``lam >= 0``, already scaled by the step size (a proximal-gradient step
            with learning rate ``lr`` on ``f + mu R`` passes ``mu * lr``).
        method: ``"sort_pava"`` (sort, shift, SciPy's compiled PAVA, unsort; exact, the CPU
            default), ``"parallel_pav"`` (rounds merging all adjacent out-of-order blocks
            at once), ``"divide_conquer"`` (batched divide and conquer with a number of
            rounds that depends only on ``d``; the CUDA default) or ``"auto"``.
        stats: Optional :class:`WeightSharingStats`, filled in with the method used and its
            rounds/scans/cluster counts.
        **options: ``probe_budget`` (``divide_conquer``): candidates per search round.

    Raises:
        ConfigError: Negative or non-finite ``strength``, unknown method or option.
        ShapeError: ``x`` is not a float32/float64 tensor.
        NonFiniteError: ``x`` contains NaN or Inf (the message says how many and where).

    Empty and one-element tensors are returned as copies (``R = 0`` for ``d <= 1``).
    """
    owner = "weight_sharing"
    flat = as_flat(x, owner)
    lam = check_strength(strength, owner=owner)
    resolved = resolve_method(method, flat.device)
    used = _check_options(method, resolved, options)
    return _prox_flat(flat, lam, resolved, used, stats, x.shape, owner).view(x.shape)


def weight_sharing_(
    x: Tensor,
    strength: float,
    method: str = "auto",
    *,
    stats: WeightSharingStats | None = None,
    **options: Any,
) -> Tensor:
    """In-place :func:`weight_sharing`: overwrite ``x`` with its prox and return ``x``.

    Works on parameters that require grad (the write happens under ``torch.no_grad()``).
    """
    out = weight_sharing(x, strength, method, stats=stats, **options)
    with torch.no_grad():
        x.copy_(out)
    return x


def isotonic_regression(
    y: Tensor,
    method: str = "auto",
    *,
    stats: WeightSharingStats | None = None,
    **options: Any,
) -> Tensor:
    """Isotonic (non-decreasing) least-squares regression of a 1-D tensor, unit weights.

    The isotonic stage of :func:`weight_sharing` on its own (for tests and for other
    monotone proxes). Returns a new tensor of ``y``'s dtype and device.

    Raises:
        ShapeError: ``y`` is not a 1-D float32/float64 tensor.
        NonFiniteError: ``y`` contains NaN or Inf.
    """
    owner = "isotonic_regression"
    flat = as_flat(y, owner)
    if y.dim() != 1:
        raise ShapeError(f"{owner}: y must be 1-D; received shape {tuple(y.shape)}.")
    resolved = resolve_method(method, flat.device)
    used = _check_options(method, resolved, options)
    if not bool(torch.isfinite(flat).all()):
        raise_non_finite(flat, y.shape, owner)
    if flat.numel() <= 1:
        _fill(stats, "copy", flat.numel(), IsotonicInfo(padded=flat.numel()), flat)
        return flat.clone()
    out, info = _solve(flat, resolved, used)
    out = out.to(flat.dtype)
    _fill(stats, resolved, flat.numel(), info, out)
    return out


def count_clusters(x: Tensor) -> int:
    """Number of distinct values in ``x`` (the number of shared weights after the prox)."""
    return int(torch.unique(x.detach()).numel())


def weight_sharing_penalty(w: Tensor) -> Tensor:
    """``R(w) = 1/(d-1) sum_{i>j} |w_i - w_j|`` over the flattened ``w``, in O(d log d).

    Uses the sorted form ``R(w) = 1/(d-1) sum_k (2k - d + 1) w_(k)``; differentiable
    (almost everywhere) through :func:`torch.sort`. Returns a 0-dim tensor (0 for ``d <= 1``).
    """
    flat = w.reshape(-1)
    d = flat.numel()
    if d <= 1:
        return flat.new_zeros(())
    ordered = torch.sort(flat).values
    coef = torch.arange(d, device=flat.device, dtype=flat.dtype) * 2 - (d - 1)
    return (coef * ordered).sum() / (d - 1)
