"""The training engine's targets, measured as ratios in one run (never timing assertions).

Rows:

Times are CPU seconds of the process (``time.process_time``, one thread), interleaved in
rounds and reduced by the minimum (as ``timeit`` advises), so that other load on the
machine enters the ratios as little as possible; each candidate is built five times
afresh and its time is the median over the five copies, since where a copy's tensors and
objects land in memory moves its time by a few percent.

* overhead: ``Solver.step`` with default settings against a hand-written loop with the
  same ``torch.optim.SGD`` and the same constraint functions (Lagrangian, backward, SGD
  step, projected gradient ascent on the multipliers), ``x`` in R^1000, 10,000 linear
  inequalities ``A x <= b`` split into 1 / 10 / 100 groups, float32, CPU, 1 thread.
  Targets: <= 1.05x at 1 group, <= 1.10x at 100 groups.
* Cooper 1.0.1 (``cooper-optim``, only if installed) on the same problem and rule
  (``SimultaneousOptimizer``, SGD with ``maximize=True`` on the multipliers): constrain
  must be faster at 1, 10 and 100 groups.
* memory: resident-set growth over 1e5 steps with 10,000 dense constraints (the history
  streamed to a JSON Lines file, as in a run folder). Target: < 200 MB.
* checkpoint size at step 1e3 and at step 1e5 of that run. Target: within 10%.

Usage: ``python benchmarks/bench_engine.py [--quick] [--json]`` (``--quick``: 1e4 steps
for the memory row and fewer rounds; for CI smoke tests).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import constrain
from constrain import ConstrainedProblem, Constraint, History, Solver, Variables

DIM, ROWS, LR, DUAL_LR = 1000, 10_000, 1e-2, 1e-2


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(ROWS, DIM, generator=generator) / DIM**0.5
    b = torch.rand(ROWS, generator=generator)
    return A, b


def _functions(
    groups: int, A: torch.Tensor, b: torch.Tensor
) -> list[Callable[[Any, Any], torch.Tensor]]:
    per = ROWS // groups

    def make(k: int) -> Callable[[Any, Any], torch.Tensor]:
        rows = slice(k * per, (k + 1) * per)
        Ak, bk = A[rows], b[rows]
        return lambda model, batch: Ak @ model.x - bk

    return [make(k) for k in range(groups)]


def _objective(model: Any, batch: Any) -> torch.Tensor:
    return 0.5 * (model.x - 1.0).pow(2).sum()


def _per_step(step: Callable[[], None], steps: int) -> float:
    """CPU seconds of the process per step (1 thread: the time the step computes, not
    the time other processes on a shared machine take from it)."""
    start = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - start) / steps


def _candidates(
    groups: int, fns: list[Callable[[Any, Any], torch.Tensor]], cooper: bool
) -> tuple[dict[str, Callable[[], None]], Callable[[], None]]:
    """One fresh set of steps to time (the library, the hand loop, Cooper) and a check
    that the library and the hand loop computed the same iterates."""
    problem = ConstrainedProblem(
        objective=_objective,
        constraints=[
            Constraint(f"g{k}", "<=", fn=f, size=ROWS // groups) for k, f in enumerate(fns)
        ],
    )
    model = Variables(x=torch.zeros(DIM))
    solver = Solver(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        controller={"name": "gda", "lr": DUAL_LR},
    )

    hand_model = Variables(x=torch.zeros(DIM))
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=LR)
    lam = torch.zeros(ROWS)

    def hand() -> None:
        nonlocal lam
        g = torch.cat([f(hand_model, None) for f in fns])
        loss = _objective(hand_model, None) + lam @ g
        hand_opt.zero_grad(set_to_none=True)
        loss.backward()
        hand_opt.step()
        lam = (lam + DUAL_LR * g.detach()).clamp_min(0)

    def library() -> None:
        solver.step()

    def same_maths() -> None:
        torch.testing.assert_close(model.x, hand_model.x, rtol=1e-4, atol=1e-5)

    candidates: dict[str, Callable[[], None]] = {"loop": hand, "constrain": library}
    if cooper:
        candidates["cooper"] = _cooper_step(fns)
    return candidates, same_maths


def overhead(
    groups: int, rounds: int, steps: int, cooper: bool, instances: int = 5
) -> dict[str, Any]:
    """Per-step times of the library, the hand loop (and Cooper), interleaved in rounds.

    Each of ``instances`` fresh copies of every candidate is timed ``rounds`` times
    (``steps`` steps each, all copies interleaved in an order shuffled every round, so that
    none always follows the same one); a copy's time is its minimum over the
    rounds, and a candidate's time the median over its copies. Fresh copies put their
    tensors and objects at other addresses: how well those share the caches with the
    large matrix changes a copy's time by a few percent, more than the rounds vary."""
    A, b = _data()
    fns = _functions(groups, A, b)
    copies = [_candidates(groups, fns, cooper) for _ in range(instances)]
    for candidates, _ in copies:  # warm-up
        for step in candidates.values():
            for _ in range(max(5, steps // 5)):
                step()
    times: dict[tuple[int, str], list[float]] = {}
    order = [(k, name) for k, (candidates, _) in enumerate(copies) for name in candidates]
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for k, name in order:
            times.setdefault((k, name), []).append(_per_step(copies[k][0][name], steps))
    row = {
        name: 1e3 * statistics.median(min(times[k, name]) for k in range(instances))
        for name in copies[0][0]
    }
    out: dict[str, Any] = {"groups": groups, **{f"{k}_ms": v for k, v in row.items()}}
    out["ratio_loop"] = row["constrain"] / row["loop"]
    if "cooper" in row:
        out["ratio_cooper"] = row["constrain"] / row["cooper"]
    for _, same_maths in copies:
        same_maths()
    return out


def _cooper_step(fns: list[Callable[[Any, Any], torch.Tensor]]) -> Callable[[], None]:
    import cooper

    model = Variables(x=torch.zeros(DIM))
    inequality = cooper.ConstraintType.INEQUALITY

    class Problem(cooper.ConstrainedMinimizationProblem):
        def __init__(self) -> None:
            super().__init__()
            self.items = []
            for k, f in enumerate(fns):
                size = f(model, None).numel()
                multiplier = cooper.multipliers.DenseMultiplier(num_constraints=size)
                constraint = cooper.Constraint(inequality, multiplier=multiplier)
                setattr(self, f"g{k}", constraint)
                self.items.append((constraint, f))

        def compute_cmp_state(self) -> Any:
            observed = {c: cooper.ConstraintState(f(model, None)) for c, f in self.items}
            return cooper.CMPState(loss=_objective(model, None), observed_constraints=observed)

    cmp = Problem()
    optimizer = cooper.optim.SimultaneousOptimizer(
        cmp=cmp,
        primal_optimizers=torch.optim.SGD(model.parameters(), lr=LR),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=DUAL_LR, maximize=True),
    )
    return lambda: optimizer.roll() and None  # type: ignore[func-returns-value]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_and_checkpoints(steps: int, early: int) -> dict[str, Any]:
    """RSS growth over ``steps`` steps with 10,000 dense constraints (history streamed to
    a file) and the checkpoint size at step ``early`` and at the end."""
    bound = torch.linspace(-1, 1, ROWS)
    problem = ConstrainedProblem(
        objective=lambda m, b: 0.5 * (m.x - 1).pow(2).sum(),
        constraints=[Constraint("cap", "<=", size=ROWS, fn=lambda m, b: m.x - bound)],
    )
    model = Variables(x=torch.zeros(ROWS))
    with tempfile.TemporaryDirectory() as folder:
        solver = Solver(
            problem,
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            controller={"name": "nupi", "lr": 0.1, "kp": 0.5},
            history=History(stream=Path(folder) / "history.jsonl"),
        )

        def checkpoint_size() -> int:
            buffer = io.BytesIO()
            torch.save(solver.state_dict(), buffer)
            return len(buffer.getvalue())

        solver.fit(steps=early)
        gc.collect()
        early_size, rss_start = checkpoint_size(), _rss_mb()
        start = time.perf_counter()
        solver.fit(steps=steps - early)
        seconds = time.perf_counter() - start
        gc.collect()
        rss_end, late_size = _rss_mb(), checkpoint_size()
        stream_mb = (Path(folder) / "history.jsonl").stat().st_size / 2**20
        records_in_memory = len(solver.history.records)
    return {
        "steps": steps,
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_growth_mb": rss_end - rss_start,
        "ms_per_step": 1e3 * seconds / (steps - early),
        "stream_mb": stream_mb,
        "records_in_memory": records_in_memory,
        "checkpoint_early_bytes": early_size,
        "checkpoint_late_bytes": late_size,
        "checkpoint_ratio": late_size / early_size,
        "early_step": early,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 1e4 steps for memory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--skip-memory", action="store_true", help="only the overhead rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import cooper
    except ImportError:
        cooper = None
    header = (
        f"constrain {constrain.__version__}, torch {torch.__version__}, "
        + (f"cooper-optim {cooper.__version__}, " if cooper else "cooper-optim not installed, ")
        + f"x in R^{DIM}, {ROWS} linear inequalities, float32, CPU, 1 thread"
    )
    rounds, steps = (5, 10) if args.quick else (30, 20)
    rows = [overhead(g, rounds, steps, cooper is not None) for g in (1, 10, 100)]
    results: dict[str, Any] = {"header": header, "overhead": rows}
    if not args.skip_memory:
        results["memory"] = (
            memory_and_checkpoints(10_000, 1_000)
            if args.quick
            else memory_and_checkpoints(100_000, 1_000)
        )
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(header)
    print(f"{'groups':>6}{'loop ms':>10}{'constrain ms':>14}{'ratio':>8}{'target':>9}", end="")
    print(f"{'cooper ms':>11}{'vs cooper':>11}" if cooper else "")
    for row in rows:
        target = {1: "<= 1.05", 100: "<= 1.10"}.get(row["groups"], "")
        line = (
            f"{row['groups']:>6}{row['loop_ms']:>10.3f}{row['constrain_ms']:>14.3f}"
            f"{row['ratio_loop']:>8.3f}{target:>9}"
        )
        if cooper:
            line += f"{row['cooper_ms']:>11.3f}{row['ratio_cooper']:>11.3f}"
        print(line)
    if "memory" in results:
        m = results["memory"]
        print(
            f"memory: {m['steps']} steps, 10,000 dense constraints: RSS {m['rss_start_mb']:.0f} -> "
            f"{m['rss_end_mb']:.0f} MB (growth {m['rss_growth_mb']:.1f} MB, target < 200); "
            f"{m['ms_per_step']:.3f} ms/step; stream {m['stream_mb']:.1f} MB; "
            f"{m['records_in_memory']} records in memory"
        )
        print(
            f"checkpoint size: step {m['early_step']} {m['checkpoint_early_bytes']} B, step "
            f"{m['steps']} {m['checkpoint_late_bytes']} B (ratio {m['checkpoint_ratio']:.3f}, "
            "target within 10%)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
