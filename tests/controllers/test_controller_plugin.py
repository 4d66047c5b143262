"""A newly registered controller is put through every generic test without editing them.

The dummy below (AdaGrad on the multipliers, a rule the library does not ship) is
registered only for the duration of a test. A nested pytest session then
collects the generic controller modules, whose parameters come from the registry at
collection time: the dummy appears in every generic test and passes; without a row in the
table only the table check fails, naming it; a row without a registered controller fails
the same check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from _controller_db import CONTROLLER_DB, ControllerInfo
from pydantic import Field
from torch import Tensor

from constrain import ShapeError
from constrain.controllers import CONTROLLERS, Controller, ControllerState, register

HERE = Path(__file__).resolve().parent
GENERIC = [
    str(HERE / name)
    for name in (
        "test_controller_state.py",
        "test_controller_registry.py",
        "test_controller_reductions.py",
    )
]
# Fixtures of _controller_db that every registered controller parametrizes.
FOR_EVERY_ENTRY = {"case", "scalar_case", "controller_name", "bad_hyperparameters"}
TABLE_CHECK = "test_the_table_covers_exactly_the_registered_controllers"
DUMMY = "plugin_test_adagrad"


class AdaGrad(Controller):
    """AdaGrad ascent on the multipliers: ``G <- G + e^2; lam <- lam + lr e / (sqrt(G) + eps)``."""

    lr: float = Field(default=0.1, gt=0, allow_inf_nan=False)
    eps: float = Field(default=1e-10, gt=0, allow_inf_nan=False)

    def init(self, multipliers: Tensor) -> ControllerState:
        return {"sum_of_squares": torch.zeros_like(multipliers)}

    def update(
        self, multipliers: Tensor, signal: Tensor, state: ControllerState
    ) -> tuple[Tensor, ControllerState]:
        if signal.shape != multipliers.shape:
            raise ShapeError(
                f"controller {self.name!r}: the error signal has shape {tuple(signal.shape)} "
                f"but the multipliers have shape {tuple(multipliers.shape)}."
            )
        e = signal.to(multipliers.dtype)
        total = state["sum_of_squares"] + e * e
        step = self.lr * e / (total.sqrt() + self.eps)
        return multipliers + step, {"sum_of_squares": total}


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry is restored after the test (entry points already loaded); rows are
    added with ``monkeypatch.setitem`` (the table is shared by reference)."""
    CONTROLLERS.names()
    monkeypatch.setattr(CONTROLLERS, "_items", dict(CONTROLLERS._items))


@pytest.fixture
def adagrad(isolated_registry: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The dummy's registered name: one the library will not ship, so that a built-in
    ``adagrad`` added later does not collide with it."""
    monkeypatch.setattr(AdaGrad, "name", AdaGrad.name)
    register(DUMMY)(AdaGrad)
    yield DUMMY


@dataclass
class Outcome:
    """What a nested session collected (before ``-k`` deselects) and how its tests ended."""

    items: list[pytest.Item] = field(default_factory=list)
    passed: list[pytest.TestReport] = field(default_factory=list)
    failed: list[pytest.TestReport] = field(default_factory=list)

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        self.items.append(item)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.failed.append(report)
        elif report.passed and report.when == "call":
            self.passed.append(report)


def _run(*args: str, paths: list[str] = GENERIC) -> Outcome:
    """A nested pytest session in this process (so torch's extensions are not loaded twice,
    as a fresh import inside ``pytester.inline_run`` would)."""
    outcome = Outcome()
    pytest.main([*paths, "-q", "-p", "no:cacheprovider", *args], plugins=[outcome])
    return outcome


def test_a_registered_controller_runs_through_every_generic_test(
    adagrad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = ControllerInfo(params={"lr": 0.5, "eps": 1e-8}, invalid=(({"eps": 0.0}, "eps"),))
    monkeypatch.setitem(CONTROLLER_DB, adagrad, row)
    result = _run("-k", f"{adagrad} or {TABLE_CHECK}")
    generic = {
        item.originalname  # type: ignore[attr-defined]
        for item in result.items
        if FOR_EVERY_ENTRY & set(item.fixturenames)  # type: ignore[attr-defined]
    }
    covered = {
        item.originalname  # type: ignore[attr-defined]
        for item in result.items
        if hasattr(item, "callspec") and item.callspec.id.startswith(adagrad)
    }
    assert len(generic) >= 10 and generic <= covered, generic - covered
    passed, failed = result.passed, result.failed
    assert not failed, [report.nodeid for report in failed]
    ran = {report.nodeid.split("::")[-1].split("[")[0] for report in passed}
    assert generic <= ran and TABLE_CHECK in ran
    assert any(f"[{adagrad}:eps=0.0]" in report.nodeid for report in passed)  # its own row


def test_a_controller_without_a_row_fails_only_the_table_check(
    adagrad: str,
) -> None:
    result = _run("-k", f"{adagrad} or {TABLE_CHECK}")
    passed, failed = result.passed, result.failed
    assert [report.nodeid.split("::")[-1] for report in failed] == [TABLE_CHECK]
    assert f"registered controllers without a row: {{{adagrad!r}}}" in str(failed[0].longrepr)
    # With its default hyperparameters it still went through the generic tests.
    assert sum(f"[{adagrad}" in report.nodeid for report in passed) >= 10


def test_a_row_without_a_controller_fails_the_table_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(CONTROLLER_DB, "retired", ControllerInfo(params={"lr": 0.1}))
    result = _run("-k", TABLE_CHECK, paths=GENERIC[1:2])
    failed = result.failed
    assert len(failed) == 1
    assert "rows without a registered controller: {'retired'}" in str(failed[0].longrepr)
