"""Benchmark of the weight-sharing prox: time per call against ``torch.sort`` of the same
vector in the same run (``constrain bench prox``; ``benchmarks/bench_prox.py``).

Every contender is timed with :class:`torch.utils.benchmark.Timer` (``blocked_autorange``:
warm-up, blocks of calls of at least ``min_run_time`` seconds in all, synchronisation of
CUDA), with the thread count of the process. ``ms/call`` is the median time per call and
``x torch.sort`` is that median divided by the median of ``torch.sort(x)`` (values and
indices) of the same tensor, so the ratio column always equals the ratio of the ms columns
shown. Rows:

* ``torch.sort`` -- the reference (ratio 1);
* ``np.sort (values)`` -- NumPy's SIMD sort of the values only, to show how far from a
  fast sort ``torch.sort`` is on this CPU (CPU only);
* ``naive numpy+scipy`` -- ``np.argsort``, shift, ``scipy.optimize.isotonic_regression``,
  scatter back (CPU only);
* one row per method of :func:`constrain.prox.weight_sharing`, with its rounds (see
  :class:`~constrain.prox.WeightSharingStats`) and the number of clusters.

``parallel_pav`` on the worst-case input needs ``d - 1`` rounds; it is skipped above
``pav_worst_max_d`` and the row says so. Below the table, ``worst_vs_random`` gives each
contender's worst-case time divided by its random-input time (ratio of the medians).

Entry points: :func:`run_suite` (``constrain bench prox``, which prints an estimate of its
duration first, see :func:`estimate_seconds`), :func:`main` (the command line of
``benchmarks/bench_prox.py``; ``--threads 1`` gives steadier figures on a busy machine, and
changes nothing for ``torch.sort`` or ``sort_pava``, which run on one core either way).
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from .._timing import format_duration, median_seconds
from ._inputs import INPUT_KINDS, make_input
from ._isotonic import pava_numpy
from ._weight_sharing import WeightSharingStats, weight_sharing

__all__ = [
    "BenchRow",
    "estimate_seconds",
    "suite_estimate",
    "format_row",
    "format_table",
    "main",
    "run",
    "run_suite",
    "worst_vs_random",
]

DEFAULT_SIZES = (10**5, 10**6, 10**7)
DEFAULT_METHODS = ("sort_pava", "parallel_pav", "divide_conquer")


@dataclass
class BenchRow:
    """One line of the benchmark table (``ms`` and ``ratio`` are ``None`` when skipped)."""

    d: int
    kind: str
    method: str
    ms: float | None
    ratio: float | None
    sort_ms: float
    rounds: int | None = None
    clusters: int | None = None
    note: str = ""
    vs_random: float | None = None
    """This median time / the same contender's median time on the random input."""


def naive_numpy_scipy(x: Tensor, lam: float) -> Tensor:
    """The straightforward host implementation used as a baseline."""
    xn = x.detach().cpu().numpy()
    d = xn.size
    order = np.argsort(xn)
    z = xn[order].astype(np.float64) + lam * (d - 1 - 2 * np.arange(d)) / (d - 1)
    out = np.empty_like(xn)
    out[order] = pava_numpy(z)
    return torch.from_numpy(out)


