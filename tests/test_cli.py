"""The ``constrain`` command line, called in-process through ``constrain.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from constrain import controllers, get_problem, problem_names, prox, schedules
from constrain.cli import main
from constrain.formulations import FORMULATIONS, PENALTY_UPDATERS

pytest.importorskip("cvxpy")  # iris-svm's exact reference

NUPI = [
    "--controller",
    "nupi",
    "--set",
    "controller.lr=1",
    "--set",
    "controller.ki=0.1",
    "--set",
    "controller.kp=1",
    "--set",
    "controller.nu=0",
]
GDA = ["--controller", "gda", "--set", "controller.lr=0.1"]
REQUIRED = {
    "problem",
    "controller",
    "steps",
    "objective",
    "max_violation",
    "multipliers",
    "reference",
}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object on stdout
    result: dict[str, Any] = json.loads(out)
    return result


def test_list_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("problems (validate: ")
    for line in ("iris-svm", "simplex", "random-qp", "controllers: ", "formulations: ", "prox: "):
        assert line in out
    assert "nupi" in out and "augmented_lagrangian" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    assert rows["iris-svm"] == "yes" and rows["fairness-adult"] == "no"


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "list", "--json")
    assert set(data) == {
        "problems",
        "validate",
        "controllers",
        "formulations",
        "prox",
        "penalty_updaters",
        "rhs_schedules",
        "orders",
    }
    # Exactly what is registered (so registering an entry changes the listing, not this test).
    assert set(data["problems"]) == set(problem_names())
    assert set(data["controllers"]) == set(controllers.names())
    assert set(data["formulations"]) == set(FORMULATIONS.names())
    assert set(data["prox"]) == set(prox.names())
    assert set(data["validate"]) == {n for n in problem_names() if get_problem(n).validates}
    assert set(data["penalty_updaters"]) == set(PENALTY_UPDATERS.names())
    assert set(data["rhs_schedules"]) == set(schedules.names())
    assert data["orders"] == ["simultaneous", "dual_primal", "primal_dual", "cgd"]
    assert {"iris-svm", "simplex", "random-qp"} <= set(data["problems"])
    assert {"iris-svm", "simplex", "random-qp"} <= set(data["validate"])
    assert {"gda", "nupi", "pid", "momentum", "nesterov", "adam"} <= set(data["controllers"])
    assert "weight_sharing" in data["prox"]


# The done-when runs 5000 steps (slow: about 5-10 s per run on 2 cores); the default
# run checks the same thresholds at 2000 steps, where the errors are already 6.5e-4 (nuPI)
# and 0.81 (GDA).
STEPS = [
    pytest.param("2000", id="2000-steps"),
    pytest.param("5000", id="5000-steps", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("steps", STEPS)
def test_iris_svm_nupi_recovers_the_exact_multipliers(
    capsys: pytest.CaptureFixture[str], steps: str
) -> None:
    """nuPI (eta 1, ki 0.1, kp 1, nu 0): ||lam - lam*|| < 1e-3."""
    data = run_json(capsys, "run", "iris-svm", *NUPI, "--steps", steps, "--json")
    assert set(data) >= REQUIRED
    assert (data["problem"], data["controller"], data["steps"]) == ("iris-svm", "nupi", int(steps))
    assert data["controller_config"] == {"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0}
    assert len(data["multipliers"]) == 70
    reference = data["reference"]
    assert {"objective", "multipliers", "multiplier_error"} <= set(reference)
    assert len(reference["multipliers"]) == 70
    assert reference["multiplier_error"] < 1e-3
    assert data["max_violation"] < 1e-4
    assert abs(data["objective"] - reference["objective"]) < 1e-4


@pytest.mark.parametrize("steps", STEPS)
def test_iris_svm_gda_oscillates(capsys: pytest.CaptureFixture[str], steps: str) -> None:
    """GDA (lr 0.1): ||lam - lam*|| > 0.3."""
    data = run_json(capsys, "run", "iris-svm", *GDA, "--steps", steps, "--json")
    assert data["controller"] == "gda" and data["controller_config"] == {"name": "gda", "lr": 0.1}
    assert data["reference"]["multiplier_error"] > 0.3


def test_run_text_output_and_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["run", "simplex", "--steps", "50", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "problem" in text and "simplex" in text and "multiplier error" in text
    assert f"report written to {out}" in text
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "history.csv", "config.yaml"} <= names
    assert {"overview.png", "objective.png", "constraints.png", "multipliers.png"} <= names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 50


def test_run_with_a_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "problem: {name: simplex, dimension: 4}\n"
        "controller: {name: gda, lr: 0.5}\n"
        "optimizer: {name: sgd, lr: 0.1}\n"
        "steps: 30\n"
        "dtype: float64\n"
    )
    data = run_json(
        capsys,
        "run",
        "simplex",
        "--config",
        str(config),
        "--steps",
        "12",
        "--set",
        "controller.lr=0.25",
        "--json",
    )
    assert data["steps"] == 12 and len(data["multipliers"]) == 5
    assert data["controller_config"] == {"name": "gda", "lr": 0.25}


def test_compare_writes_its_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "simplex", "--controllers", "gda,nupi", "--steps", "200", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "gda" in text and "nupi" in text and "figure written to" in text
    assert f"report written to {out}: compare.md, compare.json" in text
    header = text.splitlines()[0]
    assert "late max viol." in header and "late mean viol." in header and "mult. error" in header
    assert (out / "gda" / "summary.json").exists() and (out / "nupi" / "summary.json").exists()
    saved = json.loads((out / "compare.json").read_text())
    assert {"late_max_violation", "late_mean_violation"} <= set(saved["entries"][0]["mean"])
    assert "late_max_violation" in json.loads((out / "gda" / "summary.json").read_text())
    assert (out / "compare.md").read_text().startswith("# Comparison on `simplex`")
    data = run_json(
        capsys,
        "compare",
        "simplex",
        "--controllers",
        "gda,nupi",
        "--steps",
        "20",
        "--out",
        str(out),
        "--overwrite",  # the folder holds the first comparison
        "--json",
    )
    assert [r["controller"] for r in data["runs"]] == ["gda", "nupi"]
    assert data["figure"] == str(out / "compare.png")
    assert data["report"] == str(out / "compare.md")


def test_compare_entries_with_settings_seeds_and_a_global_set(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """--set controller.kp=5 with gda and nupi applies to nupi only; nupi(kp=50) keeps its
    own value; two seeds give mean ± std; duplicate names get distinct labels."""
    data = run_json(
        capsys,
        "compare",
        "simplex",
        "--controllers",
        "gda,nupi,nupi(kp=50),gda",
        "--set",
        "controller.kp=5",
        "--seeds",
        "2",
        "--steps",
        "30",
        "--out",
        str(tmp_path),
        "--json",
    )
    labels = [e["label"] for e in data["entries"]]
    assert labels == ["gda", "nupi", "nupi(kp=50)", "gda #2"]
    kp = [e["controller_config"].get("kp") for e in data["entries"]]
    assert kp == [None, 5, 50, None]
    assert data["seeds"] == [0, 1] and all(e["seeds"] == [0, 1] for e in data["entries"])
    assert [(r["label"], r["seed"]) for r in data["runs"]][:2] == [("gda", 0), ("gda", 1)]
    assert "applies to nupi, nupi(kp=50) only, not to gda (gda has no field 'kp')" in caplog.text


def test_compare_help_shows_the_default_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: runs/compare)" in text and "--seeds N" in text
    assert "gda(lr=0.1),nupi(kp=1,ki=0.1,nu=0,lr=1)" in text


def test_show_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    from constrain.runner import problem_names

    for name in problem_names():
        assert main(["show", name]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"{name}: ")
        assert "default run configuration" in text and f"name: {name}" in text
        assert "constrain validate: " in text
    assert main(["show", "fairness-adult"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.strip().startswith("tolerance "))
    assert row.split()[:4] == ["tolerance", "float", "0.015", ">"]
    assert "Training constraint" in row


def test_show_json_lists_types_defaults_and_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "show", "neyman-pearson", "--json")
    assert data["validates"] is True
    rows = {r["name"]: r for r in data["hyperparameters"]}
    assert set(rows) == {"bound", "ridge", "num_features"}  # counts come from the data
    assert rows["num_features"] == {
        "name": "num_features",
        "type": "int",
        "default": 10,
        "bounds": ">= 1, <= 30",
        "description": "Number of features used (the first ones of the data set).",
    }
    assert data["default_config"]["problem"]["name"] == "neyman-pearson"


def test_show_yaml_runs_with_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The printed default configuration is a valid --config file: the run it starts is the
    default run."""
    assert main(["show", "simplex", "--controller", "gda", "--yaml"]) == 0
    path = tmp_path / "simplex.yaml"
    path.write_text(capsys.readouterr().out)
    from constrain import get_problem, load_config

    assert load_config(path) == get_problem("simplex").default_config("gda")
    from_file = run_json(capsys, "run", "simplex", "--config", str(path), "--steps", "20", "--json")
    default = run_json(capsys, "run", "simplex", "--controller", "gda", "--steps", "20", "--json")
    assert from_file["controller_config"] == {"name": "gda", "lr": 0.5}
    assert from_file["multipliers"] == default["multipliers"]
    assert from_file["objective"] == default["objective"]


