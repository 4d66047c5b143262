"""Building formulations by name, mapping or instance."""

from __future__ import annotations

import pytest

from constrain import (
    AugmentedLagrangian,
    ConfigError,
    Lagrangian,
    QuadraticPenalty,
    UnknownNameError,
)
from constrain.formulations import FORMULATIONS, build


def test_registered_names() -> None:
    assert {"lagrangian", "augmented_lagrangian", "quadratic_penalty"} <= set(FORMULATIONS.names())
    assert FORMULATIONS.get("augmented-lagrangian") is AugmentedLagrangian


def test_build_from_name_mapping_and_instance() -> None:
    assert isinstance(build("lagrangian"), Lagrangian)
    al = build({"name": "augmented_lagrangian", "penalty": 2.0, "schedule": {"growth": 3.0}})
    assert isinstance(al, AugmentedLagrangian)
    assert al.penalty == 2.0 and al.schedule.growth == 3.0
    instance = QuadraticPenalty(penalty=5.0)
    assert build(instance) is instance
    copy = build(instance, penalty=7.0)
    assert isinstance(copy, QuadraticPenalty) and copy.penalty == 7.0 and instance.penalty == 5.0


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'lagrangian'"):
        build("lagrangain")


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"penalty: Input should be greater than or equal to 0"):
        build("augmented_lagrangian", penalty=-1.0)
    with pytest.raises(ConfigError, match=r"schedule\.growht: unknown field"):
        build({"name": "quadratic_penalty", "schedule": {"growht": 2.0}})
    with pytest.raises(ConfigError, match="needs a 'name' key"):
        build({"penalty": 1.0})
    with pytest.raises(ConfigError, match="formulation must be a name"):
        build(3)  # type: ignore[arg-type]


def test_spec_round_trip() -> None:
    al = AugmentedLagrangian(penalty=0.5)
    assert build({"name": al.name, **al.model_dump()}) == al