def run(
    sizes: Iterable[int] = DEFAULT_SIZES,
    methods: Sequence[str] = DEFAULT_METHODS,
    kinds: Sequence[str] = ("random", "worst"),
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    min_run_time: float = 1.0,
    baselines: bool = True,
    pav_worst_max_d: int = 20_000,
    seed: int = 0,
    progress: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Time :func:`weight_sharing` per method against ``torch.sort`` and return the rows.

    ``ratio`` is ``ms / sort_ms`` and ``vs_random`` is ``ms / ms on the random input``:
    ratios of the medians shown in the table.
    """
    dev = torch.device(device)
    rows: list[BenchRow] = []
    for d in sizes:
        d = int(d)
        medians: dict[tuple[str, str], float] = {}
        for kind in kinds:
            x, lam = make_input(kind, d, dtype=dtype, device=dev, seed=seed)
            contenders: dict[str, Callable[[], object]] = {"torch.sort": partial(torch.sort, x)}
            if baselines and dev.type == "cpu":
                contenders["np.sort (values)"] = partial(np.sort, x.numpy())
                contenders["naive numpy+scipy"] = partial(naive_numpy_scipy, x, lam)
            for method in methods:
                contenders[method] = partial(weight_sharing, x, lam, method)
            sort_ms: float | None = None
            for name, fn in contenders.items():
                if name == "parallel_pav" and kind == "worst" and d > pav_worst_max_d:
                    note = f"skipped: Theta(d) rounds (~{d - 1:.2g} > pav_worst_max_d)"
                    row = BenchRow(d, kind, name, None, None, sort_ms or math.nan, note=note)
                else:
                    stats = None
                    if name in methods:
                        stats = WeightSharingStats()
                        weight_sharing(x, lam, name, stats=stats)
                    ms = 1e3 * median_seconds(fn, min_run_time)
                    medians[kind, name] = ms
                    if name == "torch.sort":
                        sort_ms = ms
                    assert sort_ms is not None
                    base = medians.get(("random", name))
                    row = BenchRow(
                        d,
                        kind,
                        stats.method if stats is not None and name == "auto" else name,
                        ms,
                        ms / sort_ms,
                        sort_ms,
                        rounds=stats.rounds if stats is not None else None,
                        clusters=stats.clusters if stats is not None else None,
                        note="reference" if name == "torch.sort" else "",
                        vs_random=ms / base if kind != "random" and base is not None else None,
                    )
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


_COST = {
    "torch.sort": 1.0,
    "np.sort (values)": 0.1,
    "naive numpy+scipy": 0.6,
    "sort_pava": 0.7,
    "parallel_pav": 2.0,
    "divide_conquer": 17.0,
}
"""Typical time per call relative to ``torch.sort`` on a CPU (random input), for
:func:`estimate_seconds`."""


def estimate_seconds(
    sizes: Iterable[int],
    methods: Sequence[str] = DEFAULT_METHODS,
    kinds: Sequence[str] = ("random", "worst"),
    *,
    device: torch.device | str = "cpu",
    min_run_time: float = 1.0,
    baselines: bool = True,
    pav_worst_max_d: int = 20_000,
) -> float:
    """A rough duration of :func:`run` with these arguments, in seconds.

    Times one ``torch.sort`` of ``10**5`` values here, scales it like ``d log d`` and by
    each contender's typical cost relative to ``torch.sort``; every contender costs at
    least ``min_run_time`` and, for slow calls, about three calls (statistics, block-size
    estimate, one block).
    """
    dev = torch.device(device)
    base_d = 10**5
    x = torch.rand(base_d, device=dev)
    sort_base = median_seconds(partial(torch.sort, x), min(0.2, min_run_time))
    total = 0.0
    for d in sizes:
        scale = (d * math.log(max(d, 2))) / (base_d * math.log(base_d))
        for kind in kinds:
            names = ["torch.sort", *methods]
            if baselines and dev.type == "cpu":
                names += ["np.sort (values)", "naive numpy+scipy"]
            for name in names:
                if name == "parallel_pav" and kind == "worst" and d > pav_worst_max_d:
                    continue
                call = sort_base * scale * _COST.get(name, 4.0)
                if name == "parallel_pav" and kind == "worst":
                    call *= max(1.0, d / 1000)  # Theta(d) rounds
                total += max(min_run_time + call, 3 * call)
    return total


_HEADER = (
    f"{'d':>10}  {'input':<9} {'method':<19} {'ms/call':>10} {'x torch.sort':>12} "
    f"{'rounds':>7} {'clusters':>9}  note"
)


def format_row(r: BenchRow) -> str:
    """One row of :func:`format_table`."""
    ms = f"{r.ms:10.2f}" if r.ms is not None else f"{'-':>10}"
    ratio = f"{r.ratio:12.2f}" if r.ratio is not None else f"{'-':>12}"
    rounds = f"{r.rounds:7d}" if r.rounds is not None else f"{'':>7}"
    clusters = f"{r.clusters:9d}" if r.clusters is not None else f"{'':>9}"
    return f"{r.d:>10.0e}  {r.kind:<9} {r.method:<19} {ms} {ratio} {rounds} {clusters}  {r.note}"


def format_table(rows: Sequence[BenchRow]) -> str:
    """Render rows as a plain-text table."""
    return "\n".join([_HEADER, "-" * len(_HEADER), *(format_row(r) for r in rows)])


def worst_vs_random(rows: Sequence[BenchRow]) -> str:
    """Summary lines: per size and contender, the worst-case input's median time divided by
    the random input's."""
    lines = ["worst-case / random input (ratio of the median times):"]
    for r in rows:
        if r.kind == "worst" and r.vs_random is not None:
            lines.append(f"  d={r.d:.0e} {r.method:<19} {r.vs_random:5.2f}")
    return "\n".join(lines)


def _describe(device: torch.device, dtype: torch.dtype, min_run_time: float) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return (
        f"# weight-sharing prox vs torch.sort | torch {torch.__version__} | device {device} "
        f"({name or platform.machine()}) | threads {torch.get_num_threads()} | "
        f"{str(dtype).removeprefix('torch.')} | median per call, torch.utils.benchmark "
        f"(>= {min_run_time:g} s per contender)"
    )


def _suite_runs(quick: bool) -> list[tuple[torch.device, list[int]]]:
    runs: list[tuple[torch.device, list[int]]] = [
        (torch.device("cpu"), [10**4, 10**5] if quick else list(DEFAULT_SIZES))
    ]
    if torch.cuda.is_available():
        runs.append((torch.device("cuda"), [10**5, 10**6] if quick else [10**6, 10**7, 10**8]))
    return runs


def suite_estimate(*, quick: bool = False, min_run_time: float | None = None) -> float:
    """A rough duration of :func:`run_suite`, in seconds (see :func:`estimate_seconds`)."""
    seconds = min_run_time if min_run_time is not None else (0.1 if quick else 1.0)
    return sum(
        estimate_seconds(sizes, device=device, min_run_time=seconds)
        for device, sizes in _suite_runs(quick)
    )


def run_suite(
    *,
    quick: bool = False,
    printer: Callable[[str], None] | None = print,
    min_run_time: float | None = None,
    estimate: bool = True,
) -> list[BenchRow]:
    """The ``constrain bench prox`` suite; returns all rows and prints them with ``printer``.

    CPU, float32, random and worst-case inputs, every method and baseline, at
    ``d = 1e5, 1e6, 1e7`` (``quick``: ``1e4, 1e5``). Where CUDA is available, the same on
    the GPU at ``d = 1e6, 1e7, 1e8`` (``quick``: ``1e5, 1e6``). With ``estimate``, an
    estimate of the duration is printed first.
    """
    seconds = min_run_time if min_run_time is not None else (0.1 if quick else 1.0)
    if printer is not None and estimate:
        printer(
            "# estimated duration of the prox suite here: about "
            + format_duration(suite_estimate(quick=quick, min_run_time=seconds))
            + ("" if quick else " (--quick: small sizes only)")
        )
    rows: list[BenchRow] = []
    for device, sizes in _suite_runs(quick):
        if printer is not None:
            printer(_describe(device, torch.float32, seconds))
            printer(_HEADER)
            printer("-" * len(_HEADER))
        block = run(
            sizes,
            device=device,
            min_run_time=seconds,
            progress=None if printer is None else (lambda row: printer(format_row(row))),
        )
        if printer is not None:
            printer(worst_vs_random(block))
        rows += block
    return rows


def _sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: print the benchmark table."""
    parser = argparse.ArgumentParser(
        prog="constrain bench prox",
        description="Time the weight-sharing prox per method against torch.sort.",
    )
    parser.add_argument("--sizes", type=_sizes, default=list(DEFAULT_SIZES), help="e.g. 1e5,1e6")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma separated")
    parser.add_argument("--kinds", default="random,worst", help=f"from {', '.join(INPUT_KINDS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="least measured time per contender (torch.utils.benchmark blocked_autorange)",
    )
    parser.add_argument("--pav-worst-max-d", type=int, default=20_000)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available on this machine")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    estimate = estimate_seconds(
        args.sizes,
        methods,
        kinds,
        device=device,
        min_run_time=args.min_run_time,
        baselines=not args.no_baselines,
        pav_worst_max_d=args.pav_worst_max_d,
    )
    print(f"# estimated duration here: about {format_duration(estimate)}")
    print(_describe(device, getattr(torch, args.dtype), args.min_run_time))
    print(_HEADER)
    print("-" * len(_HEADER), flush=True)
    start = time.perf_counter()
    rows = run(
        args.sizes,
        methods,
        kinds,
        device=device,
        dtype=getattr(torch, args.dtype),
        min_run_time=args.min_run_time,
        baselines=not args.no_baselines,
        pav_worst_max_d=args.pav_worst_max_d,
        seed=args.seed,
        progress=lambda row: print(format_row(row), flush=True),
    )
    if "worst" in kinds and "random" in kinds:
        print(worst_vs_random(rows))
    print(f"# took {format_duration(time.perf_counter() - start)}")
    return 0
