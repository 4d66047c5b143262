"""Per-step cost of per-sample (indexed) constraints as the number of samples grows.

A Feasible Learning problem (:class:`constrain.studies.FeasibleLearning`: one loss
constraint and one multiplier per sample) is stepped on an identical model and an
identical minibatch of ``--batch`` samples for every number of samples ``N``; only the
sample indices differ (distinct, spread over ``[0, N)``). A step must cost O(batch), so
the median time per :meth:`constrain.Solver.step` should not depend on ``N``.

The sizes are measured in interleaved rounds (``N1, N2, N1, N2, ...``) so that load on a
shared machine affects all of them alike. Each round times ``--steps`` steps of each size
with :class:`torch.utils.benchmark.Timer` (``timeit``, which warms up first); the reported
number per size is the median over the rounds of the time per step, and the ratio is the
ratio of those medians.

Usage::

    python benchmarks/bench_per_sample.py                       # N = 1e3 and 1e6, batch 256
    python benchmarks/bench_per_sample.py --sizes 1000 100000 1000000 --json
    python benchmarks/bench_per_sample.py --max-ratio 1.2       # exit 1 if slower

Prints the median milliseconds per step for each ``N`` and the ratio of the largest to
the smallest ``N``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from constrain import Solver
from constrain.studies import FeasibleLearning


def make_solver(num_samples: int, num_features: int, controller: str, seed: int) -> Solver:
    """A solver for Feasible Learning with ``num_samples`` per-sample multipliers."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(num_features, 32), nn.ReLU(), nn.Linear(32, 1))
    problem = FeasibleLearning(num_samples=num_samples, epsilon=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Solver(problem, model, optimizer, controller={"name": controller, "lr": 0.1})


def time_steps(solver: Solver, batch: tuple[torch.Tensor, ...], steps: int) -> float:
    """Mean seconds per call over ``steps`` calls of ``solver.step(batch)``
    (:class:`torch.utils.benchmark.Timer`)."""
    timer = benchmark.Timer(
        stmt="solver.step(batch)",
        globals={"solver": solver, "batch": batch},
        num_threads=torch.get_num_threads(),
    )
    return float(timer.timeit(steps).mean)


def run(
    sizes: Sequence[int],
    *,
    batch_size: int = 256,
    num_features: int = 20,
    rounds: int = 10,
    steps_per_round: int = 50,
    warmup: int = 50,
    controller: str = "gda",
    seed: int = 0,
) -> dict[str, Any]:
    """Median seconds per step for each number of samples, and the ratio largest/smallest."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, num_features, generator=generator)
    y = (torch.rand(batch_size, generator=generator) > 0.5).to(x.dtype)
    solvers, batches = {}, {}
    for n in sizes:
        if n < batch_size:
            raise SystemExit(f"every size must be >= the batch size {batch_size}; got {n}")
        indices = torch.randperm(n, generator=generator)[:batch_size]
        solvers[n] = make_solver(n, num_features, controller, seed)
        batches[n] = (x, y, indices)
        time_steps(solvers[n], batches[n], warmup)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            times[n].append(time_steps(solvers[n], batches[n], steps_per_round))
    medians = {n: statistics.median(t) for n, t in times.items()}
    smallest, largest = min(sizes), max(sizes)
    return {
        "batch_size": batch_size,
        "controller": controller,
        "steps_timed_per_size": rounds * steps_per_round,
        "rounds": rounds,
        "median_ms_per_step": {str(n): 1e3 * m for n, m in medians.items()},
        "ratio": medians[largest] / medians[smallest],
        "ratio_of": [largest, smallest],
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per size and round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--controller", default="gda", help="e.g. gda or nupi (stateful)")
    parser.add_argument(
        "--max-ratio", type=float, default=None, help="exit with status 1 if the ratio exceeds this"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(
        args.sizes,
        batch_size=args.batch,
        rounds=args.rounds,
        steps_per_round=args.steps,
        warmup=args.warmup,
        controller=args.controller,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for n, ms in result["median_ms_per_step"].items():
            print(
                f"N = {int(n):>10,d}: {ms:.3f} ms/step (median over {result['rounds']} rounds of "
                f"{result['steps_timed_per_size'] // result['rounds']} steps)"
            )
        largest, smallest = result["ratio_of"]
        print(
            f"ratio N={largest:,d} / N={smallest:,d}: {result['ratio']:.3f} "
            f"(batch {result['batch_size']}, controller {result['controller']}, "
            f"{result['torch_threads']} torch threads)"
        )
    if args.max_ratio is not None and result["ratio"] > args.max_ratio:
        print(f"FAIL: ratio {result['ratio']:.3f} > {args.max_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
