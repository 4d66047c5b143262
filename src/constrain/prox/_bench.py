"""Benchmark of the weight-sharing prox: time per call against ``torch.sort`` of the same
vector in the same run (``constrain bench prox``; ``benchmarks/bench_prox.py``).

For each size and input kind the reference is ``torch.sort(x)`` (values and indices) of the
same tensor, timed in the same run. After ``warmup`` calls of everything, each of ``repeats``
rounds times every contender once, in turn (``torch.cuda.synchronize`` around each call on
CUDA). ``ms/call`` is the median over rounds; the ratio is the median over rounds of the
time divided by ``torch.sort``'s time *in the same round*, which cancels most of the drift
of a shared, loaded machine. Rows:

* ``torch.sort`` -- the reference (ratio 1);
* ``np.sort (values)`` -- NumPy's SIMD sort of the values only, to show how far from a
  fast sort ``torch.sort`` is on this CPU (CPU only);
* ``naive numpy+scipy`` -- ``np.argsort``, shift, ``scipy.optimize.isotonic_regression``,
  scatter back (CPU only);
* one row per method of :func:`constrain.prox.weight_sharing`, with its rounds (see
  :class:`~constrain.prox.WeightSharingStats`) and the number of clusters.

``parallel_pav`` on the worst-case input needs ``d - 1`` rounds; it is skipped above
``pav_worst_max_d`` and the row says so. Below the table, ``worst_vs_random`` gives each
contender's worst-case cost relative to its random-input cost, timed in the same rounds.

Entry points: :func:`run_suite` (``constrain bench prox``), :func:`main` (the command line of
``benchmarks/bench_prox.py``; ``--threads 1`` gives steadier figures on a busy machine, and
changes nothing for ``torch.sort`` or ``sort_pava``, which run on one core either way).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from ._inputs import INPUT_KINDS, make_input
from ._isotonic import pava_numpy
from ._weight_sharing import WeightSharingStats, weight_sharing

__all__ = [
    "BenchRow",
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
    """Median over rounds of this time / the same contender's time on the random input."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


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
    repeats: int = 5,
    warmup: int = 1,
    baselines: bool = True,
    pav_worst_max_d: int = 20_000,
    seed: int = 0,
    progress: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Time :func:`weight_sharing` per method against ``torch.sort`` and return the rows.

    For each size, every (input kind, contender) pair is timed once per round, in turn, so
    that the ``x torch.sort`` ratios and the worst-versus-random comparison
    (:attr:`BenchRow.vs_random`) are medians of ratios of times taken seconds apart.
    """
    dev = torch.device(device)
    rows: list[BenchRow] = []
    for d in sizes:
        d = int(d)
        contenders: dict[tuple[str, str], Callable[[], object]] = {}
        info: dict[tuple[str, str], WeightSharingStats] = {}
        skipped: dict[tuple[str, str], str] = {}
        for kind in kinds:
            x, lam = make_input(kind, d, dtype=dtype, device=dev, seed=seed)
            contenders[kind, "torch.sort"] = partial(torch.sort, x)
            if baselines and dev.type == "cpu":
                contenders[kind, "np.sort (values)"] = partial(np.sort, x.numpy())
                contenders[kind, "naive numpy+scipy"] = partial(naive_numpy_scipy, x, lam)
            for method in methods:
                if method == "parallel_pav" and kind == "worst" and d > pav_worst_max_d:
                    note = f"skipped: Theta(d) rounds (~{d - 1:.2g} > pav_worst_max_d)"
                    skipped[kind, method] = note
                    continue
                info[kind, method] = WeightSharingStats()
                weight_sharing(x, lam, method, stats=info[kind, method])  # also warms up
                contenders[kind, method] = partial(weight_sharing, x, lam, method)
        for _ in range(warmup):
            for fn in contenders.values():
                _time_once(fn, dev)
        times: dict[tuple[str, str], list[float]] = {key: [] for key in contenders}
        for _ in range(repeats):
            for key, fn in contenders.items():
                times[key].append(_time_once(fn, dev))

        def paired(a: list[float], b: list[float]) -> float:
            return statistics.median(x / y for x, y in zip(a, b, strict=True))

        for kind in kinds:
            reference = times[kind, "torch.sort"]
            sort_ms = 1e3 * statistics.median(reference)
            names = [n for k, n in contenders if k == kind and (k, n) not in info]
            names += [m for m in methods if (kind, m) in info or (kind, m) in skipped]
            for name in names:
                key = (kind, name)
                if key in skipped:
                    row = BenchRow(d, kind, name, None, None, sort_ms, note=skipped[key])
                else:
                    stats = info.get(key)
                    base = ("random", name)
                    row = BenchRow(
                        d,
                        kind,
                        stats.method if stats is not None and name == "auto" else name,
                        1e3 * statistics.median(times[key]),
                        paired(times[key], reference),
                        sort_ms,
                        rounds=stats.rounds if stats is not None else None,
                        clusters=stats.clusters if stats is not None else None,
                        note="reference" if name == "torch.sort" else "",
                        vs_random=paired(times[key], times[base])
                        if kind != "random" and base in times
                        else None,
                    )
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


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
    """Summary lines: per size and contender, the worst-case input's cost relative to the
    random input's (median of ratios of times taken in the same round)."""
    lines = ["worst-case / random input (same rounds):"]
    for r in rows:
        if r.kind == "worst" and r.vs_random is not None:
            lines.append(f"  d={r.d:.0e} {r.method:<19} {r.vs_random:5.2f}")
    return "\n".join(lines)


