"""2:4 semi-structured sparsity: the ProxSparse regularizer and its exact proximal operator.

ProxSparse (Liu, Saha, Jia, Park, Huang, Sabach, Wang, Karypis, ICML 2025, "ProxSparse:
Regularized Learning of Semi-Structured Sparsity Masks for Pretrained LLMs") groups the
weights of a layer into blocks of 4 consecutive entries along the last dimension and
penalizes each block ``w = (w_1, ..., w_4)`` by the sum of the absolute products of its
triples,

    R(w) = sum_{i<j<k} |w_i w_j w_k|,

which is zero exactly when the block has at most 2 non-zeros (the 2:4 pattern). The prox
``argmin_u 1/2 ||u - x||^2 + lam R(u)`` is separable over blocks; within a block it is a
non-convex problem in 4 variables that this module solves *exactly* (up to floating-point
rounding), as follows. With ``z = |x|`` sorted decreasingly and ``u = sign(x) |u|``:

* the support of a minimizer is a prefix of that order (exchanging a kept entry with a
  larger dropped one lowers the fidelity and keeps ``R``), so the candidates are:
* support of size <= 2: ``u = (z_1, z_2, 0, 0)`` (``R = 0``);
* support of size 3: every stationary point of ``1/2||u - z||^2 + lam u_1 u_2 u_3``. With
  ``t = u_3`` the other two solve a linear 2x2 system, and ``t`` is a root in
  ``(0, z_3]`` of the quintic
  ``(t - z_3)(1 - lam^2 t^2)^2 + lam (z_1 - lam t z_2)(z_2 - lam t z_1)``
  (all roots, from the eigenvalues of its companion matrix, polished by Newton steps);
* support of size 4: a local minimizer keeps the order of ``z`` and then every entry is
  the larger root of ``lam u^2 + (1 - lam m) u + lam p - z_i = 0`` (``m = sum u``,
  ``p = e_2(u)``). Eliminating ``p`` leaves one equation in ``v = lam m``,
  ``sum_i sqrt(v^2 + a_i) = 4 - 2 v`` with ``a_i = 1 + 4 lam z_i - 2 lam sum(z)``, whose left
  side increases and right side decreases in ``v >= 0``: at most one root, found by
  bisection; ``u_i = (v - 1 + sqrt(v^2 + a_i)) / (2 lam)``.

The prox is the candidate with the smallest objective (ties go to the sparser one). The
paper's implementation runs alternating minimization from zero on the 3- and 4-supports
instead, which finds a stationary point but not necessarily the minimizer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._errors import ShapeError
from ._checks import as_flat, check_strength, raise_non_finite
from ._registry import register

__all__ = [
    "is_two_four",
    "proxsparse",
    "proxsparse_penalty",
    "two_four_fraction",
    "two_four_mask",
]

GROUP = 4
"""Entries per block (the ``4`` of 2:4)."""


def _blocks(x: object, owner: str) -> tuple[Tensor, Tensor]:
    """``x`` as ``(num_blocks, 4)`` (float64 working copy) and the checked original."""
    as_flat(x, owner)
    assert isinstance(x, Tensor)
    if x.dim() == 0 or x.shape[-1] % GROUP != 0:
        raise ShapeError(
            f"{owner}: the last dimension of x must be a multiple of {GROUP} (blocks of "
            f"{GROUP} consecutive weights along it, as 2:4 sparse kernels use); received "
            f"shape {tuple(x.shape)}. Pad the layer or apply the prox to another one."
        )
    flat = x.detach().reshape(-1, GROUP)
    if flat.numel() and not bool(torch.isfinite(flat).all()):
        raise_non_finite(flat.reshape(-1), x.shape, owner)
    return flat, x


def proxsparse_penalty(x: Tensor) -> Tensor:
    """``R(x) = sum over blocks of sum_{i<j<k} |w_i w_j w_k|`` (0-d tensor of ``x``'s dtype).

    Blocks are 4 consecutive entries along the last dimension.

    Raises:
        ShapeError: If ``x`` is not float32/float64 or its last dimension is not a multiple
            of 4.
    """
    blocks, _ = _blocks(x, "proxsparse_penalty")
    a = blocks.abs()
    e3 = (  # e_3 of four numbers: the 4 triples
        a[:, 0] * a[:, 1] * a[:, 2]
        + a[:, 0] * a[:, 1] * a[:, 3]
        + a[:, 0] * a[:, 2] * a[:, 3]
        + a[:, 1] * a[:, 2] * a[:, 3]
    )
    return e3.sum()


def _objective(u: Tensor, z: Tensor, lam: Tensor) -> Tensor:
    """``1/2 ||u - z||^2 + lam e_3(u)`` per row (u, z non-negative ``(n, 4)``, lam ``(n,)``)."""
    e3 = (
        u[:, 0] * u[:, 1] * u[:, 2]
        + u[:, 0] * u[:, 1] * u[:, 3]
        + u[:, 0] * u[:, 2] * u[:, 3]
        + u[:, 1] * u[:, 2] * u[:, 3]
    )
    return 0.5 * ((u - z) ** 2).sum(dim=1) + lam * e3


def _three_support(z: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Best stationary point on the support {1, 2, 3} per row: ``(u (n, 4), objective)``,
    objective ``+inf`` where none exists."""
    n = z.shape[0]
    z1, z2, z3 = z[:, 0], z[:, 1], z[:, 2]
    a = lam
    # N(t) = c5 t^5 + c4 t^4 + c3 t^3 + c2 t^2 + c1 t + c0.
    c5 = a**4
    c4 = -(a**4) * z3
    c3 = -2 * a**2
    c2 = 2 * a**2 * z3 + a**3 * z1 * z2
    c1 = 1 - a**2 * (z1**2 + z2**2)
    c0 = a * z1 * z2 - z3
    coeffs = torch.stack([c5, c4, c3, c2, c1, c0], dim=1)  # highest degree first
    # Companion matrix of the monic polynomial (rows with c5 = 0 cannot occur: lam > 0).
    monic = coeffs[:, 1:] / coeffs[:, :1]
    usable = torch.isfinite(monic).all(dim=1)  # never hand LAPACK a NaN/Inf matrix
    monic = torch.where(usable[:, None], monic, torch.zeros_like(monic))
    companion = torch.zeros(n, 5, 5, dtype=z.dtype, device=z.device)
    companion[:, 0, :] = -monic
    companion[:, 1:, :-1] = torch.eye(4, dtype=z.dtype, device=z.device)
    roots = torch.linalg.eigvals(companion) if n else torch.zeros(0, 5, dtype=torch.complex128)
    scale = z1.clamp_min(1e-300)[:, None]
    real = roots.real.to(z.dtype)
    is_real = roots.imag.abs().to(z.dtype) <= 1e-6 * (scale + real.abs())
    t = real.clone()
    dcoeffs = coeffs[:, :-1] * torch.arange(5, 0, -1, dtype=z.dtype, device=z.device)
    for _ in range(4):  # Newton polishing of each (near-)real root, Horner evaluation
        value = coeffs[:, :1].expand_as(t).clone()
        slope = dcoeffs[:, :1].expand_as(t).clone()
        for k in range(1, 6):
            value = value * t + coeffs[:, k : k + 1]
            if k < 5:
                slope = slope * t + dcoeffs[:, k : k + 1]
        safe = slope.abs() > 0
        t = torch.where(safe, t - value / torch.where(safe, slope, torch.ones_like(slope)), t)
    at = a[:, None] * t
    det = 1 - at**2
    ok = usable[:, None] & is_real & (t > 0) & (t <= z3[:, None]) & (at < 1) & (det > 0)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    u1 = (z1[:, None] - at * z2[:, None]) / safe_det
    u2 = (z2[:, None] - at * z1[:, None]) / safe_det
    ok = ok & (u1 > 0) & (u2 > 0)
    candidates = torch.stack([u1, u2, t, torch.zeros_like(t)], dim=-1)  # (n, 5, 4)
    values = _objective(
        candidates.reshape(-1, 4), z.repeat_interleave(5, dim=0), lam.repeat_interleave(5)
    ).reshape(n, 5)
    values = torch.where(ok, values, torch.full_like(values, float("inf")))
    best = values.argmin(dim=1)
    rows = torch.arange(n, device=z.device)
    return candidates[rows, best], values[rows, best]


def _four_support(z: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """The unique order-preserving stationary point with full support per row (the only
    candidate for a 4-dense minimizer): ``(u (n, 4), objective)``, ``+inf`` where none."""
    total = z.sum(dim=1, keepdim=True)
    a_i = 1 + 4 * lam[:, None] * (z - 0.5 * total)  # (n, 4)
    low = a_i.neg().clamp_min(0).max(dim=1).values.sqrt()  # v >= v_min keeps sqrt real
    high = torch.full_like(low, 2.0)

    def excess(v: Tensor) -> Tensor:
        return (v[:, None] ** 2 + a_i).clamp_min(0).sqrt().sum(dim=1) + 2 * v - 4

    exists = excess(low) <= 0
    lo, hi = low.clone(), high
    for _ in range(64):  # bisection: the bracket [v_min, 2] shrinks to the last bit
        mid = 0.5 * (lo + hi)
        up = excess(mid) > 0
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    v = 0.5 * (lo + hi)
    u = (v[:, None] - 1 + (v[:, None] ** 2 + a_i).clamp_min(0).sqrt()) / (2 * lam[:, None])
    ok = exists & (u > 0).all(dim=1)
    values = _objective(u, z, lam)
    return u, torch.where(ok, values, torch.full_like(values, float("inf")))


_SPARSE_BEYOND = 1e6
"""Blocks with ``strength * max|x| > 1e6`` are returned 2:4 without solving the 3- and
4-support cases (far above the ``(1 + sqrt 2)/2`` where every block already is; it keeps
``lam^4`` of the quintic finite)."""


_FIXED_POINT_BELOW = 1 / 60
"""Below this strength (blocks scaled to ``max |z| = 1``) the stationary points are found by
the fixed-point iteration ``u_i <- z_i - lam e_2(u_-i)`` on the support, a contraction of
factor ``<= 6 lam <= 0.1``: the closed forms divide by ``lam`` (4-support) and ``lam^4``
(the quintic's leading coefficient) and lose every digit as ``lam -> 0``."""


def _fixed_point(z: Tensor, lam: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The stationary point near ``z`` on the support of the ``size`` largest entries, by
    fixed-point iteration (``lam < _FIXED_POINT_BELOW``): ``(u (n, 4), objective)``,
    objective ``+inf`` where an entry of the support is not positive."""
    support = torch.zeros_like(z)
    support[:, :size] = 1
    target = z * support
    u = target.clone()
    for _ in range(40):  # contraction factor <= 0.1: 40 iterations reach float64 rounding
        total, squares = u.sum(dim=1, keepdim=True), (u * u).sum(dim=1, keepdim=True)
        others = total - u  # e_2 of the other entries = ((sum)^2 - sum of squares) / 2
        e2 = 0.5 * (others * others - (squares - u * u))
        u = (target - lam[:, None] * e2) * support
    ok = (u[:, :size] > 0).all(dim=1)
    values = _objective(u, z, lam)
    return u, torch.where(ok, values, torch.full_like(values, float("inf")))


def _prox_sorted(z: Tensor, lam: Tensor) -> Tensor:
    """Exact prox on non-negative rows sorted decreasingly with ``z[:, 0] = 1`` (or 0) and
    per-row strengths ``lam`` (float64)."""
    two = z.clone()
    two[:, 2:] = 0
    best_value = _objective(two, z, lam)
    best = two
    active = (lam <= _SPARSE_BEYOND) & (z[:, 2] > 0)
    if not bool(active.any()):
        return best
    rows = active.nonzero().squeeze(1)
    weak = lam[rows] < _FIXED_POINT_BELOW
    # The closed forms only on the rows they serve: for weak rows lam^4 may underflow, and
    # LAPACK's eigenvalue routine must never see the resulting non-finite companion matrix.
    closed = (~weak).nonzero().squeeze(1)
    for size, solver in ((3, _three_support), (4, _four_support)):
        u_rows = torch.zeros_like(z[rows])
        value_rows = torch.full_like(lam[rows], float("inf"))
        if closed.numel():
            u_closed, value_closed = solver(z[rows[closed]], lam[rows[closed]])
            u_rows[closed], value_rows[closed] = u_closed, value_closed
        if bool(weak.any()):
            u_weak, value_weak = _fixed_point(z[rows], lam[rows], size)
            u_rows = torch.where(weak[:, None], u_weak, u_rows)
            value_rows = torch.where(weak, value_weak, value_rows)
        u = best.clone()
        u[rows] = u_rows
        value = torch.full_like(best_value, float("inf"))
        value[rows] = value_rows
        # Strictly better only (ties keep the sparser candidate). The guard against rounding
        # is relative: every term of the objective is non-negative, and blocks with tiny
        # entries have tiny objective values whose differences still decide the support.
        better = value < best_value * (1 - 1e-12)
        best = torch.where(better[:, None], u, best)
        best_value = torch.where(better, value, best_value)
    return best


@register("proxsparse")
def proxsparse(x: Tensor, strength: float) -> Tensor:
    """Proximal operator of ``strength * R`` with the ProxSparse 2:4 regularizer.

    ``R(w) = sum over blocks of 4 consecutive entries (along the last dimension) of
    sum_{i<j<k} |w_i w_j w_k|`` -- zero exactly on 2:4-sparse tensors (Liu et al., ICML
    2025). Computes ``argmin_u 1/2 ||u - x||^2 + strength R(u)`` exactly, block by block
    (see the module docstring for the algorithm): signs are kept, magnitudes shrink, and
    for strong regularization every block keeps only its 2 largest entries unchanged.

    Args:
        x: float32/float64 tensor whose last dimension is a multiple of 4 (a
            ``Linear`` weight ``(out, in)`` gets blocks along ``in``). Computed in float64.
        strength: Step-size-scaled penalty weight ``>= 0`` (the solver passes
            ``strength * lr``).

    Returns:
        A new tensor of ``x``'s shape, dtype and device.

    Raises:
        ConfigError: Negative or non-finite ``strength``.
        ShapeError: Bad dtype, or a last dimension that is not a multiple of 4.
        NonFiniteError: ``x`` contains NaN or Inf.
    """
    blocks, original = _blocks(x, "proxsparse")
    lam = check_strength(strength, owner="proxsparse")
    if lam == 0.0 or blocks.numel() == 0:
        return original.detach().clone()
    work = blocks.to(torch.float64)
    magnitude, order = work.abs().sort(dim=1, descending=True)
    # Scale every block to max |x| = 1: prox_{lam R}(s z) = s prox_{lam s R}(z).
    scale = magnitude[:, 0]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    solved = _prox_sorted(magnitude / safe[:, None], lam * safe) * safe[:, None]
    out = torch.empty_like(work)
    out.scatter_(1, order, solved)
    out = out * work.sign()
    return out.to(original.dtype).reshape(original.shape)


def two_four_mask(x: Tensor) -> Tensor:
    """Boolean mask keeping the 2 largest-magnitude entries of every block of 4 consecutive
    entries along the last dimension (one-shot magnitude 2:4 pruning; ties are broken as
    :func:`torch.topk` breaks them).

    Raises:
        ShapeError: Bad dtype or a last dimension that is not a multiple of 4.
    """
    blocks, original = _blocks(x, "two_four_mask")
    keep = blocks.abs().topk(2, dim=1).indices
    mask = torch.zeros_like(blocks, dtype=torch.bool)
    mask.scatter_(1, keep, True)
    return mask.reshape(original.shape)


def two_four_fraction(x: Tensor) -> float:
    """Fraction of blocks of 4 with at most 2 non-zeros (1.0: ``x`` is 2:4 sparse)."""
    blocks, _ = _blocks(x, "two_four_fraction")
    if blocks.numel() == 0:
        return 1.0
    return float(((blocks != 0).sum(dim=1) <= 2).double().mean())


def is_two_four(x: Tensor) -> bool:
    """Whether every block of 4 consecutive entries along the last dimension has at most 2
    non-zeros."""
    return two_four_fraction(x) == 1.0
