"""Everything that needs a GPU, in one command (under 5 minutes): ``python benchmarks/gpu.py``.

1. the CUDA tests (``pytest -m cuda`` plus the tests that skip without CUDA);
2. solver overhead on the device: ``Solver.step`` (default settings) against a hand-written
   loop with the same ``torch.optim.SGD`` and constraint functions, ``x`` in R^1000 and
   10,000 linear inequalities in 1 and 100 groups (CUDA events around 50-step blocks);
3. the weight-sharing prox at d = 1e6, 1e7, 1e8 against ``torch.sort`` of the same vector
   on the device (:mod:`constrain.prox._bench`);
4. host synchronisations: ``torch.cuda.set_sync_debug_mode("warn")`` counts the warnings of
   synchronising calls per step, for ``check_every=1`` (default: at most one per step) and
   ``check_every=8`` (none on the steps between checks).

Without a GPU it prints a message and exits with status 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def cuda_tests() -> int:
    """Run the tests that need CUDA; returns pytest's exit status."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(HERE.parent / "tests" / "test_cuda.py"),
        str(HERE.parent / "tests" / "prox" / "test_prox_methods.py"),
        "-k",
        "cuda",
    ]
    print("$", " ".join(command), flush=True)
    return subprocess.call(command, cwd=HERE.parent)


def overhead(device: torch.device, groups: int, blocks: int = 7, steps: int = 50) -> dict[str, Any]:
    """Per-step times (CUDA events) of the library and the hand loop, interleaved."""
    import constrain
    from constrain import ConstrainedProblem, Constraint, Variables

    dim, rows = 1000, 10_000
    generator = torch.Generator().manual_seed(0)
    A = (torch.randn(rows, dim, generator=generator) / dim**0.5).to(device)
    b = torch.rand(rows, generator=generator).to(device)
    per = rows // groups

    def make(k: int) -> Any:
        Ak, bk = A[k * per : (k + 1) * per], b[k * per : (k + 1) * per]
        return lambda model, batch: Ak @ model.x - bk

    fns = [make(k) for k in range(groups)]

    def objective(model: Any, batch: Any) -> torch.Tensor:
        return 0.5 * (model.x - 1.0).pow(2).sum()

    problem = ConstrainedProblem(
        objective=objective,
        constraints=[Constraint(f"g{k}", "<=", fn=f, size=per) for k, f in enumerate(fns)],
    )
    model = Variables(x=torch.zeros(dim, device=device))
    solver = constrain.Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=1e-2),
        controller={"name": "gda", "lr": 1e-2},
    )
    hand_model = Variables(x=torch.zeros(dim, device=device))
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=1e-2)
    lam = torch.zeros(rows, device=device)

    def hand() -> None:
        nonlocal lam
        g = torch.cat([f(hand_model, None) for f in fns])
        loss = objective(hand_model, None) + lam @ g
        hand_opt.zero_grad(set_to_none=True)
        loss.backward()
        hand_opt.step()
        lam = (lam + 1e-2 * g.detach()).clamp_min(0)

    def library() -> None:
        solver.step()

    times: dict[str, list[float]] = {"loop": [], "constrain": []}
    for fn in (hand, library):
        for _ in range(10):
            fn()
    for _ in range(blocks):
        for name, fn in (("loop", hand), ("constrain", library)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(steps):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            times[name].append(start.elapsed_time(end) / steps)
    loop, lib = min(times["loop"]), min(times["constrain"])
    return {"groups": groups, "loop_ms": loop, "constrain_ms": lib, "ratio": lib / loop}


def synchronisations(device: torch.device, check_every: int, steps: int = 16) -> list[int]:
    """Synchronising calls per step, counted by ``torch.cuda.set_sync_debug_mode``."""
    from constrain import (
        ConstrainedProblem,
        Constraint,
        ConstraintValue,
        ProblemState,
        Solver,
        Variables,
    )

    class Problem(ConstrainedProblem):
        def evaluate(self, model: Any, batch: Any) -> ProblemState:
            x = model.x
            idx = torch.tensor([1, 3, 3, 6], device=device)
            return ProblemState(
                (x - 1).pow(2).sum(),
                {
                    "cap": x[:4] - 0.5,
                    "sum": x.sum().reshape(1),
                    "margin": ConstraintValue(0.2 - x[idx], indices=idx),
                },
            )

    problem = Problem(
        constraints=[
            Constraint("cap", "<=", size=4),
            Constraint("sum", "==", rhs=2.0),
            Constraint("margin", "<=", size=8, per_sample=True),
        ]
    )
    model = Variables(x=torch.zeros(8, device=device))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        controller={"name": "nupi", "lr": 0.3, "kp": 0.5},
        check_every=check_every,
    )
    for _ in range(2):
        solver.step()
    counts = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        for _ in range(steps):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                solver.step()
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true", help="only the measurements")
    parser.add_argument("--max-d", type=float, default=1e8, help="largest prox size")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to run here (run this on a machine with a GPU).")
        return 0
    device = torch.device("cuda")
    start = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    status = 0 if args.skip_tests else cuda_tests()

    print("\n== solver overhead on the device (CUDA events, min of 7 blocks of 50 steps) ==")
    print(f"{'groups':>6}{'loop ms':>10}{'constrain ms':>14}{'ratio':>8}")
    for groups in (1, 100):
        row = overhead(device, groups)
        print(
            f"{row['groups']:>6}{row['loop_ms']:>10.3f}{row['constrain_ms']:>14.3f}{row['ratio']:>8.3f}"
        )

    print("\n== synchronisations per step (torch.cuda.set_sync_debug_mode) ==")
    for check_every in (1, 8):
        counts = synchronisations(device, check_every)
        print(f"check_every={check_every}: per step {counts}")

    print("\n== weight-sharing prox against torch.sort on the device ==", flush=True)
    from constrain.prox import _bench

    sizes = ",".join(str(int(d)) for d in (1e6, 1e7, 1e8) if d <= args.max_d)
    _bench.main(["--device", "cuda", "--sizes", sizes, "--repeats", "3", "--kinds", "random,worst"])
    print(f"\ntotal {time.perf_counter() - start:.0f} s; CUDA tests exit status {status}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
