"""Speed benchmarks, reported as ratios against baselines measured in the same run.

Suites:

* ``solver``: time per step of :class:`constrain.Solver` against a hand-written PyTorch
  loop doing the same arithmetic (Lagrangian, backward, projected GDA multiplier step,
  SGD step), for 1, 10 and 100 constraint groups. The ratio is the library's overhead.
* ``prox``: the weight-sharing proximal operator against ``torch.sort`` of the same vector
  (see :mod:`constrain.prox._bench`).

Times are medians per call from :mod:`torch.utils.benchmark` (warm-up and CUDA
synchronisation included) and every ratio is the ratio of the two median times shown.
Run ``constrain bench`` (all suites; an estimate of the duration is printed first),
``constrain bench solver``, ``constrain bench --quick`` (small sizes, short measurements) or
``python benchmarks/run.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._timing import format_duration, median_seconds
from .problem import ConstrainedProblem, Constraint
from .solver import Solver

__all__ = ["bench_solver", "run_suites", "time_call"]

Printer = Callable[[str], None] | None


def time_call(fn: Callable[[], Any], *, min_run_time: float = 0.2) -> float:
    """Median seconds per call of ``fn`` (:mod:`torch.utils.benchmark`, at least
    ``min_run_time`` seconds measured after a warm-up)."""
    return median_seconds(fn, min_run_time)


def _grouped_problem(
    groups: int, per_group: int, dim: int
) -> tuple[ConstrainedProblem, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(groups * per_group, dim, generator=generator)
    b = torch.rand(groups * per_group, generator=generator)

    def make(k: int) -> Callable[[Any, Any], torch.Tensor]:
        rows = slice(k * per_group, (k + 1) * per_group)
        return lambda model, batch: A[rows] @ model.weight.reshape(-1) - b[rows]

    constraints = [Constraint(f"g{k}", "<=", fn=make(k), size=per_group) for k in range(groups)]

    def objective(model: nn.Linear, batch: Any) -> torch.Tensor:
        return 0.5 * (model.weight - 1.0).pow(2).sum()

    return ConstrainedProblem(objective=objective, constraints=constraints), A, b


def bench_solver(
    groups: tuple[int, ...] = (1, 10, 100), *, quick: bool = False, printer: Printer = print
) -> list[dict[str, Any]]:
    """Per-step time of the solver against a hand-written loop (same maths, same run)."""
    rows: list[dict[str, Any]] = []
    dim, per_group = 64, 4
    seconds = 0.05 if quick else 0.5
    for k in groups:
        problem, _, _ = _grouped_problem(k, per_group, dim)
        model = nn.Linear(dim, 1, bias=False)
        solver = Solver(
            problem,
            model,
            torch.optim.SGD(model.parameters(), lr=1e-2),
            controller={"name": "gda", "lr": 1e-2},
            record_every=10**9,
        )

        def library_step(s: Solver = solver) -> None:
            s.step(None)

        library = time_call(library_step, min_run_time=seconds)

        ref_model = nn.Linear(dim, 1, bias=False)
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=1e-2)
        lam = torch.zeros(k * per_group)
        fns = [c.fn for c in problem.all_constraints]

        def baseline(
            m: Any = ref_model,
            opt: torch.optim.Optimizer = ref_opt,
            fns: list[Any] = fns,
        ) -> None:
            # The same constraint functions as the library evaluates, then the same maths.
            nonlocal lam
            g = torch.cat([fn(m, None) for fn in fns])
            loss = 0.5 * (m.weight - 1.0).pow(2).sum() + lam @ g
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lam = (lam + 1e-2 * g.detach()).clamp_min(0)
            opt.step()

        loop = time_call(baseline, min_run_time=seconds)
        row = {
            "suite": "solver",
            "groups": k,
            "constraints": k * per_group,
            "library_ms": 1e3 * library,
            "loop_ms": 1e3 * loop,
            "ratio": library / loop,
        }
        rows.append(row)
    if printer is not None:
        printer(
            "solver overhead: Solver.step vs a hand-written loop (same maths), no history recording"
        )
        printer(f"{'groups':>8}{'constraints':>13}{'library ms':>13}{'loop ms':>10}{'ratio':>8}")
        for r in rows:
            printer(
                f"{r['groups']:>8}{r['constraints']:>13}{r['library_ms']:>13.3f}"
                f"{r['loop_ms']:>10.3f}{r['ratio']:>8.2f}"
            )
    return rows


def estimate_seconds(suite: str = "all", *, quick: bool = False) -> float:
    """A rough duration of :func:`run_suites` on this machine, in seconds."""
    total = 0.0
    if suite in ("all", "solver"):
        total += 3 * 2 * 2 * (0.05 if quick else 0.5)  # 3 sizes, 2 contenders, ~2x for warm-up
    if suite in ("all", "prox"):
        from .prox import _bench as prox_bench

        total += prox_bench.suite_estimate(quick=quick)
    return total


def run_suites(
    suite: str = "all", *, quick: bool = False, printer: Printer = print
) -> dict[str, Any]:
    """Run the named suite (``all``, ``solver`` or ``prox``); return the rows by suite.

    With a ``printer``, an estimate of the duration is printed before anything runs.
    """
    if printer is not None:
        printer(
            f"# constrain bench {suite}: estimated duration here about "
            f"{format_duration(estimate_seconds(suite, quick=quick))}"
            + ("" if quick else "; --quick runs small sizes only")
        )
    results: dict[str, Any] = {}
    if suite in ("all", "solver"):
        results["solver"] = bench_solver(quick=quick, printer=printer)
    if suite in ("all", "prox"):
        from .prox import _bench as prox_bench

        results["prox"] = prox_bench.run_suite(quick=quick, printer=printer, estimate=False)
    return results
