"""Run configurations: validation, ``--set`` overrides, YAML/JSON round trips, safe loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from constrain import ConfigError, RunConfig, load_config
from constrain.config import apply_overrides, parse_override

BASE: dict[str, Any] = {
    "problem": {"name": "iris-svm", "margin": 1.0},
    "controller": {"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.0},
    "formulation": {"name": "augmented_lagrangian", "penalty": 1.0, "schedule": {"growth": 1.5}},
    "optimizer": {"name": "sgd", "lr": 1e-3, "momentum": 0.9},
    "order": "dual_primal",
    "steps": 100,
}


def test_defaults_and_component_shorthand() -> None:
    config = RunConfig.parse({"problem": "simplex", "controller": "gda"})
    assert config.problem == {"name": "simplex"}
    assert config.controller == {"name": "gda"}
    assert config.formulation == {"name": "lagrangian"}
    assert config.optimizer == {"name": "sgd", "lr": 1e-2}
    assert (config.order, config.steps, config.batch_size, config.seed) == (
        "simultaneous",
        1000,
        None,
        0,
    )
    assert (config.dtype, config.record_every, config.on_nonfinite) == ("float32", 1, "raise")


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        ({"problem": "p", "stpes": 3}, ["stpes: unknown field"]),
        ({"problem": "p", "steps": -1}, ["steps: Input should be greater than or equal to 0"]),
        ({"problem": "p", "order": "both"}, ["order: Input should be 'simultaneous'"]),
        (
            {"problem": "p", "dtype": "float16", "record_every": 0},
            ["dtype: Input should be 'float32' or 'float64'", "record_every:"],
        ),
        ({"problem": {"lr": 1}}, ["problem: Value error, needs a 'name' key"]),
        (
            {"problem": "p", "controller": 3},
            ["controller: Value error, expected a name or a mapping"],
        ),
        ({}, ["problem: Field required"]),
    ],
)
def test_parse_errors_name_every_bad_key(data: dict[str, Any], keys: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.parse(data)
    message = str(info.value)
    assert message.startswith("invalid run configuration:")
    for key in keys:
        assert key in message


@pytest.mark.parametrize(
    ("text", "parts", "value"),
    [
        ("steps=10", ["steps"], 10),
        ("controller.kp=0.5", ["controller", "kp"], 0.5),
        ("optimizer.lr=3e-3", ["optimizer", "lr"], 0.003),  # YAML 1.1 would say "3e-3"
        ("formulation.schedule.growth=2", ["formulation", "schedule", "growth"], 2),
        ("controller.ki=[0.1, 0.2]", ["controller", "ki"], [0.1, 0.2]),
        ("order=dual_primal", ["order"], "dual_primal"),
        ("problem.flag=true", ["problem", "flag"], True),
        ("problem.note=", ["problem", "note"], ""),
        ("problem.text=a=b", ["problem", "text"], "a=b"),
        (" steps = 3", ["steps"], 3),
    ],
)
def test_parse_override(text: str, parts: list[str], value: Any) -> None:
    assert parse_override(text) == (parts, value)


@pytest.mark.parametrize("text", ["steps", "=3", "controller..kp=1", ".kp=1"])
def test_parse_override_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_override(text)


def test_apply_overrides_dotted_keys() -> None:
    out = apply_overrides(
        BASE,
        [
            "steps=7",
            "controller.kp=2",
            "optimizer.momentum=0.5",
            "formulation.schedule.growth=3",
            "formulation.schedule.every=4",
            "problem.margin=2.0",
        ],
    )
    assert out["steps"] == 7
    assert out["controller"] == {"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 2, "nu": 0.0}
    assert out["optimizer"]["momentum"] == 0.5
    assert out["formulation"]["schedule"] == {"growth": 3, "every": 4}
    assert out["problem"] == {"name": "iris-svm", "margin": 2.0}
    assert BASE["steps"] == 100 and BASE["formulation"]["schedule"] == {
        "growth": 1.5
    }  # not mutated
    assert RunConfig.parse(out).formulation["schedule"]["growth"] == 3


def test_nested_override_creates_missing_sections() -> None:
    out = apply_overrides({"problem": {"name": "p"}}, ["formulation.schedule.growth=2"])
    assert out["formulation"] == {"schedule": {"growth": 2}}


def test_switching_a_component_name_drops_the_old_options() -> None:
    out = apply_overrides(BASE, ["controller.name=gda", "controller.lr=0.1"])
    assert out["controller"] == {"name": "gda", "lr": 0.1}
    out = apply_overrides(BASE, ["controller=pid"])
    assert out["controller"] == {"name": "pid"}
    out = apply_overrides(BASE, ["controller={name: adam, lr: 0.01}"])
    assert out["controller"] == {"name": "adam", "lr": 0.01}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "contoller.kp=1",
            r"unknown --set key 'contoller\.kp': 'contoller' is not a config section",
        ),
        ("steps.max=3", r"--set key 'steps\.max': 'steps' has no sub-keys"),
    ],
)
def test_unknown_sections_are_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(BASE, [override])
    if "config section" in message:
        assert "controller.<option>" in str(info.value)  # lists the valid keys


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    config = RunConfig.parse({**BASE, "batch_size": 16, "dtype": "float64", "seed": 3})
    path = tmp_path / f"run{suffix}"
    text = config.to_json(path) if suffix == ".json" else config.to_yaml(path)
    assert path.read_text() == text
    assert load_config(path) == config


def test_yaml_keeps_key_order() -> None:
    text = RunConfig.parse(BASE).to_yaml()
    assert text.index("problem:") < text.index("controller:") < text.index("steps:")


def test_python_object_tags_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("problem: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="is not valid"):
        load_config(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping; got list"),
        ("bad.json", "{not json", "is not valid .json"),
        ("bad.yaml", "problem: [unclosed\n", "is not valid .yaml"),
        ("typo.yaml", "problem: simplex\nsteeps: 3\n", "steeps: unknown field"),
    ],
)
def test_load_config_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_per_group_dual_settings_parse_and_override() -> None:
    """max_multiplier, restart, dual_every and rhs_schedule: one value or {pattern: value},
    set whole or per pattern with --set."""
    data = apply_overrides(
        {"problem": {"name": "p"}},
        [
            "max_multiplier.parity*=5",
            "max_multiplier.budget=10",
            "restart=true",
            "dual_every.rate=50",
            "rhs_schedule={gap: {name: linear, start: 0.1, end: 0.02, steps: 500}}",
            "rhs_schedule.gap.end=0.01",
        ],
    )
    config = RunConfig.parse(data)
    assert config.max_multiplier == {"parity*": 5.0, "budget": 10.0}
    assert config.restart is True
    assert config.dual_every == {"rate": 50}
    assert config.rhs_schedule == {
        "gap": {"name": "linear", "start": 0.1, "end": 0.01, "steps": 500}
    }
    assert RunConfig.parse(yaml.safe_load(config.to_yaml())) == config
    with pytest.raises(ConfigError, match="restart is True for every group"):
        apply_overrides(data, ["restart.parity*=false"])
    with pytest.raises(ConfigError, match="dual_every"):
        RunConfig.parse({"problem": "p", "dual_every": 0})
    with pytest.raises(ConfigError, match="max_multiplier"):
        RunConfig.parse({"problem": "p", "max_multiplier": {"a": -1}})


def test_setting_a_nested_name_switches_that_component() -> None:
    data = apply_overrides(
        {
            "problem": {"name": "p"},
            "formulation": {
                "name": "augmented_lagrangian",
                "updater": {"name": "multiplicative", "growth": 3},
            },
        },
        ["formulation.updater.name=additive", "formulation.updater.increment=0.5"],
    )
    assert data["formulation"]["updater"] == {"name": "additive", "increment": 0.5}
