"""The ``constrain`` command line.

Commands:
    constrain list [--json]
    constrain show PROBLEM [--controller NAME] [--yaml] [--json]
    constrain run PROBLEM [--controller NAME] [--steps N] [--set KEY=VALUE ...]
                  [--config FILE] [--out DIR [--overwrite]] [--checkpoint-every K]
                  [--tensorboard DIR]
                  [--resume DIR] [--json]
    constrain compare PROBLEM --controllers "a,b(key=value,...),c" [--seeds N] [--steps N]
                      [--set ...] [--out DIR [--overwrite]] [--json]
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
import os
import sys
import typing
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
        "list",
        help="list problems, controllers, formulations, prox operators, penalty updaters and "
        "rhs schedules",
    )
    p_list.add_argument("--json", action="store_true", help="print one JSON object")

    p_show = sub.add_parser(
        "show",
        help="a problem's description, hyperparameters, default configuration and whether "
        "validate applies",
    )
    p_show.add_argument(
        "problem", metavar="PROBLEM", help="registered problem (see `constrain list`)"
    )
    p_show.add_argument(
        "--controller", help="show the default configuration with this controller instead"
    )
    p_show.add_argument(
        "--yaml",
        action="store_true",
        help="print only the default run configuration as YAML (save it, edit it, pass it to --config)",
    )
    p_show.add_argument("--json", action="store_true", help="print one JSON object")

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

    p_cmp = sub.add_parser(
        "compare",
        help="run one problem with several settings (and seeds); table, figures and a saved report",
    )
    common(p_cmp)
    p_cmp.add_argument(
        "--controllers",
        required=True,
        metavar="ENTRIES",
        help="comma-separated entries, each a controller name with optional settings of its own, "
        'e.g. "gda(lr=0.1),nupi(kp=1,ki=0.1,nu=0,lr=1)" (a dotted key such as optimizer.lr=0.01 '
        "sets any config value of that entry); or a YAML/JSON file holding a list of entries "
        "(names, controller mappings or partial run configurations)",
    )
    p_cmp.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="run every entry with N seeds (--seed, --seed+1, ...); the table shows mean ± std, "
        "the figures a min-max band (default: %(default)s)",
    )
    p_cmp.add_argument(
        "--out",
        default="runs/compare",
        help="report folder: compare.md, compare.json, figures and one run folder per entry "
        "(default: %(default)s)",
    )
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
    p_bench.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and short measurements (seconds instead of minutes; an estimate of "
        "the duration is printed before any run)",
    )
    p_bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _base(args: argparse.Namespace, controller: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The problem's spec and the base configuration data: the problem's defaults, the
    ``--config`` file merged over them, then ``--controller``, ``--steps`` and ``--seed``
    (not ``--set``)."""
    from .config import merge_config, read_config_file
    from .runner import get_problem

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
    raw_controller = update.get("controller")
    if isinstance(raw_controller, dict) and "name" not in raw_controller:
        base.pop("controller", None)  # per-group controllers replace the default, not merge
    data = merge_config(base, update)
    if args.steps is not None:
        data["steps"] = args.steps
    if args.seed is not None:
        data["seed"] = args.seed
    return spec, data


def _check_problem_name(args: argparse.Namespace, spec: Any, data: dict[str, Any]) -> None:
    problem = data.get("problem")
    named = problem.get("name") if isinstance(problem, dict) else problem
    if named != spec.name:
        raise ConfigError(
            f"--set problem.name={named!r} conflicts with the problem named on the command line "
            f"({spec.name!r}); expected the same name. Run `constrain {args.command} {named}` "
            "to run that problem."
        )


def _config(args: argparse.Namespace, controller: str | None) -> Any:
    """The run configuration: the problem's defaults, the ``--config`` file merged over
    them, then ``--controller``, ``--steps``, ``--seed`` and ``--set``; validated once, as a
    whole, and its components built once so that bad values fail before any work."""
    from .config import RunConfig, apply_overrides
    from .runner import check_optimizer

    spec, data = _base(args, controller)
    data = apply_overrides(data, args.overrides)
    _check_problem_name(args, spec, data)
    config = RunConfig.parse(data)
    # Build the components once now so that bad --set values fail before any work.
    from . import controllers, formulations

    controllers.build_controllers(config.controller)
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
    if "late_max_violation" in summary:
        window = summary["late_window"]
        rows.append(
            (
                "late max / mean viol.",
                f"{summary['late_max_violation']:.3g} / {summary['late_mean_violation']:.3g} "
                f"(steps {window['first_step']}-{window['last_step']}, the last 10%)",
            )
        )
    ref = summary.get("reference")
    if ref:
        rows.append(("reference objective", f"{ref['objective']:.6g}"))
        rows.append(("multiplier error", f"{ref['multiplier_error']:.3g}"))
        if "late_max_multiplier_error" in summary:
            rows.append(("late max mult. error", f"{summary['late_max_multiplier_error']:.3g}"))
        if "primal_error" in ref:
            rows.append(("primal error", f"{ref['primal_error']:.3g}"))
    for key, value in summary.items():
        if key in _REPORT_KEYS and isinstance(value, float):
            rows.append((_REPORT_KEYS[key], f"{value:.4g}"))
    from .runner import get_problem

    rows += get_problem(summary["problem"]).summary_rows(summary)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _print_group_tables(summary: dict[str, Any]) -> None:
    """The per-group tables of studies that report ``group_metrics`` (fairness)."""
    tables = summary.get("group_metrics")
    if not isinstance(tables, dict):
        return
    from .studies import format_group_metrics

    for split, table in tables.items():
        print(f"\n{split} set, per group:")
        print(format_group_metrics(table))


