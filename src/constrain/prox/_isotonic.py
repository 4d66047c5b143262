"""Isotonic (non-decreasing) regression with unit weights: the core of the weight-sharing prox.

Given ``z`` (1-D), find ``y = argmin ||y - z||^2`` subject to ``y_0 <= y_1 <= ... <= y_{d-1}``.
Three solvers:

* :func:`isotonic_pava` -- SciPy's compiled pool-adjacent-violators (sequential, O(d)).
* :func:`isotonic_parallel_pav` -- "imminent collisions": every round merges *all* adjacent
  out-of-order blocks at once (segment means from one prefix sum). Few rounds on typical
  input, ``d - 1`` rounds in the worst case (``z = [M, 0, 0, ...]``).
* :func:`isotonic_divide_conquer` -- the batched divide-and-conquer algorithm: a fixed
  number of levels and search rounds that depends only on ``d``, never on the values.

The two tensor solvers work on the cumulative-sum diagram (CSD) ``P_j = (j, S_j)`` with
``S_j = sum_{i<j} (z_i - c)`` (``c`` = mean of ``z``, subtracted for accuracy; sums are
accumulated in float64). ``y`` is the slope sequence of the greatest convex minorant (GCM)
of the CSD: each output cluster ``[a, b)`` is a GCM edge and its value is the mean
``(S_b - S_a) / (b - a)``.

Divide and conquer, in detail. ``d`` is padded to ``n = 2^L`` with particles placed far to
the right of every real value (``max + (max - min) + 1``): a cluster of real particles has a
mean below any padded value, so padded particles never merge with real ones; like the
zero-mass particles of the paper they leave the solution unchanged, and keeping unit masses
keeps the CSD's abscissas equal to indices. Each element stores the start ``cs`` and end
``ce`` of its current cluster. At level ``l`` every block of size ``2h`` (``h = 2^l``) has two
solved halves ``L = [s, m)`` and ``R = [m, e)``; their GCMs are convex chains whose vertices
are the cluster boundaries. If the clusters at the junction are in order nothing changes;
otherwise the merged GCM is ``L``'s chain up to a vertex ``a*``, one bridge edge, and ``R``'s
chain from a vertex ``b*``: everything in ``[a*, b*)`` becomes one cluster. The bridge is the
lower common tangent of the two chains, found by a nested search:

* *inner*: the tangent from a point ``P_a`` (``a < m``) to ``R``'s chain touches at the first
  vertex ``b`` with ``slope(P_a, P_b) <= `` slope of ``R``'s edge leaving ``b`` (the slope from
  ``P_a`` decreases, then increases, along a convex chain);
* *outer*: ``a*`` is the last vertex ``a`` of ``L`` whose incoming edge has slope ``<= t(a)``,
  the tangent slope from ``P_a`` to ``R`` (true for every vertex left of ``a*``, false right
  of it unless collinear with the bridge, where either choice gives the same values).

Both searches are batched k-ary searches over element positions (a position stands for the
vertex that starts / ends its cluster) with a fixed number of rounds: ``k = 1`` is binary
search, giving the paper's ``O(log^3 d)`` depth; larger ``k`` (chosen per level so that a
round evaluates about ``probe_budget`` candidates) needs fewer rounds. Per level there is one
``O(n)`` elementwise pass (the cluster update); everything else touches ``O(blocks * k^2)``
entries. Only tensor operations are used, with no host synchronisation inside the loop, so the
same code runs on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_PROBE_BUDGET_CPU",
    "DEFAULT_PROBE_BUDGET_GPU",
    "IsotonicInfo",
    "accumulation_dtype",
    "divide_conquer_schedule",
    "isotonic_divide_conquer",
    "isotonic_parallel_pav",
    "isotonic_pava",
    "pava_numpy",
]

DEFAULT_PROBE_BUDGET_CPU = 1 << 12
"""Candidates evaluated per search round on CPU (small: work matters more than depth)."""
DEFAULT_PROBE_BUDGET_GPU = 1 << 18
"""Candidates evaluated per search round on accelerators (large: fewer kernel launches)."""


@dataclass
class IsotonicInfo:
    """Counts describing one isotonic-regression solve.

    Attributes:
        rounds: Dependent parallel steps: merge rounds (parallel PAV), batched search
            rounds summed over levels (divide and conquer), 1 for sequential PAVA.
        scans: Passes over all ``n`` elements (prefix sums, per-level cluster updates, final
            gather) for divide and conquer; one pass per round for parallel PAV.
        levels: Divide-and-conquer levels ``L = log2(padded)``; 0 otherwise.
        padded: Length after padding to a power of two (divide and conquer), else ``d``.
    """

    rounds: int = 0
    scans: int = 0
    levels: int = 0
    padded: int = 0


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """Dtype used for prefix sums and block means: float64, except on MPS (no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def pava_numpy(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Isotonic regression of a 1-D float64 array by SciPy's compiled PAVA."""
    from scipy.optimize import isotonic_regression

    result: npt.NDArray[np.float64] = isotonic_regression(z).x
    return result


def isotonic_pava(z: Tensor) -> tuple[Tensor, IsotonicInfo]:
    """Sequential PAVA (SciPy, on the host); returns float64 on ``z``'s device."""
    zn = z.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
    y = torch.from_numpy(pava_numpy(zn)).to(z.device)
    return y, IsotonicInfo(rounds=1, scans=1, padded=z.numel())


def _at(src: Tensor, index: Tensor) -> Tensor:
    """``src[index]`` for a 1-D ``src`` and an index tensor of any shape (fast gather)."""
    return src.index_select(0, index.reshape(-1)).view(index.shape)


def _centered_prefix(z: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(zc, c, S)``: ``z`` in the accumulation dtype, its mean and the prefix sums
    of ``z - c`` padded to length ``n`` (``S`` has ``n + 1`` entries, ``S_0 = 0``)."""
    d = z.numel()
    acc = accumulation_dtype(z.device)
    zc = z.to(acc)
    c = zc.mean()
    shifted = zc - c
    if n > d:
        top, bottom = shifted.max(), shifted.min()
        pad = (top + (top - bottom) + 1.0).expand(n - d)
        shifted = torch.cat([shifted, pad])
    S = torch.zeros(n + 1, dtype=acc, device=z.device)
    torch.cumsum(shifted, 0, out=S[1:])
    return zc, c, S


def isotonic_parallel_pav(z: Tensor) -> tuple[Tensor, IsotonicInfo]:
    """Parallel pool-adjacent-violators ("imminent collisions").

    Each round computes all block means from one prefix sum and removes every boundary
    between two adjacent blocks that are out of order, so chains of violators merge at once.
    Returns ``(y, info)`` with ``y`` in the accumulation dtype; ``info.rounds`` counts the
    merging rounds (``d - 1`` for ``z = [M, 0, ..., 0]``, ``M > 0``).
    """
    d = z.numel()
    zc, c, S = _centered_prefix(z, d)
    bounds = torch.arange(d + 1, device=z.device)
    rounds = 0
    while True:
        lo, hi = bounds[:-1], bounds[1:]
        means = (_at(S, hi) - _at(S, lo)) / (hi - lo)
        violated = means[:-1] > means[1:]
        if not bool(violated.any()):
            break
        keep = torch.ones(bounds.numel(), dtype=torch.bool, device=z.device)
        keep[1:-1] = ~violated
        bounds = bounds.masked_select(keep)  # (boolean indexing is slow on busy CPUs)
        rounds += 1
    lengths = hi - lo
    y = torch.repeat_interleave(means + c, lengths, output_size=d)
    single = torch.repeat_interleave(lengths == 1, lengths, output_size=d)
    y = torch.where(single, zc, y)  # singletons exactly
    return y, IsotonicInfo(rounds=rounds, scans=rounds + 1, padded=d)


def _search_rounds(r: int, k: int) -> int:
    """Rounds a k-ary search needs to shrink a range of ``r`` positions to one."""
    rounds = 0
    while r > 1:
        r = -(-r // (k + 1))
        rounds += 1
    return rounds


def divide_conquer_schedule(n: int, probe_budget: int) -> list[tuple[int, int]]:
    """Per-level ``(k, search_rounds)`` of divide and conquer on ``n = 2^L`` elements.

    Depends only on ``n`` and the budget, never on the input values.
    """
    schedule = []
    for level in range(max(0, n.bit_length() - 1)):
        h = 1 << level
        blocks = n >> (level + 1)
        k = max(1, min(h - 1, math.isqrt(max(1, probe_budget // blocks))))
        schedule.append((k, _search_rounds(h, k)))
    return schedule


def _last_true(
    lo: Tensor, hi: Tensor, pred: Callable[[Tensor], Tensor], k: int, rounds: int
) -> Tensor:
    """Batched k-ary search for the last position in ``[lo, hi)`` where ``pred`` holds.

    ``pred`` maps positions of shape ``(B, k)`` to booleans and must be monotone (true, then
    false) on each row's range; it is taken to hold at ``lo`` (never trusted there) and to
    fail at ``hi`` (never evaluated). ``rounds`` must be ``_search_rounds(max(hi - lo), k)``.
    """
    if k == 1:  # binary search: no sorting out of several probes
        for _ in range(rounds):
            mid = lo + (hi - lo) // 2
            ok = pred(mid.unsqueeze(1)).squeeze(1) | (mid == lo)
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        return lo
    steps = torch.arange(1, k + 1, device=lo.device)
    for _ in range(rounds):
        lo1 = lo.unsqueeze(1)
        probes = lo1 + (hi - lo).unsqueeze(1) * steps // (k + 1)
        ok = pred(probes) | (probes == lo1)
        leading = ok.to(torch.int64).cumprod(1).sum(1)  # robust to rounding noise
        last = probes.gather(1, (leading - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        first_false = probes.gather(1, leading.clamp(max=k - 1).unsqueeze(1)).squeeze(1)
        hi = torch.where(leading < k, first_false, hi)
        lo = torch.where(leading > 0, last, lo)
    return lo


def _tangent(
    S: Tensor,
    ce: Tensor,
    a: Tensor,
    Sa: Tensor,
    m: Tensor,
    e: Tensor,
    k: int,
    rounds: int,
) -> Tensor:
    """End ``b`` of the tangent from ``P_a`` (height ``Sa``) to the right chain ``[m, e]``.

    All arguments but ``S`` and ``ce`` have shape ``(B,)``.
    """
    n = ce.numel()
    a1, Sa1, e1 = a.unsqueeze(1), Sa.unsqueeze(1), e.unsqueeze(1)

    def steeper_ahead(q: Tensor) -> Tensor:
        b = _at(ce, q)
        Sb = _at(S, b)
        nxt = _at(ce, b.clamp(max=n - 1))
        slope = (Sb - Sa1) / (b - a1)
        after = (_at(S, nxt) - Sb) / (nxt - b)
        return (slope > after) & (b < e1)

    q = _last_true(m - 1, e - 1, steeper_ahead, k, rounds) + 1
    return _at(ce, q)


def isotonic_divide_conquer(
    z: Tensor, probe_budget: int | None = None
) -> tuple[Tensor, IsotonicInfo]:
    """Batched divide-and-conquer isotonic regression (see the module docstring).

    Args:
        z: 1-D float tensor, any device.
        probe_budget: Candidates evaluated per search round (per level, ``k`` is the largest
            integer with ``blocks * k^2 <= probe_budget``); 1 gives binary search.

    Returns:
        ``(y, info)``; ``y`` in the accumulation dtype; ``info.rounds`` and ``info.scans``
        depend only on ``z.numel()`` and ``probe_budget``.
    """
    d = z.numel()
    device = z.device
    if probe_budget is None:
        cpu = device.type == "cpu"
        probe_budget = DEFAULT_PROBE_BUDGET_CPU if cpu else DEFAULT_PROBE_BUDGET_GPU
    levels = max(0, (d - 1).bit_length())
    n = 1 << levels
    zc, c, S = _centered_prefix(z, n)
    iota = torch.arange(n, device=device)
    cs = iota.clone()  # start of each element's current cluster
    ce = iota + 1  # end (exclusive)
    total_rounds = 0
    for level, (k, rounds) in enumerate(divide_conquer_schedule(n, probe_budget)):
        h = 1 << level
        blocks = n >> (level + 1)
        s = iota[:: 2 * h]
        m = s + h
        e = m + h
        s1, m1, e1 = s.unsqueeze(1), m.unsqueeze(1), e.unsqueeze(1)

        def before_tangent(
            p: Tensor,
            s1: Tensor = s1,
            m1: Tensor = m1,
            e1: Tensor = e1,
            cs: Tensor = cs,
            ce: Tensor = ce,
            k: int = k,
            rounds: int = rounds,
        ) -> Tensor:
            a = _at(cs, p)
            Sa = _at(S, a)
            prev = _at(cs, (a - 1).clamp(min=0))
            incoming = (Sa - _at(S, prev)) / (a - prev)  # NaN at a == 0: masked below
            b = _tangent(
                S,
                ce,
                a.reshape(-1),
                Sa.reshape(-1),
                m1.expand_as(a).reshape(-1),
                e1.expand_as(a).reshape(-1),
                k,
                rounds,
            ).view_as(a)
            tangent_slope = (_at(S, b) - Sa) / (b - a)
            return (a == s1) | (incoming <= tangent_slope)

        p = _last_true(s, m, before_tangent, k, rounds)
        a = _at(cs, p)
        b = _tangent(S, ce, a, _at(S, a), m, e, k, rounds)
        left, right, Sm = _at(cs, m - 1), _at(ce, m), _at(S, m)
        active = (Sm - _at(S, left)) / (m - left) > (_at(S, right) - Sm) / (right - m)
        a = torch.where(active, a, e).unsqueeze(1)
        b = torch.where(active, b, e).unsqueeze(1)
        pos = iota.view(blocks, 2 * h)
        inside = (pos >= a) & (pos < b)
        cs = torch.where(inside, a, cs.view(blocks, 2 * h)).view(-1)
        ce = torch.where(inside, b, ce.view(blocks, 2 * h)).view(-1)
        total_rounds += rounds * (rounds + 1) + rounds + 1
    start, end = cs[:d], ce[:d]
    y = (_at(S, end) - _at(S, start)) / (end - start) + c
    y = torch.where(end - start == 1, zc, y)  # singletons exactly
    info = IsotonicInfo(rounds=total_rounds, scans=levels + 2, levels=levels, padded=n)
    return y, info
