"""The ``constrain`` command line.

Commands:
    constrain list [--json]
    constrain run PROBLEM [--controller NAME] [--steps N] [--set KEY=VALUE ...]
                  [--config FILE] [--out DIR [--overwrite]] [--checkpoint-every K]
                  [--tensorboard DIR]
                  [--resume DIR] [--json]
    constrain compare PROBLEM --controllers a,b,c [--steps N] [--set ...]
                  [--out DIR [--overwrite]] [--json]
    constrain validate PROBLEM [--controller NAME] [--steps N] [--json]
    constrain bench [prox|solver] [--quick]

Errors in the configuration (unknown names, bad ``--set`` keys or values) exit with
status 2 and one message naming the offending key; the process never ends in a bare
traceback for bad input. A run folder (``--out``) is checked and locked before the first
step; one holding a previous run is refused unless ``--overwrite`` or ``--resume`` says
what to do with it. SIGINT (Ctrl-C) or SIGTERM stops a run after the current step, writes
what exists (marked interrupted) and exits with 128 + the signal number (130, 143).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import ConfigError, ConstrainError
from ._io import strict_json_dumps

__all__ = ["main"]

logger = logging.getLogger("constrain")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="constrain",
        description="Constrained optimization of PyTorch models: run, compare and validate problems.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_list = sub.add_parser(
        "list", help="list problems, controllers, formulations and prox operators"
    )
    p_list.add_argument("--json", action="store_true", help="print one JSON object")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "problem", metavar="PROBLEM", help="registered problem (see `constrain list`)"
        )
        p.add_argument("--steps", type=int, help="number of steps (default: the problem's)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. controller.kp=1 or optimizer.lr=0.01 (repeatable)",
        )
        p.add_argument("--config", type=Path, help="YAML/JSON run configuration to start from")
        p.add_argument("--seed", type=int, help="random seed (an integer in [0, 2**63 - 1])")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument(
            "--progress",
            dest="progress",
            action="store_true",
            default=None,
            help="force a progress bar",
        )
        p.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no progress bar"
        )

    p_run = sub.add_parser("run", help="run one problem with one controller")
    common(p_run)
    p_run.add_argument("--controller", help="multiplier controller (see `constrain list`)")
    p_run.add_argument(
        "--out",
        help="write a report (JSON, CSV, figures) into this folder (it must not hold "
        "another run unless --overwrite or --resume)",
    )
    p_run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous run in --out (only that run's files are deleted)",
    )
    p_run.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="K",
        help="save a checkpoint under --out every K steps",
    )
    p_run.add_argument(
        "--resume",
        metavar="DIR",
        help="resume from the latest checkpoint in DIR (and continue the run there, unless "
        "--out names another folder)",
    )
    p_run.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write TensorBoard event files into DIR (pip install constrain[tensorboard])",
    )

    p_cmp = sub.add_parser("compare", help="run one problem with several controllers; one figure")
    common(p_cmp)
    p_cmp.add_argument("--controllers", required=True, help="comma-separated controller names")
    p_cmp.add_argument("--out", default="runs/compare", help="folder for the figure and summaries")
    p_cmp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous comparison in --out (only its files are deleted)",
    )
    p_cmp.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write TensorBoard event files, one run per controller under DIR",
    )

    p_val = sub.add_parser(
        "validate", help="solve a convex problem and check it exactly against CVXPY"
    )
    common(p_val)
    p_val.add_argument("--controller", help="multiplier controller")

    p_bench = sub.add_parser(
        "bench", help="speed benchmarks (ratios against baselines measured in the same run)"
    )
    p_bench.add_argument("suite", nargs="?", default="all", choices=["all", "prox", "solver"])
    p_bench.add_argument("--quick", action="store_true", help="small sizes only")
    p_bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _config(args: argparse.Namespace, controller: str | None) -> Any:
    """The run configuration: the problem's defaults, the ``--config`` file merged over
    them, then ``--controller``, ``--steps``, ``--seed`` and ``--set``; validated once, as a
    whole, and its components built once so that bad values fail before any work."""
    from .config import RunConfig, apply_overrides, merge_config, read_config_file
    from .runner import check_optimizer, get_problem

    spec = get_problem(args.problem)
    update: dict[str, Any] = {}
    if args.config is not None:
        update = read_config_file(args.config)
        named = update.get("problem")
        named = named.get("name") if isinstance(named, dict) else named
        if named is not None and named != spec.name:
            raise ConfigError(
                f"config file {str(args.config)!r} is for problem {named!r} but the command "
                f"line names {spec.name!r}; expected the same problem. Run `constrain "
                f"{args.command} {named} --config {args.config}`, or drop problem.name from "
                "the file."
            )
    file_controller = update.get("controller")
    if isinstance(file_controller, dict):
        file_controller = file_controller.get("name")
    if controller is not None and file_controller not in (None, controller):
        update.pop("controller")  # --controller wins, with the problem's recommended values
    chosen = controller if controller is not None else file_controller
    base = spec.default_config(chosen if isinstance(chosen, str) else None).model_dump()
    data = merge_config(base, update)
    if args.steps is not None:
        data["steps"] = args.steps
    if args.seed is not None:
        data["seed"] = args.seed
    data = apply_overrides(data, args.overrides)
    problem = data.get("problem")
    named = problem.get("name") if isinstance(problem, dict) else problem
    if named != spec.name:
        raise ConfigError(
            f"--set problem.name={named!r} conflicts with the problem named on the command line "
            f"({spec.name!r}); expected the same name. Run `constrain {args.command} {named}` "
            "to run that problem."
        )
    config = RunConfig.parse(data)
    # Build the components once now so that bad --set values fail before any work.
    from . import controllers, formulations

    controllers.build(config.controller)
    formulations.build(config.formulation)
    check_optimizer(config.optimizer)
    return spec, config


def _print_json(obj: Any, flag: str | None = None) -> None:
    """One strict JSON line (non-finite numbers as null, listed under ``flag``)."""
    sys.stdout.write(strict_json_dumps(obj, flag=flag) + "\n")


_REPORT_KEYS = {
    "test_accuracy": "test acc",
    "max_parity_gap": "parity gap",
    "unconstrained_test_accuracy": "uncons. acc",
    "unconstrained_max_parity_gap": "uncons. gap",
    "density": "density",
    "train_accuracy": "train acc",
}
"""Report fields of the studies shown in the run and compare tables when present."""


def _summary_table(summary: dict[str, Any]) -> str:
    rows = [
        ("problem", summary["problem"]),
        ("controller", summary["controller"]),
        ("steps", summary["steps"]),
        ("objective", f"{summary['objective']:.6g}" if summary["objective"] is not None else "-"),
        (
            "max violation",
            f"{summary['max_violation']:.3g}" if summary["max_violation"] is not None else "-",
        ),
        ("time / step", f"{1e3 * summary['seconds_per_step']:.3f} ms"),
    ]
    ref = summary.get("reference")
    if ref:
        rows.append(("reference objective", f"{ref['objective']:.6g}"))
        rows.append(("multiplier error", f"{ref['multiplier_error']:.3g}"))
        if "primal_error" in ref:
            rows.append(("primal error", f"{ref['primal_error']:.3g}"))
    for key, value in summary.items():
        if key in _REPORT_KEYS and isinstance(value, float):
            rows.append((_REPORT_KEYS[key], f"{value:.4g}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _cmd_list(args: argparse.Namespace) -> int:
    from . import controllers, formulations, prox
    from .runner import get_problem, problem_names

    problems = {name: get_problem(name).description for name in problem_names()}
    data = {
        "problems": problems,
        "controllers": controllers.names(),
        "formulations": formulations.FORMULATIONS.names(),
        "prox": prox.names(),
    }
    if args.json:
        _print_json(data)
        return 0
    print("problems:")
    for name, text in problems.items():
        print(f"  {name:<24} {text}")
    for key in ("controllers", "formulations", "prox"):
        print(f"{key}: {', '.join(data[key])}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run

    _, config = _config(args, args.controller)
    loggers = _tensorboard(args.tensorboard)
    if args.checkpoint_every is not None or args.resume is not None:
        from .checkpoint import run_with_checkpoints

        result = run_with_checkpoints(
            config,
            out=args.out,
            every=args.checkpoint_every,
            resume=args.resume,
            progress=args.progress,
            overwrite=args.overwrite,
            loggers=loggers,
        )
    else:
        if args.overwrite and args.out is None:
            raise ConfigError("--overwrite needs --out DIR (the folder whose run it replaces).")
        result = run(
            config,
            out=args.out,
            progress=args.progress,
            overwrite=args.overwrite,
            loggers=loggers,
        )
    for sink in loggers:
        sink.close()
    if not _is_main_process():
        return 0
    if args.json:
        _print_json(result.summary, flag="nonfinite")
    else:
        print(_summary_table(result.summary))
        if args.out is not None or args.resume is not None:
            print(f"report written to {result_folder(args)}")
    return 0


def _tensorboard(folder: str | None) -> list[Any]:
    """A TensorBoard logger writing into ``folder`` (``--tensorboard DIR``), or none."""
    if not folder:
        return []
    from .loggers import TensorBoardLogger

    return [TensorBoardLogger(folder)]


def result_folder(args: argparse.Namespace) -> str:
    """The folder ``run`` wrote its report into."""
    if args.out is not None:
        return str(args.out)
    from .checkpoint import _folder_of

    return str(_folder_of(Path(args.resume)))


def _cmd_compare(args: argparse.Namespace) -> int:
    from .plots import compare_figure
    from .runner import run

    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    if not names:
        raise ConfigError("--controllers needs at least one name, e.g. --controllers gda,nupi")
    configs = [(_config(args, name)) for name in names]  # validate all before running any
    from ._run_folder import RunFolder

    out = Path(args.out)
    summaries, histories = [], {}
    reference = None
    with RunFolder.claim(
        args.out, overwrite=args.overwrite, info={"problem": args.problem, "compare": names}
    ) as folder:
        for name, (_, config) in zip(names, configs, strict=True):
            loggers = _tensorboard(args.tensorboard and str(Path(args.tensorboard) / name))
            result = run(
                config,
                out=out / name,
                progress=args.progress,
                figures=False,
                overwrite=args.overwrite,
                loggers=loggers,
            )
            for sink in loggers:
                sink.close()
            summaries.append(result.summary)
            histories[name] = result.solver.history
            if "reference" in result.summary:
                reference = result.summary["reference"]["multipliers"]
        figure = compare_figure(
            histories,
            out / "compare.png",
            reference=reference,
            title=f"{args.problem}: {', '.join(names)}",
        )
        folder.record(figure)
        folder.finish("finished")
    if args.json:
        _print_json(
            {"problem": args.problem, "figure": str(figure), "runs": summaries}, "nonfinite"
        )
        return 0
    extra = [k for k in _REPORT_KEYS if any(isinstance(run.get(k), float) for run in summaries)]
    header = (
        f"{'controller':<16}{'objective':>14}{'max viol.':>12}{'mult. error':>14}{'ms/step':>10}"
    )
    print(header + "".join(f"{_REPORT_KEYS[k]:>13}" for k in extra))

    def cell(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for s in summaries:
        err = s.get("reference", {}).get("multiplier_error")
        cells = "".join(
            f"{s[k]:>13.4g}" if isinstance(s.get(k), float) else f"{'-':>13}" for k in extra
        )
        print(
            f"{s['controller']:<16}{cell(s['objective'], '.6g'):>14}"
            f"{cell(s['max_violation'], '.3g'):>12}"
            f"{cell(err, '.3g'):>14}{1e3 * s['seconds_per_step']:>10.3f}" + cells
        )
    print(f"figure written to {figure}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .exact import validate_registered

    spec, config = _config(args, args.controller)
    report = validate_registered(spec, config, progress=args.progress)
    if args.json:
        _print_json(report)
    else:
        print(_validation_table(report))
    return 0 if report.get("passed") else 1


def _validation_table(report: dict[str, Any]) -> str:
    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.3g}"

    kkt = report.get("kkt", {})
    rows = [
        ("problem", f"{report['problem']} ({report['controller']}, {report['steps']} steps)"),
        ("passed", str(report["passed"])),
        (
            "objective / reference",
            f"{report['objective']:.10g} / {report['reference_objective']:.10g}",
        ),
        ("objective gap", num(report.get("objective_gap"))),
        ("primal error", num(report.get("primal_error"))),
        ("multiplier error", num(report.get("multiplier_error"))),
        ("max violation", num(report.get("max_violation"))),
        ("stationarity", num(kkt.get("stationarity"))),
        ("complementary slackness", num(kkt.get("complementary_slackness"))),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"  FAILED: {text}" for text in report.get("failures", [])]
    return "\n".join(lines)


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    results = bench.run_suites(args.suite, quick=args.quick, printer=None if args.json else print)
    if args.json:
        _print_json(results)
    return 0


def _is_main_process() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``constrain`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    quiet = getattr(args, "json", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handlers = {
        "list": _cmd_list,
        "run": _cmd_run,
        "compare": _cmd_compare,
        "validate": _cmd_validate,
        "bench": _cmd_bench,
    }
    try:
        return handlers[args.command](args)
    except ConstrainError as exc:
        sys.stderr.write(f"constrain: error: {exc}\n")
        return 2
    except KeyboardInterrupt as exc:
        from ._run_folder import RunInterrupted

        if isinstance(exc, RunInterrupted) and exc.folder is not None:
            from .checkpoint import list_checkpoints

            hint = (
                f"continue with --resume {exc.folder}"
                if list_checkpoints(exc.folder)
                else "no checkpoint (run with --checkpoint-every K to be able to resume)"
            )
            sys.stderr.write(
                f"constrain: interrupted after {max(exc.step, 0)} steps; what exists was "
                f'written to {exc.folder} (summary.json says "interrupted": true); {hint}.\n'
            )
            return exc.exit_status
        sys.stderr.write("constrain: interrupted\n")
        return exc.exit_status if isinstance(exc, RunInterrupted) else 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