def test_run_prints_the_late_window(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "run", "simplex", "--steps", "50", "--json")
    assert data["late_window"] == {"fraction": 0.1, "first_step": 45, "last_step": 49, "records": 5}
    assert data["late_max_violation"] >= data["max_violation"]
    assert "late_max_multiplier_error" in data


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "simplex", "--set", "controler.lr=1"], "unknown --set key 'controler.lr'"),
        (["run", "simplex", "--set", "controller.lr=-1"], "lr: Input should be greater than 0"),
        (["run", "simplex", "--set", "controller.kpp=1"], "kpp: unknown field"),
        (
            ["run", "simplex", "--controller", "gda", "--set", "controller.ki=0.1"],
            "ki: not a field of controller 'gda'; ki belongs to controller(s) nupi, pid",
        ),
        (
            ["compare", "simplex", "--controllers", "gda,momentum", "--set", "controller.ki=1"],
            "ki belongs to controller(s) nupi, pid",
        ),
        (["compare", "simplex", "--controllers", "gda(lr=1"], "unbalanced '('"),
        (["compare", "simplex", "--controllers", "gda", "--seeds", "0"], "--seeds must be >= 1"),
        (["show", "simplx"], "unknown problem 'simplx'"),
        (["run", "simplex", "--set", "steps=many"], "steps: Input should be a valid integer"),
        (["run", "simplex", "--set", "problem.dimensio=3"], "dimensio: unknown field"),
        (
            [
                "run",
                "simplex",
                "--set",
                "formulation.name=augmented_lagrangian",
                "--set",
                "formulation.schedule.growht=2",
            ],
            "schedule.growht: unknown field",
        ),
        (["run", "simplex", "--set", "nokey"], "--set expects KEY=VALUE"),
        (["run", "simplex", "--controller", "nupy"], "Did you mean 'nupi'"),
        (["run", "simplx"], "unknown problem 'simplx'. Did you mean 'simplex'?"),
        (["compare", "simplex", "--controllers", ","], "--controllers needs at least one name"),
    ],
)
def test_bad_input_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    if argv[0] == "compare":
        argv = [*argv, "--out", str(tmp_path)]
    if argv[0] != "show":
        argv = [*argv, "--steps", "1"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("constrain: error: ")
    assert message in captured.err
    assert captured.out == ""
    assert "Traceback" not in captured.err


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main([])
    assert "usage:" in capsys.readouterr().err
