"""constrain versus Cooper (``cooper-optim``): same problem, same multiplier rule, one run.

Optional: Cooper is not a dependency of constrain. Without it this script prints a message
and exits with status 0. Install it for the measurement with ``pip install cooper-optim``.

Cases (float64, CPU, both libraries started from the same point with zero multipliers):

* ``iris-nupi``: the hard-margin SVM of the nuPI paper (70 margin constraints in one
  group), nuPI ``lr=1, ki=0.1, kp=1, nu=0`` with ``xi_{-1} = 0`` (Cooper's
  ``nuPIInitType.ZEROS``), primal SGD ``lr=1e-3, momentum=0.9``, alternating dual-then-
  primal updates (Cooper's ``AlternatingDualPrimalOptimizer``).
* ``groups-gda``: ``min 1/2 ||x - c||^2 s.t. x_k <= u_k`` declared as 100 separate scalar
  constraint groups, projected gradient ascent ``lr=0.1``, simultaneous updates (Cooper's
  ``SimultaneousOptimizer`` with ``torch.optim.SGD(maximize=True)`` on the multipliers):
  the per-group overhead case.

For each case the script reports the median wall time of one step in each library
(:mod:`torch.utils.benchmark`, ``blocked_autorange`` on a fresh instance of each) and their
ratio (constrain / Cooper; below 1 means constrain is faster), for constrain recording its
history at every step and every 100 steps, and the largest absolute difference between the
two trajectories (multipliers and primal variables after every step, from separate,
untimed runs of ``--steps`` steps).

Usage: ``python benchmarks/bench_cooper.py [--steps N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import benchmark

import constrain
from constrain import ConstrainedProblem, ConstraintValue, ProblemState, Variables

DTYPE = torch.float64


Step = Callable[[], None]
Observe = Callable[[], tuple[Tensor, Tensor]]


@dataclass
class Trajectory:
    """Multipliers and primal variables after every step."""

    multipliers: list[Tensor]
    primal: list[Tensor]


def trajectory(case: tuple[Step, Observe], steps: int) -> Trajectory:
    """Take ``steps`` steps, recording the multipliers and primal variables after each."""
    step, observe = case
    out = Trajectory([], [])
    for _ in range(steps):
        step()
        multipliers, primal = observe()
        out.multipliers.append(multipliers)
        out.primal.append(primal)
    return out


def median_ms(case: tuple[Step, Observe], min_run_time: float) -> float:
    """Median milliseconds per step (torch.utils.benchmark, after its warm-up)."""
    timer = benchmark.Timer(stmt="step()", globals={"step": case[0]}, num_threads=1)
    return 1e3 * timer.blocked_autorange(min_run_time=min_run_time).median


# -- the two cases, in constrain ------------------------------------------------------------------
def iris_data() -> tuple[Tensor, Tensor]:
    """The 70-point setosa/versicolor training split of the nuPI paper (y in {-1, +1})."""
    from constrain_problems.iris_svm import load_iris_binary

    return load_iris_binary(DTYPE)


class IrisSVM(ConstrainedProblem):
    """``min 1/2 ||w||^2  s.t.  1 - y_i (w . x_i + b) <= 0`` for the 70 points."""

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        X, y = batch
        margins = 1.0 - y * (X @ model.w + model.b)
        return ProblemState(0.5 * model.w.pow(2).sum(), {"margins": margins})


def iris_problem() -> ConstrainedProblem:
    return IrisSVM(constraints=[constrain.Constraint("margins", "<=", size=70)])


GROUPS = 100


def groups_target() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    c = torch.randn(GROUPS, generator=generator, dtype=DTYPE)
    u = torch.rand(GROUPS, generator=generator, dtype=DTYPE) - 0.5
    return c, u


class Groups(ConstrainedProblem):
    """``min 1/2 ||x - c||^2  s.t.  x_k - u_k <= 0``, one constraint group per ``k``."""

    def evaluate(self, model: Any, batch: Any) -> ProblemState:
        c, u = batch
        v = model.x - u
        constraints: dict[str, Tensor | ConstraintValue] = {
            f"g{k}": v[k : k + 1] for k in range(GROUPS)
        }
        return ProblemState(0.5 * (model.x - c).pow(2).sum(), constraints)


def groups_problem() -> ConstrainedProblem:
    return Groups(constraints=[constrain.Constraint(f"g{k}", "<=", size=1) for k in range(GROUPS)])


def constrain_case(case: str, record_every: int) -> tuple[Step, Observe]:
    """One step of the case in constrain, and what to record after it."""
    if case == "iris-nupi":
        batch: Any = iris_data()
        model = Variables(w=torch.zeros(4, dtype=DTYPE), b=torch.zeros((), dtype=DTYPE))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        solver = constrain.Solver(
            iris_problem(),
            model,
            optimizer,
            order="dual_primal",
            record_every=record_every,
            controller={"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0},
        )
    else:
        batch = groups_target()
        model = Variables(x=torch.zeros(GROUPS, dtype=DTYPE))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        solver = constrain.Solver(
            groups_problem(),
            model,
            optimizer,
            order="simultaneous",
            record_every=record_every,
            controller={"name": "gda", "lr": 0.1},
        )

    def step() -> None:
        solver.step(batch)

    def observe() -> tuple[Tensor, Tensor]:
        store = solver.multiplier_store
        assert store is not None
        primal = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        return store.dense.detach().clone(), primal

    return step, observe


# -- the same cases in Cooper --------------------------------------------------------------------
def cooper_case(case: str) -> tuple[Step, Observe]:
    """One step of the case in Cooper, and what to record after it."""
    import cooper

    inequality = cooper.ConstraintType.INEQUALITY

    if case == "iris-nupi":
        X, y = iris_data()
        w = torch.zeros(4, dtype=DTYPE, requires_grad=True)
        b = torch.zeros((), dtype=DTYPE, requires_grad=True)
        params = [w, b]

        class CooperSVM(cooper.ConstrainedMinimizationProblem):
            def __init__(self) -> None:
                super().__init__()
                multiplier = cooper.multipliers.DenseMultiplier(num_constraints=70, dtype=DTYPE)
                self.margins = cooper.Constraint(inequality, multiplier=multiplier)

            def compute_cmp_state(self) -> Any:
                violation = 1.0 - y * (X @ w + b)
                return cooper.CMPState(
                    loss=0.5 * w.pow(2).sum(),
                    observed_constraints={self.margins: cooper.ConstraintState(violation)},
                )

        cmp: Any = CooperSVM()
        # Gains as float64 tensors: Cooper stores plain floats as float32 tensors, which
        # alone moves the trajectory by about 1e-7 over 2000 steps.
        dual = cooper.optim.nuPI(
            cmp.dual_parameters(),
            lr=1.0,
            Kp=torch.tensor(1.0, dtype=DTYPE),
            Ki=torch.tensor(0.1, dtype=DTYPE),
            ema_nu=0.0,
            init_type=cooper.optim.nuPIInitType.ZEROS,
            maximize=True,
        )
        optimizer: Any = cooper.optim.AlternatingDualPrimalOptimizer(
            cmp=cmp,
            primal_optimizers=torch.optim.SGD(params, lr=1e-3, momentum=0.9),
            dual_optimizers=dual,
        )
    else:
        c, u = groups_target()
        x = torch.zeros(GROUPS, dtype=DTYPE, requires_grad=True)
        params = [x]

        class CooperGroups(cooper.ConstrainedMinimizationProblem):
            def __init__(self) -> None:
                super().__init__()
                for k in range(GROUPS):
                    multiplier = cooper.multipliers.DenseMultiplier(num_constraints=1, dtype=DTYPE)
                    setattr(self, f"g{k}", cooper.Constraint(inequality, multiplier=multiplier))

            def compute_cmp_state(self) -> Any:
                v = x - u
                observed = {
                    getattr(self, f"g{k}"): cooper.ConstraintState(v[k : k + 1])
                    for k in range(GROUPS)
                }
                return cooper.CMPState(
                    loss=0.5 * (x - c).pow(2).sum(), observed_constraints=observed
                )

        cmp = CooperGroups()
        optimizer = cooper.optim.SimultaneousOptimizer(
            cmp=cmp,
            primal_optimizers=torch.optim.SGD(params, lr=0.1),
            dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=0.1, maximize=True),
        )

    def step() -> None:
        optimizer.roll()

    def observe() -> tuple[Tensor, Tensor]:
        multipliers = torch.cat([m.weight.detach().reshape(-1) for m in cmp.multipliers()])
        return multipliers, torch.cat([p.detach().reshape(-1) for p in params])

    return step, observe


def max_difference(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def compare(
    case: str, steps: int, min_run_time: float, printer: Callable[[str], None] | None
) -> dict[str, Any]:
    """Run one case in both libraries; return times, ratios and trajectory differences."""
    ours = trajectory(constrain_case(case, record_every=1), steps)
    theirs = trajectory(cooper_case(case), steps)
    cooper_ms = median_ms(cooper_case(case), min_run_time)
    constrain_ms = median_ms(constrain_case(case, record_every=1), min_run_time)
    sparse_ms = median_ms(constrain_case(case, record_every=100), min_run_time)
    result = {
        "case": case,
        "steps": steps,
        "cooper_ms_per_step": cooper_ms,
        "constrain_ms_per_step": constrain_ms,
        "constrain_record_every_100_ms_per_step": sparse_ms,
        "ratio": constrain_ms / cooper_ms,
        "ratio_record_every_100": sparse_ms / cooper_ms,
        "max_multiplier_difference": max_difference(ours.multipliers, theirs.multipliers),
        "max_primal_difference": max_difference(ours.primal, theirs.primal),
        "final_multiplier_scale": float(ours.multipliers[-1].abs().max()),
    }
    if printer is not None:
        printer(
            f"{case:<11} cooper {result['cooper_ms_per_step']:7.3f} ms/step | constrain "
            f"{result['constrain_ms_per_step']:7.3f} ms (ratio {result['ratio']:.2f}), "
            f"recording every 100: {result['constrain_record_every_100_ms_per_step']:7.3f} ms "
            f"(ratio {result['ratio_record_every_100']:.2f}) | max |diff| multipliers "
            f"{result['max_multiplier_difference']:.2e}, primal "
            f"{result['max_primal_difference']:.2e}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=2000, help="steps of the compared trajectories (default 2000)"
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="least measured time per timing (torch.utils.benchmark; default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        import cooper
    except ImportError:
        print("cooper-optim is not installed: skipping (pip install cooper-optim to run it)")
        return 0
    torch.set_num_threads(1)
    header = (
        f"constrain {constrain.__version__} vs cooper-optim {cooper.__version__}, "
        f"torch {torch.__version__}, {args.steps} steps, float64, CPU, 1 thread"
    )
    printer = None if args.json else print
    if printer is not None:
        printer(header)
    if printer is not None:
        printer(f"# estimated duration: about {int(2 * (3 * args.min_run_time + 2) + 1)} s")
    results = [
        compare(case, args.steps, args.min_run_time, printer)
        for case in ("iris-nupi", "groups-gda")
    ]
    if args.json:
        json.dump({"header": header, "results": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
