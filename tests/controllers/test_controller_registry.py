"""Registry lookups, building from configs and validation errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _controller_db import CONTROLLER_DB, parametrize
from _controller_db import info as row_of
from pydantic import ValidationError

from constrain._errors import ConfigError, ShapeError, UnknownNameError
from constrain.controllers import (
    GDA,
    PID,
    Adam,
    ExtraGradient,
    GroupDRO,
    Momentum,
    MultiplicativeWeights,
    Nesterov,
    NuPI,
    Optimistic,
    build,
    get,
    names,
)

pytest_generate_tests = parametrize

BUILTIN = {
    "gda": GDA,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adam": Adam,
    "nupi": NuPI,
    "pid": PID,
    "optimistic": Optimistic,
    "extragradient": ExtraGradient,
    "multiplicative": MultiplicativeWeights,
    "group_dro": GroupDRO,
}


def test_the_table_covers_exactly_the_registered_controllers() -> None:
    """Every registered controller has a row in tests/controllers/_controller_db.py, and
    every row a registered controller."""
    registered, rows = set(names()), set(CONTROLLER_DB)
    assert not registered - rows, f"registered controllers without a row: {registered - rows}"
    assert not rows - registered, f"rows without a registered controller: {rows - registered}"


def test_the_builtin_rules_are_registered_under_their_names() -> None:
    for name, cls in BUILTIN.items():
        assert get(name) is cls and cls.name == name


def test_build_round_trips_through_the_spec(controller_name: str) -> None:
    cls = get(controller_name)
    assert cls.name == controller_name
    controller = build(controller_name)
    assert type(controller) is cls
    assert build(controller.spec()) == controller
    configured = build({"name": controller_name, **row_of(controller_name).params})
    assert build(configured.spec()) == configured
    assert build(configured) is configured


def test_build_by_name_and_by_mapping() -> None:
    by_name = build("nupi", ki=0.1)
    assert by_name == NuPI(ki=0.1)
    by_mapping = build({"name": "nupi", "lr": 1.0, "ki": 0.1, "kp": 1.0, "nu": 0.5})
    assert by_mapping == NuPI(lr=1.0, ki=0.1, kp=1.0, nu=0.5)
    assert build({"name": "nupi", "ki": 0.1}, kp=2.0) == NuPI(ki=0.1, kp=2.0)
    assert build(by_mapping) is by_mapping
    assert build(by_mapping, nu=0.0) == NuPI(lr=1.0, ki=0.1, kp=1.0, nu=0.0)
    assert build("NuPI", ki=0.1) == by_name  # lookups are case-insensitive


def test_defaults() -> None:
    assert NuPI().ki == 1.0 and NuPI().kp == 0.0 and NuPI().nu == 0.0
    pid = PID()
    assert (pid.kp, pid.ki, pid.kd, pid.ema_p, pid.ema_d, pid.delay, pid.lr) == (
        0.0,
        1.0,
        0.0,
        0.95,
        0.95,
        10,
        1.0,
    )
    assert Adam().betas == (0.9, 0.999) and Adam().eps == 1e-8


def test_unknown_name_lists_known_names_and_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError) as info:
        build("nupii")
    message = str(info.value)
    assert "Did you mean 'nupi'?" in message
    for name in names():
        assert name in message
    assert isinstance(info.value, ConfigError)


def test_invalid_values_raise_config_error_naming_the_field(
    bad_hyperparameters: tuple[str, dict[str, Any], str],
) -> None:
    name, params, field = bad_hyperparameters
    with pytest.raises(ConfigError) as info:
        build(name, **params)
    message = str(info.value)
    assert f"\n  {field}" in message, message
    assert name in message
    # Building the class directly raises pydantic's error, naming the same field.
    with pytest.raises(ValidationError) as direct:
        get(name)(**params)
    assert field in {str(err["loc"][0]) for err in direct.value.errors()}


def test_unknown_field_message_says_so() -> None:
    with pytest.raises(ConfigError, match="kii: unknown field"):
        build({"name": "nupi", "kii": 0.1})


def test_controllers_are_frozen() -> None:
    controller = NuPI()
    with pytest.raises(ValidationError):
        controller.ki = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("nupi", {"ki": [0.1, 0.2, 0.3]}, "ki"),
        ("nupi", {"kp": [0.1, 0.2]}, "kp"),
        ("pid", {"kd": [1.0] * 6}, "kd"),
    ],
)
def test_per_constraint_sequence_of_wrong_length_raises_shape_error_at_update(
    name: str, params: dict[str, Any], field: str
) -> None:
    controller = build(name, **params)  # the length is only known at update time
    lam = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ShapeError, match=f"'{field}'"):
        controller.update(lam, torch.ones(5, dtype=torch.float64), controller.init(lam))
