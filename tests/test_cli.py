"""The ``constrain`` command line, called in-process through ``constrain.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from constrain import controllers, problem_names, prox
from constrain.cli import main
from constrain.formulations import FORMULATIONS

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
    assert out.startswith("problems:\n")
    for line in ("iris-svm", "simplex", "random-qp", "controllers: ", "formulations: ", "prox: "):
        assert line in out
    assert "nupi" in out and "augmented_lagrangian" in out


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "list", "--json")
    assert set(data) == {"problems", "controllers", "formulations", "prox"}
    # Exactly what is registered (so registering an entry changes the listing, not this test).
    assert set(data["problems"]) == set(problem_names())
    assert set(data["controllers"]) == set(controllers.names())
    assert set(data["formulations"]) == set(FORMULATIONS.names())
    assert set(data["prox"]) == set(prox.names())
    assert {"iris-svm", "simplex", "random-qp"} <= set(data["problems"])
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


def test_compare_writes_one_figure(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert (
        main(
            ["compare", "simplex", "--controllers", "gda,nupi", "--steps", "200", "--out", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "gda" in text and "nupi" in text and "figure written to" in text
    assert (out / "gda" / "summary.json").exists() and (out / "nupi" / "summary.json").exists()
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "simplex", "--set", "controler.lr=1"], "unknown --set key 'controler.lr'"),
        (["run", "simplex", "--set", "controller.lr=-1"], "lr: Input should be greater than 0"),
        (["run", "simplex", "--set", "controller.kpp=1"], "kpp: unknown field"),
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
    assert main([*argv, "--steps", "1"]) == 2
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
