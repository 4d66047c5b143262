"""Comparisons: entries with their own settings, global overrides, seeds and the saved report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from constrain import ConfigError, UnknownNameError, get_problem
from constrain.comparison import (
    Entry,
    entry_configs,
    format_table,
    load_entries,
    parse_entries,
    run_comparison,
    write_comparison,
)


def test_parse_names_and_per_entry_settings() -> None:
    entries = parse_entries(" gda(lr=0.1), nupi(kp=1, ki=0.1,nu=0,lr=1),momentum ")
    assert [e.label for e in entries] == ["gda(lr=0.1)", "nupi(kp=1,ki=0.1,nu=0,lr=1)", "momentum"]
    assert entries[0] == Entry("gda(lr=0.1)", "gda", ("controller.lr=0.1",))
    assert entries[1].overrides == (
        "controller.kp=1",
        "controller.ki=0.1",
        "controller.nu=0",
        "controller.lr=1",
    )
    assert entries[2] == Entry("momentum", "momentum")
    # Lists inside the parentheses and dotted keys for any config value of that entry.
    (entry,) = parse_entries("nupi(ki=[0.1, 0.2],optimizer.lr=0.01)")
    assert entry.overrides == ("controller.ki=[0.1, 0.2]", "optimizer.lr=0.01")


def test_duplicate_labels_get_a_suffix() -> None:
    assert [e.label for e in parse_entries("gda,gda,nupi,gda")] == [
        "gda",
        "gda #2",
        "nupi",
        "gda #3",
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (",", "at least one name"),
        ("gda(lr=0.1", "unbalanced '\\('"),
        ("gda)lr=1(", "unbalanced '\\)'"),
        ("gda(0.1)", "is not key=value"),
        ("9gda", "is not NAME or NAME"),
    ],
)
def test_bad_entries_are_config_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_entries(text)


def test_yaml_list_of_entries(tmp_path: Path) -> None:
    path = tmp_path / "entries.yaml"
    path.write_text(
        "- gda\n"
        "- nupi(kp=50)\n"
        "- {name: nupi, kp: 1, ki: 0.1}\n"
        "- label: nuPI with Adam\n"
        "  controller: {name: nupi, kp: 2}\n"
        "  optimizer: {name: adam, lr: 0.01}\n"
        "  steps: 7\n"
    )
    entries = parse_entries(str(path))
    assert [e.label for e in entries] == [
        "gda",
        "nupi(kp=50)",
        "nupi(kp=1,ki=0.1)",
        "nuPI with Adam",
    ]
    spec = get_problem("simplex")
    configs = entry_configs(spec, spec.default_config().model_dump(), entries)
    controllers = [c.controller for _, c in configs]
    assert controllers[0] == {"name": "gda", "lr": 0.5}  # the problem's recommended settings
    assert controllers[1] == {"name": "nupi", "lr": 0.5, "ki": 1.0, "kp": 50, "nu": 0.0}
    assert controllers[2] == {"name": "nupi", "lr": 0.5, "ki": 0.1, "kp": 1, "nu": 0.0}
    assert controllers[3]["kp"] == 2
    assert configs[3][1].optimizer == {"name": "adam", "lr": 0.01}
    assert configs[3][1].steps == 7 and configs[0][1].steps == 3000


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("gda", "non-empty list"),
        ("[]", "non-empty list"),
        ("- 3\n", "expected a string or a mapping"),
        ("- {optimiser: {lr: 1}}\n", "unknown keys \\['optimiser'\\]"),
    ],
)
def test_bad_entry_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "entries.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_entries(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_entries(tmp_path / "missing.yaml")


def test_a_global_controller_field_applies_where_it_exists(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = get_problem("simplex")
    base = spec.default_config().model_dump()
    with caplog.at_level(logging.WARNING, logger="constrain"):
        configs = entry_configs(spec, base, parse_entries("gda,nupi"), ["controller.kp=5"])
    assert configs[0][1].controller == {"name": "gda", "lr": 0.5}
    assert configs[1][1].controller["kp"] == 5
    assert "applies to nupi only" in caplog.text and "gda has no field 'kp'" in caplog.text
    # Per-entry settings win over global ones.
    configs = entry_configs(spec, base, parse_entries("nupi(kp=7)"), ["controller.kp=5"])
    assert configs[0][1].controller["kp"] == 7
    # Other global keys apply to every entry.
    configs = entry_configs(spec, base, parse_entries("gda,nupi"), ["optimizer.lr=0.05"])
    assert all(c.optimizer["lr"] == 0.05 for _, c in configs)


def test_global_overrides_that_fit_no_entry_are_errors() -> None:
    spec = get_problem("simplex")
    base = spec.default_config().model_dump()
    with pytest.raises(ConfigError, match="ki belongs to controller\\(s\\) nupi, pid"):
        entry_configs(spec, base, parse_entries("gda,momentum"), ["controller.ki=0.1"])
    with pytest.raises(ConfigError, match="conflicts with --controllers"):
        entry_configs(spec, base, parse_entries("gda"), ["controller.name=nupi"])
    bad_lr = "(?s)entry 'gda\\(lr=-1\\)'.*lr: Input should be greater than 0"
    with pytest.raises(ConfigError, match=bad_lr):
        entry_configs(spec, base, parse_entries("gda(lr=-1)"), [])
    with pytest.raises(ConfigError, match="ki belongs to controller\\(s\\) nupi, pid"):
        entry_configs(spec, base, parse_entries("gda(ki=1)"), [])
    with pytest.raises(UnknownNameError, match="nupi"):
        entry_configs(spec, base, parse_entries("nupy"), [])


def test_run_and_save_a_comparison_with_seeds(tmp_path: Path) -> None:
    spec = get_problem("simplex")
    base = spec.default_config().model_dump() | {"steps": 40}
    configs = entry_configs(spec, base, parse_entries("gda,nupi(kp=2)"), [])
    comparison = run_comparison(spec, configs, tmp_path, seeds=2, progress=False)
    assert comparison.seeds == [0, 1]
    written = write_comparison(comparison, spec, tmp_path)
    assert [p.name for p in written] == ["compare.png", "compare.json", "compare.md"]
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["problem"] == "simplex" and data["seeds"] == [0, 1] and data["late_fraction"] == 0.1
    assert data["figures"] == ["compare.png"]
    gda, nupi = data["entries"]
    assert (gda["label"], nupi["label"]) == ("gda", "nupi(kp=2)")
    assert nupi["controller_config"]["kp"] == 2 and nupi["folder"] == "nupi_kp=2"
    runs = [r for r in data["runs"] if r["label"] == "gda"]
    assert [r["seed"] for r in runs] == [0, 1]
    values = [r["late_max_violation"] for r in runs]
    assert gda["mean"]["late_max_violation"] == pytest.approx(sum(values) / 2)
    assert gda["max"]["late_max_violation"] == max(values)
    for key in (
        "late_mean_violation",
        "late_max_multiplier_error",
        "multiplier_error",
        "objective",
    ):
        assert key in gda["mean"] and key in gda["std"]
    assert (tmp_path / "gda" / "seed-1" / "summary.json").exists()
    markdown = (tmp_path / "compare.md").read_text()
    assert "| entry | final objective |" in markdown and "![compare](compare.png)" in markdown
    assert "(gda/seed-0/summary.json)" in markdown and "late max viol." in markdown
    assert "±" in format_table(comparison)


def test_seeds_must_be_positive(tmp_path: Path) -> None:
    spec = get_problem("simplex")
    configs = entry_configs(spec, spec.default_config().model_dump(), parse_entries("gda"), [])
    with pytest.raises(ConfigError, match="--seeds"):
        run_comparison(spec, configs, tmp_path, seeds=0)
