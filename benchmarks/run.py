"""Run every benchmark in one command: ``python benchmarks/run.py [--quick]``.

Each benchmark reports ratios against a baseline measured in the same run:

* the training engine's targets (``bench_engine.py``): ``Solver.step`` with default
  settings against a hand-written loop and against Cooper at 1, 10 and 100 groups, resident
  memory over 1e5 steps with 10,000 constraints, checkpoint size at step 1e3 and 1e5;
* solver overhead: ``Solver.step`` against a hand-written PyTorch loop (same maths);
* weight-sharing prox: each method against ``torch.sort`` of the same vector;
* per-sample constraints: per-step cost with 1,000,000 samples against 1,000;
* the closest peer (only when ``cooper-optim`` is installed): per-step time and the
  largest trajectory difference on the same problem and multiplier rule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short measurements (about a minute)"
    )
    args = parser.parse_args(argv)

    from constrain import bench
    from constrain.prox import _bench as prox_bench

    prox_sizes = [10**4, 10**5] if args.quick else [10**5, 10**6, 10**7]
    estimate = bench.estimate_seconds("solver", quick=args.quick) + prox_bench.estimate_seconds(
        prox_sizes, min_run_time=0.1 if args.quick else 1.0
    )
    print(
        f"# estimated duration: about {estimate / 60:.1f} min plus the per-sample and Cooper "
        "benchmarks" + ("" if args.quick else "; --quick runs small sizes only")
    )

    print("== training engine targets ==")
    import bench_engine

    bench_engine.main(["--quick"] if args.quick else [])

    print("\n== solver overhead ==")
    bench.bench_solver(quick=args.quick)

    print("\n== weight-sharing prox ==")
    import bench_prox

    sizes = "1e4,1e5" if args.quick else "1e5,1e6,1e7"
    bench_prox.main(
        ["--sizes", sizes, "--min-run-time", "0.1" if args.quick else "1", "--threads", "1"]
    )

    print("\n== per-sample constraints (1e6 vs 1e3 samples, batch 256) ==")
    import bench_per_sample

    bench_per_sample.main(["--rounds", "3" if args.quick else "10"])

    print("\n== against Cooper ==")
    import bench_cooper

    bench_cooper.main(
        ["--steps", "300" if args.quick else "2000", "--min-run-time", "0.1" if args.quick else "1"]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