def _cmd_list(args: argparse.Namespace) -> int:
    from . import controllers, formulations, prox, schedules
    from .runner import get_problem, problem_names
    from .solver import Order

    specs = {name: get_problem(name) for name in problem_names()}
    problems = {name: spec.description for name, spec in specs.items()}
    data = {
        "problems": problems,
        "validate": [name for name, spec in specs.items() if spec.validates],
        "controllers": controllers.names(),
        "formulations": formulations.FORMULATIONS.names(),
        "prox": prox.names(),
        "penalty_updaters": formulations.PENALTY_UPDATERS.names(),
        "rhs_schedules": schedules.names(),
        "orders": list(typing.get_args(Order)),
    }
    if args.json:
        _print_json(data)
        return 0
    print("problems (validate: whether `constrain validate` checks it exactly against CVXPY;")
    print("`constrain show PROBLEM` lists its hyperparameters and default configuration):")
    print(f"  {'name':<24} {'validate':<9} description")
    for name, text in problems.items():
        print(f"  {name:<24} {'yes' if specs[name].validates else 'no':<9} {text}")
    for key in (
        "controllers",
        "formulations",
        "prox",
        "orders",
        "penalty_updaters",
        "rhs_schedules",
    ):
        print(f"{key.replace('_', ' ')}: {', '.join(data[key])}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from ._show import format_problem_info, problem_info
    from .runner import get_problem

    spec = get_problem(args.problem)
    if args.controller is not None:
        from . import controllers

        controllers.get(args.controller)  # an unknown name: UnknownNameError with the list
    info = problem_info(spec, args.controller)
    yaml_text = spec.default_config(args.controller).to_yaml()
    if args.json:
        _print_json(info)
    elif args.yaml:
        sys.stdout.write(yaml_text)
    else:
        print(format_problem_info(info, yaml_text))
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
        _print_group_tables(result.summary)
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
    from ._run_folder import RunFolder
    from .comparison import (
        entry_configs,
        format_table,
        parse_entries,
        run_comparison,
        write_comparison,
    )
    from .history import LATE_FRACTION

    spec, base = _base(args)
    entries = parse_entries(args.controllers)
    configs = entry_configs(spec, base, entries, args.overrides)  # validate all before any run
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1; got {args.seeds}.")
    out = Path(args.out)
    logger.info(
        "comparing %d entries x %d seed(s) on %s; report folder: %s",
        len(configs),
        args.seeds,
        spec.name,
        out,
    )
    labels = [entry.label for entry, _ in configs]
    with RunFolder.claim(
        args.out, overwrite=args.overwrite, info={"problem": spec.name, "compare": labels}
    ) as folder:
        comparison = run_comparison(
            spec,
            configs,
            out,
            seeds=args.seeds,
            progress=args.progress,
            overwrite=args.overwrite,
            tensorboard=args.tensorboard,
        )
        written = write_comparison(comparison, spec, out) if _is_main_process() else []
        folder.record(*written)
        folder.finish("finished")
    if not _is_main_process():
        return 0
    if args.json:
        data = comparison.to_dict()
        data["figures"] = [str(out / f) for f in data["figures"]]
        data["figure"] = data["figures"][0] if data["figures"] else None
        data["report"] = str(out / "compare.md")
        _print_json(data, "nonfinite")
        return 0
    print(format_table(comparison))
    steps = comparison.to_dict()["steps"]
    print(
        f"late window: the last {LATE_FRACTION:.0%} of the {steps} steps"
        + (f"; mean ± std over seeds {comparison.seeds}" if args.seeds > 1 else "")
    )
    figures = [p for p in written if p.suffix == ".png"]
    if figures:
        print(f"figure written to {figures[0]}")
    print(
        f"report written to {out}: compare.md, compare.json, " + ", ".join(p.name for p in figures)
    )
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
        "show": _cmd_show,
        "run": _cmd_run,
        "compare": _cmd_compare,
        "validate": _cmd_validate,
        "bench": _cmd_bench,
    }
    try:
        return handlers[args.command](args)
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0
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
