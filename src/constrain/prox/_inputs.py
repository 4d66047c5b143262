"""Test and benchmark inputs for the weight-sharing prox, each with a matching strength."""

from __future__ import annotations

import torch
from torch import Tensor

from .._errors import ConfigError

__all__ = ["INPUT_KINDS", "make_input", "worst_case_strength"]

INPUT_KINDS = ("random", "worst", "tied", "clustered")


def worst_case_strength(d: int) -> float:
    """Strength that makes :func:`make_input` ``("worst", d)`` the parallel-PAV worst case."""
    if d < 2:
        return 0.0
    return (d - 1) / 2 * (1.0 - 1.0 / (2.0 * d * d))


def make_input(
    kind: str,
    d: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[Tensor, float]:
    """Return ``(x, strength)`` of length ``d``.

    Kinds:
        ``random``: standard normal entries, strength 1 (about 40% as many clusters as
            entries at ``d = 1e6``).
        ``worst``: a random permutation of ``[0, 0, 1, 2, ..., d - 2]`` with strength
            ``(d-1)/2 * (1 - 1/(2 d^2))``. Sorted and shifted it is
            ``z = z_1 + [M, 0, eps, 2 eps, ...]`` with ``M = 1 - eps > eps d^2``: the left
            particle sweeps up the others one at a time, so parallel PAV needs ``d - 1``
            rounds, and everything ends in one cluster (the mean). Exact in float64 for
            moderate ``d``; in float32 (or ``d`` beyond ~1e4) ``eps`` is below rounding and the
            input is the tie-breaking limit ``eps = 0`` of the same sweep.
        ``tied``: integers in ``[0, 8)`` (many exact ties), strength 1.
        ``clustered``: 10 well-separated centres plus noise of size 1e-6, strength 1e-3 * d.
    """
    if kind not in INPUT_KINDS:
        raise ConfigError(f"unknown input kind {kind!r}; known kinds: {', '.join(INPUT_KINDS)}.")
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(d, generator=gen, dtype=torch.float64)
        lam = 1.0
    elif kind == "worst":
        base = torch.arange(-1, d - 1, dtype=torch.float64).clamp_(min=0.0)
        x = base[torch.randperm(d, generator=gen)]
        lam = worst_case_strength(d)
    elif kind == "tied":
        x = torch.randint(0, 8, (d,), generator=gen).to(torch.float64)
        lam = 1.0
    else:
        centres = torch.randn(10, generator=gen, dtype=torch.float64) * 10.0
        pick = torch.randint(0, 10, (d,), generator=gen)
        x = centres[pick] + 1e-6 * torch.randn(d, generator=gen, dtype=torch.float64)
        lam = 1e-3 * d
    return x.to(device=device, dtype=dtype), lam
