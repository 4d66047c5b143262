"""Timing of benchmarks with :mod:`torch.utils.benchmark`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import benchmark

__all__ = ["format_duration", "median_seconds"]


def median_seconds(fn: Callable[[], object], min_run_time: float = 0.2) -> float:
    """Median seconds per call of ``fn``.

    Uses :meth:`torch.utils.benchmark.Timer.blocked_autorange`: a warm-up that also sizes
    the blocks, then blocks of calls until ``min_run_time`` seconds are measured; accelerator
    work (CUDA) is synchronised around every block. Runs with the process's thread count.
    """
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def format_duration(seconds: float) -> str:
    """``"40 s"`` below 90 seconds, else ``"3.5 min"``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