def _describe(device: torch.device, dtype: torch.dtype, repeats: int, warmup: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return (
        f"# weight-sharing prox vs torch.sort | torch {torch.__version__} | device {device} "
        f"({name or platform.machine()}) | threads {torch.get_num_threads()} | "
        f"{str(dtype).removeprefix('torch.')} | median of {repeats} after {warmup} warm-up"
    )


def run_suite(
    *,
    quick: bool = False,
    printer: Callable[[str], None] | None = print,
    repeats: int | None = None,
) -> list[BenchRow]:
    """The ``constrain bench prox`` suite; returns all rows and prints them with ``printer``.

    CPU, float32, random and worst-case inputs, every method and baseline, at
    ``d = 1e5, 1e6, 1e7`` (``quick``: ``1e4, 1e5``). Where CUDA is available, the same on
    the GPU at ``d = 1e6, 1e7, 1e8`` (``quick``: ``1e5, 1e6``).
    """
    runs: list[tuple[torch.device, list[int]]] = [
        (torch.device("cpu"), [10**4, 10**5] if quick else list(DEFAULT_SIZES))
    ]
    if torch.cuda.is_available():
        runs.append((torch.device("cuda"), [10**5, 10**6] if quick else [10**6, 10**7, 10**8]))
    count = repeats if repeats is not None else (3 if quick else 5)
    rows: list[BenchRow] = []
    for device, sizes in runs:
        if printer is not None:
            printer(_describe(device, torch.float32, count, 1))
            printer(_HEADER)
            printer("-" * len(_HEADER))
        block = run(
            sizes,
            device=device,
            repeats=count,
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
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
    print(_describe(device, getattr(torch, args.dtype), args.repeats, args.warmup))
    print(_HEADER)
    print("-" * len(_HEADER), flush=True)
    rows = run(
        args.sizes,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        [k.strip() for k in args.kinds.split(",") if k.strip()],
        device=device,
        dtype=getattr(torch, args.dtype),
        repeats=args.repeats,
        warmup=args.warmup,
        baselines=not args.no_baselines,
        pav_worst_max_d=args.pav_worst_max_d,
        seed=args.seed,
        progress=lambda row: print(format_row(row), flush=True),
    )
    if "worst" in args.kinds and "random" in args.kinds:
        print(worst_vs_random(rows))
    return 0
