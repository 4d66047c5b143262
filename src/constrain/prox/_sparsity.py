"""Soft-thresholding proxes: ``l1``, ``group_l1`` and ``weight_sharing_l1``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._errors import ConfigError, ShapeError
from ._checks import as_flat, check_strength, input_checks_enabled, raise_non_finite
from ._registry import register
from ._weight_sharing import WeightSharingStats, weight_sharing

__all__ = ["group_l1", "l1", "soft_threshold", "weight_sharing_l1"]


def soft_threshold(x: Tensor, threshold: float) -> Tensor:
    """``sign(x) * max(|x| - threshold, 0)`` as a new tensor (no argument checks)."""
    return x - x.clamp(-threshold, threshold)


def _finite(x: Tensor, owner: str) -> None:
    if input_checks_enabled() and x.numel() and not bool(torch.isfinite(x).all()):
        raise_non_finite(x.reshape(-1), x.shape, owner)


@register("l1")
def l1(x: Tensor, strength: float) -> Tensor:
    """Proximal operator of ``strength * ||x||_1``: elementwise soft-thresholding.

    Returns a new detached tensor of ``x``'s shape, dtype and device.

    Raises:
        ConfigError: Negative or non-finite ``strength``.
        ShapeError: ``x`` is not a float32/float64 tensor.
        NonFiniteError: ``x`` contains NaN or Inf.
    """
    as_flat(x, "l1")
    lam = check_strength(strength, owner="l1")
    xd = x.detach()
    _finite(xd, "l1")
    return soft_threshold(xd, lam)


def _group_dims(
    x: Tensor, dim: int | Sequence[int] | None, owner: str = "group_l1"
) -> tuple[int, ...]:
    ndim = x.dim()
    if dim is None:
        return tuple(range(1, ndim)) if ndim >= 2 else tuple(range(ndim))
    if isinstance(dim, int):
        dims: tuple[object, ...] = (dim,)
    elif isinstance(dim, Sequence) and not isinstance(dim, str):
        dims = tuple(dim)
    else:
        dims = (dim,)
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not -max(ndim, 1) <= d < max(ndim, 1):
            raise ShapeError(
                f"{owner}: dim must be an int or a sequence of ints in "
                f"[{-max(ndim, 1)}, {max(ndim, 1) - 1}] for a tensor of shape "
                f"{tuple(x.shape)}; received {dim!r}."
            )
        out.append(d % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ShapeError(f"{owner}: dim has repeated dimensions: {dim!r}.")
    return tuple(sorted(out))


@register("group_l1")
def group_l1(x: Tensor, strength: float, dim: int | Sequence[int] | None = None) -> Tensor:
    """Proximal operator of ``strength * sum_g ||x_g||_2`` (group soft-thresholding).

    Each group is the set of entries sharing their indices outside ``dim``; it is scaled by
    ``max(0, 1 - strength / ||x_g||_2)``, so groups with norm ``<= strength`` become zero.

    Args:
        x: float32/float64 tensor.
        strength: Step-size-scaled group penalty ``>= 0``.
        dim: Dimension(s) spanned by one group (reduced when taking norms, as in
            :func:`torch.linalg.vector_norm`). Default: every dimension but the first, so
            each row of a ``Linear`` weight (an output unit) or each filter of a conv weight
            is a group; a 1-D tensor is a single group.

    Raises:
        ConfigError: Negative or non-finite ``strength``.
        ShapeError: Bad dtype or ``dim``.
        NonFiniteError: ``x`` contains NaN or Inf.
    """
    as_flat(x, "group_l1")
    lam = check_strength(strength, owner="group_l1")
    dims = _group_dims(x, dim)
    xd = x.detach()
    if xd.numel() == 0:
        return xd.clone()
    _finite(xd, "group_l1")
    if xd.dim() == 0:
        return soft_threshold(xd, lam)
    norms = torch.linalg.vector_norm(xd, dim=dims, keepdim=True)
    scale = torch.where(norms > lam, 1.0 - lam / norms, torch.zeros_like(norms))
    return xd * scale


@register("weight_sharing_l1")
def weight_sharing_l1(
    x: Tensor,
    strength: float,
    l1_strength: float | None = None,
    *,
    l1_ratio: float | None = None,
    method: str = "auto",
    stats: WeightSharingStats | None = None,
    **options: Any,
) -> Tensor:
    """Proximal operator of ``strength * R(w) + l1_strength * ||w||_1``.

    Weight sharing, then soft-thresholding (docs/algorithms.md, 'Weight-sharing facts',
    fact 5): the clusters closest to zero become exactly zero.

    Args:
        x: float32/float64 tensor of any shape.
        strength: Step-size-scaled weight-sharing strength ``>= 0``.
        l1_strength: Step-size-scaled l1 threshold ``>= 0`` (absolute: a caller that scales
            ``strength`` by the learning rate must scale this too).
        l1_ratio: Alternative to ``l1_strength``: threshold ``l1_ratio * strength``, which
            follows any scaling of ``strength`` automatically. Give exactly one of the two.
        method: As for :func:`weight_sharing`.
        stats: As for :func:`weight_sharing`.
        **options: As for :func:`weight_sharing`.

    Raises:
        ConfigError: Bad strengths, neither or both of ``l1_strength``/``l1_ratio``.
    """
    owner = "weight_sharing_l1"
    if (l1_strength is None) == (l1_ratio is None):
        raise ConfigError(
            f"{owner}: give exactly one of l1_strength (absolute threshold, step-size-scaled) "
            f"or l1_ratio (threshold = l1_ratio * strength); received l1_strength="
            f"{l1_strength!r}, l1_ratio={l1_ratio!r}."
        )
    lam = check_strength(strength, owner=owner)
    if l1_strength is not None:
        mu = check_strength(l1_strength, name="l1_strength", owner=owner)
    else:
        mu = check_strength(l1_ratio, name="l1_ratio", owner=owner) * lam
    w = weight_sharing(x, lam, method, stats=stats, **options)
    return w.sub_(w.clamp(-mu, mu))
