"""The weighted group sparse envelope function (WGSEF) and its proximal operators.

Refael, Arbel & Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group
Envelope Regularization" (arXiv 2212.12921), generalizing the sparse envelope function of
Beck & Refael ("Sparse regularization via bidualization", J. Global Optim. 2022) from
entries to user-given groups. For a partition of the entries into groups ``G_1..G_m`` with
weights ``d_g > 0`` and a level ``k``, the WGSEF is the convex envelope (biconjugate)

    S_{k,d} = ( Q_d + indicator{at most k groups are non-zero} )**,
    Q_d(x)  = 1/2 sum_g d_g ||x_g||^2.

Its conjugate is ``S*(y) = 1/2 (sum of the k largest of ||y_g||^2 / d_g)``, and

    S_{k,d}(x) = min { 1/2 sum_g d_g ||x_g||^2 / theta_g :  theta in [0, 1]^m, sum theta <= k },

(``0/0 = 0``): with one entry per group and ``d = 1`` it is half the squared k-support norm.
``S >= Q_d`` with equality exactly when at most ``k`` groups are non-zero, so the *gap*
``S_{k,d} - Q_d >= 0`` is a penalty that vanishes exactly on k-group-sparse points: the
regularizer that lets training end at a preset number of groups.

Both proxes reduce, through the ``theta`` form, to a one-dimensional monotone equation:
for fixed ``theta`` the minimization over ``x`` is separable with
``x_g = z_g * theta_g / (theta_g + lam d_g c_g)`` (``c_g = 1`` for the envelope,
``1 - theta_g`` for the gap), and the optimal ``theta_g = clip(s a_g - b_g, 0, 1)`` for one
scalar ``s`` fixed by ``sum theta = k`` (or ``theta = 1`` when at most ``k`` groups are
non-zero), where ``a_g = ||z_g|| sqrt(lam d_g) / e_g``, ``b_g = lam d_g / e_g`` and
``e_g = 1`` (envelope) or ``1 - lam d_g`` (gap). The sum is piecewise linear in ``s`` with
``2m`` breakpoints: sorting them gives ``s`` exactly in ``O(m log m)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .._errors import ConfigError, ShapeError, describe
from ._checks import as_flat, check_strength, raise_non_finite
from ._registry import register
from ._sparsity import _group_dims

__all__ = ["group_norms", "wgsef", "wgsef_gap", "wgsef_value"]

Mode = Literal["envelope", "gap"]


def _groups(
    x: object, dim: int | Sequence[int] | None, weights: object, owner: str
) -> tuple[Tensor, tuple[int, ...], Tensor]:
    """Checked ``x``, the reduced dimensions and the weights broadcast like the norms."""
    as_flat(x, owner)
    assert isinstance(x, Tensor)
    if x.dim() == 0:
        raise ShapeError(f"{owner}: x must have at least one dimension; received a 0-d tensor.")
    dims = _group_dims(x, dim, "wgsef")
    xd = x.detach()
    if xd.numel() and not bool(torch.isfinite(xd).all()):
        raise_non_finite(xd.reshape(-1), x.shape, owner)
    norm_shape = torch.linalg.vector_norm(xd, dim=dims, keepdim=True).shape
    if weights is None:
        w = torch.ones(norm_shape, dtype=torch.float64, device=xd.device)
    else:
        if isinstance(weights, Tensor):
            w = weights.detach().to(device=xd.device, dtype=torch.float64)
        else:
            try:
                w = torch.as_tensor(weights, dtype=torch.float64, device=xd.device)
            except (TypeError, ValueError):
                raise ShapeError(
                    f"{owner}: weights must be a tensor or sequence of positive numbers, one "
                    f"per group; received {describe(weights)}."
                ) from None
        groups = int(torch.Size(norm_shape).numel())
        if w.numel() != groups:
            raise ShapeError(
                f"{owner}: weights has {w.numel()} entries but x of shape {tuple(x.shape)} "
                f"has {groups} groups (dim={dim!r}); give one weight per group."
            )
        w = w.reshape(norm_shape)
        if not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
            raise ConfigError(f"{owner}: every group weight must be finite and > 0.")
    return x, dims, w


def _check_k(k: object, owner: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(
            f"{owner}: k (the number of groups kept) must be an integer >= 0; "
            f"received {describe(k)}."
        )
    return k


def group_norms(
    x: Tensor, dim: int | Sequence[int] | None = None, weights: object = None
) -> Tensor:
    """``sqrt(d_g) ||x_g||`` per group, flattened (float64): the quantities the WGSEF ranks.

    Groups follow :func:`~constrain.prox.group_l1`'s ``dim`` (default: every dimension but
    the first, e.g. one group per output channel of a conv weight).
    """
    x, dims, w = _groups(x, dim, weights, "group_norms")
    norms: Tensor = torch.linalg.vector_norm(x.detach().to(torch.float64), dim=dims, keepdim=True)
    out: Tensor = (w.sqrt() * norms).reshape(-1)
    return out


def _envelope_of_norms(a: Tensor, k: int) -> Tensor:
    """``1/2 (sum of the l largest a^2 + (sum of the rest of a)^2 / (k - l))`` with the right
    ``l`` (the k-support-norm formula) for non-negative ``a``."""
    if k == 0:
        return torch.where(a.any(), torch.tensor(float("inf"), dtype=a.dtype), a.new_zeros(()))
    if int((a > 0).sum()) <= k:
        return 0.5 * (a**2).sum()
    s, _ = a.sort(descending=True)
    tail = s.flip(0).cumsum(0).flip(0)  # tail[l] = sum_{i >= l} s_i
    for ell in range(k):
        rest = tail[ell]
        # theta of the rest = (k - ell) s_i / rest must be <= 1, i.e. s_ell <= rest / (k - ell);
        # and the kept ones must not be below the threshold (s_{ell-1} > rest / (k - ell)).
        if s[ell] * (k - ell) <= rest + 1e-15 * rest:
            return 0.5 * ((s[:ell] ** 2).sum() + rest**2 / (k - ell))
    return 0.5 * (s[:k] ** 2).sum()  # unreachable for a > 0 beyond k entries


def wgsef_value(
    x: Tensor, k: int, dim: int | Sequence[int] | None = None, weights: object = None
) -> Tensor:
    """The WGSEF ``S_{k,d}(x)`` (0-d float64 tensor).

    ``S_{k,d}(x) = 1/2 (sum_{i < l} a_(i)^2 + (sum_{i >= l} a_(i))^2 / (k - l))`` with
    ``a_g = sqrt(d_g) ||x_g||`` sorted decreasingly and ``l`` the unique index where the
    fractional part is consistent (``+inf`` for ``k = 0`` and ``x != 0``).

    Raises:
        ConfigError: Bad ``k`` or weights. ShapeError: Bad dtype, ``dim`` or weights shape.
    """
    kk = _check_k(k, "wgsef_value")
    return _envelope_of_norms(group_norms(x, dim, weights), kk)


def wgsef_gap(
    x: Tensor, k: int, dim: int | Sequence[int] | None = None, weights: object = None
) -> Tensor:
    """``S_{k,d}(x) - 1/2 sum_g d_g ||x_g||^2 >= 0``: zero exactly when at most ``k`` groups
    of ``x`` are non-zero (the k-level penalty)."""
    a = group_norms(x, dim, weights)
    return _envelope_of_norms(a, _check_k(k, "wgsef_gap")) - 0.5 * (a**2).sum()


def _solve_theta(a: Tensor, b: Tensor, k: int) -> Tensor:
    """``theta_g = clip(s a_g - b_g, 0, 1)`` with ``sum theta = k`` (a, b >= 0, 1-d, float64);
    ``theta = 1`` on every group with ``a_g > 0`` when there are at most ``k`` of them."""
    active = a > 0
    if int(active.sum()) <= k:
        return active.to(a.dtype)
    if k == 0:
        return torch.zeros_like(a)
    aa, bb = a[active], b[active]
    start = bb / aa  # theta leaves 0
    stop = (1 + bb) / aa  # theta reaches 1
    points = torch.cat([start, stop])
    slopes = torch.cat([aa, -aa])  # change of d(sum theta)/ds at each breakpoint
    order = points.argsort()
    points, slopes = points[order], slopes[order]
    slope_after = slopes.cumsum(0)  # slope of sum theta on (points[i], points[i+1])
    gaps = torch.diff(points, prepend=points[:1])
    slope_before = torch.cat([slope_after.new_zeros(1), slope_after[:-1]])
    value_at = (slope_before * gaps).cumsum(0)  # sum theta at each breakpoint
    i = int(torch.searchsorted(value_at, torch.tensor(float(k), dtype=a.dtype)).item())
    i = min(max(i, 1), len(points) - 1)
    # sum theta(s) = value_at[i-1] + slope_after[i-1] (s - points[i-1]) on that segment.
    s = points[i - 1] + (k - value_at[i - 1]) / slope_after[i - 1].clamp_min(1e-300)
    return (s * a - b).clamp(0.0, 1.0) * active


@register("wgsef")
def wgsef(
    x: Tensor,
    strength: float,
    k: int,
    dim: int | Sequence[int] | None = None,
    weights: object = None,
    mode: Mode = "envelope",
) -> Tensor:
    """Proximal operator of the weighted group sparse envelope function (WGSEF).

    ``mode="envelope"``: ``argmin_u 1/2 ||u - x||^2 + strength * S_{k,d}(u)`` (convex).
    ``mode="gap"``: the same with the k-level penalty ``S_{k,d} - Q_d`` (non-negative, zero
    exactly when at most ``k`` groups are non-zero; requires ``strength * max(d) < 1``,
    where the problem is strongly convex). Each group is scaled,
    ``u_g = x_g * theta_g / (theta_g + strength d_g c_g)``, and groups with ``theta_g = 0``
    become exactly zero; as ``strength * d -> 1`` the gap prox tends to keeping the ``k``
    groups of largest ``sqrt(d_g) ||x_g||``. See the module docstring for the algorithm
    (exact, ``O(m log m)`` for ``m`` groups) and the source papers (Refael, Arbel &
    Huleihel; Beck & Refael).

    Args:
        x: float32/float64 tensor.
        strength: Step-size-scaled penalty weight ``>= 0``.
        k: Number of groups the envelope is built around (``>= 0``).
        dim: Dimension(s) spanned by one group, as in :func:`~constrain.prox.group_l1`
            (default: all but the first, i.e. one group per row / output channel).
        weights: Positive group weights ``d_g`` (one per group, in the order of the group
            norms); default 1.
        mode: ``"envelope"`` or ``"gap"``.

    Returns:
        A new tensor of ``x``'s shape, dtype and device.

    Raises:
        ConfigError: Bad ``strength``, ``k``, ``mode`` or weights, or
            ``strength * max(d) >= 1`` in gap mode.
        ShapeError: Bad dtype, ``dim`` or weights shape.
        NonFiniteError: ``x`` contains NaN or Inf.
    """
    owner = "wgsef"
    x, dims, w = _groups(x, dim, weights, owner)
    lam = check_strength(strength, owner=owner)
    kk = _check_k(k, owner)
    if mode not in ("envelope", "gap"):
        raise ConfigError(f"{owner}: mode must be 'envelope' or 'gap'; received {mode!r}.")
    xd = x.detach()
    if lam == 0.0 or xd.numel() == 0:
        return xd.clone()
    lam_d = lam * w
    if mode == "gap" and float(lam_d.max()) >= 1.0:
        raise ConfigError(
            f"{owner}: mode='gap' needs strength * max(weight) < 1 (the prox of the k-level "
            f"penalty is unique only there); received strength={lam!r}, max weight="
            f"{float(w.max())!r}. Lower the penalty weight or the learning rate."
        )
    work = xd.to(torch.float64)
    norms = torch.linalg.vector_norm(work, dim=dims, keepdim=True)
    scale = torch.ones_like(lam_d) if mode == "envelope" else 1.0 - lam_d
    a = (norms * lam_d.sqrt() / scale).reshape(-1)
    b = (lam_d / scale).reshape(-1)
    theta = _solve_theta(a, b, kk).reshape(norms.shape)
    shrink = lam_d if mode == "envelope" else lam_d * (1.0 - theta)
    factor = torch.where(theta > 0, theta / (theta + shrink), torch.zeros_like(theta))
    return (work * factor).to(x.dtype)
